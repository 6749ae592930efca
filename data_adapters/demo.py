"""A synthetic neuro-omics cohort in real file formats, with planted structure and a known ground truth.

``write_demo_cohort(out_dir, n_subjects=300, seed=0)`` (or ``python -m data_adapters.demo OUT_DIR``) writes::

    participants.csv        eid, age, sex (F/M), site (S1/S2/S3), target (continuous), diagnosis (0/1)
    behaviour.csv           eid, memory, reaction_time, vocabulary, mood (numeric, ~5% NaN each),
                            handedness (categorical: right/left/ambidextrous, ~3% missing)
    brain_manifest.csv      eid, path   (paths relative to this file's folder: nifti/<eid>.nii.gz)
    nifti/<eid>.nii.gz      float32 24 x 28 x 24 volumes, 4 mm voxels
    atlas.nii.gz            int16 labels 1..20 (0 = background): contiguous parcels of an ellipsoid "brain"
    atlas_labels.csv        id, name
    genotypes.bed/.bim/.fam PLINK 1 (bed-reader), 400 SNPs on chromosomes 1-4, ~1% missing calls;
                            values count the A1 allele (.bim column 5), IID = FID = eid
    ground_truth.json       everything below, with the SNP IDs, region names and coefficients

The generative model (``z`` = standardised over the simulated subjects):

* genes -> brain: 10 SNPs on chromosome 1 form a score ``prs_brain`` (weights +-0.5..1 per A1 allele);
  three regions (``brain_regions`` in ground_truth.json) get ``+0.7 * z(prs_brain)``.
* brain: ``bio[s, r] = 0.7 * z(prs_brain) * [r affected] - 0.3 * z(age) + N(0, 0.6)``; the scanned value of
  region ``r`` is ``baseline[r] + bio[s, r] + site_offset[site]`` (site offsets 0, +0.8, -0.6 for S1..S3 on
  every region: a scanner effect, unrelated to anything else), and each voxel adds ``N(0, 0.5)`` noise, so
  the atlas mean of a region recovers its value to about +-0.03.
* brain -> behaviour: ``memory = 0.7 * z(brain_signal) + N(0, 0.7)`` where ``brain_signal`` is the mean of
  ``bio`` over the three regions; ``reaction_time`` depends on age only; ``vocabulary``, ``mood`` and
  ``handedness`` are noise.
* target: ``0.6 * z(brain_signal) + 0.5 * z(prs_gene_only) + 0.3 * z(age) + N(0, 0.6)``; ``prs_gene_only`` is
  10 SNPs on chromosome 3 that touch no brain region: a signal only the genotypes carry.
* diagnosis: Bernoulli(sigmoid(2.5 * (z(target) - 1))), about 20% cases.
* chromosomes 2 and 4 carry nothing.

Missing data: 12% of participants each (chosen independently) have no scan (no manifest row, no file),
no genotypes (no .fam row) or no behaviour row; 5 extra genotyped people are not in participants (as
after consent withdrawal). Every file lists subjects in its own order. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .core import AdapterError, atomic_write_bytes
from .demo_simulation import (
    AGE_TO_BRAIN,
    BRAIN_CHROMOSOME,
    BRAIN_NOISE,
    BRAIN_TO_MEMORY,
    CHROMOSOMES,
    DIAGNOSIS_SLOPE,
    DIAGNOSIS_THRESHOLD,
    GENE_ONLY_CHROMOSOME,
    GENE_TO_BRAIN,
    GRID,
    HANDEDNESS_MISSING_FRACTION,
    MEASURE_NAN_FRACTION,
    MISSING_CALL_RATE,
    N_NOT_IN_PARTICIPANTS,
    N_REGIONS,
    SITE_OFFSETS,
    TARGET_WEIGHTS,
    VOXEL_MM,
    VOXEL_NOISE,
    simulate,
)

GENERATOR = "data_adapters.demo"
MIN_SUBJECTS = 20


def _affine() -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -(np.array(GRID) - 1) / 2 * VOXEL_MM  # voxel centre of the grid at 0 mm
    return affine


def _save_nifti(data: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(data, _affine())
    image.header.set_xyzt_units("mm")
    # nibabel writes gzip with a fixed mtime, so the bytes depend on the data only
    nib.save(image, path)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode())


def _ground_truth(sim: dict, n_subjects: int, seed: int, files: dict[str, str]) -> dict:
    region_names = sim["region_names"]
    participants = sim["in_participants"]
    return {
        "generator": GENERATOR,
        "seed": seed,
        "n_subjects": n_subjects,
        "id_column": "eid",
        "files": files,
        "grid": {"shape": list(GRID), "voxel_mm": VOXEL_MM, "n_regions": N_REGIONS},
        "genes_to_brain": {
            "chromosome": BRAIN_CHROMOSOME,
            "snps": sim["snp_ids"][sim["brain_snps"]].tolist(),
            "weights_per_a1_allele": np.round(sim["brain_weights"], 6).tolist(),
            "brain_regions": [region_names[k] for k in sim["affected"]],
            "brain_region_ids": [int(k) + 1 for k in sim["affected"]],
            "effect_per_sd_of_score": GENE_TO_BRAIN,
        },
        "gene_only_to_target": {
            "chromosome": GENE_ONLY_CHROMOSOME,
            "snps": sim["snp_ids"][sim["gene_only_snps"]].tolist(),
            "weights_per_a1_allele": np.round(sim["gene_only_weights"], 6).tolist(),
            "effect_per_sd_of_score": TARGET_WEIGHTS["prs_gene_only"],
        },
        "null_chromosomes": [c for c in CHROMOSOMES if c not in (BRAIN_CHROMOSOME, GENE_ONLY_CHROMOSOME)],
        "brain": {
            "model": "scanned[s,r] = baseline[r] + bio[s,r] + site_offset[site];"
            " bio = 0.7*z(prs_brain)*[r affected] - 0.3*z(age) + N(0, 0.6); voxel noise N(0, 0.5)",
            "baseline": dict(zip(region_names, np.round(sim["baseline"], 6).tolist(), strict=True)),
            "age_effect_per_sd": AGE_TO_BRAIN,
            "noise_sd": BRAIN_NOISE,
            "voxel_noise_sd": VOXEL_NOISE,
        },
        "site_offsets": SITE_OFFSETS,
        "behaviour": {
            "memory": f"{BRAIN_TO_MEMORY} * z(brain_signal) + N(0, 0.7); brain_signal = mean of bio over brain_regions",
            "reaction_time": "450 + 30 * z(age) + N(0, 40)",
            "vocabulary": "N(30, 5), unrelated",
            "mood": "N(0, 1), unrelated",
            "handedness": "right/left/ambidextrous with p = 0.85/0.10/0.05, unrelated",
        },
        "target": {
            "model": "0.6 * z(brain_signal) + 0.5 * z(prs_gene_only) + 0.3 * z(age) + N(0, 0.6)",
            "weights": TARGET_WEIGHTS,
        },
        "diagnosis": {
            "model": f"Bernoulli(sigmoid({DIAGNOSIS_SLOPE} * (z(target) - {DIAGNOSIS_THRESHOLD})))",
            "cases": int(sim["diagnosis"][participants].sum()),
        },
        "missing": {
            "participants_without_scan": int(len(sim["no_scan"])),
            "participants_without_genotypes": int(len(sim["no_genotype"])),
            "participants_without_behaviour": int(len(sim["no_behaviour"])),
            "participants_without_any_modality": int(
                (participants & ~sim["has_scan"] & ~sim["has_genotype"] & ~sim["has_behaviour"]).sum()
            ),
            "behaviour_measure_nan_fraction": MEASURE_NAN_FRACTION,
            "handedness_missing_fraction": HANDEDNESS_MISSING_FRACTION,
            "genotype_call_missing_rate": MISSING_CALL_RATE,
        },
        "genotyped_not_in_participants": N_NOT_IN_PARTICIPANTS,
    }


FILES = {
    "participants": "participants.csv",
    "behaviour": "behaviour.csv",
    "manifest": "brain_manifest.csv",
    "nifti_dir": "nifti",
    "atlas": "atlas.nii.gz",
    "atlas_labels": "atlas_labels.csv",
    "genotypes": "genotypes",
    "genotypes_bed": "genotypes.bed",
    "genotypes_bim": "genotypes.bim",
    "genotypes_fam": "genotypes.fam",
    "ground_truth": "ground_truth.json",
}
"""Name -> file name (or PLINK prefix, or folder) of what the demo writes, relative to its folder."""


def _write_files(sim: dict, folder: Path, n_subjects: int, seed: int) -> dict[str, str]:
    files = dict(FILES)
    eids = sim["eids"].astype(str)
    _write_participants(sim, eids, folder / files["participants"])
    _write_behaviour(sim, eids, folder / files["behaviour"])
    _write_scans(sim, eids, folder, files)
    _write_genotypes(sim, eids, folder / files["genotypes_bed"])
    truth = _ground_truth(sim, n_subjects, seed, files)
    atomic_write_bytes(folder / files["ground_truth"], (json.dumps(truth, indent=1) + "\n").encode())
    return files


def _write_participants(sim: dict, eids: np.ndarray, path: Path) -> None:
    table = pd.DataFrame(
        {
            "eid": eids,
            "age": sim["age"],
            "sex": sim["sex"],
            "site": sim["site"],
            "target": np.round(sim["target"], 5),
            "diagnosis": sim["diagnosis"],
        }
    )
    _write_csv(table[sim["in_participants"]], path)


def _write_behaviour(sim: dict, eids: np.ndarray, path: Path) -> None:
    behaviour = {"eid": eids}
    for measure, decimals in (("memory", 4), ("reaction_time", 1), ("vocabulary", 2), ("mood", 4)):
        behaviour[measure] = np.where(sim["measure_nan"][measure], np.nan, np.round(sim[measure], decimals))
    behaviour["handedness"] = np.where(sim["handedness_nan"], None, sim["handedness"])
    order = sim["orders"]["behaviour"]
    _write_csv(pd.DataFrame(behaviour).iloc[order][sim["has_behaviour"][order]], path)


def _write_scans(sim: dict, eids: np.ndarray, folder: Path, files: dict[str, str]) -> None:
    """The atlas and its labels, and one volume per subject with a scan, in the manifest's own order."""
    (folder / files["nifti_dir"]).mkdir()
    atlas = sim["atlas"]
    _save_nifti(atlas, folder / files["atlas"])
    _write_csv(
        pd.DataFrame({"id": np.arange(1, N_REGIONS + 1), "name": sim["region_names"]}), folder / files["atlas_labels"]
    )
    inside = atlas > 0
    region_of_voxel = atlas[inside] - 1
    voxel_rng = np.random.default_rng(sim["voxel_noise_seed"])
    rows = []
    for s in sim["orders"]["scan"]:
        if not sim["has_scan"][s]:
            continue
        volume = np.zeros(GRID, dtype=np.float32)
        noise = voxel_rng.normal(0.0, VOXEL_NOISE, region_of_voxel.size)
        volume[inside] = sim["scanned"][s, region_of_voxel] + noise
        relative = f"{files['nifti_dir']}/{eids[s]}.nii.gz"
        _save_nifti(volume, folder / relative)
        rows.append((eids[s], relative))
    _write_csv(pd.DataFrame(rows, columns=["eid", "path"]), folder / files["manifest"])


def _write_genotypes(sim: dict, eids: np.ndarray, bed_path: Path) -> None:
    """The PLINK 1 files (.bed/.bim/.fam beside ``bed_path``) of the genotyped people."""
    from bed_reader import to_bed

    genotyped = np.flatnonzero(sim["has_genotype"])
    calls = np.where(sim["call_missing"], np.nan, sim["dosage"])[genotyped]
    to_bed(
        bed_path,
        calls,
        properties={
            "fid": eids[genotyped],
            "iid": eids[genotyped],
            "sex": np.where(sim["sex"][genotyped] == "M", 1, 2),
            "chromosome": sim["chromosome"],
            "sid": sim["snp_ids"],
            "bp_position": sim["position"],
            "allele_1": sim["allele_1"],
            "allele_2": sim["allele_2"],
        },
        num_threads=1,
    )


def _is_demo_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / "ground_truth.json").read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def write_demo_cohort(out_dir: str | Path, n_subjects: int = 300, seed: int = 0) -> dict[str, Path]:
    """Write the demo cohort (see the module docstring) into ``out_dir``; returns name -> path.

    Names: participants, behaviour, manifest, nifti_dir, atlas, atlas_labels, genotypes (the PLINK prefix),
    genotypes_bed/_bim/_fam, ground_truth. The folder is built aside and renamed into place: a previous
    demo cohort there is replaced, any other non-empty folder is refused.
    """
    from .io import replace_folder, temporary_folder

    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < MIN_SUBJECTS:
        raise AdapterError(f"n_subjects must be an integer >= {MIN_SUBJECTS}, got {n_subjects!r}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _is_demo_folder(out_dir))):
        raise AdapterError("exists and is not a demo cohort folder; choose a new or empty folder", file=out_dir)
    sim = simulate(int(n_subjects), int(seed))
    tmp = temporary_folder(out_dir.parent, out_dir.name)
    try:
        tmp.mkdir()
        files = _write_files(sim, tmp, int(n_subjects), int(seed))
        replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: out_dir / name for key, name in files.items()}


def load_demo_cohort(folder: str | Path, *, join: str = "outer"):
    """The demo cohort through the adapters: behaviour, genes (one token per chromosome), brain (atlas regions).

    Needs ``data_adapters.gene.plink`` and ``data_adapters.brain.regions_from_nifti``; targets are
    ``target`` and ``diagnosis``, confounds ``age``, ``sex`` and ``site``.
    """
    from .behaviour import measures_table
    from .cohort import build_cohort

    folder = Path(folder)
    try:
        from .brain import regions_from_nifti
        from .gene import plink
    except ImportError as err:
        raise AdapterError(f"the gene and brain adapters are needed to load the demo cohort ({err})") from err
    modalities = {
        "gene": plink(folder / "genotypes", grouping="chromosome"),
        "brain": regions_from_nifti(
            folder / "brain_manifest.csv", folder / "atlas.nii.gz", folder / "atlas_labels.csv"
        ),
        "behaviour": measures_table(folder / "behaviour.csv", categorical=["handedness"]),
    }
    return build_cohort(
        folder / "participants.csv",
        modalities,
        targets=["target", "diagnosis"],
        confounds=["age", "sex", "site"],
        join=join,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_adapters.demo",
        description="Write a synthetic neuro-omics cohort with a known ground truth.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--subjects", type=int, default=300, help="participants (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    try:
        paths = write_demo_cohort(args.out_dir, n_subjects=args.subjects, seed=args.seed)
    except AdapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    truth = json.loads(paths["ground_truth"].read_text())
    missing = truth["missing"]
    print(f"demo cohort of {args.subjects} participants (seed {args.seed}) in {args.out_dir}")
    print(
        f"  without scan {missing['participants_without_scan']}, without genotypes"
        f" {missing['participants_without_genotypes']}, without behaviour {missing['participants_without_behaviour']}"
    )
    for key, path in paths.items():
        print(f"  {key:14s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
