"""A synthetic neuro-omics cohort in real file formats, with planted structure and a known ground truth.

``write_demo_cohort(out_dir, n_subjects=300, seed=0)`` (or ``python -m data_adapters.demo OUT_DIR``) writes,
in about a second::

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

GENERATOR = "data_adapters.demo"
GRID = (24, 28, 24)
VOXEL_MM = 4.0
N_REGIONS = 20
CHROMOSOMES = ("1", "2", "3", "4")
SNPS_PER_CHROMOSOME = 100
BRAIN_CHROMOSOME, GENE_ONLY_CHROMOSOME = "1", "3"
N_CAUSAL_SNPS = 10
N_AFFECTED_REGIONS = 3
GENE_TO_BRAIN = 0.7
AGE_TO_BRAIN = -0.3
BRAIN_NOISE = 0.6
VOXEL_NOISE = 0.5
SITE_OFFSETS = {"S1": 0.0, "S2": 0.8, "S3": -0.6}
BRAIN_TO_MEMORY = 0.7
TARGET_WEIGHTS = {"brain_signal": 0.6, "prs_gene_only": 0.5, "age": 0.3, "noise_sd": 0.6}
DIAGNOSIS_SLOPE, DIAGNOSIS_THRESHOLD = 2.5, 1.0
MISSING_MODALITY_FRACTION = 0.12
MEASURE_NAN_FRACTION = 0.05
HANDEDNESS_MISSING_FRACTION = 0.03
MISSING_CALL_RATE = 0.01
N_NOT_IN_PARTICIPANTS = 5
MIN_SUBJECTS = 20


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def _ellipsoid(grid: tuple[int, int, int]) -> np.ndarray:
    index = np.indices(grid).reshape(3, -1).T.astype(float)
    centre = (np.array(grid) - 1) / 2
    radii = np.array(grid) / 2 - 1.0
    return ((((index - centre) / radii) ** 2).sum(axis=1) <= 1.0).reshape(grid)


def _parcellate(mask: np.ndarray, n_regions: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..n_regions from k-means on voxel coordinates: compact, contiguous parcels of similar size."""
    coords = np.argwhere(mask).astype(float)
    centres = coords[rng.choice(len(coords), n_regions, replace=False)]
    for _ in range(20):
        nearest = ((coords[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        centres = np.stack([coords[nearest == k].mean(axis=0) for k in range(n_regions)])
    labels = np.zeros(mask.shape, dtype=np.int16)
    labels[tuple(coords.astype(int).T)] = nearest + 1
    return labels, centres


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


def _pick(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, int(round(fraction * n)), replace=False)] = True
    return chosen


def _simulate(n_subjects: int, seed: int) -> dict:
    """Every number of the demo cohort, before anything is written."""
    rng = np.random.default_rng(seed)
    n_total = n_subjects + N_NOT_IN_PARTICIPANTS
    eids = np.sort(rng.choice(9_000_000, n_total, replace=False) + 1_000_000)
    in_participants = np.zeros(n_total, dtype=bool)
    in_participants[np.sort(rng.choice(n_total, n_subjects, replace=False))] = True

    # ---- genotypes: HWE dosages of the A1 allele
    n_snps = len(CHROMOSOMES) * SNPS_PER_CHROMOSOME
    chromosome = np.repeat(CHROMOSOMES, SNPS_PER_CHROMOSOME)
    position = np.concatenate(
        [np.sort(rng.choice(np.arange(10_000, 5_000_000), SNPS_PER_CHROMOSOME, replace=False)) for _ in CHROMOSOMES]
    )
    snp_ids = np.array([f"rs{100_001 + j}" for j in range(n_snps)])
    a1_frequency = rng.uniform(0.1, 0.5, n_snps)
    dosage = rng.binomial(2, a1_frequency, size=(n_total, n_snps)).astype(np.float64)
    bases = np.array(list("ACGT"))
    allele_1 = rng.choice(bases, n_snps)
    allele_2 = bases[(np.searchsorted(bases, allele_1) + rng.integers(1, 4, n_snps)) % 4]  # never equal to A1

    def causal(chrom: str) -> tuple[np.ndarray, np.ndarray]:
        snps = np.sort(rng.choice(np.flatnonzero(chromosome == chrom), N_CAUSAL_SNPS, replace=False))
        weights = rng.uniform(0.5, 1.0, N_CAUSAL_SNPS) * rng.choice([-1.0, 1.0], N_CAUSAL_SNPS)
        return snps, weights

    brain_snps, brain_weights = causal(BRAIN_CHROMOSOME)
    gene_only_snps, gene_only_weights = causal(GENE_ONLY_CHROMOSOME)
    prs_brain = _z(dosage[:, brain_snps] @ brain_weights)
    prs_gene_only = _z(dosage[:, gene_only_snps] @ gene_only_weights)

    # ---- people
    age = np.round(rng.uniform(45.0, 80.0, n_total), 1)
    age_z = _z(age)
    sex = rng.choice(np.array(["F", "M"]), n_total)
    site = rng.choice(np.array(list(SITE_OFFSETS)), n_total, p=[0.45, 0.35, 0.20])

    # ---- brain
    mask = _ellipsoid(GRID)
    atlas, centres = _parcellate(mask, N_REGIONS, rng)
    hemisphere = np.where(centres[:, 0] < (GRID[0] - 1) / 2, "L", "R")
    region_names = [f"{hemisphere[k]}_region{k + 1:02d}" for k in range(N_REGIONS)]
    affected = np.sort(rng.choice(N_REGIONS, N_AFFECTED_REGIONS, replace=False))
    is_affected = np.isin(np.arange(N_REGIONS), affected)
    baseline = rng.uniform(2.0, 4.0, N_REGIONS)
    bio = (
        GENE_TO_BRAIN * prs_brain[:, None] * is_affected[None, :]
        + AGE_TO_BRAIN * age_z[:, None]
        + rng.normal(0.0, BRAIN_NOISE, (n_total, N_REGIONS))
    )
    site_offset = np.array([SITE_OFFSETS[s] for s in site])
    scanned = baseline[None, :] + bio + site_offset[:, None]
    brain_signal = _z(bio[:, affected].mean(axis=1))

    # ---- behaviour, target, diagnosis
    memory = BRAIN_TO_MEMORY * brain_signal + rng.normal(0.0, 0.7, n_total)
    reaction_time = 450.0 + 30.0 * age_z + rng.normal(0.0, 40.0, n_total)
    vocabulary = rng.normal(30.0, 5.0, n_total)
    mood = rng.normal(0.0, 1.0, n_total)
    handedness = rng.choice(np.array(["right", "left", "ambidextrous"]), n_total, p=[0.85, 0.10, 0.05])
    w = TARGET_WEIGHTS
    target = (
        w["brain_signal"] * brain_signal
        + w["prs_gene_only"] * prs_gene_only
        + w["age"] * age_z
        + rng.normal(0.0, w["noise_sd"], n_total)
    )
    risk = 1.0 / (1.0 + np.exp(-DIAGNOSIS_SLOPE * (_z(target) - DIAGNOSIS_THRESHOLD)))
    diagnosis = (rng.random(n_total) < risk).astype(np.int64)

    # ---- what is missing
    participants = np.flatnonzero(in_participants)
    n = len(participants)
    no_scan, no_genotype, no_behaviour = (participants[_pick(rng, n, MISSING_MODALITY_FRACTION)] for _ in range(3))
    has_scan = in_participants.copy()
    has_scan[no_scan] = False
    has_genotype = np.ones(n_total, dtype=bool)
    has_genotype[no_genotype] = False
    has_behaviour = in_participants.copy()
    has_behaviour[no_behaviour] = False
    measure_nan = {
        m: _pick(rng, n_total, MEASURE_NAN_FRACTION) for m in ("memory", "reaction_time", "vocabulary", "mood")
    }
    handedness_nan = _pick(rng, n_total, HANDEDNESS_MISSING_FRACTION)
    call_missing = rng.random((n_total, n_snps)) < MISSING_CALL_RATE
    voxel_noise_seed = int(rng.integers(2**63 - 1))
    orders = {key: rng.permutation(n_total) for key in ("scan", "behaviour")}
    return {
        "eids": eids,
        "in_participants": in_participants,
        "chromosome": chromosome,
        "position": position,
        "snp_ids": snp_ids,
        "dosage": dosage,
        "allele_1": allele_1,
        "allele_2": allele_2,
        "brain_snps": brain_snps,
        "brain_weights": brain_weights,
        "gene_only_snps": gene_only_snps,
        "gene_only_weights": gene_only_weights,
        "age": age,
        "sex": sex,
        "site": site,
        "atlas": atlas,
        "region_names": region_names,
        "affected": affected,
        "baseline": baseline,
        "scanned": scanned,
        "memory": memory,
        "reaction_time": reaction_time,
        "vocabulary": vocabulary,
        "mood": mood,
        "handedness": handedness,
        "target": target,
        "diagnosis": diagnosis,
        "no_scan": no_scan,
        "no_genotype": no_genotype,
        "no_behaviour": no_behaviour,
        "has_scan": has_scan,
        "has_genotype": has_genotype,
        "has_behaviour": has_behaviour,
        "measure_nan": measure_nan,
        "handedness_nan": handedness_nan,
        "call_missing": call_missing,
        "voxel_noise_seed": voxel_noise_seed,
        "orders": orders,
    }


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


def _write_files(sim: dict, folder: Path, n_subjects: int, seed: int) -> dict[str, str]:
    from bed_reader import to_bed

    eids = sim["eids"].astype(str)
    participants = sim["in_participants"]
    files = {
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
    _write_csv(
        pd.DataFrame(
            {
                "eid": eids,
                "age": sim["age"],
                "sex": sim["sex"],
                "site": sim["site"],
                "target": np.round(sim["target"], 5),
                "diagnosis": sim["diagnosis"],
            }
        )[participants],
        folder / files["participants"],
    )

    behaviour = {"eid": eids}
    for measure, decimals in (("memory", 4), ("reaction_time", 1), ("vocabulary", 2), ("mood", 4)):
        behaviour[measure] = np.where(sim["measure_nan"][measure], np.nan, np.round(sim[measure], decimals))
    behaviour["handedness"] = np.where(sim["handedness_nan"], None, sim["handedness"])
    order = sim["orders"]["behaviour"]
    _write_csv(pd.DataFrame(behaviour).iloc[order][sim["has_behaviour"][order]], folder / files["behaviour"])

    # scans: one volume per subject with a scan, in the manifest's own order
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

    genotyped = np.flatnonzero(sim["has_genotype"])
    calls = np.where(sim["call_missing"], np.nan, sim["dosage"])[genotyped]
    to_bed(
        folder / files["genotypes_bed"],
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
    truth = _ground_truth(sim, n_subjects, seed, files)
    atomic_write_bytes(folder / files["ground_truth"], (json.dumps(truth, indent=1) + "\n").encode())
    return files


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
    sim = _simulate(int(n_subjects), int(seed))
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
