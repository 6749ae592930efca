"""The multi-site BIDS + FreeSurfer template, copied and pointed at a dataset in those formats (written here)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from freesurfer_files import write_subjects_dir
from helpers import CONFIGS, DEBUG_TRAINER, run_cli

SITES = ("siteA", "siteB", "siteC")


def write_multisite_bids(root: Path, n: int = 36, seed: int = 0) -> list[str]:
    """participants.tsv, fMRIPrep grey-matter maps with a per-site offset, FreeSurfer stats, a phenotype table."""
    rng = np.random.default_rng(seed)
    subjects = [f"sub-{i:03d}" for i in range(1, n + 1)]
    site = [SITES[i % len(SITES)] for i in range(n)]
    root.mkdir(parents=True)
    pd.DataFrame(
        {
            "participant_id": subjects,
            "age": rng.uniform(20, 70, n).round(1),
            "sex": rng.choice(["F", "M"], n),
            "site": site,
            "diagnosis": np.arange(n) % 2,
        }
    ).to_csv(root / "participants.tsv", sep="\t", index=False)
    for subject, s in zip(subjects, site, strict=True):
        offset = SITES.index(s) * 0.3  # a scanner effect for ComBat to remove
        anat = root / "derivatives" / "fmriprep" / subject / "anat"
        anat.mkdir(parents=True)
        image = (rng.uniform(0, 1, (4, 4, 4)) + offset).astype(np.float32)
        name = f"{subject}_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), anat / name)
    write_subjects_dir(root / "derivatives" / "freesurfer", subjects, seed=seed)
    (root / "phenotype").mkdir()
    pd.DataFrame({"participant_id": subjects, "memory": rng.normal(size=n), "speed": rng.normal(size=n)}).to_csv(
        root / "phenotype" / "cognition.tsv", sep="\t", index=False
    )
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[:2], labels[2:, :2], labels[2:, 2:] = 1, 2, 3
    nib.save(nib.Nifti1Image(labels, np.eye(4)), root.parent / "atlas.nii.gz")
    pd.DataFrame({"id": [1, 2, 3], "name": ["frontal", "parietal", "occipital"]}).to_csv(
        root.parent / "atlas_labels.csv", index=False
    )
    return subjects


@pytest.mark.slow  # fits through the CLI
def test_bids_freesurfer_template_runs_on_files_a_user_points_it_at(workdir):
    write_multisite_bids(workdir / "bids")
    config = yaml.safe_load((CONFIGS / "data" / "bids_freesurfer_template.yaml").read_text())
    config["participants"] = "bids/participants.tsv"
    config["modalities"]["cortex"]["subjects_dir"] = "bids/derivatives/freesurfer"
    config["modalities"]["grey_matter"].update(
        root="bids/derivatives/fmriprep",
        participants="bids/participants.tsv",
        atlas="atlas.nii.gz",
        labels="atlas_labels.csv",
    )
    config["modalities"]["behaviour"]["path_or_df"] = "bids/phenotype/cognition.tsv"
    config.update(num_workers=0, batch_size=8, n_folds=3)
    Path("my_cohort.yaml").write_text(yaml.safe_dump(config))
    experiment = CONFIGS / "experiments" / "bids_freesurfer_template.yaml"
    cli = run_cli("fit", "--config", experiment, "--data", "my_cohort.yaml", "--trainer", DEBUG_TRAINER)
    assert cli.trainer.state.finished
    datamodule = cli.datamodule
    shapes = datamodule.model_inputs.token_shapes()
    assert shapes["grey_matter"] == (3, 1) and shapes["behaviour"][0] == 2
    assert shapes["cortex"][0] > 30  # lh_/rh_ regions and aseg structures
    assert datamodule.cohort.subject_ids[0] == "sub-001"  # BIDS IDs keep their prefix
    # ComBat was fitted for both imaging modalities on the training rows only
    fitted = datamodule.preprocessor.state_dict()["harmonize"]
    assert set(fitted) == {"cortex", "grey_matter"}
    assert fitted["grey_matter"]["n_train"] == len(datamodule.rows["train"])
