"""FreeSurfer stats files as FreeSurfer 7 writes them (``mri_segstats`` -> ``aseg.stats``,
``mris_anatomical_stats`` -> ``?h.aparc.stats``), with random values, for the tests.

The layout follows FreeSurfer's documented format: ``#`` header lines, ``# Measure <structure>, <name>,
<description>, <value>, <units>`` lines, ``# TableCol`` descriptions, a ``# ColHeaders`` line, then one
whitespace-aligned row per structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DK_REGIONS = [
    "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal", "fusiform",
    "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital", "lateralorbitofrontal",
    "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral", "parsopercularis",
    "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate", "precentral",
    "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal", "superiorparietal",
    "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal", "insula",
]  # fmt: skip
"""The 34 Desikan-Killiany regions of ``?h.aparc.stats``, in FreeSurfer's order."""

ASEG_STRUCTURES = [
    (4, "Left-Lateral-Ventricle"), (5, "Left-Inf-Lat-Vent"), (7, "Left-Cerebellum-White-Matter"),
    (8, "Left-Cerebellum-Cortex"), (10, "Left-Thalamus"), (11, "Left-Caudate"), (12, "Left-Putamen"),
    (13, "Left-Pallidum"), (14, "3rd-Ventricle"), (15, "4th-Ventricle"), (16, "Brain-Stem"),
    (17, "Left-Hippocampus"), (18, "Left-Amygdala"), (24, "CSF"), (26, "Left-Accumbens-area"),
    (28, "Left-VentralDC"), (43, "Right-Lateral-Ventricle"), (49, "Right-Thalamus"), (53, "Right-Hippocampus"),
    (54, "Right-Amygdala"), (77, "WM-hypointensities"), (251, "CC_Posterior"), (255, "CC_Anterior"),
]  # fmt: skip
"""(SegId, StructName) of a part of ``aseg.stats`` (FreeSurfer 7 names)."""

ASEG_GLOBALS = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", "mm^3"),
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", "mm^3"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", "mm^3"),
    ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV", "Ratio of BrainSegVol to eTIV", "unitless"),
    ("SurfaceHoles", "SurfaceHoles", "Total number of defect holes in surfaces prior to fixing", "unitless"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
]
APARC_GLOBALS = [
    ("Cortex", "NumVert", "Number of Vertices", "unitless"),
    ("Cortex", "WhiteSurfArea", "White Surface Total Area", "mm^2"),
    ("Cortex", "MeanThickness", "Mean Thickness", "mm"),
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
]
ASEG_COLUMNS = ["Index", "SegId", "NVoxels", "Volume_mm3", "StructName", "normMean", "normStdDev", "normMin",
                "normMax", "normRange"]  # fmt: skip
APARC_COLUMNS = ["StructName", "NumVert", "SurfArea", "GrayVol", "ThickAvg", "ThickStd", "MeanCurv", "GausCurv",
                 "FoldInd", "CurvInd"]  # fmt: skip


def _globals_lines(measures: list[tuple[str, str, str, str]], values: dict[str, float]) -> list[str]:
    return [f"# Measure {s}, {n}, {d}, {values[n]:.6f}, {u}" for s, n, d, u in measures]


def write_aseg(
    path: Path,
    rng: np.random.Generator,
    *,
    subject: str = "sub-01",
    structures: list[tuple[int, str]] = ASEG_STRUCTURES,
    colheaders: bool = True,
) -> list[str]:
    """An ``aseg.stats`` of random volumes and intensities; returns its lines."""
    values = {n: float(rng.uniform(1e5, 1.6e6)) for _, n, _, u in ASEG_GLOBALS if u != "unitless"}
    values |= {"BrainSegVol-to-eTIV": float(rng.uniform(0.6, 0.9)), "SurfaceHoles": float(rng.integers(5, 80))}
    lines = [
        "# Title Segmentation Statistics ",
        "# ",
        "# generating_program mri_segstats",
        "# cvs_version 7.4.1",
        f"# cmdline mri_segstats --seed 1234 --seg mri/aseg.mgz --sum stats/aseg.stats --pv mri/norm.mgz --empty"
        f" --brainmask mri/brainmask.mgz --brain-vol-from-seg --excludeid 0 --excl-ctxgmwm --supratent"
        f" --subcortgray --in mri/norm.mgz --in-intensity-name norm --in-intensity-units MR --etiv"
        f" --surf-wm-vol --surf-ctx-vol --totalgray --euler --ctab /usr/local/freesurfer/ASegStatsLUT.txt"
        f" --subject {subject} ",
        "# sysname  Linux",
        "# hostname node01",
        "# machine  x86_64",
        "# user     fsuser",
        "# anatomy_type volume",
        "# ",
        "# SUBJECTS_DIR /data/derivatives/freesurfer",
        f"# subjectname {subject}",
        *_globals_lines(ASEG_GLOBALS, values),
        "# SegVolFile mri/aseg.mgz ",
        "# ColorTable /usr/local/freesurfer/ASegStatsLUT.txt ",
        "# InVolFile  mri/norm.mgz ",
        "# Excluding Cortical Gray and White Matter",
        "# ExcludeSegId 0 2 3 41 42 ",
        "# VoxelVolume_mm3 1 ",
    ]
    units = ["NA", "NA", "unitless", "mm^3", "NA", "MR", "MR", "MR", "MR", "MR"]
    for i, (column, unit) in enumerate(zip(ASEG_COLUMNS, units, strict=True), start=1):
        lines += [f"# TableCol {i:2d} ColHeader {column}", f"# TableCol {i:2d} FieldName {column}",
                  f"# TableCol {i:2d} Units     {unit}"]  # fmt: skip
    lines += [f"# NRows {len(structures)} ", f"# NTableCols {len(ASEG_COLUMNS)} "]
    if colheaders:
        lines.append("# ColHeaders  " + " ".join(ASEG_COLUMNS) + "  ")
    for index, (seg_id, name) in enumerate(structures, start=1):
        voxels = int(rng.integers(10, 60000))
        volume = voxels * float(rng.uniform(0.95, 1.05))
        mean, std = rng.uniform(20, 110), rng.uniform(3, 20)
        low, high = rng.uniform(0, 40), rng.uniform(110, 160)
        lines.append(
            f"{index:3d} {seg_id:4d} {voxels:9d} {volume:10.1f}  {name:<32s} {mean:9.4f} {std:9.4f}"
            f" {low:9.4f} {high:9.4f} {high - low:9.4f} "
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return lines


def write_aparc(
    path: Path,
    rng: np.random.Generator,
    *,
    hemi: str = "lh",
    subject: str = "sub-01",
    regions: list[str] = DK_REGIONS,
    parcellation: str = "aparc",
    columns: list[str] = APARC_COLUMNS,
) -> list[str]:
    """A ``<hemi>.<parcellation>.stats`` of random surface measures; returns its lines."""
    values = {
        "NumVert": float(rng.integers(110000, 160000)),
        "WhiteSurfArea": float(rng.uniform(70000, 110000)),
        "MeanThickness": float(rng.uniform(2.2, 2.8)),
        "BrainSegVol": float(rng.uniform(9e5, 1.4e6)),
        "eTIV": float(rng.uniform(1.2e6, 1.8e6)),
    }
    lines = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ",
        "# ",
        "# CreationTime 2024/05/02-10:11:12-GMT",
        "# generating_program mris_anatomical_stats",
        "# cvs_version 7.4.1",
        "# mrisurf.c-cvs_version 7.4.1",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label -f"
        f" ../stats/{hemi}.{parcellation}.stats -b -a ../label/{hemi}.{parcellation}.annot -c"
        f" ../label/aparc.annot.ctab {subject} {hemi} white ",
        "# sysname  Linux",
        "# hostname node01",
        "# machine  x86_64",
        "# user     fsuser",
        "# ",
        "# SUBJECTS_DIR /data/derivatives/freesurfer",
        "# anatomy_type surface",
        f"# subjectname {subject}",
        f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.{parcellation}.annot ",
        "# AnnotationFileTimeStamp 2024/05/02 09:58:40 ",
        *_globals_lines(APARC_GLOBALS, values),
        f"# NTableCols {len(columns)}",
        "# ColHeaders " + " ".join(columns),
    ]
    for region in regions:
        row = {
            "StructName": f"{region:<40s}",
            "NumVert": f"{int(rng.integers(300, 12000)):6d}",
            "SurfArea": f"{int(rng.integers(200, 8000)):6d}",
            "GrayVol": f"{int(rng.integers(600, 25000)):6d}",
            "ThickAvg": f"{rng.uniform(1.5, 3.8):5.3f}",
            "ThickStd": f"{rng.uniform(0.3, 0.9):5.3f}",
            "MeanCurv": f"{rng.uniform(0.08, 0.2):9.3f}",
            "GausCurv": f"{rng.uniform(0.01, 0.05):9.3f}",
            "FoldInd": f"{int(rng.integers(2, 200)):8d}",
            "CurvInd": f"{rng.uniform(0.2, 20):5.1f}",
        }
        lines.append(" ".join(row[c] for c in columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return lines


def write_subjects_dir(root: Path, subjects: list[str], seed: int = 0, parcellation: str = "aparc") -> Path:
    """A SUBJECTS_DIR with ``stats/aseg.stats`` and ``stats/{lh,rh}.<parcellation>.stats`` per subject, and an
    ``fsaverage`` folder (no stats) as recon-all leaves it."""
    rng = np.random.default_rng(seed)
    for subject in subjects:
        stats = root / subject / "stats"
        write_aseg(stats / "aseg.stats", rng, subject=subject)
        for hemi in ("lh", "rh"):
            write_aparc(stats / f"{hemi}.{parcellation}.stats", rng, hemi=hemi, subject=subject)
    (root / "fsaverage" / "surf").mkdir(parents=True, exist_ok=True)
    return root


def set_field(path: Path, structure: str, column: str, text: str) -> None:
    """Write ``text`` (``nan``, say) into ``column`` of ``structure``'s row of a stats file, found by the file's
    ``# ColHeaders`` line."""
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("# ColHeaders")).split()[2:]
    at = header.index("StructName")
    for i, line in enumerate(lines):
        fields = line.split()
        if not line.startswith("#") and len(fields) == len(header) and fields[at] == structure:
            fields[header.index(column)] = text
            lines[i] = " ".join(fields)
            path.write_text("\n".join(lines) + "\n")
            return
    raise KeyError(structure)
