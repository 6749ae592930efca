"""The synthetic demo cohort, read back with nibabel, bed_reader and pandas directly (data_adapters.demo)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from bed_reader import open_bed
from scipy import ndimage

from data_adapters.core import AdapterError
from data_adapters.demo import GRID, N_REGIONS, write_demo_cohort

N = 300  # the session demo cohort (conftest.py): the default size, seed 0


@pytest.fixture(scope="module")
def truth(demo_cohort_files):
    return json.loads(demo_cohort_files["ground_truth"].read_text())


@pytest.fixture(scope="module")
def tables(demo_cohort_files):
    read = {
        key: pd.read_csv(demo_cohort_files[key], dtype={"eid": str})
        for key in ("participants", "behaviour", "manifest")
    }
    return {key: df.set_index("eid") for key, df in read.items()}


@pytest.fixture(scope="module")
def atlas(demo_cohort_files):
    return np.asarray(nib.load(demo_cohort_files["atlas"]).dataobj)


@pytest.fixture(scope="module")
def region_means(demo_cohort_files, tables, atlas):
    """Subjects x regions: atlas means of every scan, computed with plain numpy."""
    flat = atlas.ravel()
    counts = np.bincount(flat, minlength=N_REGIONS + 1)[1:]
    rows = {}
    for eid, path in tables["manifest"]["path"].items():
        volume = np.asarray(nib.load(demo_cohort_files["manifest"].parent / path).dataobj).ravel()
        rows[eid] = np.bincount(flat, weights=volume, minlength=N_REGIONS + 1)[1:] / counts
    return pd.DataFrame.from_dict(rows, orient="index")


@pytest.fixture(scope="module")
def genotypes(demo_cohort_files):
    with open_bed(demo_cohort_files["genotypes_bed"]) as bed:
        return pd.DataFrame(bed.read(), index=bed.iid, columns=bed.sid), bed.chromosome


def score(genotypes, snps, weights):
    calls = genotypes[snps]
    return calls.fillna(calls.mean()) @ np.asarray(weights)


def corr(a, b):
    return np.corrcoef(a, b)[0, 1]


def test_files_in_real_formats(demo_cohort_files, tables, atlas):
    participants = tables["participants"]
    assert len(participants) == N and list(participants.columns) == ["age", "sex", "site", "target", "diagnosis"]
    assert set(participants["sex"]) == {"F", "M"} and set(participants["site"]) == {"S1", "S2", "S3"}
    assert set(participants["diagnosis"]) == {0, 1} and participants["target"].notna().all()
    image = nib.load(demo_cohort_files["atlas"])
    assert image.shape == GRID and np.allclose(image.header.get_zooms(), 4.0)
    scan = nib.load(demo_cohort_files["manifest"].parent / tables["manifest"]["path"].iloc[0])
    assert scan.shape == GRID and scan.get_data_dtype() == np.float32 and np.allclose(scan.affine, image.affine)
    labels = pd.read_csv(demo_cohort_files["atlas_labels"])
    assert list(labels.columns) == ["id", "name"] and labels["name"].is_unique
    assert sorted(np.unique(atlas)) == [0, *labels["id"]] and len(labels) == N_REGIONS
    behaviour = tables["behaviour"]
    assert list(behaviour.columns) == ["memory", "reaction_time", "vocabulary", "mood", "handedness"]
    assert set(behaviour["handedness"].dropna()) == {"right", "left", "ambidextrous"}


def test_atlas_parcels_are_contiguous_and_similar_in_size(atlas):
    sizes = np.bincount(atlas.ravel())[1:]
    assert sizes.min() > 0.5 * sizes.mean()
    for label in range(1, N_REGIONS + 1):
        _, n_components = ndimage.label(atlas == label)
        assert n_components == 1, label


def test_each_modality_misses_some_participants(demo_cohort_files, tables, truth, genotypes):
    participants = set(tables["participants"].index)
    scanned, behaved = set(tables["manifest"].index), set(tables["behaviour"].index)
    genotyped = set(genotypes[0].index)
    for present, key in ((scanned, "scan"), (genotyped, "genotypes"), (behaved, "behaviour")):
        missing = len(participants - present)
        assert missing == truth["missing"][f"participants_without_{key}"]
        assert 0.10 * N <= missing <= 0.15 * N
    assert scanned <= participants and behaved <= participants
    assert len(genotyped - participants) == truth["genotyped_not_in_participants"] == 5
    assert len(list(demo_cohort_files["nifti_dir"].iterdir())) == len(scanned)
    assert all((demo_cohort_files["manifest"].parent / p).is_file() for p in tables["manifest"]["path"])
    assert 0.02 < tables["behaviour"]["memory"].isna().mean() < 0.08
    # files list subjects in their own orders: adapters must align by ID
    assert list(tables["manifest"].index) != sorted(tables["manifest"].index)


def test_genotypes(genotypes, truth):
    calls, chromosome = genotypes
    assert calls.shape[1] == 400 and list(np.unique(chromosome)) == ["1", "2", "3", "4"]
    assert 0.005 < calls.isna().to_numpy().mean() < 0.02
    assert set(np.unique(calls.to_numpy()[~np.isnan(calls.to_numpy())])) == {0.0, 1.0, 2.0}
    assert set(truth["genes_to_brain"]["snps"]) <= set(calls.columns)


def test_planted_gene_brain_behaviour_target_structure(tables, truth, genotypes, region_means):
    calls = genotypes[0]
    brain_score = score(calls, truth["genes_to_brain"]["snps"], truth["genes_to_brain"]["weights_per_a1_allele"])
    gene_only = score(
        calls, truth["gene_only_to_target"]["snps"], truth["gene_only_to_target"]["weights_per_a1_allele"]
    )
    affected = [i - 1 for i in truth["genes_to_brain"]["brain_region_ids"]]
    unaffected = [r for r in range(N_REGIONS) if r not in affected]
    both = region_means.index.intersection(calls.index)
    for region in affected:  # genes -> these regions
        assert corr(brain_score[both], region_means.loc[both, region]) > 0.45
    assert max(abs(corr(brain_score[both], region_means.loc[both, r])) for r in unaffected) < 0.2
    assert max(abs(corr(gene_only[both], region_means.loc[both, r])) for r in range(N_REGIONS)) < 0.2
    target = tables["participants"]["target"]
    genotyped = calls.index.intersection(target.index)
    assert corr(gene_only[genotyped], target[genotyped]) > 0.35  # a signal only genes carry
    scanned = region_means.index
    assert corr(region_means.loc[scanned, affected].mean(axis=1), target[scanned]) > 0.3
    memory = tables["behaviour"]["memory"].dropna()
    common = memory.index.intersection(scanned)
    assert corr(region_means.loc[common, affected].mean(axis=1), memory[common]) > 0.45
    diagnosis = tables["participants"]["diagnosis"]
    assert target[diagnosis == 1].mean() > target[diagnosis == 0].mean() + 0.5


def test_site_shifts_brain_values(tables, truth, region_means):
    site = tables["participants"].loc[region_means.index, "site"]
    means = region_means.mean(axis=1).groupby(site).mean()
    offsets = truth["site_offsets"]
    for other in ("S2", "S3"):
        assert means[other] - means["S1"] == pytest.approx(offsets[other] - offsets["S1"], abs=0.25)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = write_demo_cohort(tmp_path / "a", n_subjects=40, seed=3)
    second = write_demo_cohort(tmp_path / "b", n_subjects=40, seed=3)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = write_demo_cohort(tmp_path / "c", n_subjects=40, seed=4)
    assert other["participants"].read_bytes() != first["participants"].read_bytes()
    assert second["participants"] == tmp_path / "b" / "participants.csv"


def test_replaces_an_old_demo_but_refuses_other_folders(tmp_path):
    write_demo_cohort(tmp_path / "demo", n_subjects=20, seed=0)
    write_demo_cohort(tmp_path / "demo", n_subjects=25, seed=0)
    assert len(pd.read_csv(tmp_path / "demo" / "participants.csv")) == 25
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AdapterError, match="not a demo cohort folder"):
        write_demo_cohort(tmp_path / "mine", n_subjects=20)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(AdapterError, match="n_subjects must be an integer >= 20"):
        write_demo_cohort(tmp_path / "small", n_subjects=5)


@pytest.mark.slow  # processes of their own
def test_command_line(tmp_path):
    run = [sys.executable, "-m", "data_adapters.demo"]
    done = subprocess.run(
        [*run, str(tmp_path / "d"), "--subjects", "20", "--seed", "1"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "demo cohort of 20 participants (seed 1)" in done.stdout
    assert (tmp_path / "d" / "genotypes.bed").is_file()
    bad = subprocess.run([*run, str(tmp_path / "e"), "--subjects", "3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "n_subjects must be an integer" in bad.stderr and "Traceback" not in bad.stderr


def test_loads_through_the_adapters(demo_cohort_files, truth):
    pytest.importorskip("data_adapters.brain")
    pytest.importorskip("data_adapters.gene")
    from data_adapters.demo import load_demo_cohort

    cohort = load_demo_cohort(demo_cohort_files["participants"].parent, join="outer")
    assert set(cohort.modalities) == {"gene", "brain", "behaviour"}
    assert cohort.n_subjects == N - truth["missing"]["participants_without_any_modality"]
