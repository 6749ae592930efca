"""Issue 13, adapters and cohort alignment: ID formats that do not match, repeated column names, atlases whose
labels do not fit 32 bits or whose table is not theirs, and modality names.

CLI cases follow ``tests/test_bad_inputs.py``: a data config pointing at edited copies of the demo files, run
through ``mot-neuro fit``; each must exit 2 with one line naming the file, column or modality, before anything
is cached or logged. Unit tests check what the CLI cannot see (the right numbers when a run goes on).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import DEMO_DATA, NO_LOGGER, Case, assert_refused

from data_adapters.brain import MAX_LABEL, read_atlas, region_statistics, regions_from_nifti
from data_adapters.cohort import DEFAULT_MIN_MATCH, build_cohort, diagnose_id_mismatch, id_style
from data_adapters.core import AdapterError, TokenizedModality
from data_adapters.tables import read_table
from mot_neuro.data.sources import build_cached_cohort, check_modality_names
from mot_neuro.names import MAX_NAME_LENGTH, MODULEDICT_ATTRIBUTES, check_names


# ====================================================================== helpers
def _config(case: Case, modalities: dict, **settings) -> Path:
    """A data config with exactly ``modalities`` (the demo's other modalities left out)."""
    path = case.data_config(**settings)
    config = yaml.safe_load(path.read_text())
    config["modalities"] = modalities
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _behaviour(path) -> dict:
    return {**DEMO_DATA["modalities"]["behaviour"], "path_or_df": str(path)}


def _demo_modalities(case: Case) -> dict:
    return copy.deepcopy(yaml.safe_load(case.data_config().read_text())["modalities"])


def _cache_entries(case: Case) -> set[str]:
    folder = case.demo.parent / "cache"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def refused(case: Case, data: Path, *expected: str, args=()) -> str:
    """Run fit on ``data``: exit 2, one line naming ``expected``, and nothing cached, split or tracked."""
    before = _cache_entries(case)
    status, err = case.run(*NO_LOGGER, *args, data=data)
    assert_refused(status, err, *expected)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert {n for n in _cache_entries(case) - before if n.startswith("cohort-")} == set(), "a cohort was cached"
    assert not case.path("splits.json").exists()
    assert not list(case.folder.glob("mlflow.db*")) and not case.path("mlruns").exists()
    return err


def _rewrite_ids(df: pd.DataFrame, how) -> pd.DataFrame:
    df = df.copy()
    df["eid"] = [how(i) for i in df["eid"]]
    return df


def _plink_with_ids(case: Case, how) -> Path:
    for ext in (".bed", ".bim"):
        case.write(f"geno{ext}", (case.demo / f"genotypes{ext}").read_bytes())
    fam = pd.read_csv(case.demo / "genotypes.fam", sep=" ", header=None, dtype=str)
    fam[0] = [how(i) for i in fam[0]]
    fam[1] = [how(i) for i in fam[1]]
    fam.to_csv(case.path("geno.fam"), sep=" ", header=False, index=False)
    return case.path("geno")


def _scientific(eid: str) -> str:
    return f"{int(eid):.5E}"  # what a spreadsheet shows, and writes back, for a 7-digit number


# ====================================================================== class 3: subject IDs that do not match
def test_leading_zeros_lost_in_behaviour(case):
    """Participants written with zero-padded IDs, behaviour.csv re-saved by a tool that dropped the zeros."""
    participants = case.csv("participants.csv", _rewrite_ids(case.participants, lambda i: "00" + i))
    data = _config(case, {"behaviour": _behaviour(case.demo / "behaviour.csv")}, participants=str(participants))
    err = refused(
        case,
        data,
        "modality 'behaviour'",
        str(case.demo / "behaviour.csv"),
        "0 of its 264 subjects",
        "'00#######' in participants",
        "'#######' in 'behaviour'",
        "participants IDs have leading zeros that the 'behaviour' IDs lack",
        "Write the IDs the same way in both files",
    )
    assert case.behaviour["eid"][0] not in err  # styles, not IDs


def test_leading_zeros_lost_in_participants(case):
    behaviour = case.csv("behaviour.csv", _rewrite_ids(case.behaviour, lambda i: "00" + i))
    data = case.data_config(modalities={"behaviour": _behaviour(behaviour)})
    refused(case, data, str(behaviour), "modality 'behaviour'", "'behaviour' IDs have leading zeros")


def test_ids_in_scientific_notation(case):
    behaviour = case.csv("behaviour.csv", _rewrite_ids(case.behaviour, _scientific))
    data = case.data_config(modalities={"behaviour": _behaviour(behaviour)})
    first = _scientific(case.behaviour["eid"][0])
    refused(case, data, str(behaviour), "column 'eid'", f"subject {first}", "scientific notation", "export the ID")


def test_scientific_notation_in_a_feature_table(case):
    table = case.csv("prs.csv", _rewrite_ids(case.feature_table(), _scientific))
    data = case.data_config(modalities={"gene": {"adapter": "feature_table", "path_or_df": str(table)}})
    refused(case, data, str(table), "column 'eid'", "scientific notation")


def test_a_few_ids_in_scientific_notation_among_plain_ones(case):
    """A spreadsheet rewrites only the IDs it takes for large numbers: even one is refused, not dropped quietly."""
    behaviour = case.behaviour.copy()
    behaviour.loc[3, "eid"] = _scientific(behaviour.loc[3, "eid"])
    table = case.csv("behaviour.csv", behaviour)
    refused(case, case.data_config(modalities={"behaviour": _behaviour(table)}), str(table), "1 of 264 IDs")


def test_a_bids_prefix_in_a_manifest(case):
    manifest = case.csv("manifest.csv", _rewrite_ids(case.manifest, lambda i: f"sub-{i}"))
    brain = {**_demo_modalities(case)["brain"], "manifest": str(manifest)}
    data = case.data_config(modalities={"brain": brain})
    refused(case, data, str(manifest), "modality 'brain'", "the 'brain' IDs carry the prefix 'sub-'")


def test_a_bids_prefix_in_participants(case):
    participants = case.csv("participants.csv", _rewrite_ids(case.participants, lambda i: f"sub-{i}"))
    data = _config(case, {"behaviour": _behaviour(case.demo / "behaviour.csv")}, participants=str(participants))
    refused(case, data, "modality 'behaviour'", "the participants IDs carry the prefix 'sub-'")


def test_plink_sample_ids_with_a_visit_suffix(case):
    gene = {**_demo_modalities(case)["gene"], "path": str(_plink_with_ids(case, lambda i: f"{i}_2"))}
    data = case.data_config(modalities={"gene": gene})
    refused(case, data, "geno.fam", "modality 'gene'", "with '_#' appended")


def test_a_modality_matching_40_percent_of_participants(case):
    kept = case.behaviour[case.behaviour["eid"].isin(case.participants["eid"][: int(0.4 * 300)])]
    behaviour = case.csv("behaviour.csv", kept)
    data = case.data_config(modalities={"behaviour": _behaviour(behaviour)})
    coverage = len(kept) / len(case.participants)
    refused(
        case,
        data,
        str(behaviour),
        "modality 'behaviour'",
        f"{len(kept)} of its {len(kept)} subjects (100%)",
        f"covering {coverage:.0%} of its 300 rows",
        "the IDs are written alike",
        f"min_match: {{behaviour: {np.floor(coverage * 20) / 20:g}}}",
    )


@pytest.mark.slow  # fits through the CLI
def test_min_match_in_the_data_config_accepts_a_partial_modality_and_mlflow_gets_the_counts(case):
    """The DataModule passes min_match on; the run logs how each modality matched, as counts."""
    import mlflow

    covered = case.participants["eid"][: int(0.4 * 300)]
    behaviour = case.csv("behaviour.csv", case.behaviour[case.behaviour["eid"].isin(covered)])
    data = case.data_config(modalities={"behaviour": _behaviour(behaviour)})
    # fast_dev_run (the debug trainer) replaces the logger: one short epoch instead
    fast = ("--trainer.fast_dev_run", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1")
    status, err = case.run("--data.min_match", "{behaviour: 0.3}", "--test_after_fit", "false", *fast, data=data)
    assert status == 0, err[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{case.path('mlflow.db')}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = run.data.params
    n_rows = int(case.behaviour["eid"].isin(covered).sum())
    assert params["cohort/behaviour/matched"] == str(n_rows)
    assert params["cohort/behaviour/participants_without"] == str(300 - n_rows)
    assert params["cohort/participants"] == "300"


def test_min_match_out_of_range_is_refused_before_reading(case):
    """The option itself is checked: a typo such as 50 (meaning 50%) must not silently accept everything."""
    with pytest.raises(AdapterError, match=r"min_match for 'behaviour' must be a fraction between 0 and 1, got 50"):
        build_cohort(
            case.demo / "participants.csv",
            {"behaviour": _tiny_modality(case.participants["eid"][:3])},
            targets=["target"],
            min_match={"behaviour": 50},
        )
    with pytest.raises(AdapterError, match=r"min_match names unknown modality\(ies\) \['behavior'\]"):
        build_cohort(
            case.demo / "participants.csv",
            {"behaviour": _tiny_modality(["1"])},
            targets=[],
            min_match={"behavior": 0.1},
        )


def _tiny_modality(ids, name="behaviour") -> TokenizedModality:
    ids = [str(i) for i in ids]
    return TokenizedModality(
        name=name,
        values=np.arange(len(ids), dtype=np.float32).reshape(-1, 1, 1),
        present=np.ones((len(ids), 1), dtype=bool),
        token_names=["x"],
        subject_ids=np.array(ids, dtype=object),
        source={"file": f"{name}.csv"},
    )


def test_partial_match_option_accepts_a_partial_modality(case):
    """build_cached_cohort (what the DataModule calls) takes min_match and the counts say what matched."""
    covered = case.participants["eid"][: int(0.4 * 300)]
    behaviour = case.csv("behaviour.csv", case.behaviour[case.behaviour["eid"].isin(covered)])
    modalities = {"behaviour": _behaviour(behaviour)}
    common = dict(
        participants=str(case.demo / "participants.csv"),
        modalities=modalities,
        targets=["target"],
        confounds=["age", "sex", "site"],
        cache_dir=case.path("cache"),
    )
    with pytest.raises(AdapterError, match="modality 'behaviour' matches few participants"):
        build_cached_cohort(**common)
    assert not list(case.path("cache").glob("cohort-*"))
    cohort, _ = build_cached_cohort(**common, min_match={"behaviour": 0.3})
    n_rows = int(case.behaviour["eid"].isin(covered).sum())
    counts = cohort.match_counts
    assert counts["behaviour/in_input"] == n_rows == counts["behaviour/matched"]
    assert counts["behaviour/participants_without"] == 300 - n_rows
    assert counts["behaviour/only_in_modality"] == 0
    assert counts["participants"] == 300 and counts["subjects"] == n_rows  # outer join, one modality
    assert all(isinstance(v, int) for v in counts.values())
    assert not any(str(i) in "".join(counts) for i in covered)  # counts, never IDs
    # a plain number applies to every modality
    cohort, _ = build_cached_cohort(**common, min_match=0.3)
    assert cohort.n_subjects == n_rows


def test_match_counts_survive_the_cache_and_count_dropped_subjects(case):
    behaviour = _rewrite_ids(case.behaviour, str)
    strangers = pd.DataFrame({"eid": ["9990001", "9990002"], **{c: 0 for c in behaviour.columns[1:]}})
    behaviour = case.csv("behaviour.csv", pd.concat([behaviour, strangers], ignore_index=True))
    modalities = _demo_modalities(case)
    modalities["behaviour"] = _behaviour(behaviour)
    kwargs = dict(
        participants=str(case.demo / "participants.csv"),
        modalities=modalities,
        targets=["target"],
        confounds=["age", "sex", "site"],
        cache_dir=case.path("cache"),
    )
    built, _ = build_cached_cohort(**kwargs)
    loaded, _ = build_cached_cohort(**kwargs)  # from the cache this time
    assert built.match_counts == loaded.match_counts
    counts = loaded.match_counts
    assert counts["behaviour/only_in_modality"] == 2
    assert counts["behaviour/in_input"] == counts["behaviour/matched"] + 2
    assert counts["gene/matched"] + counts["gene/only_in_modality"] == counts["gene/in_input"]


def test_data_level_id_column_reaches_every_adapter(case):
    """``id_column: subject`` once in the data config: participants, the behaviour table and the brain manifest
    are all read with it (no repetition per modality); a modality may still set its own."""
    renamed = {"eid": "subject"}
    participants = case.csv("participants.csv", case.participants.rename(columns=renamed))
    behaviour = case.csv("behaviour.csv", case.behaviour.rename(columns=renamed))
    manifest = case.csv("manifest.csv", case.manifest.rename(columns=renamed))
    modalities = _demo_modalities(case)
    modalities["behaviour"] = _behaviour(behaviour)
    modalities["brain"]["manifest"] = str(manifest)
    modalities["gene"] = {
        "adapter": "feature_table",
        "path_or_df": str(case.csv("prs.csv", case.feature_table())),
        "id_column": "eid",
    }  # its own
    cohort, _ = build_cached_cohort(
        participants=str(participants),
        modalities=modalities,
        targets=["target"],
        confounds=["age"],
        id_column="subject",
        cache_dir=case.path("cache"),
    )
    assert cohort.id_column == "subject" and cohort.match_counts["brain/matched"] == len(case.manifest)


def test_every_reader_keeps_ids_as_text(tmp_path):
    """IDs with leading zeros reach the cohort as written, and IDs a spreadsheet wrote in scientific notation stay
    visible as such (to be refused): never turned into floats (0123 -> 123.0, 1.00012E+06 -> 1000120)."""
    ids = ["0123", "1.00012E+06", "0042"]
    table = pd.DataFrame({"eid": ids, "x": [1.0, 2.0, 3.0]})
    for suffix, sep in ((".csv", ","), (".tsv", "\t"), (".csv.gz", ",")):
        path = tmp_path / f"t{suffix}"
        table.to_csv(path, sep=sep, index=False)
        df, _ = read_table(path)
        assert df["eid"].tolist() == ids
    from data_adapters.behaviour import measures_table
    from data_adapters.brain import _read_manifest
    from data_adapters.gene import feature_table

    ids = ["0123", "00042", "7"]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"eid": ids, "path": ["a", "b", "c"]}).to_csv(manifest, index=False)
    assert _read_manifest(manifest, id_column="eid", path_column="path", what="image")[0].tolist() == ids
    pd.DataFrame({"eid": ids, "x": [1.0, np.nan, 3.0]}).to_csv(tmp_path / "m.csv", index=False)
    assert measures_table(tmp_path / "m.csv").subject_ids.tolist() == ids
    assert feature_table(tmp_path / "m.csv").subject_ids.tolist() == ids
    with pytest.raises(AdapterError, match=r"t.csv.gz: column 'eid': subject 1.00012E\+06: ID written in scientific"):
        measures_table(tmp_path / "t.csv.gz")


def test_id_diagnosis_recognises_each_style():
    plain = [str(1000000 + i) for i in range(50)]
    assert "participants IDs have leading zeros" in diagnose_id_mismatch(["0" + i for i in plain], plain, "m")
    assert "'m' IDs have leading zeros" in diagnose_id_mismatch(plain, ["00" + i for i in plain], "m")
    assert "scientific notation" in diagnose_id_mismatch(plain, [_scientific(i) for i in plain], "m")
    assert "'m' IDs carry the prefix 'sub-'" in diagnose_id_mismatch(plain, ["sub-" + i for i in plain], "m")
    assert "with '_T#w' appended" in diagnose_id_mismatch(plain, [i + "_T1w" for i in plain], "m")
    assert "with '.nii' appended:" in diagnose_id_mismatch(plain, [i + ".nii" for i in plain], "m")
    assert "carry the suffix 'a'" in diagnose_id_mismatch(plain, [i + "a" for i in plain], "m")
    assert "upper/lower case" in diagnose_id_mismatch(["sub-a" + i for i in plain], ["SUB-A" + i for i in plain], "m")
    assert "no common writing" in diagnose_id_mismatch(plain, [str(5000000 + i) for i in range(50)], "m")
    assert id_style("sub-0042") == "sub-00##" and id_style("0") == "#"


def test_a_complete_match_and_a_subset_of_participants_pass(case):
    """The default threshold does not fire on ordinary cohorts: here every modality covers 88% (the demo)."""
    assert DEFAULT_MIN_MATCH == 0.5
    ids = case.participants["eid"].tolist()
    cohort = build_cohort(case.demo / "participants.csv", {"m": _tiny_modality(ids[:160], "m")}, targets=["target"])
    assert cohort.n_subjects == 160
    with pytest.raises(AdapterError, match=r"'m' matches few participants: 140 of its 140 subjects"):
        build_cohort(case.demo / "participants.csv", {"m": _tiny_modality(ids[:140], "m")}, targets=["target"])


# ====================================================================== class 4: repeated column names
def _repeat_column(df: pd.DataFrame, column: str, second: str | None = None) -> str:
    """CSV text of ``df`` with ``column`` appearing twice in the header (the second copy's values differ)."""
    copy_ = df[[column]].copy()
    if pd.api.types.is_numeric_dtype(copy_[column]):
        copy_[column] = copy_[column] * 2
    text = pd.concat([df, copy_], axis=1).to_csv(index=False)
    if second is not None:
        header, rest = text.split("\n", 1)
        text = header.rsplit(",", 1)[0] + "," + second + "\n" + rest
    return text


def test_a_repeated_target_in_participants(case):
    table = case.write("participants.csv", _repeat_column(case.participants, "target"))
    refused(case, case.data_config(participants=str(table)), str(table), "column 'target'", "names this column twice")


def test_a_repeated_column_that_differs_by_a_space(case):
    table = case.write("participants.csv", _repeat_column(case.participants, "target", second=" target"))
    refused(case, case.data_config(participants=str(table)), str(table), "column 'target'", "names this column twice")


def test_a_repeated_behaviour_measure(case):
    table = case.write("behaviour.csv", _repeat_column(case.behaviour, "memory"))
    data = case.data_config(modalities={"behaviour": _behaviour(table)})
    refused(case, data, str(table), "column 'memory'", "names this column twice")


def test_a_repeated_feature_column_in_a_tsv(case):
    table = case.write("prs.tsv", _repeat_column(case.feature_table(), "prs_b").replace(",", "\t"))
    data = case.data_config(modalities={"gene": {"adapter": "feature_table", "path_or_df": str(table)}})
    refused(case, data, str(table), "column 'prs_b'", "names this column twice")


def test_a_repeated_idp_column(case):
    from test_bad_inputs import _idps

    table = case.write("idps.csv", _repeat_column(_idps(case), "area_insula"))
    data = case.data_config(modalities={"brain": {"adapter": "idp_table", "path_or_df": str(table)}})
    refused(case, data, str(table), "column 'area_insula'", "names this column twice")


def test_a_repeated_manifest_path_column(case):
    manifest = case.manifest.copy()
    manifest["other"] = manifest["path"].str.replace(".nii.gz", "_2.nii.gz")
    manifest = case.write("manifest.csv", manifest.to_csv(index=False).replace("eid,path,other", "eid,path,path"))
    brain = {**_demo_modalities(case)["brain"], "manifest": str(manifest)}
    refused(
        case, case.data_config(modalities={"brain": brain}), str(manifest), "column 'path'", "names this column twice"
    )


def test_a_repeated_label_table_column(case):
    labels = pd.read_csv(case.demo / "atlas_labels.csv")
    table = case.write("labels.csv", _repeat_column(labels, labels.columns[-1]))
    brain = {**_demo_modalities(case)["brain"], "labels": str(table)}
    refused(case, case.data_config(modalities={"brain": brain}), str(table), f"column {labels.columns[-1]!r}")


def test_a_repeated_column_in_an_embeddings_parquet(case):
    import pyarrow as pa
    import pyarrow.parquet as pq

    eids = case.participants["eid"].tolist()
    table = pa.table(
        [pa.array(eids), pa.array(np.ones(len(eids))), pa.array(np.zeros(len(eids)))], names=["eid", "emb_0", "emb_0"]
    )
    path = case.path("emb.parquet")
    pq.write_table(table, path)
    data = case.data_config(modalities={"behaviour": {"adapter": "embeddings", "path_or_df": str(path)}})
    refused(case, data, str(path), "column 'emb_0'", "names this column twice")


def test_repeated_columns_in_other_tables_and_frames(tmp_path):
    regions = tmp_path / "regions.tsv"
    regions.write_text("name\tchrom\tstart\tend\tend\nG1\t1\t10\t20\t30\n")
    with pytest.raises(
        AdapterError, match=r"regions.tsv: column 'end': the region table's header names this column twice"
    ):
        read_table(regions, id_column=None, what="region table")
    frame = pd.DataFrame([[1, 2, 3]], columns=["eid", "x", "x"])
    with pytest.raises(AdapterError, match=r"column 'x'"):
        read_table(frame)
    lut = tmp_path / "labels.lut"
    lut.write_text("id name name\n1 a b\n")
    with pytest.raises(AdapterError, match=r"labels.lut: column 'name'"):
        read_atlas(_atlas_image(np.array([0, 1])), lut)


# ====================================================================== class 13: atlases
def _atlas_image(labels: np.ndarray, dtype=None) -> nib.Nifti1Image:
    data = np.resize(np.asarray(labels), (4, 4, 4))
    image = nib.Nifti1Image(data.astype(dtype or data.dtype), np.eye(4), dtype=dtype or data.dtype)
    return image


def _demo_atlas(case: Case, offset: int, name: str, dtype=np.int64) -> tuple[Path, pd.DataFrame]:
    """The demo atlas with every label shifted by ``offset`` (background stays 0), and its shifted table."""
    atlas = nib.load(case.demo / "atlas.nii.gz")
    labels = np.asarray(atlas.dataobj).astype(np.int64)
    shifted = np.where(labels > 0, labels + offset, 0).astype(dtype)
    path = case.path(name)
    nib.save(nib.Nifti1Image(shifted, atlas.affine, dtype=dtype), path)
    table = pd.read_csv(case.demo / "atlas_labels.csv")
    id_column = table.columns[0]
    table[id_column] = table[id_column].astype(np.int64) + offset
    return path, table


@pytest.mark.parametrize("power", [31, 32, 40], ids=lambda p: f"2^{p}")
def test_large_atlas_labels_are_named_exactly(case, power):
    """Labels from 2**31 on used to wrap to negative numbers: the message must name the true label."""
    atlas, table = _demo_atlas(case, 2**power, f"atlas{power}.nii.gz")
    short = case.csv("labels.csv", table.iloc[:-1])  # the atlas's last label is missing from the table
    missing = int(table.iloc[-1, 0])
    brain = {**_demo_modalities(case)["brain"], "atlas": str(atlas), "labels": str(short)}
    refused(case, case.data_config(modalities={"brain": brain}), str(atlas), f"[{missing}]", "not in the label table")


def test_a_label_beyond_the_supported_range(case):
    atlas, _ = _demo_atlas(case, 2**60, "atlas60.nii.gz")
    brain = {**_demo_modalities(case)["brain"], "atlas": str(atlas)}
    brain.pop("labels")
    refused(case, case.data_config(modalities={"brain": brain}), str(atlas), "above the largest supported label")


def test_a_float32_atlas_too_large_to_hold_labels(case):
    atlas, _ = _demo_atlas(case, 2**24, "atlas_f32.nii.gz", dtype=np.float32)
    brain = {**_demo_modalities(case)["brain"], "atlas": str(atlas)}
    brain.pop("labels")
    refused(case, case.data_config(modalities={"brain": brain}), str(atlas), "float32", "integer data type")


def test_large_labels_give_the_same_region_values(case):
    """The same atlas with labels shifted by 2**31 and 2**40 (int64 and float64 files) tokenizes identically."""
    image = case.manifest["path"].iloc[0]
    reference = region_statistics(image, read_atlas(case.demo / "atlas.nii.gz", case.demo / "atlas_labels.csv"))
    for offset, dtype in ((2**31, np.int64), (2**40, np.int64), (2**40, np.float64), (2**52, np.int64)):
        atlas, table = _demo_atlas(case, offset, "big.nii.gz", dtype=dtype)
        read = read_atlas(atlas, case.csv("big.csv", table))
        assert read.ids.min() > offset and read.labels.dtype == np.int64
        np.testing.assert_array_equal(region_statistics(image, read), reference)
    # on another grid too: the atlas is resampled, then its large labels must still be found
    moved = nib.load(image)
    smaller = nib.Nifti1Image(np.asarray(moved.dataobj)[::2, ::2, ::2], moved.affine @ np.diag([2, 2, 2, 1]))
    np.testing.assert_array_equal(
        region_statistics(smaller, read),
        region_statistics(smaller, read_atlas(case.demo / "atlas.nii.gz", case.demo / "atlas_labels.csv")),
    )
    assert MAX_LABEL == 2**53


@pytest.mark.parametrize("size", [768, 1024], ids=["mricron-768", "other-binary"])
def test_a_binary_colour_table(case, size):
    lut = case.write("atlas.lut", bytes(range(256)) * (size // 256))
    brain = {**_demo_modalities(case)["brain"], "labels": str(lut)}
    hint = "MRIcron's .lut" if size == 768 else "binary file"
    refused(case, case.data_config(modalities={"brain": brain}), str(lut), hint, "pass a text label table")


def test_a_binary_file_named_like_a_csv_label_table(case):
    table = case.write("labels.csv", b"\x00\x01\x02" * 300)
    brain = {**_demo_modalities(case)["brain"], "labels": str(table)}
    refused(case, case.data_config(modalities={"brain": brain}), str(table), "binary file")


def test_a_label_table_of_another_atlas(case):
    """Every atlas label is listed, but most of the table's labels are not in the atlas: another atlas's table."""
    table = pd.read_csv(case.demo / "atlas_labels.csv")
    id_column, name_column = table.columns[0], table.columns[1]
    extra = pd.DataFrame(
        {id_column: range(1000, 1000 + 3 * len(table)), name_column: [f"other_{i}" for i in range(3 * len(table))]}
    )
    bigger = case.csv("labels.csv", pd.concat([table, extra], ignore_index=True))
    brain = {**_demo_modalities(case)["brain"], "labels": str(bigger)}
    n_table, n_absent = 4 * len(table) - int((table[id_column] == 0).sum()), 3 * len(table)
    refused(
        case,
        case.data_config(modalities={"brain": brain}),
        str(bigger),
        str(case.demo / "atlas.nii.gz"),
        f"{n_absent} of the table's {n_table} labels have no voxel",
        "allow_unused_labels",
    )


def test_allow_unused_labels_accepts_a_generic_table(case):
    table = pd.read_csv(case.demo / "atlas_labels.csv")
    id_column, name_column = table.columns[0], table.columns[1]
    extra = pd.DataFrame({id_column: range(1000, 1100), name_column: [f"other_{i}" for i in range(100)]})
    bigger = case.csv("labels.csv", pd.concat([table, extra], ignore_index=True))
    manifest = case.csv("manifest.csv", case.manifest.iloc[:3])
    with pytest.raises(AdapterError, match="is it the table of another atlas"):
        regions_from_nifti(manifest, case.demo / "atlas.nii.gz", bigger)
    with pytest.warns(UserWarning, match="100 region"):
        accepted = regions_from_nifti(manifest, case.demo / "atlas.nii.gz", bigger, allow_unused_labels=True)
    plain = regions_from_nifti(manifest, case.demo / "atlas.nii.gz", case.demo / "atlas_labels.csv")
    assert accepted.token_names == plain.token_names
    np.testing.assert_array_equal(accepted.values, plain.values)


def test_label_ids_that_are_not_whole_numbers_or_too_large(tmp_path):
    image = _atlas_image(np.array([0, 1, 2]))
    for ids, hint in (([1, 2.5], "2.5"), ([1, 2**60], "above the largest supported label"), ([1, -2], "-2")):
        table = tmp_path / "labels.csv"
        pd.DataFrame({"id": ids, "name": ["a", "b"]}).to_csv(table, index=False)
        with pytest.raises(AdapterError, match="labels.csv: column 'id'") as err:
            read_atlas(image, table)
        assert hint in str(err.value)
    huge = tmp_path / "huge.txt"
    huge.write_text("1 a\n2 b\n340282366920938463463374607431768211456 c\n")  # 2**128: no int64, no traceback
    with pytest.raises(AdapterError, match="huge.txt: column 'id': row 3"):
        read_atlas(image, huge)


# ====================================================================== class 10: modality names
@pytest.mark.parametrize(
    "name, hint",
    [
        ("gene.v2", "letters, digits and '_'"),
        ("gene-v2", "letters, digits and '_'"),
        ("2gene", "starting with a letter"),
        ("_gene", "starting with a letter"),
        ("gène", "letters, digits and '_'"),
        ("training", "taken by torch.nn.ModuleDict"),
        ("x" * 300, "300 characters, more than 64"),
    ],
    ids=["dot", "dash", "leading-digit", "leading-underscore", "non-ascii", "training", "300-chars"],
)
def test_an_unusable_modality_name_is_refused_first(case, name, hint):
    """Checked when the data config is read: the participants file does not even exist here."""
    modalities = _demo_modalities(case)
    modalities[name] = modalities.pop("behaviour")
    data = _config(case, modalities, participants=str(case.path("not_there.csv")))
    err = refused(case, data, "modality name", hint)
    assert "not_there.csv" not in err


def test_modality_names_differing_only_in_case(case):
    modalities = _demo_modalities(case)
    modalities["Gene"] = modalities["gene"]
    refused(case, _config(case, modalities), "'gene' and 'Gene' differ only in case")


def test_the_name_rule_is_the_models():
    """One rule: what the data side accepts, the model accepts, and the reserved list matches torch's."""
    import torch.nn as nn

    from mot_neuro.model.layout import check_modality_names as model_check

    public = {n for n in dir(nn.ModuleDict()) if not n.startswith("_")}
    assert public <= MODULEDICT_ATTRIBUTES, sorted(public - MODULEDICT_ATTRIBUTES)
    for name in [
        "gene",
        "brain_2",
        "B",
        "x" * MAX_NAME_LENGTH,
        "gene.v2",
        "gene-v2",
        "2g",
        "_g",
        "values",
        "x" * (MAX_NAME_LENGTH + 1),
        "a b",
        "gene\n",
    ]:
        outcomes = []
        for check in (lambda n: check_names([n]), lambda n: model_check([n]), lambda n: check_modality_names({n: {}})):
            try:
                check(name)
                outcomes.append(True)
            except ValueError:
                outcomes.append(False)
        assert len(set(outcomes)) == 1, (name, outcomes)
    # the longest MLflow key built from names: two merged towers in an expert-load metric
    tower = "x" * MAX_NAME_LENGTH + "_" + "y" * MAX_NAME_LENGTH
    model_check([tower], what="tower")  # a merged tower of two longest names is accepted ...
    assert len(f"train/expert_load/block99.{tower}/e999") <= 250  # ... and its longest metric key fits MLflow's


def test_data_adapters_stay_free_of_torch():
    import subprocess
    import sys

    code = "import sys, data_adapters.cohort, data_adapters.tables, mot_neuro.names; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_text_label_tables_with_a_header_in_any_delimiter(tmp_path):
    """A headed label table named .txt/.lut/.ctab is read with its own delimiter (it used to be 'unknown format')."""
    image = _atlas_image(np.array([0, 1, 2]))
    for name, text in (
        ("spaces.txt", "id name\n1 a\n2 b\n"),
        ("commas.lut", "id,name\n1,a\n2,b\n"),
        ("tabs.ctab", "id\tname\n1\ta\n2\tb\n"),
    ):
        path = tmp_path / name
        path.write_text(text)
        assert read_atlas(image, path).names == ["a", "b"], name


def test_the_cohort_report_counts_matched_subjects(case):
    ids = case.participants["eid"].tolist()
    cohort = build_cohort(case.demo / "participants.csv", {"m": _tiny_modality(ids[:200], "m")}, targets=["target"])
    row = cohort.report().modalities.set_index("modality").loc["m"]
    assert row["matched participants"] == 200 == cohort.match_counts["m/matched"]
    assert cohort.match_counts["m/participants_without"] == len(ids) - 200


@pytest.mark.parametrize("key, hint", [("on", "True is a boolean"), ("7", "7 is a int")], ids=["yaml-on", "number"])
def test_a_modality_name_yaml_reads_as_something_else(case, key, hint):
    data = case.data_config()
    data.write_text(data.read_text().replace("  gene:\n", f"  {key}:\n", 1))
    refused(case, data, "modality name", hint, "quote it")


def test_trailing_separators_add_no_token_and_a_nameless_column_with_values_is_refused(case, caplog):
    """A spreadsheet export with trailing commas gave pandas "Unnamed: k" columns: tokens present in no subject."""
    from data_adapters.behaviour import measures_table

    text = (case.demo / "behaviour.csv").read_text().splitlines()
    trailing = case.write("trailing.csv", "\n".join(line + ",," for line in text) + "\n")
    with caplog.at_level(logging.WARNING, logger="data_adapters.tables"):
        modality = measures_table(trailing, name="behaviour", categorical=["handedness"])
    assert not any(str(t).startswith("Unnamed") for t in modality.token_names)
    assert modality.n_tokens == measures_table(case.demo / "behaviour.csv", categorical=["handedness"]).n_tokens
    assert "2 empty column(s) without a name" in caplog.text
    rows = [text[0] + ","] + [line + ",7" for line in text[1:]]  # a column with no name in the header
    with_values = case.write("nameless.csv", "\n".join(rows) + "\n")
    data = case.data_config(modalities={"behaviour": _behaviour(with_values)})
    refused(case, data, "nameless.csv", "has no name in the header but holds values")
