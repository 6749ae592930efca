"""Relatives kept inside one of train/val/test (mot_neuro.data.relatedness, the splits' ``relatedness``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_adapters.core import AdapterError
from mot_neuro.data.relatedness import read_relatedness, related_groups
from mot_neuro.data.splits import groups_crossing, load_or_make_splits, make_splits

N = 120
IDS = [str(1_000_000 + i) for i in range(N)]  # UK Biobank-like eids, as the cohort writes them (strings)
RNG = np.random.default_rng(1)
SITES = RNG.integers(0, 12, N)
CASES = (RNG.random(N) < 0.3).astype(int)
# chains A~B, B~C, C~D (and a pair of two): relatives of relatives are one family
CHAINS = [[3, 50, 97, 14], [7, 61, 88], [20, 21], [30, 115, 2, 66, 45]]
BELOW = [(5, 70), (9, 99)]  # kinship under the threshold: must not join
AT_THRESHOLD = (11, 111)  # exactly 0.0442: related (KING's interval is closed below)


def eid(i: int) -> str:
    return IDS[i]


def ukb_rel(path: Path) -> Path:
    """A ukb_rel.dat-style file with the chains, pairs below the threshold, self pairs, duplicated pairs (both
    orders), IDs not in the cohort and an ID written as a float."""
    lines = ["ID1 ID2 HetHet IBS0 Kinship"]
    for chain in CHAINS:
        for a, b in zip(chain, chain[1:], strict=False):
            lines.append(f"{eid(a)} {eid(b)} 0.05 0.001 0.25")
    lines.append(f"{eid(CHAINS[0][1])} {eid(CHAINS[0][0])} 0.05 0.001 0.25")  # duplicate, other order
    lines.append(f"{eid(CHAINS[1][0])}\t{eid(CHAINS[1][1])}  0.05 0.001 0.1")  # duplicate, tabs and spaces
    lines.append(f"{eid(4)} {eid(4)} 0.05 0 0.5")  # self pair
    for a, b in BELOW:
        lines.append(f"{eid(a)} {eid(b)} 0.05 0.01 0.03")
    lines.append(f"{eid(AT_THRESHOLD[0])}.0 {eid(AT_THRESHOLD[1])} 0.05 0.01 0.0442")  # 1000011.0 is 1000011
    lines.append(f"{eid(8)} 9999999 0.05 0.01 0.2")  # a relative outside the cohort
    lines.append("8888888 9999999 0.05 0.01 0.2")  # neither in the cohort
    lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def families() -> list[list[int]]:
    return [*CHAINS, list(AT_THRESHOLD)]


def related_pairs() -> list[tuple[int, int]]:
    pairs = [(a, b) for chain in CHAINS for a, b in zip(chain, chain[1:], strict=False)]
    return [*pairs, AT_THRESHOLD]


def parts_of(fold) -> dict[str, str]:
    return {sid: part for part in ("train", "val", "test") for sid in fold[part]}


def crossing_pairs(splits) -> int:
    return sum(parts_of(fold)[eid(a)] != parts_of(fold)[eid(b)] for fold in splits.folds for a, b in related_pairs())


def test_reading_drops_self_duplicate_and_below_threshold_pairs(tmp_path):
    rel = read_relatedness(ukb_rel(tmp_path / "ukb_rel.dat"))
    n_chain_pairs = sum(len(c) - 1 for c in CHAINS)
    assert rel.counts == {
        "lines": n_chain_pairs + 2 + 1 + len(BELOW) + 1 + 2,
        "below_threshold": len(BELOW),
        "self_pairs": 1,
        "duplicate_pairs": 2,
        "pairs": n_chain_pairs + 1 + 2,
    }
    assert rel.threshold == pytest.approx(0.0442)
    labels, counts = related_groups(np.array(IDS), rel)
    for family in families():
        assert len({labels[i] for i in family}) == 1
    for a, b in BELOW:
        assert labels[a] != labels[b]
    assert counts["related_groups"] == len(families())
    assert counts["largest_related_group"] == max(map(len, families()))
    assert counts["subjects_in_related_groups"] == sum(map(len, families()))
    assert counts["pairs_outside_cohort"] == 2 and counts["ids_not_in_cohort"] == 2
    # a higher threshold drops the pairs of the chains at kinship 0.1 ... and the one at the threshold
    stricter = read_relatedness(tmp_path / "ukb_rel.dat", threshold=0.2)
    assert stricter.counts["pairs"] == n_chain_pairs + 2 and stricter.counts["below_threshold"] == len(BELOW) + 2


@pytest.mark.parametrize("scheme", ["kfold", "holdout"])
def test_no_related_pair_crosses_train_val_test(tmp_path, scheme):
    path = ukb_rel(tmp_path / "ukb_rel.dat")
    plain = make_splits(IDS, scheme=scheme, stratify=CASES, seed=3)
    assert crossing_pairs(plain) > 0  # without relatedness these relatives land in different parts
    splits = make_splits(IDS, scheme=scheme, stratify=CASES, seed=3, relatedness={"path": str(path)})
    assert crossing_pairs(splits) == 0
    for fold in splits.folds:  # still a partition of every subject
        assert sorted(sid for part in fold.values() for sid in part) == sorted(IDS)
    assert splits.settings["relatedness"]["threshold"] == pytest.approx(0.0442)
    recorded = splits.settings["related_groups"]
    assert recorded["related_groups"] == len(families()) and recorded["largest_related_group"] == 5


def test_relatedness_combined_with_a_group_column(tmp_path):
    path = ukb_rel(tmp_path / "ukb_rel.dat")
    rel = read_relatedness(path)
    codes = np.unique(SITES, return_inverse=True)[1]
    labels, counts = related_groups(np.array(IDS), rel, codes)
    # a site and the sites its members' relatives belong to are one group
    for family in families():
        assert len({labels[i] for i in family}) == 1
    for site in np.unique(SITES):
        assert len(set(labels[SITES == site])) == 1
    # the number of groups: sites merged through the families' members (a small union-find over site numbers)
    parent = {int(s): int(s) for s in np.unique(SITES)}

    def root(s):
        while parent[s] != s:
            s = parent[s]
        return s

    for family in families():
        for i in family[1:]:
            parent[root(int(SITES[i]))] = root(int(SITES[family[0]]))
    expected = len({root(s) for s in parent})
    assert expected < len(parent)  # the families do join sites here
    assert counts["groups"] == expected == len(np.unique(labels))
    # here the families join most sites into one group of most of the cohort: folds of it would be absurd
    assert np.bincount(labels).max() > N / 2
    with pytest.raises(AdapterError, match=r"the largest family .*and the group column\) holds \d+ subjects"):
        make_splits(IDS, groups=SITES, relatedness=rel, n_folds=3, seed=0)
    # a finer grouping (40 groups of 3) joined with the families: kept whole, folds of sensible sizes
    fine = np.arange(N) // 3
    splits = make_splits(IDS, groups=fine, relatedness=rel, n_folds=3, seed=0)
    assert crossing_pairs(splits) == 0
    assert groups_crossing(splits, np.array(IDS), fine) == []
    fine_counts = related_groups(np.array(IDS), rel, fine)[1]
    assert splits.settings["groups"] == "array" and splits.settings["related_groups"]["groups"] == fine_counts["groups"]


def test_a_pairs_table_relates_every_listed_pair(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("ID1 ID2\n" + "".join(f"{eid(a)} {eid(b)}\n" for a, b in related_pairs()))
    rel = read_relatedness(path)  # no Kinship column: no threshold applies
    assert rel.threshold is None and rel.n_pairs == len(related_pairs())
    splits = make_splits(IDS, relatedness=rel, seed=5)
    assert crossing_pairs(splits) == 0 and splits.settings["relatedness"]["threshold"] is None
    # a pairs table with family IDs too (KING/PLINK style)
    with_fid = tmp_path / "pairs_fid.txt"
    with_fid.write_text("FID1 ID1 FID2 ID2\n" + "".join(f"F{a} {eid(a)} F{b} {eid(b)}\n" for a, b in related_pairs()))
    assert read_relatedness(with_fid).n_pairs == len(related_pairs())


def test_a_threshold_given_for_a_file_without_kinship_is_refused(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("ID1 ID2\n" + "".join(f"{eid(a)} {eid(b)}\n" for a, b in related_pairs()))
    for call in (
        lambda: read_relatedness(path, threshold=0.3),
        lambda: make_splits(IDS, relatedness={"path": str(path), "threshold": 0.0442}),  # even the default value
    ):
        with pytest.raises(AdapterError, match=r"no Kinship column .* threshold .* cannot apply") as err:
            call()
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "header, row, what",
    [
        # KING --ibdseg: no kinship coefficient; read as a pairs table it related every pair whatever the threshold
        (
            "FID1\tID1\tFID2\tID2\tMaxIBD1\tMaxIBD2\tIBD1Seg\tIBD2Seg\tPropIBD\tInfType",
            "{a}\t{a}\t{b}\t{b}\t10\t0\t0.02\t0\t0.01\tUN",
            "ibdseg",
        ),
        ("ID1 ID2 HetHet IBS0 Kinship_coef", "{a} {b} 0.1 0.0 -0.2", "renamed"),
    ],
)
def test_a_header_with_other_columns_but_no_kinship_is_refused(tmp_path, header, row, what):
    path = tmp_path / "rel.txt"
    path.write_text(header + "\n" + "".join(row.format(a=eid(i), b=eid(i + 1)) + "\n" for i in range(0, 40, 2)))
    for threshold in (None, 0.177):
        with pytest.raises(AdapterError, match=r"no kinship column: a kinship table needs one named Kinship") as err:
            read_relatedness(path, threshold=threshold)
        message = str(err.value)
        assert str(path) in message and "\n" not in message and "KINSHIP" in message
        assert ("--ibdseg" in message) == (what == "ibdseg")


def test_plink2_king_tables_and_a_byte_order_mark_are_read(tmp_path):
    plink2 = tmp_path / "plink2.kin0"
    lines = ["#FID1\tIID1\tFID2\tIID2\tNSNP\tHETHET\tIBS0\tKINSHIP"]
    lines += [f"{eid(a)}\t{eid(a)}\t{eid(b)}\t{eid(b)}\t1000\t0.1\t0.0\t0.25" for a, b in related_pairs()]
    lines.append(f"{eid(5)}\t{eid(5)}\t{eid(70)}\t{eid(70)}\t1000\t0.1\t0.0\t0.01")  # below the threshold
    plink2.write_text("\n".join(lines) + "\n")
    rel = read_relatedness(plink2)
    assert rel.n_pairs == len(related_pairs()) and rel.counts["below_threshold"] == 1
    assert rel.threshold == pytest.approx(0.0442)
    assert crossing_pairs(make_splits(IDS, relatedness=rel, seed=1)) == 0
    bom = tmp_path / "bom.dat"
    bom.write_text("ID1 ID2 Kinship\n" + f"{eid(0)} {eid(1)} 0.3\n", encoding="utf-8-sig")
    assert read_relatedness(bom).n_pairs == 1


@pytest.mark.parametrize(
    "write, style, why",
    [
        (lambda i: f"sub-{eid(i)}", "'sub-#######' in the file", "prefix 'sub-'"),
        (lambda i: f"0{eid(i)}", "'0#######' in the file", "leading zeros"),
    ],
)
def test_a_relatedness_file_of_ids_written_otherwise_is_refused(tmp_path, write, style, why):
    path = tmp_path / "rel.dat"
    lines = [f"{write(a)} {write(b)} 0.1 0.0 0.25" for a, b in related_pairs()]
    path.write_text("ID1 ID2 HetHet IBS0 Kinship\n" + "\n".join(lines) + "\n")
    with pytest.raises(AdapterError, match=r"none of its \d+ ID\(s\) is a subject of the cohort") as err:
        make_splits(IDS, relatedness=str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message and style in message and why in message
    assert "'#######' in the cohort" in message and eid(related_pairs()[0][0]) not in message  # styles, never IDs
    # some pairs written as the cohort does, the others otherwise: those relatives would be split, refused too
    path.write_text(
        "ID1 ID2 Kinship\n"
        + f"{eid(0)} {eid(1)} 0.3\n"
        + "".join(f"{write(a)} {write(b)} 0.3\n" for a, b in related_pairs()[:3])
    )
    with pytest.raises(AdapterError, match=r"\d+ of its \d+ ID\(s\) are cohort subjects written otherwise"):
        make_splits(IDS, relatedness=str(path))


def test_a_relatedness_file_of_another_cohort_is_refused_but_outsiders_are_fine(tmp_path):
    other = tmp_path / "other.dat"
    other.write_text("ID1 ID2 Kinship\n" + "".join(f"{2_000_000 + i} {2_000_001 + i} 0.3\n" for i in range(0, 20, 2)))
    with pytest.raises(AdapterError, match=r"none of its 20 ID\(s\) .*written alike: another cohort's"):
        make_splits(IDS, relatedness=str(other))
    # most of the file outside the cohort, written alike (a biobank-wide file and a subset cohort): accepted
    mostly = tmp_path / "mostly.dat"
    mostly.write_text(other.read_text() + f"{eid(0)} {eid(1)} 0.3\n")
    splits = make_splits(IDS, relatedness=str(mostly))
    assert splits.settings["related_groups"]["ids_not_in_cohort"] == 20


def test_saved_splits_with_a_relatedness_file_of_ids_written_otherwise_are_refused(tmp_path):
    path = tmp_path / "rel.dat"
    path.write_text("ID1 ID2 Kinship\n" + "".join(f"sub-{eid(a)} sub-{eid(b)} 0.3\n" for a, b in related_pairs()))
    splits_file = tmp_path / "splits.json"
    rel = read_relatedness(path)
    splits = make_splits(IDS, seed=3)  # as an older version made them with this file: nobody related
    splits.settings["relatedness"] = rel.settings()
    splits.save(splits_file)
    with pytest.raises(AdapterError, match="none of its .* is a subject of the cohort"):
        load_or_make_splits(splits_file, IDS, seed=3, relatedness=str(path))


@pytest.mark.parametrize("scheme", ["kfold", "holdout"])
def test_a_family_too_large_for_the_folds_is_refused(tmp_path, scheme):
    giant = tmp_path / "giant.dat"  # one chain of 80 relatives in a cohort of 120
    giant.write_text("ID1 ID2 Kinship\n" + "".join(f"{eid(i)} {eid(i + 1)} 0.1\n" for i in range(79)))
    with pytest.raises(
        AdapterError, match=r"the largest family .* holds 80 subjects .*higher kinship threshold"
    ) as err:
        make_splits(IDS, scheme=scheme, relatedness=str(giant), seed=0)
    message = str(err.value)
    assert "\n" not in message and ("scheme: holdout" in message) == (scheme == "kfold")
    # closer relatives only (the chain's links at 0.1 fall below 0.177): fine
    assert make_splits(IDS, scheme=scheme, relatedness={"path": str(giant), "threshold": 0.177}, seed=0)


def test_saved_splits_are_refused_for_another_file_or_threshold_or_a_crossing_pair(tmp_path):
    path = ukb_rel(tmp_path / "ukb_rel.dat")
    splits_file = tmp_path / "splits.json"
    # made without relatedness: refused when relatedness is asked
    load_or_make_splits(splits_file, IDS, seed=3)
    with pytest.raises(AdapterError, match=r"relatedness none saved"):
        load_or_make_splits(splits_file, IDS, seed=3, relatedness=str(path))
    splits_file.unlink()
    made = load_or_make_splits(splits_file, IDS, seed=3, relatedness=str(path))
    assert load_or_make_splits(splits_file, IDS, seed=3, relatedness=str(path)).fingerprint() == made.fingerprint()
    with pytest.raises(AdapterError, match="other settings than asked.*relatedness"):
        load_or_make_splits(splits_file, IDS, seed=3, relatedness={"path": str(path), "threshold": 0.1})
    changed = tmp_path / "ukb_rel_v2.dat"
    changed.write_text(path.read_text() + f"{eid(0)} {eid(1)} 0.05 0.01 0.3\n")
    with pytest.raises(AdapterError, match="other settings than asked.*relatedness"):
        load_or_make_splits(splits_file, IDS, seed=3, relatedness=str(changed))
    with pytest.raises(AdapterError, match="relatedness .* saved, none asked"):
        load_or_make_splits(splits_file, IDS, seed=3)
    # a hand-edited file where one relative moved from train to validation
    data = json.loads(splits_file.read_text())
    data.pop("fingerprint")
    fold = data["folds"][0]
    a, b = next((a, b) for a, b in related_pairs() if eid(a) in fold["train"] and eid(b) in fold["train"])
    fold["train"].remove(eid(a))
    fold["val"].append(eid(a))
    splits_file.write_text(json.dumps(data))
    with pytest.raises(AdapterError, match=r"1 related pair\(s\) cross train/val/test in fold 0") as err:
        load_or_make_splits(splits_file, IDS, seed=3, relatedness=str(path))
    assert eid(a) not in str(err.value) and eid(b) not in str(err.value)  # counts, never IDs


@pytest.mark.parametrize(
    "content, match",
    [
        ("ID1 ID2 HetHet IBS0 Kinship\n1000001 1000002 0.1 0.0 0.25\n1000003 1000004 0.1 0.0 high\n", "line 3"),
        ("ID1 ID2 HetHet IBS0 Kinship\n1000001 1000002 0.1 0.25\n", "line 2 has 4 fields, the header 5"),
        ("ID1 HetHet IBS0 Kinship\n1000001 0.1 0.0 0.25\n", r"naming the columns ID1 and ID2.*missing \['ID2'\]"),
        ("1000001 1000002 0.1 0.0 0.25\n", r"missing \['ID1', 'ID2'\]"),
        ("ID1 ID2 Kinship\n1.00012E+06 1000002 0.25\n", "line 2 writes an ID in scientific notation"),
        ("ID1 ID2 Kinship\n1000001 1000002 nan\n", "line 2: Kinship 'nan' is not finite"),
        ("\n\n", "empty"),
    ],
)
def test_a_bad_relatedness_file_gets_one_line_naming_file_and_line(tmp_path, content, match):
    path = tmp_path / "rel.dat"
    path.write_text(content)
    with pytest.raises(AdapterError, match=match) as err:
        make_splits(IDS, relatedness=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("threshold", [-0.01, 0.51, "0.1", True])
def test_a_threshold_outside_zero_to_half_is_refused(tmp_path, threshold):
    path = ukb_rel(tmp_path / "ukb_rel.dat")
    with pytest.raises(AdapterError, match=r"threshold must .*\[0, 0.5\]") as err:
        make_splits(IDS, relatedness={"path": str(path), "threshold": threshold})
    assert "\n" not in str(err.value)
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    with pytest.raises(AdapterError, match=r"data\.relatedness\.threshold must"):
        NeuroOmicsDataModule(
            participants="p.csv", modalities={"m": {}}, relatedness={"path": "x", "threshold": threshold}
        )
    with pytest.raises(AdapterError, match=r"data\.relatedness takes \{path"):
        NeuroOmicsDataModule(participants="p.csv", modalities={"m": {}}, relatedness={"file": str(path)})
