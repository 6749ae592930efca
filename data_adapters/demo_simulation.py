"""The demo cohort's generative model: every number of it drawn from one seeded generator (see
:mod:`data_adapters.demo` for the model and the files written from these numbers)."""

from __future__ import annotations

import numpy as np

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


def _pick(rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.choice(n, int(round(fraction * n)), replace=False)] = True
    return chosen


def simulate(n_subjects: int, seed: int) -> dict:
    """Every number of the demo cohort, before anything is written.

    The steps draw from one generator, in this order: moving a draw changes every number after it (the demo
    cohort is the same bytes for the same seed)."""
    rng = np.random.default_rng(seed)
    n_total = n_subjects + N_NOT_IN_PARTICIPANTS
    eids = np.sort(rng.choice(9_000_000, n_total, replace=False) + 1_000_000)
    in_participants = np.zeros(n_total, dtype=bool)
    in_participants[np.sort(rng.choice(n_total, n_subjects, replace=False))] = True
    genes = _simulate_genotypes(rng, n_total)
    prs_brain = _z(genes["dosage"][:, genes["brain_snps"]] @ genes["brain_weights"])
    prs_gene_only = _z(genes["dosage"][:, genes["gene_only_snps"]] @ genes["gene_only_weights"])
    people = _simulate_people(rng, n_total)
    age_z = _z(people["age"])
    brain, brain_signal = _simulate_brain(rng, prs_brain, age_z, people["site"])
    outcomes = _simulate_outcomes(rng, brain_signal, prs_gene_only, age_z)
    missing = _simulate_missing(rng, in_participants, n_snps=len(genes["snp_ids"]))
    return {"eids": eids, "in_participants": in_participants, **genes, **people, **brain, **outcomes, **missing}


def _simulate_genotypes(rng: np.random.Generator, n_total: int) -> dict:
    """HWE dosages of the A1 allele, the SNPs' positions and alleles, and the causal SNPs of the two scores."""
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
    return {
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
    }


def _simulate_people(rng: np.random.Generator, n_total: int) -> dict:
    age = np.round(rng.uniform(45.0, 80.0, n_total), 1)
    sex = rng.choice(np.array(["F", "M"]), n_total)
    site = rng.choice(np.array(list(SITE_OFFSETS)), n_total, p=[0.45, 0.35, 0.20])
    return {"age": age, "sex": sex, "site": site}


def _simulate_brain(
    rng: np.random.Generator, prs_brain: np.ndarray, age_z: np.ndarray, site: np.ndarray
) -> tuple[dict, np.ndarray]:
    """The atlas, the affected regions and each subject's scanned region values; and ``z(brain_signal)``."""
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
        + rng.normal(0.0, BRAIN_NOISE, (len(prs_brain), N_REGIONS))
    )
    site_offset = np.array([SITE_OFFSETS[s] for s in site])
    scanned = baseline[None, :] + bio + site_offset[:, None]
    brain_signal = _z(bio[:, affected].mean(axis=1))
    brain = {
        "atlas": atlas,
        "region_names": region_names,
        "affected": affected,
        "baseline": baseline,
        "scanned": scanned,
    }
    return brain, brain_signal


def _simulate_outcomes(
    rng: np.random.Generator, brain_signal: np.ndarray, prs_gene_only: np.ndarray, age_z: np.ndarray
) -> dict:
    """Behaviour measures, the target and the diagnosis."""
    n_total = len(brain_signal)
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
    return {
        "memory": memory,
        "reaction_time": reaction_time,
        "vocabulary": vocabulary,
        "mood": mood,
        "handedness": handedness,
        "target": target,
        "diagnosis": diagnosis,
    }


def _simulate_missing(rng: np.random.Generator, in_participants: np.ndarray, n_snps: int) -> dict:
    """What is missing (modalities, measures, calls), the seed of the voxel noise, and each file's row order."""
    n_total = len(in_participants)
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
