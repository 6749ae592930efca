"""FreeSurfer SUBJECTS_DIR stats as region tokens: values against an independent reading laid out the way
aparcstats2table/asegstats2table lay them out, subjects, global measures, missing files, bad files.

No installed package ships real FreeSurfer stats files (searched site-packages: nibabel, nilearn, abagen,
pybids); ``freesurfer_files`` writes them in FreeSurfer 7's documented format."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from freesurfer_files import (
    APARC_COLUMNS,
    ASEG_STRUCTURES,
    DK_REGIONS,
    set_field,
    write_aparc,
    write_aseg,
    write_subjects_dir,
)

from data_adapters.core import AdapterError
from data_adapters.freesurfer import freesurfer_stats, freesurfer_table, read_stats, stats_files

# the column positions FreeSurfer's own tables use (fsutils' measure_column_map), not the ColHeaders line
APARC_POSITION = {"area": 2, "volume": 3, "thickness": 4, "thicknessstd": 5, "meancurv": 6, "gauscurv": 7,
                  "foldind": 8, "curvind": 9}  # fmt: skip
ASEG_POSITION = {"volume": 3, "nvoxels": 2, "mean": 5, "std": 6, "max": 8}
SUBJECTS = ["sub-01", "sub-02", "sub-03"]


def rows_of(path: Path) -> pd.DataFrame:
    """The table rows of a stats file by position, read by pandas (comment lines dropped)."""
    return pd.read_csv(path, sep=r"\s+", comment="#", header=None)


def aparcstats2table(root: Path, subjects, hemi: str, meas: str) -> pd.DataFrame:
    """``aparcstats2table --hemi <hemi> --meas <meas>``: one row per subject, ``<hemi>_<region>_<meas>``."""
    out = {}
    for subject in subjects:
        rows = rows_of(root / subject / "stats" / f"{hemi}.aparc.stats")
        out[subject] = {
            f"{hemi}_{r}_{meas}": float(v) for r, v in zip(rows[0], rows[APARC_POSITION[meas]], strict=True)
        }
    return pd.DataFrame.from_dict(out, orient="index")


def asegstats2table(root: Path, subjects, meas: str) -> pd.DataFrame:
    """``asegstats2table --meas <meas>`` without the volume extras: one row per subject, a column per StructName."""
    out = {}
    for subject in subjects:
        rows = rows_of(root / subject / "stats" / "aseg.stats")
        out[subject] = {str(r): float(v) for r, v in zip(rows[4], rows[ASEG_POSITION[meas]], strict=True)}
    return pd.DataFrame.from_dict(out, orient="index")


def measure_line(path: Path, name: str) -> float:
    """The value of ``# Measure ..., <name>, ...`` the way the FreeSurfer parsers take it (4th comma field)."""
    for line in path.read_text().splitlines():
        if line.startswith("# Measure") and line.split(",")[1].strip() == name:
            return float(line.split(",")[3])
    raise KeyError(name)


@pytest.fixture
def subjects_dir(tmp_path) -> Path:
    return write_subjects_dir(tmp_path / "freesurfer", SUBJECTS, seed=3)


def test_values_equal_what_aparcstats2table_and_asegstats2table_tabulate(subjects_dir):
    modality = freesurfer_stats(subjects_dir, measures=["area", "volume", "thickness", "meancurv"])
    assert modality.subject_ids.tolist() == SUBJECTS  # fsaverage (no stats) is not a subject
    aseg = asegstats2table(subjects_dir, SUBJECTS, "volume")
    assert modality.token_names[: len(ASEG_STRUCTURES)] == [name for _, name in ASEG_STRUCTURES]
    assert modality.token_names[len(ASEG_STRUCTURES) :] == [f"{h}_{r}" for h in ("lh", "rh") for r in DK_REGIONS]
    assert modality.feature_names == ["volume", "area", "thickness", "meancurv"]
    token = {t: i for i, t in enumerate(modality.token_names)}
    feature = {f: j for j, f in enumerate(modality.feature_names)}
    for structure in aseg.columns:  # aseg tokens carry the volume only
        assert modality.feature_mask[token[structure]].tolist() == [True, False, False, False]
        np.testing.assert_array_equal(
            modality.values[:, token[structure], 0], aseg[structure].to_numpy(dtype=np.float32)
        )
    for hemi in ("lh", "rh"):
        for meas in ("area", "volume", "thickness", "meancurv"):
            table = aparcstats2table(subjects_dir, SUBJECTS, hemi, meas)
            for column in table.columns:
                region = column[: -len(meas) - 1]
                np.testing.assert_array_equal(
                    modality.values[:, token[region], feature[meas]], table[column].to_numpy(dtype=np.float32)
                )
    assert modality.present.all()
    assert modality.source["files"] == 9 and modality.source["missing_files"] == 0


def test_wide_table_has_aparcstats2table_column_names_and_idp_tokenization(subjects_dir):
    table = freesurfer_table(subjects_dir, segmentation=None, measures="thickness", hemispheres=["rh"])
    expected = aparcstats2table(subjects_dir, SUBJECTS, "rh", "thickness")
    assert list(table.columns) == ["subject", *expected.columns]  # rh_bankssts_thickness, ...
    np.testing.assert_array_equal(table.drop(columns="subject").to_numpy(), expected.to_numpy())


def test_aseg_intensity_measures_are_the_columns_asegstats2table_reads(subjects_dir):
    modality = freesurfer_stats(subjects_dir, parcellation=None, aseg_measures=["nvoxels", "mean", "std", "max"])
    assert modality.feature_names == ["nvoxels", "mean", "std", "max"]
    for j, meas in enumerate(modality.feature_names):
        table = asegstats2table(subjects_dir, SUBJECTS, meas)
        np.testing.assert_array_equal(modality.values[:, :, j], table.to_numpy(dtype=np.float32))


def test_global_measures_as_tokens_by_unit(subjects_dir):
    modality = freesurfer_stats(subjects_dir, measures=["thickness"], global_measures=True)
    token = {t: i for i, t in enumerate(modality.token_names)}
    feature = {f: j for j, f in enumerate(modality.feature_names)}
    # whole-brain ones from aseg.stats by short name; per-hemisphere (Cortex) ones from the aparc files
    for name, unit_feature in (("eTIV", "volume"), ("BrainSegVol", "volume"), ("SurfaceHoles", "value"),
                               ("lh_MeanThickness", "thickness"), ("rh_WhiteSurfArea", "area"),
                               ("lh_NumVert", "value")):  # fmt: skip
        hemi, _, short = name.rpartition("_")
        file = f"{hemi}.aparc.stats" if hemi else "aseg.stats"
        expected = [measure_line(subjects_dir / s / "stats" / file, short) for s in SUBJECTS]
        np.testing.assert_array_equal(modality.values[:, token[name], feature[unit_feature]], np.float32(expected))
        assert modality.feature_mask[token[name]].sum() == 1
    assert "lh_eTIV" not in token  # the aparc files' copies of whole-brain measures are not repeated
    chosen = freesurfer_stats(subjects_dir, segmentation=None, global_measures=["lh_eTIV", "rh_MeanThickness"])
    assert chosen.token_names[-2:] == ["lh_eTIV", "rh_MeanThickness"]
    with pytest.raises(AdapterError, match=r"global measure\(s\) \['ICV'\] not among .*'eTIV'"):
        freesurfer_stats(subjects_dir, global_measures=["ICV"])


def test_subjects_listed_or_from_a_file_and_stats_files_cover_every_read(subjects_dir, tmp_path):
    (subjects_dir / "notes").mkdir()  # a folder without stats/ is not a subject
    listing = tmp_path / "subjects.txt"
    listing.write_text("sub-03\nsub-01\n")
    from_file = freesurfer_stats(subjects_dir, subjects=str(listing))
    assert from_file.subject_ids.tolist() == ["sub-03", "sub-01"]
    listed = freesurfer_stats(subjects_dir, subjects=["sub-02"])
    everyone = freesurfer_stats(subjects_dir)
    np.testing.assert_array_equal(listed.values[0], everyone.values[1])
    files = stats_files(subjects_dir, {"parcellation": "aparc"})
    assert sorted(files) == sorted(subjects_dir.glob("sub-*/stats/*.stats")) and len(files) == 9
    assert stats_files(subjects_dir, {"parcellation": None, "subjects": ["sub-02"]}) == [
        subjects_dir / "sub-02" / "stats" / "aseg.stats"
    ]


def test_missing_stats_file_is_an_error_or_absent_tokens(subjects_dir):
    (subjects_dir / "sub-02" / "stats" / "rh.aparc.stats").unlink()
    with pytest.raises(AdapterError, match=r"sub-02/stats/rh.aparc.stats: subject sub-02: stats file not found \(1"):
        freesurfer_stats(subjects_dir)
    modality = freesurfer_stats(subjects_dir, missing_files="absent")
    rh = [i for i, t in enumerate(modality.token_names) if t.startswith("rh_")]
    lh = [i for i, t in enumerate(modality.token_names) if t.startswith("lh_")]
    assert not modality.present[1, rh].any() and modality.present[1, lh].all()
    assert modality.present[[0, 2]].all()
    assert modality.source["missing_files"] == 1
    with pytest.raises(AdapterError, match=r"subject sub-09: stats file not found"):
        freesurfer_stats(subjects_dir, subjects=["sub-01", "sub-09"])


def test_different_structures_across_subjects_are_named(subjects_dir):
    rng = np.random.default_rng(5)
    write_aparc(subjects_dir / "sub-03" / "stats" / "lh.aparc.stats", rng, regions=DK_REGIONS[:-1], subject="sub-03")
    with pytest.raises(
        AdapterError, match=r"lh.aparc.stats: subject sub-03: lacks 1 structure\(s\) of subject sub-01's .*'insula'"
    ):
        freesurfer_stats(subjects_dir)
    modality = freesurfer_stats(subjects_dir, different_regions="absent")
    insula = modality.token_names.index("lh_insula")
    assert modality.present[:, insula].tolist() == [True, True, False]


def test_bad_stats_files_are_one_line_errors_naming_file_and_subject(subjects_dir):
    rng = np.random.default_rng(7)
    stats = subjects_dir / "sub-01" / "stats"
    write_aseg(stats / "aseg.stats", rng, colheaders=False)
    with pytest.raises(AdapterError, match=r"sub-01/stats/aseg.stats: subject sub-01: no '# ColHeaders' line") as err:
        freesurfer_stats(subjects_dir)
    assert "\n" not in str(err.value)
    write_aseg(stats / "aseg.stats", rng)
    write_aparc(stats / "lh.aparc.stats", rng, columns=[c for c in APARC_COLUMNS if c != "ThickStd"])
    with pytest.raises(AdapterError, match=r"lh.aparc.stats: subject sub-01: measure 'thicknessstd' \(column ThickStd"):
        freesurfer_stats(subjects_dir, measures=["thicknessstd"])
    with pytest.raises(AdapterError, match=r"measures=\['thick'\]: choose from area, volume, thickness"):
        freesurfer_stats(subjects_dir, measures=["thick"])
    path = stats / "rh.aparc.stats"
    good = path.read_text()
    row = next(line for line in good.splitlines() if line.startswith("bankssts"))
    fields = row.split()
    path.write_text(good.replace(row, " ".join([*fields[:4], "n/a", *fields[4:]])))  # a field too many
    with pytest.raises(AdapterError, match=r"rh.aparc.stats: subject sub-01: line \d+ has 11 fields, .* names 10"):
        freesurfer_stats(subjects_dir)
    path.write_text(good.replace(row, " ".join([*fields[:4], "x.5", *fields[5:]])))  # ThickAvg not a number
    with pytest.raises(
        AdapterError, match=r"rh.aparc.stats: subject sub-01: line \d+: ThickAvg of 'bankssts' is 'x\.5'"
    ):
        freesurfer_stats(subjects_dir, measures=["thickness"])
    path.write_text(
        good.replace(
            "# Measure Cortex, MeanThickness, Mean Thickness, ", "# Measure Cortex, MeanThickness, Mean Thickness, n/a"
        )
    )
    with pytest.raises(
        AdapterError, match=r"rh.aparc.stats: subject sub-01: line \d+: value of measure 'MeanThickness'"
    ):
        freesurfer_stats(subjects_dir)
    path.write_text(good)
    with pytest.raises(AdapterError, match=r"no subject folder with a stats/ folder"):
        freesurfer_stats(subjects_dir / "fsaverage")


def test_nan_values_are_missing_with_one_warning_counting_values_and_files(subjects_dir):
    set_field(subjects_dir / "sub-02" / "stats" / "lh.aparc.stats", "bankssts", "ThickAvg", "nan")
    set_field(subjects_dir / "sub-02" / "stats" / "lh.aparc.stats", "insula", "ThickAvg", "nan")
    set_field(subjects_dir / "sub-03" / "stats" / "aseg.stats", "CSF", "normMean", "nan")  # not read: no warning
    set_field(subjects_dir / "sub-03" / "stats" / "aseg.stats", "Left-Hippocampus", "Volume_mm3", "nan")
    with pytest.warns(UserWarning) as record:  # before: no word, the values silently missing
        modality = freesurfer_stats(subjects_dir, measures=["thickness"])
    messages = [str(w.message) for w in record if "nan" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith("3 value(s) in 2 stats file(s) are written as nan and are read as missing")
    assert modality.source["nan_values"] == 3 and modality.source["nan_files"] == 2
    token = {t: i for i, t in enumerate(modality.token_names)}
    volume, thickness = modality.feature_names.index("volume"), modality.feature_names.index("thickness")
    assert np.isnan(modality.values[1, token["lh_bankssts"], thickness])
    assert np.isnan(modality.values[2, token["Left-Hippocampus"], volume])
    assert np.isfinite(modality.values[[0, 2], token["lh_bankssts"], thickness]).all()
    # the wide table still equals aparcstats2table's (which reads nan as nan)
    with pytest.warns(UserWarning, match=r"^2 value\(s\) in 1 stats file\(s\) are written as nan"):
        table = freesurfer_table(subjects_dir, segmentation=None, measures="thickness", hemispheres=["lh"])
    expected = aparcstats2table(subjects_dir, SUBJECTS, "lh", "thickness")
    np.testing.assert_array_equal(table.drop(columns="subject").to_numpy(), expected.to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        freesurfer_stats(subjects_dir, subjects=["sub-01"])  # no nan read: no warning


def test_longitudinal_base_and_long_folders_are_skipped_with_a_count_unless_listed(tmp_path):
    root = write_subjects_dir(tmp_path / "fs", ["sub-01", "sub-02", "sub-01.long.base01", "base01", "base02"])
    (root / "base01" / "base-tps").write_text("sub-01\nsub-01_ses-2\n")  # recon-all -base
    (root / "base02" / "base-tps.fastsurfer").write_text("sub-02\n")  # FastSurfer's long stream
    with pytest.warns(UserWarning, match=r"3 longitudinal folder\(s\) are not subjects and were skipped \(2 base"
                      r" template\(s\) with a base-tps file, 1 '<tp>.long.<base>' run\(s\)\)"):  # fmt: skip
        modality = freesurfer_stats(root)  # before: 5 subjects, persons counted twice
    assert modality.subject_ids.tolist() == ["sub-01", "sub-02"]
    assert modality.source["longitudinal_skipped"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        listed = freesurfer_stats(root, subjects=["sub-01.long.base01", "base01"])  # read as given
        files = stats_files(root, {})  # a cache key does not warn
    assert listed.subject_ids.tolist() == ["sub-01.long.base01", "base01"]
    assert sorted({f.parent.parent.name for f in files}) == ["sub-01", "sub-02"]
    longitudinal_only = write_subjects_dir(tmp_path / "long", ["sub-01.long.base01"])
    with pytest.raises(AdapterError, match=r"no subject folder .*\(1 longitudinal folder\(s\) skipped"):
        freesurfer_stats(longitudinal_only)


def test_unknown_and_corpuscallosum_rows_are_kept_as_aparcstats2table_keeps_them(tmp_path):
    # FreeSurfer 5.x wrote them into ?h.aparc.stats (6 and 7 do not); aparcstats2table drops no row
    rng = np.random.default_rng(9)
    root = tmp_path / "fs5"
    for subject in SUBJECTS:
        write_aseg(root / subject / "stats" / "aseg.stats", rng, subject=subject)
        for hemi in ("lh", "rh"):
            regions = ["unknown", *DK_REGIONS[:3], "corpuscallosum", *DK_REGIONS[3:]]
            write_aparc(
                root / subject / "stats" / f"{hemi}.aparc.stats", rng, hemi=hemi, subject=subject, regions=regions
            )
    table = freesurfer_table(root, segmentation=None, measures="area", hemispheres=["lh"])
    expected = aparcstats2table(root, SUBJECTS, "lh", "area")
    assert list(table.columns) == ["subject", *expected.columns] and "lh_unknown_area" in table.columns
    np.testing.assert_array_equal(table.drop(columns="subject").to_numpy(), expected.to_numpy())


def test_read_stats_parses_measures_and_rows(tmp_path):
    lines = write_aparc(tmp_path / "lh.aparc.stats", np.random.default_rng(0))
    stats = read_stats(tmp_path / "lh.aparc.stats")
    assert stats.columns == APARC_COLUMNS and list(stats.rows) == DK_REGIONS
    structure, value, units = stats.measures["MeanThickness"]
    assert (structure, units) == ("Cortex", "mm")
    assert value == float(next(x for x in lines if "MeanThickness" in x).split(",")[3])
