"""A corpus of bad inputs, every one through the command line.

The demo cohort is written once; each case breaks one input (a copy, or a data config that points at a broken
file in place of the demo one) and runs ``mot-neuro``. Every case must end with exit status 2 and at most three
lines on stderr that name the file, column or subject and what to fix, with no traceback (``MOT_NEURO_DEBUG=1``
shows one). Cases fail while the data is prepared, before any training, so the file runs in seconds.

What counts as missing rather than wrong, the same in every adapter: an empty cell or NaN is a missing value
(kept NaN, the token absent); an infinite value is an error naming the column and subject.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import CONFIGS, DEBUG_TRAINER, DEMO_DATA, EXPERIMENT, NO_LOGGER, Case, assert_refused, run_cli


# ====================================================================== NIfTI images and atlases
def _brain(case: Case, manifest: Path | None = None, **changes) -> dict:
    """The demo's brain modality (regions_from_nifti) on ``manifest`` (default: the demo's), with ``changes``."""
    return {
        **DEMO_DATA["modalities"]["brain"],
        "manifest": str(manifest or case.demo / "brain_manifest.csv"),
        "atlas": str(case.demo / "atlas.nii.gz"),
        "labels": str(case.demo / "atlas_labels.csv"),
        **{key: str(value) for key, value in changes.items()},
    }


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _first_scan(case: Case):
    import nibabel as nib

    image = nib.load(case.manifest["path"].iloc[0])
    return np.asarray(image.dataobj), image.affine.copy()


def _truncated_scan(case):
    raw = case.scan_bytes()
    return case.write("bad.nii.gz", raw[: len(raw) // 2]), "truncated or corrupt"


def _gzip_corrupt_scan(case):
    raw = bytearray(case.scan_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    return case.write("bad.nii.gz", bytes(raw)), "truncated or corrupt"


def _not_nifti(case):
    return case.write("bad.nii.gz", "subject scan to follow\n"), "not a NIfTI"


def _two_d_scan(case):
    data, affine = _first_scan(case)
    return _nifti(case.path("bad.nii.gz"), data[:, :, 0], affine), "need a 3-D or 4-D NIfTI image"


def _five_d_scan(case):
    data, affine = _first_scan(case)
    return _nifti(case.path("bad.nii.gz"), np.stack([data, data], axis=-1)[..., None], affine), "need a 3-D volume"


def _scan_elsewhere(case):
    data, affine = _first_scan(case)
    affine[:3, 3] += 5000  # a field of view far from the atlas's
    return _nifti(case.path("bad.nii.gz"), data, affine), "same space"


def _scan_with_infinity(case):
    data, affine = _first_scan(case)
    data = data.astype(np.float32)
    data[data.shape[0] // 2, data.shape[1] // 2, data.shape[2] // 2] = np.inf
    return _nifti(case.path("bad.nii.gz"), data, affine), "infinite voxel"


@pytest.mark.parametrize(
    "make",
    [
        _truncated_scan,
        _gzip_corrupt_scan,
        _not_nifti,
        _two_d_scan,
        _five_d_scan,
        _scan_elsewhere,
        _scan_with_infinity,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_broken_scan_names_its_file_and_subject(case, make):
    image, hint = make(case)
    data = case.data_config(modalities={"brain": _brain(case, case.manifest_with_first_scan(image))})
    assert_refused(*case.run(data=data), str(image), f"subject {case.first_scan_subject}", hint)


def test_a_scan_missing_from_its_manifest(case):
    missing = case.path("scans/gone.nii.gz")
    brain = _brain(case, case.manifest_with_first_scan(missing))
    status, err = case.run(data=case.data_config(modalities={"brain": brain}))
    assert_refused(status, err, str(missing), f"subject {case.first_scan_subject}", "missing_files='absent'")


def test_an_atlas_that_does_not_overlap_the_images(case):
    import nibabel as nib

    atlas = nib.load(case.demo / "atlas.nii.gz")
    affine = atlas.affine.copy()
    affine[:3, 3] -= 5000
    moved = _nifti(case.path("atlas.nii.gz"), np.asarray(atlas.dataobj), affine)
    brain = _brain(case, atlas=moved)
    status, err = case.run(data=case.data_config(modalities={"brain": brain}))
    assert_refused(status, err, "atlas.nii.gz", "no atlas region falls inside this image", "same space")


def test_a_four_d_atlas_is_refused(case):
    import nibabel as nib

    atlas = nib.load(case.demo / "atlas.nii.gz")
    labels = np.asarray(atlas.dataobj)
    four_d = _nifti(case.path("atlas4d.nii.gz"), np.stack([labels, labels], axis=-1), atlas.affine)
    brain = _brain(case, atlas=four_d)
    status, err = case.run(data=case.data_config(modalities={"brain": brain}))
    assert_refused(status, err, str(four_d), "3-D label image", "deterministic atlas")


def test_a_label_table_of_another_atlas(case):
    labels = pd.read_csv(case.demo / "atlas_labels.csv").iloc[:-3]  # three regions of the image are not listed
    table = case.csv("labels.csv", labels)
    brain = _brain(case, labels=table)
    status, err = case.run(data=case.data_config(modalities={"brain": brain}))
    assert_refused(status, err, "atlas.nii.gz", str(table), "not in the label table")


@pytest.mark.parametrize("content", ["", "eid,path\n"], ids=["empty", "header-only"])
def test_an_empty_manifest(case, content):
    manifest = case.write("manifest.csv", content)
    brain = _brain(case, manifest)
    status, err = case.run(data=case.data_config(modalities={"brain": brain}))
    assert_refused(status, err, str(manifest), "header only?" if content else "empty")
    assert ":  " not in err  # no hole where a word is missing


# ====================================================================== tables: participants, behaviour, features
@pytest.mark.parametrize(
    "content, hint",
    [("", "is empty (no header, no rows)"), (None, "no rows (header only?)")],
    ids=["empty", "header-only"],
)
@pytest.mark.parametrize("table", ["participants", "behaviour", "feature_table"])
def test_empty_tables(case, table, content, hint):
    header = {
        "participants": "eid,age,sex,site,target,diagnosis\n",
        "behaviour": "eid,memory,reaction_time,vocabulary,mood,handedness\n",
        "feature_table": "eid,prs_a,prs_b\n",
    }[table]
    path = case.write(f"{table}.csv", header if content is None else content)
    if table == "participants":
        data = case.data_config(participants=str(path))
    elif table == "behaviour":
        data = case.data_config(
            modalities={"behaviour": {**DEMO_DATA["modalities"]["behaviour"], "path_or_df": str(path)}}
        )
    else:
        data = case.data_config(modalities={"gene": {"adapter": "feature_table", "path_or_df": str(path)}})
    assert_refused(*case.run(data=data), str(path), hint)


def _duplicated_row(df: pd.DataFrame, row: int) -> pd.DataFrame:
    return pd.concat([df, df.iloc[[row]]], ignore_index=True)


def test_duplicate_ids_in_participants(case):
    table = case.csv("participants.csv", _duplicated_row(case.participants, 3))
    status, err = case.run(data=case.data_config(participants=str(table)))
    assert_refused(status, err, str(table), "column 'eid'", "duplicated subject ID", case.participants["eid"][3])


def test_duplicate_ids_in_a_modality_table(case):
    table = case.csv("behaviour.csv", _duplicated_row(case.behaviour, 5))
    behaviour = {**DEMO_DATA["modalities"]["behaviour"], "path_or_df": str(table)}
    status, err = case.run(data=case.data_config(modalities={"behaviour": behaviour}))
    assert_refused(status, err, str(table), "duplicated subject ID", case.behaviour["eid"][5])


def test_duplicate_ids_in_a_feature_table(case):
    table = case.csv("prs.csv", _duplicated_row(case.feature_table(), 2))
    status, err = case.run(
        data=case.data_config(modalities={"gene": {"adapter": "feature_table", "path_or_df": str(table)}})
    )
    assert_refused(status, err, str(table), "duplicated subject ID", case.participants["eid"][2])


@pytest.mark.parametrize(
    "value, hint",
    [("-inf", "infinite"), ("12,5", "mixed numbers and text"), ("n/a ", "mixed numbers and text")],
    ids=["minus-inf", "decimal-comma", "text"],
)
def test_bad_values_in_a_behaviour_measure(case, value, hint):
    table = case.csv("behaviour.csv", case.with_text(case.behaviour, "memory", 7, value))
    behaviour = {**DEMO_DATA["modalities"]["behaviour"], "path_or_df": str(table)}
    status, err = case.run(data=case.data_config(modalities={"behaviour": behaviour}))
    assert_refused(status, err, str(table), "column 'memory'", f"subject {case.behaviour['eid'][7]}", hint)


@pytest.mark.parametrize(
    "value, hint", [("inf", "infinite value"), ("abc", "non-numeric value 'abc'")], ids=["inf", "text"]
)
def test_bad_values_in_a_feature_table(case, value, hint):
    table = case.csv("prs.csv", case.with_text(case.feature_table(), "prs_a", 4, value))
    status, err = case.run(
        data=case.data_config(modalities={"gene": {"adapter": "feature_table", "path_or_df": str(table)}})
    )
    assert_refused(status, err, str(table), "column 'prs_a'", f"subject {case.participants['eid'][4]}", hint)


@pytest.mark.parametrize(
    "column, value, hint",
    [
        ("target", "high", "target column holds text"),
        ("target", "inf", "infinite"),
        ("age", "inf", "infinite"),
        ("age", "sixty", "confound column mixes numbers and text"),
    ],
    ids=["text-target", "inf-target", "inf-confound", "text-in-numeric-confound"],
)
def test_bad_values_in_participants(case, column, value, hint):
    row = int(np.flatnonzero(case.participants["eid"].isin(case.manifest["eid"]))[0])  # a subject with data
    table = case.csv("participants.csv", case.with_text(case.participants, column, row, value))
    status, err = case.run(data=case.data_config(participants=str(table)))
    subject = case.participants["eid"][row]
    assert_refused(status, err, str(table), f"column {column!r}", f"subject {subject}", hint)


def test_a_target_missing_from_participants(case):
    status, err = case.run("--data.targets", "[iq]", data=case.data_config())
    assert_refused(status, err, "participants.csv", "column 'iq'", "target column not in participants")


def test_nan_is_a_missing_value_not_an_error(case):
    """NaN in a behaviour measure and a feature table: the run goes on, those tokens are absent."""
    behaviour = case.csv("behaviour.csv", case.with_text(case.behaviour, "memory", 7, "NaN"))
    features = case.feature_table()
    features.loc[4, "prs_a"] = np.nan
    prs = case.csv("prs.csv", features)
    data = case.data_config(
        modalities={
            "gene": {"adapter": "feature_table", "path_or_df": str(prs)},
            "behaviour": {**DEMO_DATA["modalities"]["behaviour"], "path_or_df": str(behaviour)},
        }
    )
    cli = run_cli(
        *("fit", "--config", EXPERIMENT, "--trainer", DEBUG_TRAINER, "--data", data),
        *("--trainer.logger", "false", "--test_after_fit", "false"),
    )
    assert cli.trainer.state.finished
    cohort = cli.datamodule.cohort
    ids = list(cohort.subject_ids)
    for modality, token, subject in (
        ("behaviour", "memory", case.behaviour["eid"][7]),
        ("gene", "prs_a", case.participants["eid"][4]),
    ):
        tokens = cohort.modalities[modality].token_names
        assert not cohort.modalities[modality].present[ids.index(subject), tokens.index(token)]


# ====================================================================== genotypes
def _plink_copy(case: Case, prefix: str) -> Path:
    for ext in (".bed", ".bim", ".fam"):
        shutil.copy(case.demo / f"genotypes{ext}", case.path(f"{prefix}{ext}"))
    return case.path(prefix)


def _gene(path: Path) -> dict:
    return {**DEMO_DATA["modalities"]["gene"], "path": str(path)}


def test_a_bed_whose_size_disagrees_with_bim_and_fam(case):
    prefix = _plink_copy(case, "geno")
    bed = prefix.with_suffix(".bed")
    bed.write_bytes(bed.read_bytes()[:-7])
    status, err = case.run(data=case.data_config(modalities={"gene": _gene(prefix)}))
    assert_refused(status, err, str(bed), "geno.fam", "geno.bim", "truncated or belongs to other .bim/.fam")


def test_a_bim_with_one_variant_more(case):
    prefix = _plink_copy(case, "geno")
    bim = prefix.with_suffix(".bim")
    bim.write_text(bim.read_text() + "4\trs_extra\t0\t99999999\tA\tG\n")
    status, err = case.run(data=case.data_config(modalities={"gene": _gene(prefix)}))
    assert_refused(status, err, "geno.bed", "401 variants in geno.bim")


def test_a_fam_with_samples_removed(case):
    # one sample more or less can fit the same bytes (4 samples a byte): two fewer cannot
    prefix = _plink_copy(case, "geno")
    fam = prefix.with_suffix(".fam")
    lines = fam.read_text().splitlines()
    fam.write_text("\n".join(lines[:-2]) + "\n")
    status, err = case.run(data=case.data_config(modalities={"gene": _gene(prefix)}))
    assert_refused(status, err, "geno.bed", f"{len(lines) - 2} samples in geno.fam")


def test_a_fam_with_duplicate_iids(case):
    prefix = _plink_copy(case, "geno")
    fam = prefix.with_suffix(".fam")
    lines = fam.read_text().splitlines()
    first_iid = lines[0].split()[1]
    fields = lines[1].split()
    fields[0] = fields[1] = first_iid
    lines[1] = " ".join(fields)
    fam.write_text("\n".join(lines) + "\n")
    status, err = case.run(data=case.data_config(modalities={"gene": _gene(prefix)}))
    assert_refused(status, err, str(fam), "column 'IID'", "duplicated subject ID", first_iid)


def test_a_bed_that_is_not_plink(case):
    prefix = _plink_copy(case, "geno")
    bed = prefix.with_suffix(".bed")
    bed.write_text("chr1\t100\t200\tpeak1\n")  # a UCSC BED file under the same extension
    status, err = case.run(data=case.data_config(modalities={"gene": _gene(prefix)}))
    assert_refused(status, err, str(bed), "not a PLINK 1 binary .bed", "plink --make-bed")


VCF_HEADER = (
    "##fileformat=VCFv4.2\n##contig=<ID=1>\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{samples}\n"
)


@pytest.mark.parametrize(
    "body, hint",
    [(None, "could not open it as VCF"), ("1\t100\trs1\tA\n", "could not read the first record")],
    ids=["not-vcf", "short-record"],
)
def test_a_broken_vcf(case, body, hint):
    pytest.importorskip("cyvcf2")
    samples = "\t".join(case.participants["eid"][:3])
    text = "variants to come\n" if body is None else VCF_HEADER.format(samples=samples) + body
    path = case.write("calls.vcf", text)
    status, err = case.run(data=case.data_config(modalities={"gene": {"adapter": "vcf", "path": str(path)}}))
    assert_refused(status, err, str(path), hint)


# ====================================================================== IDP tables, connectivity, embeddings
def _idps(case: Case) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    eids = case.participants["eid"]
    columns = {f"{m}_{r}": rng.normal(size=len(eids)) for m in ("thickness", "area") for r in ("insula", "cuneus")}
    return pd.DataFrame({"eid": eids, **columns})


def test_an_idp_column_that_does_not_parse(case):
    idps = _idps(case)
    idps["eTIV"] = 1.5e6
    table = case.csv("idps.csv", idps)
    status, err = case.run(
        data=case.data_config(modalities={"brain": {"adapter": "idp_table", "path_or_df": str(table)}})
    )
    assert_refused(status, err, str(table), "['eTIV']", "exclude=")


def test_text_in_an_idp_measure(case):
    table = case.csv("idps.csv", case.with_text(_idps(case), "area_insula", 2, "12,5"))
    status, err = case.run(
        data=case.data_config(modalities={"brain": {"adapter": "idp_table", "path_or_df": str(table)}})
    )
    assert_refused(status, err, str(table), "column 'area_insula'", f"subject {case.participants['eid'][2]}")


@pytest.mark.parametrize(
    "matrix, hint",
    [(np.ones((4, 3)), "square region x region matrix"), (np.diag([1.0, np.inf, 1.0, 1.0]), "infinite value")],
    ids=["not-square", "inf"],
)
def test_a_bad_connectivity_matrix(case, matrix, hint):
    eids = case.participants["eid"][:3].tolist()
    folder = case.path("conn")
    folder.mkdir()
    paths = []
    for i, eid in enumerate(eids):
        np.save(folder / f"{eid}.npy", matrix if i == 0 else np.eye(4))
        paths.append(str(folder / f"{eid}.npy"))
    manifest = case.csv("conn.csv", pd.DataFrame({"eid": eids, "path": paths}))
    status, err = case.run(
        data=case.data_config(modalities={"brain": {"adapter": "connectivity_matrices", "source": str(manifest)}})
    )
    assert_refused(status, err, paths[0], f"subject {eids[0]}", hint)


@pytest.mark.parametrize(
    "shape, n_ids, hint",
    [((10, 2, 3, 4), 10, "must be [N, D] or [N, T, D]"), ((10, 8), 9, "10 rows but 9 subject IDs")],
    ids=["4-d", "ids-disagree"],
)
def test_bad_embeddings(case, shape, n_ids, hint):
    array = case.path("emb.npy")
    np.save(array, np.zeros(shape, dtype=np.float32))
    np.save(case.path("emb_ids.npy"), np.asarray(case.participants["eid"][:n_ids], dtype=str))
    spec = {"adapter": "embeddings", "path_or_df": str(array), "ids": str(case.path("emb_ids.npy"))}
    status, err = case.run(data=case.data_config(modalities={"behaviour": spec}))
    assert_refused(status, err, str(array), hint)


# ====================================================================== configuration mistakes
def test_an_unknown_adapter(case):
    gene = {**DEMO_DATA["modalities"]["gene"], "adapter": "plinkk", "path": str(case.demo / "genotypes")}
    status, err = case.run(data=case.data_config(modalities={"gene": gene}))
    assert_refused(status, err, "modality 'gene'", "unknown adapter 'plinkk'", "'plink'")


def test_a_misspelt_adapter_argument(case):
    gene = {"adapter": "plink", "path": str(case.demo / "genotypes"), "grouppping": "chromosome"}
    status, err = case.run(data=case.data_config(modalities={"gene": gene}))
    assert_refused(status, err, "modality 'gene'", "['grouppping']", "'grouping'")


def test_a_modality_without_an_adapter(case):
    status, err = case.run(data=case.data_config(modalities={"gene": {"path": str(case.demo / "genotypes")}}))
    assert_refused(status, err, "modality 'gene'", "'adapter'")


def test_a_missing_participants_file(case):
    status, err = case.run(data=case.data_config(participants=str(case.path("nowhere.csv"))))
    assert_refused(status, err, "nowhere.csv", "participants table not found")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trainr.max_epochs", "1"], ["--trainr.max_epochs", "--help"]),
        (["--data.bach_size", "4"], ["--data.bach_size", "--help"]),
        (["--model.dimm", "8"], ["--model.dimm", "--help"]),
        (["--data.batch_size", "many"], ["data.batch_size", "many"]),
        (["--model.objective", "supervize"], ["supervize", "supervised"]),
    ],
    ids=["top-level-key", "data-key", "model-key", "data-value-type", "model-value"],
)
def test_config_typos_on_the_command_line(case, args, expected):
    assert_refused(*case.run(*args, data=case.data_config()), *expected)


def test_a_typo_in_a_data_config_file(case):
    data = case.data_config(bach_size=4)
    assert_refused(*case.run(data=data), "bach_size")


@pytest.mark.parametrize("where", ["experiment", "model"])
def test_a_typo_in_an_experiment_or_model_file(case, where):
    model, seed_key = CONFIGS / "model" / "mot.yaml", "seed_everything"
    if where == "model":
        model, key = case.write("model.yaml", model.read_text().replace("untie:", "untied:")), "model.encoder.untied"
    else:
        seed_key = key = "seed_everythin"
    experiment = case.write(
        "experiment.yaml", f"{seed_key}: 0\ndata: {case.data_config()}\nmodel: {model}\ntrainer: {DEBUG_TRAINER}\n"
    )
    assert_refused(*case.main("fit", "--config", str(experiment)), f"does not accept option '{key}'", "--help")


def test_a_data_config_that_does_not_exist(case):
    assert_refused(*case.run(data=case.path("my_cohort.yaml")), "my_cohort.yaml")


@pytest.mark.parametrize("command", ["validate", "predict"])  # test: see the checkpoint cases
def test_every_lightning_command_reports_bad_data_the_same_way(case, command):
    table = case.csv("participants.csv", _duplicated_row(case.participants, 3))
    status, err = case.run(command=command, data=case.data_config(participants=str(table)))
    assert_refused(status, err, f"mot-neuro {command}: error:", str(table), "duplicated subject ID")


# ====================================================================== checkpoints
@pytest.mark.parametrize(
    "data_args, hint",
    [
        (["--data.drop_modalities", "[brain]"], "brain: (tokens, features) (20, 1) in the checkpoint, (0, 1) now"),
        ({"gene": {"adapter": "plink", "grouping": "snp"}}, "gene: (tokens, features) (4, 100) in the checkpoint"),
    ],
    ids=["modality-dropped", "gene-tokens-changed"],
)
def test_a_checkpoint_from_another_layout(case, demo_checkpoint, data_args, hint):
    if isinstance(data_args, dict):  # another tokenization of the same files
        gene = {**data_args["gene"], "path": str(case.demo / "genotypes")}
        data, data_args = case.data_config(modalities={"gene": gene}), []
    else:
        data = case.data_config()
    status, err = case.run("--ckpt_path", demo_checkpoint, *data_args, *NO_LOGGER, command="test", data=data)
    assert_refused(status, err, "checkpoint was trained on another token layout", hint)


@pytest.mark.parametrize("kind", ["truncated", "not-a-checkpoint"])
def test_an_unreadable_checkpoint(case, demo_checkpoint, kind):
    raw = demo_checkpoint.read_bytes()
    broken = case.write("model.ckpt", raw[: len(raw) // 2] if kind == "truncated" else b"weights: none\n" * 20)
    status, err = case.run("--ckpt_path", broken, command="test", data=case.data_config())
    assert_refused(status, err, str(broken), "not a readable checkpoint")


def test_embed_with_an_unreadable_checkpoint(case):
    broken = case.write("model.ckpt", b"\x00" * 100)
    status, err = case.main("embed", "--config", str(EXPERIMENT), "--ckpt_path", str(broken))
    assert_refused(status, err, "mot-neuro embed: error:", str(broken), "not a readable checkpoint")


def test_a_checkpoint_that_does_not_exist(case):
    status, err = case.run("--ckpt_path", case.path("nope.ckpt"), *NO_LOGGER, command="test", data=case.data_config())
    assert_refused(status, err, "nope.ckpt", "not found")


# ====================================================================== the installed console script
@pytest.mark.slow  # two processes of its own
def test_the_console_script_exits_2_and_shows_a_traceback_only_in_debug_mode(case):
    script = Path(sys.executable).parent / "mot-neuro"
    if not script.is_file():
        pytest.skip("the mot-neuro console script is not installed in this environment")
    raw = case.scan_bytes()
    image = case.write("cut.nii.gz", raw[: len(raw) // 3])
    brain = _brain(case, case.manifest_with_first_scan(image))
    data = case.data_config(modalities={"brain": brain})
    argv = [str(script), "fit", "--config", str(EXPERIMENT), "--trainer", str(DEBUG_TRAINER), "--data", str(data)]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MOT_NEURO_DEBUG")}

    done = subprocess.run(argv, cwd=case.folder, env=env, capture_output=True, text=True, timeout=300)
    assert_refused(done.returncode, done.stderr, str(image), f"subject {case.first_scan_subject}")

    debug = subprocess.run(
        argv, cwd=case.folder, env={**env, "MOT_NEURO_DEBUG": "1"}, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode not in (0, 2)
    assert "Traceback" in debug.stderr and "AdapterError" in debug.stderr
