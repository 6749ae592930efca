"""FreeSurfer ``SUBJECTS_DIR`` statistics (``aseg.stats``, ``?h.aparc*.stats``) as region tokens.

One token per region, its measures as features, the values FreeSurfer's own ``asegstats2table`` and
``aparcstats2table`` tabulate:

* segmentation (``<subject>/stats/aseg.stats``, or another ``mri_segstats`` table such as ``wmparc.stats``):
  one token per ``StructName`` (``Left-Hippocampus``); ``aseg_measures`` as ``asegstats2table --meas``:
  ``volume`` (``Volume_mm3``), ``nvoxels`` (``NVoxels``), ``mean``/``std``/``min``/``max``/``range`` (the
  intensity columns, ``normMean`` ... in aseg.stats).
* cortical parcellation (``<subject>/stats/{lh,rh}.<parcellation>.stats``): one token per hemisphere and
  region, named as ``aparcstats2table`` names its columns without the measure (``lh_superiorfrontal`` for
  ``lh_superiorfrontal_thickness``); ``measures`` as ``aparcstats2table --meas``: ``area`` (``SurfArea``),
  ``volume`` (``GrayVol``), ``thickness`` (``ThickAvg``), ``thicknessstd`` (``ThickStd``), ``meancurv``,
  ``gauscurv``, ``foldind``, ``curvind``, and ``numvert`` (``NumVert``).
* global measures (the ``# Measure <structure>, <name>, <description>, <value>, <units>`` header lines), when
  ``global_measures`` asks for them: one token each, named by the measure's short name (``eTIV``,
  ``BrainSegVol``) for the segmentation file and ``<hemi>_<name>`` for a parcellation file
  (``lh_MeanThickness``, ``lh_WhiteSurfArea``: the columns ``aparcstats2table`` calls
  ``lh_MeanThickness_thickness`` and ``lh_WhiteSurfArea_area``). Their one feature is chosen by unit:
  ``mm^3`` -> ``volume``, ``mm^2`` -> ``area``, ``mm`` -> ``thickness``, anything else -> ``value``.
  ``asegstats2table`` names the eTIV column ``EstimatedTotalIntraCranialVol``; here it is ``eTIV``.
  Whole-brain volumes are usually confounds: list them in the participants table rather than as tokens.

Columns are found by the file's ``# ColHeaders`` line (a file without one is refused), not by position.
:func:`freesurfer_table` returns the wide table (one row per subject, ``<region>_<measure>`` columns, the
layout of ``aparcstats2table``); :func:`freesurfer_stats` tokenizes it exactly as
:func:`~data_adapters.idp.idp_table` tokenizes such a table.

Subject IDs are the subject folder names (``sub-01`` in fMRIPrep's ``sourcedata/freesurfer``). Subjects are
the folders of ``SUBJECTS_DIR`` holding a ``stats`` folder (``fsaverage*`` and hidden folders skipped), or an
explicit list (``subjects=``: IDs, or a file with one per line, as ``--subjectsfile``). Folders of FreeSurfer's
longitudinal stream are not subjects of a search: a base template (``recon-all -base <base>``: its folder holds
a ``base-tps`` file, FastSurfer's ``base-tps.fastsurfer``) and a longitudinal run (``recon-all -long <tp>
<base>`` writes ``<tp>.long.<base>``) would each be a second row of a person already there as a cross-sectional
time point. They are skipped with a warning giving their count; to read them (the ``.long.`` runs of a
longitudinal study, say) list them with ``subjects=``, which is read as given.

Values FreeSurfer writes as ``nan`` (it does where a measure is undefined, e.g. the intensity statistics of an
empty structure) are read as missing values, and each call warns once with the number of such values and of
the files holding them (also in ``source["nan_values"]`` and ``source["nan_files"]``).

Structures are those the files list, as ``aparcstats2table`` keeps every row (it drops none by default).
FreeSurfer 6 and 7 do not write ``unknown`` or ``corpuscallosum`` rows in ``?h.aparc.stats`` (the 34
Desikan-Killiany regions only), but older versions (5.x) may: when present in every subject's files they are
tokens (``lh_unknown``, ``lh_corpuscallosum``), as they are columns of ``aparcstats2table``'s output; mixing
versions that differ there is refused (or, with ``different_regions='absent'``, the rows are absent where not
written). Drop such tokens downstream if they are not wanted.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .core import AdapterError, TokenizedModality, check_choice, normalize_ids
from .idp import idp_table
from .manifests import MISSING_FILE_POLICIES

APARC_MEASURES = {
    "area": "SurfArea",
    "volume": "GrayVol",
    "thickness": "ThickAvg",
    "thicknessstd": "ThickStd",
    "meancurv": "MeanCurv",
    "gauscurv": "GausCurv",
    "foldind": "FoldInd",
    "curvind": "CurvInd",
    "numvert": "NumVert",
}
"""``aparcstats2table --meas`` name -> column of ``?h.aparc*.stats`` (``numvert`` is an addition)."""
ASEG_MEASURES = {
    "volume": "Volume_mm3",
    "nvoxels": "NVoxels",
    "mean": "*Mean",
    "std": "*StdDev",
    "min": "*Min",
    "max": "*Max",
    "range": "*Range",
}
"""``asegstats2table --meas`` name -> column of ``aseg.stats``; ``*`` is the intensity volume's name (``norm``)."""
UNIT_FEATURES = {"mm^3": "volume", "mm^2": "area", "mm": "thickness"}
"""Feature of a global measure token by its unit; other units give ``value``."""
HEMISPHERES = ("lh", "rh")
LONGITUDINAL_RUN = ".long."
"""In a folder name, the mark of a longitudinal run (``recon-all -long <tp> <base>`` writes ``<tp>.long.<base>``)."""
LONGITUDINAL_BASE_FILES = ("base-tps", "base-tps.fastsurfer")
"""A file of a longitudinal base (template) folder (``recon-all -base``; FastSurfer's long stream)."""
DIFFERENT_REGIONS = ("error", "absent")
SEPARATOR = "_"


@dataclass
class StatsFile:
    """One FreeSurfer ``.stats`` table: its ``# ColHeaders`` columns, rows by ``StructName`` (raw text fields)
    and its ``# Measure`` lines (short name -> (structure, value, units))."""

    path: Path
    columns: list[str]
    rows: dict[str, list[str]]
    measures: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    line_of: dict[str, int] = field(default_factory=dict)

    def column(self, measure: str, wanted: str, subject: str | None) -> str:
        """The column holding ``measure`` (``wanted`` is its header name, ``*Suffix`` for an intensity column)."""
        if wanted.startswith("*"):
            after = self.columns[self.columns.index("StructName") + 1 :]
            found = [c for c in after if c.endswith(wanted[1:])]
            if len(found) == 1:
                return found[0]
        elif wanted in self.columns:
            return wanted
        raise AdapterError(
            f"measure {measure!r} (column {wanted.replace('*', '<volume>')}) is not in this stats file; its"
            f" '# ColHeaders' are {self.columns}",
            file=self.path,
            subject=subject,
        )

    def values(self, column: str, subject: str | None) -> dict[str, float]:
        """``StructName`` -> the float in ``column``; text there is an error naming the line."""
        position = self.columns.index(column)
        out = {}
        for name, fields in self.rows.items():
            try:
                out[name] = float(fields[position])
            except ValueError:
                raise AdapterError(
                    f"line {self.line_of[name]}: {column} of {name!r} is {fields[position]!r}, not a number",
                    file=self.path,
                    subject=subject,
                ) from None
        return out


def read_stats(path: str | os.PathLike, *, subject: str | None = None) -> StatsFile:
    """Parse a FreeSurfer ``.stats`` file (``aseg.stats``, ``lh.aparc.stats``, ...).

    Lines starting with ``#`` are header lines: ``# ColHeaders`` names the table columns (required; it must
    name ``StructName``), ``# Measure`` lines hold the global measures. Every other non-empty line is a table
    row of as many whitespace-separated fields as there are columns.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise AdapterError(f"cannot read the stats file: {err.strerror or err}", file=path, subject=subject) from None
    columns: list[str] | None = None
    rows: dict[str, list[str]] = {}
    line_of: dict[str, int] = {}
    measures: dict[str, tuple[str, float, str]] = {}
    pending: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            key, _, rest = body.partition(" ")
            if key == "ColHeaders":
                columns = rest.split()
            elif key == "Measure":
                name, measure = _measure_line(rest, path, number, subject)
                measures[name] = measure
            continue
        pending.append((number, stripped.split()))
    if columns is None:
        raise AdapterError(
            "no '# ColHeaders' line: not a FreeSurfer .stats table (or a truncated one)", file=path, subject=subject
        )
    if "StructName" not in columns:
        raise AdapterError(f"'# ColHeaders' {columns} has no StructName column", file=path, subject=subject)
    if not pending:
        raise AdapterError("the stats table has no rows (truncated file?)", file=path, subject=subject)
    name_at = columns.index("StructName")
    for number, fields in pending:
        if len(fields) != len(columns):
            raise AdapterError(
                f"line {number} has {len(fields)} fields, '# ColHeaders' names {len(columns)}",
                file=path,
                subject=subject,
            )
        name = fields[name_at]
        if name in rows:
            raise AdapterError(
                f"structure {name!r} appears twice (lines {line_of[name]} and {number})", file=path, subject=subject
            )
        rows[name] = fields
        line_of[name] = number
    return StatsFile(path=path, columns=columns, rows=rows, measures=measures, line_of=line_of)


def _measure_line(rest: str, path: Path, number: int, subject) -> tuple[str, tuple[str, float, str]]:
    """``<structure>, <name>, <description>, <value>, <units>`` -> (name, (structure, value, units))."""
    parts = [p.strip() for p in rest.split(",")]
    if len(parts) < 4:
        raise AdapterError(
            f"line {number}: '# Measure' line has {len(parts)} comma-separated fields, expected"
            " '<structure>, <name>, <description>, <value>, <units>'",
            file=path,
            subject=subject,
        )
    try:
        value = float(parts[3])
    except ValueError:
        raise AdapterError(
            f"line {number}: value of measure {parts[1]!r} is {parts[3]!r}, not a number", file=path, subject=subject
        ) from None
    return parts[1], (parts[0], value, parts[4] if len(parts) > 4 else "")


# ====================================================================== SUBJECTS_DIR -> wide table
@dataclass
class _Plan:
    """What to read from every subject: one entry per stats file kind."""

    kind: str  # "segmentation" or a hemisphere
    filename: str
    prefix: str  # region name prefix ("" or "lh_")
    measures: dict[str, str]  # measure name -> wanted column


def _plans(segmentation, parcellation, measures, aseg_measures, hemispheres) -> list[_Plan]:
    plans = []
    if segmentation:
        chosen = _check_measures(aseg_measures, ASEG_MEASURES, "aseg_measures")
        plans.append(_Plan("segmentation", f"{segmentation}.stats", "", chosen))
    if parcellation:
        chosen = _check_measures(measures, APARC_MEASURES, "measures")
        for hemi in hemispheres:
            check_choice(hemi, HEMISPHERES, "hemispheres")
            plans.append(_Plan(hemi, f"{hemi}.{parcellation}.stats", f"{hemi}{SEPARATOR}", chosen))
    if not plans:
        raise AdapterError("nothing to read: give a segmentation (e.g. 'aseg') and/or a parcellation (e.g. 'aparc')")
    return plans


def _check_measures(measures, known: Mapping[str, str], argument: str) -> dict[str, str]:
    if isinstance(measures, str):
        measures = [measures]
    measures = list(dict.fromkeys(measures or ()))
    unknown = [m for m in measures if m not in known]
    if unknown or not measures:
        raise AdapterError(f"{argument}={measures}: choose from {', '.join(known)}")
    return {m: known[m] for m in measures}


def freesurfer_subjects(subjects_dir: str | os.PathLike, subjects=None) -> list[str]:
    """The subjects of ``subjects_dir``: ``subjects`` (IDs, or a file of one ID per line) if given, else every
    folder holding a ``stats`` folder, sorted (``fsaverage*`` and hidden folders are templates, not subjects;
    longitudinal folders are skipped with a warning, see the module docstring)."""
    found, longitudinal = _subjects(subjects_dir, subjects)
    _warn_longitudinal(longitudinal, subjects_dir)
    return found


def _is_base(folder: str) -> bool:
    """A longitudinal base (template) folder: ``recon-all -base`` writes ``base-tps`` (FastSurfer:
    ``base-tps.fastsurfer``), its time points one per line."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in LONGITUDINAL_BASE_FILES)


def _subjects(subjects_dir, subjects) -> tuple[list[str], list[str]]:
    """The subjects (see :func:`freesurfer_subjects`) and the longitudinal folders left out of a search."""
    root = Path(subjects_dir)
    if not root.is_dir():
        raise AdapterError("SUBJECTS_DIR not found (or not a folder)", file=root)
    if subjects is None:
        candidates = sorted(
            (entry.name, entry.path)
            for entry in os.scandir(root)
            if entry.is_dir()
            and not entry.name.startswith((".", "fsaverage"))
            and os.path.isdir(os.path.join(entry.path, "stats"))
        )
        longitudinal = [name for name, path in candidates if LONGITUDINAL_RUN in name or _is_base(path)]
        found = [name for name, _ in candidates if name not in set(longitudinal)]
        if not found:
            skipped = (
                f" ({len(longitudinal)} longitudinal folder(s) skipped: {longitudinal[:3]}; list them with subjects=)"
                if longitudinal
                else ""
            )
            raise AdapterError(
                f"no subject folder with a stats/ folder (is this a FreeSurfer SUBJECTS_DIR?){skipped}", file=root
            )
        return found, longitudinal
    if isinstance(subjects, (str, os.PathLike)):
        listing = Path(subjects)
        if not listing.is_file():
            raise AdapterError(
                "subjects file not found (give a list of IDs or a file of one ID per line)", file=listing
            )
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        file = listing
    else:
        names, file = list(subjects), None
    if not names:
        raise AdapterError("the subject list is empty", file=file)
    ids = normalize_ids(names, file=file, column="subjects")
    bad = [s for s in ids if s in (".", "..") or "/" in s or os.sep in s]
    if bad:
        raise AdapterError(f"subject {bad[0]!r} is not a folder name of SUBJECTS_DIR", file=file)
    return [str(s) for s in ids], []


def _warn_longitudinal(longitudinal: list[str], root, stacklevel: int = 3) -> None:
    if longitudinal:
        runs = sum(LONGITUDINAL_RUN in name for name in longitudinal)
        warnings.warn(
            f"{root}: {len(longitudinal)} longitudinal folder(s) are not subjects and were skipped"
            f" ({len(longitudinal) - runs} base template(s) with a base-tps file, {runs} '<tp>.long.<base>'"
            f" run(s)): {longitudinal[:5]}; to read them, list the subjects with subjects=",
            stacklevel=stacklevel,
        )


def stats_files(subjects_dir: str | os.PathLike, kwargs: Mapping) -> list[Path]:
    """Every stats file that :func:`freesurfer_stats` with these keyword arguments reads (those that exist):
    what a cache key must cover."""
    settings = {k: kwargs[k] for k in ("subjects", "segmentation", "parcellation", "hemispheres") if k in kwargs}
    subjects, _ = _subjects(subjects_dir, settings.get("subjects"))  # the reading warns, not the cache key
    segmentation, parcellation = settings.get("segmentation", "aseg"), settings.get("parcellation", "aparc")
    names = _file_names(segmentation, parcellation, settings.get("hemispheres", HEMISPHERES))
    root = Path(subjects_dir)
    return [p for s in subjects for n in names if (p := root / s / "stats" / n).is_file()]


def _file_names(segmentation, parcellation, hemispheres) -> list[str]:
    hemispheres = [hemispheres] if isinstance(hemispheres, str) else hemispheres
    names = [f"{segmentation}.stats"] if segmentation else []
    return names + ([f"{h}.{parcellation}.stats" for h in hemispheres] if parcellation else [])


def _read_all(root: Path, subjects: list[str], plans: list[_Plan], missing_files: str):
    """subject -> plan kind -> StatsFile (None where the file is missing, if allowed)."""
    paths = {(s, p.kind): root / s / "stats" / p.filename for s in subjects for p in plans}
    missing = [key for key, path in paths.items() if not path.is_file()]
    if missing and missing_files == "error":
        subject, kind = missing[0]
        raise AdapterError(
            f"stats file not found ({len(missing)} of {len(paths)} files missing; pass missing_files='absent' to"
            " mark those tokens absent instead)",
            file=paths[missing[0]],
            subject=subject,
        )
    if len(missing) == len(paths):
        raise AdapterError(f"none of the {len(paths)} stats files exists ({', '.join(_names(plans))})", file=root)
    gone = set(missing)
    read = {
        s: {p.kind: None if (s, p.kind) in gone else read_stats(paths[s, p.kind], subject=s) for p in plans}
        for s in subjects
    }
    return read, len(missing)


def _names(plans: list[_Plan]) -> list[str]:
    return [p.filename for p in plans]


def _region_order(read, subjects, plan: _Plan, different_regions: str) -> list[str]:
    """The structures of ``plan``'s file: those of the first subject that has it; another subject with a
    different set is an error naming both (or, with ``different_regions='absent'``, the union is kept)."""
    order: dict[str, None] = {}
    reference = None
    for subject in subjects:
        stats = read[subject][plan.kind]
        if stats is None:
            continue
        if reference is None:
            reference, order = subject, dict.fromkeys(stats.rows)
            continue
        if different_regions == "error" and set(stats.rows) != set(order):
            lacks = [r for r in order if r not in stats.rows]
            extra = [r for r in stats.rows if r not in order]
            said = []
            if lacks:
                said.append(f"lacks {len(lacks)} structure(s) of subject {reference}'s {plan.filename}: {lacks[:5]}")
            if extra:
                said.append(f"has {len(extra)} not in subject {reference}'s: {extra[:5]}")
            raise AdapterError(
                f"{' and '.join(said)}; every subject needs the same structures (rerun the stats, or pass"
                " different_regions='absent' to mark the missing ones absent)",
                file=stats.path,
                subject=subject,
            )
        order.update(dict.fromkeys(stats.rows))
    return list(order)


def _global_names(read, subjects, plans: list[_Plan], global_measures) -> list[tuple[_Plan, str, str]]:
    """(plan, measure in the file, token name) of the global measures asked for."""
    first = {p.kind: next((read[s][p.kind] for s in subjects if read[s][p.kind] is not None), None) for p in plans}
    available: dict[str, tuple[_Plan, str]] = {}
    for plan in plans:
        stats = first[plan.kind]
        for measure, (structure, _, _) in (stats.measures if stats else {}).items():
            if plan.kind == "segmentation":
                available.setdefault(measure, (plan, measure))
            elif global_measures is not True or structure == "Cortex":  # True: only per-hemisphere ones
                available.setdefault(f"{plan.prefix}{measure}", (plan, measure))
    if global_measures is True:
        return [(plan, measure, token) for token, (plan, measure) in available.items()]
    wanted = [global_measures] if isinstance(global_measures, str) else list(global_measures)
    unknown = [w for w in wanted if w not in available]
    if unknown:
        raise AdapterError(
            f"global measure(s) {unknown} not among the '# Measure' lines of"
            f" {', '.join(str(first[p.kind].path) for p in plans if first[p.kind] is not None)}; they are"
            f" {sorted(available)}"
        )
    return [(available[w][0], available[w][1], w) for w in dict.fromkeys(wanted)]


def _collect(
    subjects_dir,
    *,
    subjects,
    segmentation,
    parcellation,
    measures,
    aseg_measures,
    hemispheres,
    global_measures,
    missing_files,
    different_regions,
) -> tuple[pd.DataFrame, list[str], dict]:
    """The wide table (``subject`` + ``<region>_<measure>`` columns), the measure names, and what was read."""
    check_choice(missing_files, MISSING_FILE_POLICIES, "missing_files")
    check_choice(different_regions, DIFFERENT_REGIONS, "different_regions")
    if isinstance(hemispheres, str):
        hemispheres = [hemispheres]
    plans = _plans(segmentation, parcellation, measures, aseg_measures, list(hemispheres))
    root = Path(subjects_dir)
    subject_list, longitudinal = _subjects(root, subjects)
    _warn_longitudinal(longitudinal, root, stacklevel=4)
    read, n_missing = _read_all(root, subject_list, plans, missing_files)
    columns: dict[tuple[str, str], np.ndarray] = {}  # (region, measure) -> values per subject
    measure_names: dict[str, None] = {}
    nan_values: dict[str, list[str]] = {}  # file -> "<structure> <measure>" written as nan there
    for plan in plans:
        regions = _region_order(read, subject_list, plan, different_regions)
        for measure, wanted in plan.measures.items():
            measure_names[measure] = None
            block = np.full((len(subject_list), len(regions)), np.nan)
            for row, subject in enumerate(subject_list):
                stats = read[subject][plan.kind]
                if stats is None:
                    continue
                values = stats.values(stats.column(measure, wanted, subject), subject)
                block[row] = [values.get(region, math.nan) for region in regions]
                written = [f"{name} {measure}" for name, value in values.items() if math.isnan(value)]
                if written:
                    nan_values.setdefault(str(stats.path), []).extend(written)
            for r, region in enumerate(regions):
                columns[f"{plan.prefix}{region}", measure] = block[:, r]
    if global_measures:
        globals_read = _global_columns(read, subject_list, plans, global_measures, nan_values)
        for (token, feature), values in globals_read.items():
            measure_names[feature] = None
            columns[token, feature] = values
    n_nan = sum(len(v) for v in nan_values.values())
    if n_nan:
        file, what = next(iter(nan_values.items()))
        warnings.warn(
            f"{n_nan} value(s) in {len(nan_values)} stats file(s) are written as nan and are read as missing"
            f" (FreeSurfer writes nan where a measure is undefined, e.g. the intensity of an empty structure);"
            f" first: {what[0]} in {file}",
            stacklevel=3,
        )
    # region-major order: a region's measures side by side, as the tokens and features will be
    region_rank = {region: i for i, region in enumerate(dict.fromkeys(region for region, _ in columns))}
    measure_rank = {m: i for i, m in enumerate(measure_names)}
    ordered = sorted(columns, key=lambda key: (region_rank[key[0]], measure_rank[key[1]]))
    table = pd.DataFrame({"subject": subject_list, **{f"{r}{SEPARATOR}{m}": columns[r, m] for r, m in ordered}})
    info = {
        "files": [str(f.path) for s in subject_list for f in (read[s][k.kind] for k in plans) if f is not None],
        "stats_files": _names(plans),
        "missing_files": n_missing,
        "nan_values": n_nan,
        "nan_files": len(nan_values),
        "longitudinal_skipped": len(longitudinal),
        "subjects": len(subject_list),
    }
    return table, list(measure_names), info


def _global_columns(read, subjects, plans, global_measures, nan_values) -> dict[tuple[str, str], np.ndarray]:
    """(token, feature) -> values per subject of the global measures asked for (those written as nan are
    added to ``nan_values``: file -> what)."""
    out = {}
    for plan, measure, token in _global_names(read, subjects, plans, global_measures):
        values = np.full(len(subjects), np.nan)
        units = ""
        for row, subject in enumerate(subjects):
            stats = read[subject][plan.kind]
            if stats is None:
                continue
            if measure not in stats.measures:
                raise AdapterError(
                    f"no '# Measure ..., {measure}, ...' line (other subjects' {plan.filename} have one)",
                    file=stats.path,
                    subject=subject,
                )
            _, values[row], units = stats.measures[measure]
            if math.isnan(values[row]):
                nan_values.setdefault(str(stats.path), []).append(f"# Measure {measure}")
        feature = UNIT_FEATURES.get(units, "value")
        out[token, feature] = values
    return out


def freesurfer_table(
    subjects_dir: str | os.PathLike,
    *,
    subjects: Sequence[str] | str | os.PathLike | None = None,
    segmentation: str | None = "aseg",
    parcellation: str | None = "aparc",
    measures: Sequence[str] | str = ("area", "volume", "thickness"),
    aseg_measures: Sequence[str] | str = ("volume",),
    hemispheres: Sequence[str] = HEMISPHERES,
    global_measures: bool | Sequence[str] | str = False,
    missing_files: str = "error",
    different_regions: str = "error",
) -> pd.DataFrame:
    """The wide table of :func:`freesurfer_stats`: a ``subject`` column, then ``<region>_<measure>`` columns
    (``Left-Hippocampus_volume``, ``lh_superiorfrontal_thickness``) holding the values of the stats files
    (NaN for a missing file or structure). Arguments: see :func:`freesurfer_stats`."""
    table, _, _ = _collect(
        subjects_dir,
        subjects=subjects,
        segmentation=segmentation,
        parcellation=parcellation,
        measures=measures,
        aseg_measures=aseg_measures,
        hemispheres=hemispheres,
        global_measures=global_measures,
        missing_files=missing_files,
        different_regions=different_regions,
    )
    return table


def freesurfer_stats(
    subjects_dir: str | os.PathLike,
    *,
    subjects: Sequence[str] | str | os.PathLike | None = None,
    segmentation: str | None = "aseg",
    parcellation: str | None = "aparc",
    measures: Sequence[str] | str = ("area", "volume", "thickness"),
    aseg_measures: Sequence[str] | str = ("volume",),
    hemispheres: Sequence[str] = HEMISPHERES,
    global_measures: bool | Sequence[str] | str = False,
    missing_files: str = "error",
    different_regions: str = "error",
    name: str = "brain",
) -> TokenizedModality:
    """One token per FreeSurfer region (see the module docstring), its measures as features.

    ``subjects_dir``: a FreeSurfer ``SUBJECTS_DIR``. ``subjects``: IDs or a file of one ID per line (default:
    every folder with a ``stats`` folder, ``fsaverage*`` and longitudinal base and ``.long.`` folders skipped).
    ``segmentation``: the ``<name>.stats`` of
    ``mri_segstats`` to read (``"aseg"``; None: none), with ``aseg_measures``. ``parcellation``: the
    ``?h.<name>.stats`` to read (``"aparc"``, ``"aparc.a2009s"``, ``"aparc.DKTatlas"``; None: none), with
    ``measures`` for both ``hemispheres``. ``global_measures``: False, True (every ``# Measure`` of the
    segmentation file and the per-hemisphere ``Cortex`` ones of the parcellation files) or a list of names
    (``[eTIV, lh_MeanThickness]``). ``missing_files="absent"``: a missing stats file marks its tokens absent for
    that subject (the count is in ``source["missing_files"]``) instead of stopping. ``different_regions="absent"``:
    subjects whose files list different structures are accepted, the structures they lack absent.
    """
    table, measure_names, info = _collect(
        subjects_dir,
        subjects=subjects,
        segmentation=segmentation,
        parcellation=parcellation,
        measures=measures,
        aseg_measures=aseg_measures,
        hemispheres=hemispheres,
        global_measures=global_measures,
        missing_files=missing_files,
        different_regions=different_regions,
    )
    modality = idp_table(table, id_column="subject", layout="region_measure", measures=measure_names, name=name)
    modality.source = {
        "adapter": "brain.freesurfer_stats",
        "subjects_dir": str(subjects_dir),
        "segmentation": segmentation,
        "parcellation": parcellation,
        "measures": list(_check_measures(measures, APARC_MEASURES, "measures")) if parcellation else [],
        "aseg_measures": list(_check_measures(aseg_measures, ASEG_MEASURES, "aseg_measures")) if segmentation else [],
        "global_measures": global_measures if isinstance(global_measures, (bool, str)) else list(global_measures),
        "different_regions": different_regions,
        **info,
        "files": len(info["files"]),
    }
    return modality
