"""`benchmarks/tokenization.py` runs and reports our region means equal to nilearn's, at 2 mm and per
``--resolution``; the grids it makes (1 mm, 0.5 mm) give region means equal to nilearn's, and the atlas mapped
onto grids with parallel axes equals nibabel's 3-D nearest-neighbour resampling."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
from helpers import ROOT
from nibabel.processing import resample_from_to

from data_adapters.atlas import Atlas
from data_adapters.brain import read_atlas, regions_from_nifti

SCRIPT = ROOT / "benchmarks" / "tokenization.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("tokenization_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the benchmark script in a process of its own
def test_tokenize_benchmark_script_agrees_with_nilearn(tmp_path):
    small = ["--subjects", "2", "--fmri-subjects", "1", "--fmri-volumes", "5", "--reps", "1"]
    small += ["--samples", "40", "--snps", "300", "--dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(SCRIPT), *small], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["nifti_max_abs_diff"] < 1e-4 and result["fmri_max_abs_diff"] < 1e-3
    for key in ("nifti_speedup_vs_nilearn", "nifti_speedup_vs_nilearn_without_isal", "plink_genotypes_per_s"):
        assert result[key] > 0
    assert not [key for key in result if key.startswith("speedup_")]  # no --resolution: the 2 mm part only
    assert list(tmp_path.iterdir()) == []  # inputs written to a temporary folder and removed


@pytest.mark.slow  # the benchmark script in a process of its own
def test_resolution_option_compares_every_grid_with_nilearn(tmp_path):
    tiny = ["--resolution", "2", "1", "0.5", "--volumes", "1", "1", "1", "--crop", "24", "--atlases", "dk"]
    tiny += ["--subjects", "0", "--samples", "0", "--reps", "1", "--dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(SCRIPT), *tiny], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [result[f"grid_{tag}"] for tag in ("2mm", "1mm", "05mm")] == [[12, 12, 12], [24, 24, 24], [48, 48, 48]]
    for tag in ("2mm", "1mm", "05mm"):
        assert result[f"max_abs_diff_{tag}"] < 1e-4 and result[f"same_regions_{tag}"], tag
        assert result[f"speedup_{tag}"] > 0 and list(result[f"speedup_{tag}_by_atlas"]) == ["dk"]
    assert "nifti_speedup_vs_nilearn" not in result  # --subjects 0: no DK/threads/no-isal 2 mm part
    bad = subprocess.run([sys.executable, str(SCRIPT), "--resolution", "0.3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "whole millimetres or 1/k mm" in bad.stderr


def test_parallel_axes_resampling_equals_nibabels_3d_resampling():
    """Zooms, shifts (voxel centres on ties included), flips and swapped axes, atlases with empty borders."""
    rng = np.random.default_rng(2)
    for trial in range(120):
        labels = rng.integers(0, 5, tuple(rng.integers(3, 12, 3))).astype(np.int32)
        labels[: labels.shape[0] // 2 if trial % 4 == 0 else 0] = 0
        source = np.eye(4)
        source[:3, :3] = np.eye(3)[:, rng.permutation(3) if trial % 3 == 0 else [0, 1, 2]]
        source[:3, :3] *= rng.choice([0.5, 1, 1.5, 2, 3, -1, -2], 3)
        source[:3, 3] = rng.choice([-10, -7.5, -5.25, 0, 3.5, 0.125], 3)
        target = np.diag([*rng.choice([0.5, 1, 2, -1, 1.5, 3, 0.75], 3), 1.0])
        target[:3, 3] = rng.choice([-10, -8, -4.5, 0, 1.25, 0.5, -0.25], 3)
        shape = tuple(int(n) for n in rng.integers(2, 20, 3))
        index = Atlas(labels=labels, affine=source, ids=np.arange(1, 5), names=list("abcd")).on_grid(shape, target)
        codes = np.asarray(resample_from_to(nib.Nifti1Image(labels, source), (shape, target), order=0).dataobj)
        flat = codes.ravel(order="F")
        voxels = np.flatnonzero(flat)
        np.testing.assert_array_equal(index.voxels, voxels[np.argsort(flat[voxels], kind="stable")], str(trial))
        np.testing.assert_array_equal(index.counts, np.bincount(flat, minlength=5)[1:], str(trial))


def test_an_atlas_keeps_its_most_recent_grids(monkeypatch):
    from data_adapters import atlas as atlas_module

    atlas = Atlas(labels=np.ones((4, 4, 4), dtype=np.int32), affine=np.eye(4), ids=np.array([1]), names=["a"])
    monkeypatch.setattr(atlas_module, "_MAX_GRIDS", 2)
    grids = [((n, n, n), np.eye(4)) for n in (2, 3, 4)]
    first, *_ = [atlas.on_grid(*grid) for grid in grids]
    assert len(atlas._grids) == 2 and atlas.on_grid(*grids[2]) is atlas.on_grid(*grids[2])
    assert atlas.on_grid(*grids[0]) is not first and atlas.on_grid(*grids[0]).counts.tolist() == [8]
    monkeypatch.setattr(atlas_module, "_MAX_GRID_VOXELS", 30)  # 27 + 64 voxels: only the newest grid stays
    atlas.on_grid(*grids[1]), atlas.on_grid(*grids[2])
    assert len(atlas._grids) == 1


def test_high_resolution_grids_equal_nilearn(tmp_path):
    """The benchmark's 1 mm and 0.5 mm grids (cropped): float32 .nii.gz (decompressed whole, voxels viewed in
    the bytes) and scaled int16 .nii (memory-mapped, scaling applied to the voxels taken) equal nilearn."""
    from nilearn.maskers import NiftiLabelsMasker

    bench = load_benchmark()
    dk_atlas, dk_labels, template = bench.packaged_inputs()
    atlas = read_atlas(dk_atlas, dk_labels)
    rng = np.random.default_rng(0)
    files = []
    for resolution in (1.0, 0.5):
        base = bench.grid_image(template, resolution, crop_mm=24)
        data = np.asarray(base.dataobj, dtype=np.float32) + rng.normal(0, 10, base.shape).astype(np.float32)
        files.append(tmp_path / f"float_{resolution:g}.nii.gz")
        nib.save(nib.Nifti1Image(data, base.affine), files[-1])
        scaled = nib.Nifti1Image(np.round(data * 4).astype(np.int16), base.affine)
        scaled.header.set_slope_inter(0.25, -3.0)
        files.append(tmp_path / f"scaled_{resolution:g}.nii")
        nib.save(scaled, files[-1])
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("eid,path\n" + "".join(f"{i},{f.name}\n" for i, f in enumerate(files)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # regions outside the crop are absent, as nilearn leaves them out
        ours = regions_from_nifti(manifest, dk_atlas, dk_labels)
        for row, path in enumerate(files):
            masker = NiftiLabelsMasker(str(dk_atlas), strategy="mean", standardize=False).fit()
            theirs = bench.by_label(masker, np.atleast_2d(masker.transform(str(path))), atlas.ids)[0]
            np.testing.assert_array_equal(ours.present[row], ~np.isnan(theirs))
            np.testing.assert_allclose(ours.values[row, ours.present[row], 0], theirs[~np.isnan(theirs)], rtol=1e-6)
    assert (ours.present.sum(axis=1) >= 5).all() and ours.source["image_grids"] == 2  # 2 grids, 4 files
