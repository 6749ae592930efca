"""PLINK 2 genotypes as gene tokens (``data_adapters.pgen``): files written with pgenlib's own writer, compared
with the same genotypes as PLINK 1 through ``gene.plink``; and both biobank adapters built from a data config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bgen_files import diploid_probabilities, write_bgen, write_sample

bed_reader = pytest.importorskip("bed_reader")
pgenlib = pytest.importorskip("pgenlib")
from bed_reader import open_bed  # noqa: E402

from data_adapters import pgen as pgen_module  # noqa: E402
from data_adapters import token_fill  # noqa: E402
from data_adapters.core import AdapterError  # noqa: E402
from data_adapters.gene import plink  # noqa: E402
from data_adapters.pgen import pgen  # noqa: E402

BED_DATA = Path(bed_reader.__file__).parent / "tests" / "data"


def write_pvar(path: Path, chrom, pos, ids, ref, alt, *, meta: bool = True) -> None:
    lines = ["##fileformat=PVARv1.0", '##INFO=<ID=AF,Number=A,Type=Float,Description="made up">'] if meta else []
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    lines += [f"{c}\t{p}\t{i}\t{r}\t{a}\t.\t.\tAF=0.5" for c, p, i, r, a in zip(chrom, pos, ids, ref, alt, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def write_psam(path: Path, iids, fids=None) -> None:
    if fids is None:
        path.write_text("#IID\tSEX\n" + "".join(f"{i}\t1\n" for i in iids))
    else:
        path.write_text("#FID\tIID\tSEX\n" + "".join(f"{f}\t{i}\tNA\n" for f, i in zip(fids, iids, strict=True)))


def bed_as_pgen(prefix: str, folder: Path) -> Path:
    """bed-reader's shipped PLINK 1 files as .pgen hard calls written by pgenlib: REF = A2, ALT = A1 (what
    ``plink2 --bfile`` assumes), so the ALT count is the A1 count gene.plink reads."""
    with open_bed(BED_DATA / f"{prefix}.bed") as reader:
        calls = reader.read(dtype=np.float32)
        chrom, sid, pos = reader.chromosome, reader.sid, reader.bp_position
        a1, a2, fid, iid = reader.allele_1, reader.allele_2, reader.fid, reader.iid
    genotypes = np.where(np.isnan(calls), -9, calls).astype(np.int8).T.copy()  # variant-major, -9 missing
    path = folder / f"{prefix}.pgen"
    with pgenlib.PgenWriter(bytes(path), calls.shape[0], variant_ct=calls.shape[1], nonref_flags=False) as writer:
        writer.append_biallelic_batch(genotypes)
    write_pvar(path.with_suffix(".pvar"), chrom, pos, sid, a2, a1)
    write_psam(path.with_suffix(".psam"), iid, fid)
    return path


def assert_same_modality(ours, reference) -> None:
    json.dumps(ours.source)
    assert ours.token_names == reference.token_names
    assert ours.source["token_features"] == reference.source["token_features"]
    np.testing.assert_array_equal(ours.subject_ids, reference.subject_ids)
    np.testing.assert_array_equal(ours.values, reference.values)
    np.testing.assert_array_equal(ours.feature_mask, reference.feature_mask)
    np.testing.assert_array_equal(ours.present, reference.present)


@pytest.fixture(scope="module")
def some_missing(tmp_path_factory) -> Path:
    return bed_as_pgen("some_missing", tmp_path_factory.mktemp("pgen"))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"grouping": "window", "window_bp": 40_000_000},
        {"grouping": "snp"},
        {"grouping": "region", "regions": pd.DataFrame({"name": ["g"], "chrom": ["1"], "start": [2], "end": [2e8]})},
        {"max_features_per_token": 3},
        {"id_format": "fid_iid"},
    ],
    ids=["chromosome", "window", "snp", "region", "capped", "fid_iid"],
)
def test_hard_calls_equal_plink_on_the_same_genotypes(some_missing, options):
    assert_same_modality(pgen(some_missing, **options), plink(BED_DATA / "some_missing", **options))


@pytest.mark.parametrize("suffix", ["", ".pgen", ".pvar", ".psam"])
def test_prefix_or_any_of_the_three_files(some_missing, suffix):
    prefix = str(some_missing.with_suffix(""))
    assert pgen(prefix + suffix).source["files"] == [prefix + ext for ext in (".pgen", ".pvar", ".psam")]


def test_a_plink1_bed_under_the_pgen_name_is_refused(tmp_path):
    # pgenlib would read a variant-major .bed as a .pgen (storage mode 0x01), but its header holds no sample count:
    # a .psam one sample short gave shifted genotypes without an error
    shutil.copy(BED_DATA / "some_missing.bed", tmp_path / "old.pgen")
    bim = pd.read_csv(BED_DATA / "some_missing.bim", sep="\t", header=None, dtype=str)
    fam = pd.read_csv(BED_DATA / "some_missing.fam", sep="\t", header=None, dtype=str)
    write_pvar(tmp_path / "old.pvar", bim[0], bim[3], bim[1], bim[5], bim[4], meta=False)
    for iids in (fam[1], fam[1][:-1]):
        write_psam(tmp_path / "old.psam", iids)
        one_line_error(
            lambda: pgen(tmp_path / "old"),
            r"a PLINK 1 \.bed under the \.pgen name \(storage mode 0x01\).*gene\.plink.*plink2 --bfile .* --make-pgen",
            "old.pgen",
        )


def test_stored_dosages_are_read_at_plink2_resolution(tmp_path):
    rng = np.random.default_rng(0)
    n, m = 12, 9
    dosages = (rng.random((m, n)) * 2).astype(np.float32)
    dosages[rng.random((m, n)) < 0.1] = -9
    path = tmp_path / "dos.pgen"
    with pgenlib.PgenWriter(bytes(path), n, variant_ct=m, nonref_flags=False, dosage_present=True) as writer:
        writer.append_dosages_batch(dosages)
    write_pvar(
        path.with_suffix(".pvar"), ["5"] * m, np.arange(m) * 100 + 1, [f"v{j}" for j in range(m)], "A" * m, "G" * m
    )
    write_psam(path.with_suffix(".psam"), [f"s{i}" for i in range(n)])
    modality = pgen(path)
    values = modality.values[:, 0, :]
    expected = np.where(dosages < 0, np.nan, dosages).T
    np.testing.assert_allclose(values, expected, rtol=0, atol=1 / 16384)  # within one step of plink2's 1/16384 grid
    steps = values[~np.isnan(values)] * 16384
    np.testing.assert_array_equal(steps, np.round(steps))
    assert modality.token_names == ["chr5"] and np.isnan(modality.values).sum() == (dosages < 0).sum()


def test_multiallelic_sites_count_every_alt_allele(tmp_path):
    alleles = np.array(  # two allele codes per sample, -9 missing
        [[0, 0, 0, 1, 1, 2, 2, 2, -9, -9], [0, 1, 1, 1, 0, 0, 1, 1, 0, 0], [3, 3, 0, 3, 1, 2, 0, 0, 0, 1]],
        dtype=np.int32,
    )
    path = tmp_path / "multi.pgen"
    allele_counts = np.array([3, 2, 4], dtype=np.uint32)
    with pgenlib.PgenWriter(bytes(path), 5, variant_ct=3, nonref_flags=False, allele_ct_limit=4) as writer:
        writer.append_alleles_batch(alleles, allele_cts=allele_counts)
    write_pvar(path.with_suffix(".pvar"), ["1"] * 3, [10, 20, 30], ["tri", "bi", "quad"], "AAA", ["C,G", "T", "C,G,T"])
    write_psam(path.with_suffix(".psam"), ["a", "b", "c", "d", "e"])
    modality = pgen(path, grouping="snp")
    pairs = alleles.reshape(3, 5, 2)
    expected = np.where((pairs < 0).any(axis=2), np.nan, (pairs > 0).sum(axis=2)).T
    np.testing.assert_array_equal(modality.values[:, :, 0], expected)
    assert modality.source["n_multiallelic"] == 2


def test_reading_in_blocks_and_non_contiguous_variants_give_the_same_tokens(some_missing, monkeypatch):
    regions = pd.DataFrame(  # gaps between regions: variants read by list, not by range
        {"name": ["a", "b", "c"], "chrom": ["1", "1", "3"], "start": [1, 91_000_000, 1], "end": [31e6, 2e8, 2e9]}
    )
    whole = pgen(some_missing, grouping="region", regions=regions, min_maf=0.015)
    widths = []
    real = pgen_module._Blocks.dosages
    monkeypatch.setattr(pgen_module._Blocks, "dosages", lambda self, idx: widths.append(len(idx)) or real(self, idx))
    monkeypatch.setattr(token_fill, "_BLOCK_VALUES", 100 * 2)  # 2 variants per block
    blocked = pgen(some_missing, grouping="region", regions=regions, min_maf=0.015)
    assert_same_modality(blocked, whole)
    assert max(widths) == 2
    assert_same_modality(blocked, pgen(some_missing, grouping="region", regions=regions, min_maf=0.015))


def test_min_maf_and_variant_list(some_missing, tmp_path):
    with open_bed(BED_DATA / "some_missing.bed") as reader:
        calls, sid = reader.read(dtype=np.float64), reader.sid
    frequency = np.nanmean(calls, axis=0) / 2
    maf = np.minimum(frequency, 1 - frequency)
    threshold = float(np.median(maf))
    modality = pgen(some_missing, grouping="snp", min_maf=threshold)
    assert sorted(modality.token_names) == sorted(sid[maf >= threshold])
    listed = tmp_path / "extract.txt"
    listed.write_text("sid_3\nsid_40\n")
    assert pgen(some_missing, grouping="snp", variants=listed).token_names == ["sid_3", "sid_40"]


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture
def copy(some_missing, tmp_path) -> Path:
    for ext in (".pgen", ".pvar", ".psam"):
        shutil.copy(some_missing.with_suffix(ext), tmp_path / f"g{ext}")
    return tmp_path / "g.pgen"


def one_line_error(call, match: str, file_name: str) -> AdapterError:
    with pytest.raises(AdapterError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value) and Path(caught.value.file).name == file_name
    return caught.value


def test_missing_files(copy):
    copy.with_suffix(".psam").unlink()
    one_line_error(lambda: pgen(copy), "PLINK 2 sample list file not found", "g.psam")
    pvar = copy.with_suffix(".pvar")
    pvar.rename(pvar.with_name("g.pvar.zst"))
    one_line_error(lambda: pgen(copy), r"only g\.pvar\.zst is there: decompress it first", "g.pvar")


@pytest.mark.parametrize(
    ("edit", "match", "file_name"),
    [
        (
            lambda text: "\n".join(text.splitlines()[3:]),
            "line 1: a .pvar needs the header line '#CHROM POS ID REF ALT'",
            "g.pvar",
        ),
        (lambda text: text.replace("\tALT", "\tALTS"), "line 3: a .pvar needs the header line", "g.pvar"),
        (lambda text: text.replace("\t1\tsid_0", "\tone\tsid_0"), "line 4: POS 'one' is not a non-negative", "g.pvar"),
        (
            lambda text: text + "1\t5\tsid_x\tA\tC\t.\t.\t.\n",
            "101 variants in g.pvar, but the .pgen header declares 100",
            "g.pgen",
        ),
    ],
    ids=["no header", "no ALT", "bad POS", "extra variant"],
)
def test_bad_pvar(copy, edit, match, file_name):
    pvar = copy.with_suffix(".pvar")
    pvar.write_text(edit(pvar.read_text()))
    one_line_error(lambda: pgen(copy), match, file_name)


@pytest.mark.parametrize(
    ("edit", "match", "file_name"),
    [
        (lambda text: text.split("\n", 1)[1], "a .psam needs a header line starting '#IID' or '#FID IID'", "g.psam"),
        (lambda text: text.replace("iid_1\t", "iid_0\t"), "1 duplicated subject ID", "g.psam"),
        (lambda text: text + "0\tiid_x\tNA\n", "101 samples in g.psam, but the .pgen header declares 100", "g.pgen"),
    ],
    ids=["no header", "duplicated", "extra sample"],
)
def test_bad_psam(copy, edit, match, file_name):
    psam = copy.with_suffix(".psam")
    psam.write_text(edit(psam.read_text()))
    one_line_error(lambda: pgen(copy), match, file_name)


def test_fid_iid_needs_a_fid_column(copy):
    write_psam(copy.with_suffix(".psam"), [f"iid_{i}" for i in range(100)])
    assert pgen(copy).subject_ids[0] == "iid_0"
    one_line_error(lambda: pgen(copy, id_format="fid_iid"), "needs a FID column", "g.psam")


def test_not_a_pgen(copy):
    copy.write_bytes(b"##fileformat=VCFv4.2\n")
    one_line_error(lambda: pgen(copy), "not a .pgen file: it must start with bytes 6c 1b", "g.pgen")
    copy.write_bytes(b"\x6c\x1b\x7f" + bytes(20))
    one_line_error(lambda: pgen(copy), "unsupported .pgen storage mode 0x7f", "g.pgen")


def test_nothing_left_after_the_filter(copy):
    one_line_error(lambda: pgen(copy, min_maf=0.5), r"no variant left after the filters: of 100 variants", "g.pgen")


# ---------------------------------------------------------------------------------------------- from a data config
def test_a_data_config_builds_bgen_and_pgen_modalities_and_keys_every_file(tmp_path, monkeypatch):
    from data_adapters import cache
    from data_adapters.registry import input_files
    from mot_neuro.data.sources import build_cached_cohort

    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    rng = np.random.default_rng(9)
    n, m = 16, 6
    ids = [str(2000 + i) for i in range(n)]
    calls = rng.integers(0, 3, (m, n)).astype(np.int8)
    data = tmp_path / "data"
    data.mkdir()
    from bgen_files import Variant

    chrom, pos, names = ["1", "1", "2", "2", "3", "3"], [100 * (j + 1) for j in range(m)], [f"rs{j}" for j in range(m)]
    variants = [Variant(chrom[j], pos[j], names[j], diploid_probabilities(calls[j])) for j in range(m)]
    write_bgen(data / "imputed.bgen", variants, n)
    write_sample(data / "imputed.sample", ids)
    with pgenlib.PgenWriter(bytes(data / "called.pgen"), n, variant_ct=m, nonref_flags=False) as writer:
        writer.append_biallelic_batch(calls)
    write_pvar(data / "called.pvar", chrom, pos, names, "A" * m, "G" * m)
    write_psam(data / "called.psam", ids)
    pd.DataFrame({"eid": ids, "target": rng.random(n)}).to_csv(data / "participants.csv", index=False)
    kwargs = {
        "participants": "participants.csv",
        "modalities": {
            "imputed": {"adapter": "bgen", "path": "imputed.bgen", "grouping": "chromosome", "min_info": 0.5},
            "called": {"adapter": "pgen", "path": "called.pgen", "grouping": "snp"},
        },
        "targets": ["target"],
        "confounds": [],
        "cache_dir": tmp_path / "cache",
        "base_dir": data,
    }
    cohort, key = build_cached_cohort(**kwargs)
    assert build_cached_cohort(**kwargs)[1] == key  # unchanged inputs: the same cache entry
    assert list(cohort.modalities) == ["imputed", "called"]
    imputed, called = cohort.modalities["imputed"], cohort.modalities["called"]
    assert imputed.token_names == ["chr1", "chr2", "chr3"] and called.token_names == names
    np.testing.assert_array_equal(np.asarray(called.values)[:, :, 0], calls.T)  # subjects in participants order
    np.testing.assert_array_equal(np.asarray(imputed.values)[:, :, :2].reshape(n, m), calls.T)
    for name in ("imputed.sample", "called.psam", "called.pvar"):  # every file read is in the key
        path = data / name
        text = path.read_text()
        path.write_text(text + "\n")  # one more (blank) line: the same data, other bytes
        assert build_cached_cohort(**kwargs)[1] != key, name
        path.write_text(text)
    expected = {str(data / name) for name in ("called.pgen", "called.pvar", "called.psam")}
    for given in ("called", "called.pvar", "called.psam"):  # a prefix or any of the three files
        assert set(input_files("pgen", {"path": str(data / given)})) == expected
    assert input_files("bgen", {"path": str(data / "imputed.bgen")}) == [
        str(data / n) for n in ("imputed.bgen", "imputed.sample")
    ]


def test_psam_and_pvar_values_with_spaces_stay_in_their_column(tmp_path):
    # plink2 writes tab-separated files; a .psam column such as a centre name may hold a space
    path = tmp_path / "s.pgen"
    with pgenlib.PgenWriter(bytes(path), 4, variant_ct=3, nonref_flags=False) as writer:
        writer.append_biallelic_batch(np.array([[0, 1, 2, 0], [2, 2, 1, 0], [0, 0, 0, 1]], np.int8))
    path.with_suffix(".psam").write_text(
        "#FID\tIID\tSEX\tCENTRE\n" + "".join(f"F{i}\tS{i}\t1\t{'New York' if i else 'Leeds'}\n" for i in range(4))
    )
    rows = [("1", "10", "rs1", "A", "G"), ("2", "20", "rs2", "C", "T"), ("3", "30", "rs3", "G", "A")]
    path.with_suffix(".pvar").write_text(
        "#CHROM\tPOS\tID\tREF\tALT\tINFO\n" + "".join("\t".join(r) + "\tNOTE=a b\n" for r in rows)
    )
    modality = pgen(path, id_format="fid_iid")
    assert modality.subject_ids.tolist() == ["F0_S0", "F1_S1", "F2_S2", "F3_S3"]
    assert modality.source["token_features"] == {"chr1": ["rs1"], "chr2": ["rs2"], "chr3": ["rs3"]}
    np.testing.assert_array_equal(modality.values[:, :, 0], [[0, 2, 0], [1, 2, 0], [2, 1, 0], [0, 0, 1]])
    path.with_suffix(".psam").write_text("#IID SEX\nS0 1\n S1 2\nS2  1\nS3 2\n")  # no tab: split on whitespace
    assert pgen(path).subject_ids.tolist() == ["S0", "S1", "S2", "S3"]


def test_duplicated_variant_ids_are_kept_with_a_warning(tmp_path):
    path = tmp_path / "d.pgen"
    with pgenlib.PgenWriter(bytes(path), 4, variant_ct=3, nonref_flags=False) as writer:
        writer.append_biallelic_batch(np.array([[0, 1, 2, 0], [2, 2, 1, 0], [0, 0, 0, 1]], np.int8))
    write_psam(path.with_suffix(".psam"), ["a", "b", "c", "d"])
    write_pvar(path.with_suffix(".pvar"), ["1"] * 3, [10, 10, 20], ["rsD", "rsD", "rs2"], "AAC", "GTT")
    with pytest.warns(UserWarning, match=r"\(rsD x2\).*variant_id='position'"):
        assert pgen(path).source["token_features"] == {"chr1": ["rsD", "rsD", "rs2"]}
    with pytest.warns(UserWarning, match="1 of them are IDs of the variant list"):
        pgen(path, variants=["rsD"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modality = pgen(path, variant_id="position", grouping="snp")
    assert modality.token_names == ["1:10:A:G", "1:10:A:T", "1:20:C:T"]
