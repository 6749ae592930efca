"""BIDS datasets as region tokens: images found by entities (sessions chosen, ambiguity refused), values against
a direct reading of the files, the listing against nilearn's own BIDS query on nilearn's fake fMRIPrep
dataset, bad datasets, and a cohort built from a data config with a BIDS and a FreeSurfer modality."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from freesurfer_files import write_subjects_dir

from data_adapters.bids import bids_files, bids_manifest, parse_bids_name, regions_from_bids
from data_adapters.core import AdapterError
from data_adapters.registry import input_files

SUBJECTS = ["sub-01", "sub-02", "sub-03"]


def small_atlas(folder: Path) -> Path:
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[:2] = 1
    labels[2:, :2] = 2
    labels[2:, 2:] = 3
    path = folder / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    return path


def save_image(path: Path, rng: np.random.Generator) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.normal(size=(4, 4, 4)).astype(np.float32), np.eye(4)), path)
    return path


def direct_means(path: Path, atlas: Path) -> list[float]:
    """Region means of an image read straight from the files, region by region."""
    data = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    labels = np.asarray(nib.load(atlas).dataobj)
    return [float(data[labels == value].mean()) for value in (1, 2, 3)]


def write_dataset(root: Path, subjects=SUBJECTS, sessions=("1", "2"), seed=0) -> Path:
    """A raw BIDS dataset: participants.tsv, anat T1w per session, a rest bold per session, and a
    derivatives-style preprocessed T1w (space, desc) beside it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"participant_id": list(subjects), "age": np.arange(len(subjects)) + 30.0}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    (root / "dataset_description.json").write_text('{"Name": "test", "BIDSVersion": "1.9.0"}')
    for subject in subjects:
        for ses in sessions:
            anat = root / subject / f"ses-{ses}" / "anat"
            save_image(anat / f"{subject}_ses-{ses}_T1w.nii.gz", rng)
            save_image(anat / f"{subject}_ses-{ses}_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz", rng)
            (anat / f"{subject}_ses-{ses}_T1w.json").write_text("{}")
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "bids")


def test_manifest_lists_the_image_of_each_participant_for_the_chosen_entities(dataset):
    table = bids_manifest(dataset, session="2", suffix="T1w", desc=False)
    assert table["participant_id"].tolist() == SUBJECTS
    assert [Path(p).name for p in table["path"]] == [f"{s}_ses-2_T1w.nii.gz" for s in SUBJECTS]
    assert table["ses"].tolist() == ["2"] * 3 and table["suffix"].tolist() == ["T1w"] * 3
    preproc = bids_manifest(dataset, session="1", space="MNI152NLin2009cAsym", desc="preproc")
    assert [Path(p).name for p in preproc["path"]] == [
        f"{s}_ses-1_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz" for s in SUBJECTS
    ]


def test_region_values_equal_a_direct_reading_of_the_chosen_session(dataset):
    atlas = small_atlas(dataset.parent)
    modality = regions_from_bids(dataset, atlas, session="2", desc="preproc", suffix="T1w", statistics=["mean"])
    assert modality.subject_ids.tolist() == SUBJECTS  # the sub- prefix kept: participant_id as written
    assert modality.token_names == ["label_1", "label_2", "label_3"]
    for row, subject in enumerate(SUBJECTS):
        image = (
            dataset / subject / "ses-2" / "anat" / f"{subject}_ses-2_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz"
        )
        np.testing.assert_allclose(modality.values[row, :, 0], direct_means(image, atlas), rtol=1e-6)
    other = regions_from_bids(dataset, atlas, session="1", desc="preproc", suffix="T1w")
    assert not np.allclose(other.values, modality.values)  # the session changes which file is read
    assert modality.source["adapter"] == "brain.regions_from_bids"
    assert modality.source["query"] == {"ses": "2", "desc": "preproc", "suffix": "T1w"}
    assert modality.source["images"] == 3 and modality.source["missing_files"] == 0


def test_several_matches_are_an_error_naming_subject_files_and_what_differs(dataset):
    with pytest.raises(AdapterError) as err:
        bids_manifest(dataset, suffix="T1w", desc="preproc")
    message = str(err.value)
    assert "subject sub-01: 2 images match desc='preproc', suffix='T1w'" in message
    assert "sub-01_ses-1_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz" in message
    assert "they differ in ses 1/2: choose one with session=" in message and "\n" not in message
    with pytest.raises(AdapterError, match=r"subject sub-01: 2 images match ses='1', suffix='T1w'.* differ in"
                       r" space \(absent\)/MNI152NLin2009cAsym, desc \(absent\)/preproc"):  # fmt: skip
        regions_from_bids(dataset, small_atlas(dataset.parent), session="1", suffix="T1w")
    save_image(dataset / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii", np.random.default_rng(1))
    with pytest.raises(AdapterError, match=r"subject sub-02: 2 images .* differ in extension .nii/.nii.gz"):
        bids_manifest(dataset, session="1", suffix="T1w", desc=False)


def test_numbers_match_numeric_labels_and_false_means_absent(tmp_path):
    root = write_dataset(tmp_path / "bids", subjects=["sub-01"], sessions=("01",))
    rng = np.random.default_rng(2)
    func = root / "sub-01" / "ses-01" / "func"
    for run in ("01", "02"):
        save_image(func / f"sub-01_ses-01_task-rest_run-{run}_bold.nii.gz", rng)
    save_image(func / "sub-01_ses-01_task-rest_acq-mb4_run-01_bold.nii.gz", rng)
    plain = bids_manifest(root, session=1, task="rest", run=1, acq=False, suffix="bold")  # YAML: session: 01 -> 1
    assert Path(plain["path"][0]).name == "sub-01_ses-01_task-rest_run-01_bold.nii.gz"
    mb = bids_manifest(root, session="01", task="rest", run="1", acq="mb4", suffix="bold")
    assert Path(mb["path"][0]).name == "sub-01_ses-01_task-rest_acq-mb4_run-01_bold.nii.gz"
    with pytest.raises(AdapterError, match=r"differ in acq mb4/\(absent\), run 01/02: choose one with acq=, run="):
        bids_manifest(root, task="rest", suffix="bold")
    assert bids_manifest(root, entities={"acq": "mb4"}, suffix="bold")["acq"].tolist() == ["mb4"]
    assert bids_manifest(root, session="1", suffix="T1w", desc=False).empty  # "1" is not "01" as a label
    with pytest.raises(AdapterError, match=r"entity 'task': 'rest_1' is not a BIDS label"):
        bids_manifest(root, task="rest_1")


def test_participants_without_an_image_are_an_error_or_absent(dataset):
    atlas = small_atlas(dataset.parent)
    participants = pd.read_csv(dataset / "participants.tsv", sep="\t")
    participants.loc[len(participants)] = ["sub-04", 50.0]
    participants.to_csv(dataset / "participants.tsv", sep="\t", index=False)
    with pytest.raises(
        AdapterError, match=r"subject sub-04: no image matches ses='1', desc=False, suffix='T1w' \(1 of 4"
    ):
        regions_from_bids(dataset, atlas, session="1", suffix="T1w", desc=False)
    modality = regions_from_bids(dataset, atlas, session="1", suffix="T1w", desc=False, missing_files="absent")
    assert modality.subject_ids.tolist() == [*SUBJECTS, "sub-04"]
    assert modality.present.tolist() == [[True] * 3] * 3 + [[False] * 3]
    assert modality.source["missing_files"] == 1
    image = dataset / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz"
    np.testing.assert_allclose(modality.values[2, :, 0], direct_means(image, atlas), rtol=1e-6)
    # a DataLad dataset whose file content is not fetched: the image is a link to nothing
    unfetched = dataset / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz"
    unfetched.unlink()
    unfetched.symlink_to("../../../.git/annex/objects/XX/SHA256E-s1--0.nii.gz")
    with pytest.raises(AdapterError, match=r"sub-02_ses-1_T1w.nii.gz: subject sub-02: the image is a link to nothing"):
        regions_from_bids(dataset, atlas, session="1", suffix="T1w", desc=False)
    modality = regions_from_bids(dataset, atlas, session="1", suffix="T1w", desc=False, missing_files="absent")
    assert modality.present.any(axis=1).tolist() == [True, False, True, False]
    assert modality.source["missing_files"] == 2
    assert unfetched not in bids_files(dataset, {"session": "1", "suffix": "T1w", "desc": False})
    with pytest.raises(AdapterError, match=r"no image matches ses='3', suffix='T1w' for any of the 4 participants; the"
                       r" images under sub-\*/ have ses 1/2, suffix T1w"):  # fmt: skip
        regions_from_bids(dataset, atlas, session="3", suffix="T1w", missing_files="absent")


def test_bad_datasets_are_named(dataset, tmp_path):
    (dataset / "participants.tsv").rename(dataset / "participants.csv")
    with pytest.raises(AdapterError, match=r"bids/participants.tsv: participants.tsv not found.*participants="):
        bids_manifest(dataset, suffix="T1w")
    pd.DataFrame({"participant_id": ["01", "sub-02"]}).to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    with pytest.raises(
        AdapterError,
        match=r"p.tsv: column 'participant_id': 1 participant_id value\(s\) are not sub-<label> \(first: '01'\)",
    ):
        bids_manifest(dataset, suffix="T1w", participants=tmp_path / "p.tsv")
    (dataset / "participants.csv").rename(dataset / "participants.tsv")
    stray = save_image(
        dataset / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w_brain.nii.gz", np.random.default_rng(0)
    )
    with pytest.raises(
        AdapterError, match=r"T1w_brain.nii.gz: subject sub-02: not a BIDS file name \('T1w' is not <key>-<label>"
    ):
        bids_manifest(dataset, session="1", suffix="T1w", desc=False)
    skipped = regions_from_bids(
        dataset, small_atlas(tmp_path), session="1", suffix="T1w", desc=False, invalid_names="skip"
    )
    assert skipped.source["invalid_names_skipped"] == 1
    stray.rename(dataset / "sub-02" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz")
    with pytest.raises(AdapterError, match=r"sub-03 in the name, inside folder sub-02"):
        bids_manifest(dataset, suffix="T1w")
    (dataset / "sub-02" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz").unlink()
    save_image(dataset / "sub-09" / "ses-1" / "anat" / "sub-09_ses-1_T1w.nii.gz", np.random.default_rng(0))
    with pytest.warns(UserWarning, match=r"1 subject folder\(s\) with matching images are not in .*\['sub-09'\]"):
        table = bids_manifest(dataset, suffix="T1w", desc=False, entities={"ses": "1"})
    assert table["participant_id"].tolist() == SUBJECTS
    with pytest.raises(AdapterError, match=r"BIDS root not found"):
        bids_manifest(tmp_path / "nowhere")


def test_symlinked_session_and_subject_folders_are_walked_and_link_loops_read_once(tmp_path):
    # DataLad datasets link folders: a session folder kept elsewhere, a subject folder that is a link
    root = write_dataset(tmp_path / "bids", sessions=())  # participants.tsv only
    elsewhere = tmp_path / "annex"
    rng = np.random.default_rng(4)
    save_image(elsewhere / "sub-01-ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz", rng)
    (root / "sub-01").mkdir()
    (root / "sub-01" / "ses-1").symlink_to(elsewhere / "sub-01-ses-1", target_is_directory=True)
    save_image(elsewhere / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", rng)
    (root / "sub-02").symlink_to(elsewhere / "sub-02", target_is_directory=True)
    save_image(root / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz", rng)
    (root / "sub-03" / "ses-1" / "anat" / "loop").symlink_to(root / "sub-03", target_is_directory=True)
    table = bids_manifest(root, suffix="T1w")  # before: sub-01's linked session folder was not walked
    assert table["participant_id"].tolist() == SUBJECTS
    assert [Path(p).name for p in table["path"]] == [f"{s}_ses-1_T1w.nii.gz" for s in SUBJECTS]
    assert table["path"][0] == str(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz")


def test_an_upper_case_extension_is_an_invalid_name_not_silently_skipped(dataset, tmp_path):
    image = dataset / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz"
    shouting = image.rename(image.with_name("sub-02_ses-1_T1w.NII.GZ"))
    with pytest.raises(AdapterError) as err:  # before: sub-02 had no image, without a word
        bids_manifest(dataset, session="1", suffix="T1w", desc=False)
    message = str(err.value)
    assert message.startswith(f"{shouting}: subject sub-02: not a BIDS file name") and "\n" not in message
    assert "extension '.NII.GZ' is not '.nii.gz': BIDS extensions are lower case" in message
    skipped = regions_from_bids(
        dataset,
        small_atlas(tmp_path),
        session="1",
        suffix="T1w",
        desc=False,
        invalid_names="skip",
        missing_files="absent",
    )
    assert skipped.source["invalid_names_skipped"] == 1 and skipped.source["missing_files"] == 1
    with pytest.raises(ValueError, match="lower case"):
        parse_bids_name("sub-01_T1w.Nii")


def test_the_same_name_in_two_datatype_folders_is_refused_naming_the_folders(dataset):
    rng = np.random.default_rng(5)
    save_image(dataset / "sub-01" / "ses-1" / "extra" / "sub-01_ses-1_T1w.nii.gz", rng)
    with pytest.raises(AdapterError) as err:
        bids_manifest(dataset, session="1", suffix="T1w", desc=False)
    message = str(err.value)  # before: "they differ in : choose one with extensions="
    assert "['anat/sub-01_ses-1_T1w.nii.gz', 'extra/sub-01_ses-1_T1w.nii.gz']" in message
    assert "they differ in datatype folder anat/extra: the query cannot choose a folder" in message
    assert "extensions=" not in message and "\n" not in message


def test_participants_header_names_are_read_without_surrounding_spaces(dataset):
    (dataset / "participants.tsv").write_text(
        "participant_id \t age\r\n" + "".join(f" {s} \t30\r\n" for s in SUBJECTS), encoding="utf-8-sig"
    )
    table = bids_manifest(dataset, session="1", suffix="T1w", desc=False)  # before: 'participant_id' not found
    assert table["participant_id"].tolist() == SUBJECTS


def test_parse_bids_name_rules():
    entities, suffix, extension = parse_bids_name("sub-01_ses-pre_task-rest_run-2_space-MNI_desc-preproc_bold.nii.gz")
    assert entities == {"sub": "01", "ses": "pre", "task": "rest", "run": "2", "space": "MNI", "desc": "preproc"}
    assert (suffix, extension) == ("bold", ".nii.gz")
    bad_names = {
        "T1w.nii": "sub-<label>",
        "ses-1_sub-01_T1w.nii": "does not start with sub-",
        "sub-01_acq-a_acq-b_T1w.nii": "appears twice",
        "sub-01_run-1.0_bold.nii": "'run-1.0'",
    }
    for bad, why in bad_names.items():
        with pytest.raises(ValueError, match=why):
            parse_bids_name(bad)


def test_listing_equals_nilearns_bids_query_on_its_fake_fmriprep_dataset(tmp_path):
    from nilearn._utils.data_gen import create_fake_bids_dataset
    from nilearn.interfaces.bids import get_bids_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(create_fake_bids_dataset(base_dir=tmp_path, n_sub=2, n_ses=2, tasks=["main"], n_runs=[2],
                                            with_confounds=False))  # fmt: skip
    subjects = sorted(p.name for p in raw.glob("sub-*"))
    pd.DataFrame({"participant_id": subjects}).to_csv(raw / "participants.tsv", sep="\t", index=False)
    derivatives = raw / "derivatives"  # no participants.tsv there: the raw dataset's is given
    for ses, run, space, desc in (("01", 1, "MNI", "preproc"), ("02", 2, "T1w", "preproc"), ("01", 2, "T1w", "brain")):
        suffix = "mask" if desc == "brain" else "bold"
        ours = bids_manifest(derivatives, session=ses, task="main", run=run, space=space, desc=desc, suffix=suffix,
                             participants=raw / "participants.tsv")  # fmt: skip
        theirs = get_bids_files(derivatives, file_tag=suffix, file_type="nii.gz", modality_folder="func",
                                filters=[("ses", ses), ("task", "main"), ("run", f"{run:02d}"), ("space", space),
                                         ("desc", desc)])  # fmt: skip
        assert sorted(ours["path"]) == sorted(str(Path(p).resolve()) for p in theirs) and len(ours) == len(subjects)
    raw_bold = bids_manifest(raw, session="02", task="main", run=1, suffix="bold")
    theirs = get_bids_files(raw, file_tag="bold", file_type="nii.gz",
                            filters=[("ses", "02"), ("task", "main"), ("run", "01")])  # fmt: skip
    assert sorted(raw_bold["path"]) == sorted(str(Path(p).resolve()) for p in theirs)


def test_cohort_from_a_data_config_with_a_bids_and_a_freesurfer_modality(tmp_path, monkeypatch):
    from mot_neuro.data.sources import build_cached_cohort

    root = write_dataset(tmp_path / "bids")
    write_subjects_dir(root / "derivatives" / "freesurfer", SUBJECTS[:2], seed=1)  # sub-03 not processed
    small_atlas(tmp_path)
    monkeypatch.chdir(tmp_path)  # the config's relative paths are relative to the working directory
    modalities = {
        "t1": {"adapter": "regions_from_bids", "root": "bids", "atlas": "atlas.nii.gz", "session": "2",
               "suffix": "T1w", "desc": False, "statistics": ["mean", "std"]},
        "fs": {"adapter": "freesurfer_stats", "subjects_dir": "bids/derivatives/freesurfer", "measures": ["thickness"],
               "global_measures": ["eTIV"]},
    }  # fmt: skip
    settings = dict(participants="bids/participants.tsv", id_column="participant_id", targets=["age"], confounds=[],
                    cache_dir=tmp_path / "cache", min_match={"fs": 0.6})  # fmt: skip
    cohort, key = build_cached_cohort(modalities=modalities, **settings)
    assert list(cohort.participants.index) == SUBJECTS
    from data_adapters.freesurfer import freesurfer_stats

    direct_fs = freesurfer_stats(root / "derivatives" / "freesurfer", measures=["thickness"], global_measures=["eTIV"])
    np.testing.assert_array_equal(cohort.modalities["fs"].values[:2], direct_fs.values)
    assert cohort.modalities["fs"].present[2].sum() == 0  # sub-03 has no FreeSurfer folder
    image = root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii.gz"
    np.testing.assert_allclose(cohort.modalities["t1"].values[1, :, 0], direct_means(image, tmp_path / "atlas.nii.gz"))
    # the cache key covers every image and stats file read
    files = input_files("freesurfer_stats", {"subjects_dir": str(root / "derivatives" / "freesurfer")})
    assert len(files) == 6
    listed = bids_files(str(root), {"session": "2", "suffix": "T1w", "desc": False})
    assert sorted(map(str, listed)) == sorted(
        [str(root / "participants.tsv"), *(str(p) for p in root.glob("sub-*/ses-2/anat/*_ses-2_T1w.nii.gz"))]
    )
    stats = root / "derivatives" / "freesurfer" / "sub-01" / "stats" / "lh.aparc.stats"
    stats.write_text(
        stats.read_text().replace("# Measure Cortex, MeanThickness", "# Measure Cortex, MeanThickness ", 1)
    )
    _, key_after_stats = build_cached_cohort(modalities=modalities, **settings)
    save_image(image, np.random.default_rng(9))
    rebuilt, key_after_image = build_cached_cohort(modalities=modalities, **settings)
    assert len({key, key_after_stats, key_after_image}) == 3
    np.testing.assert_allclose(rebuilt.modalities["t1"].values[1, :, 0], direct_means(image, tmp_path / "atlas.nii.gz"))
