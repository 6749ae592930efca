"""Steps to dense quality at scale: does MoT reach the dense twin's validation loss in fewer steps?

The MoT paper's headline (0.35-0.56 of the dense model's steps at 7B) measured on a synthetic cohort big enough
for an effect to show (default 20,000 subjects), with structure planted so that one shared parameter set has to
compromise between modalities:

* **Cohort** (written with ``benchmarks/scale.py``'s layouts and ``CohortWriter`` streaming, generator of its
  own here): each subject has a latent vector ``u`` (8 numbers). Every modality is a *different non-linear* map
  of ``u``, with different value distributions: gene tokens are dosages 0/1/2 (a quantised projection, allele
  frequencies 0.1-0.5); each brain region's four statistics are log-normal (volume), saturating ``tanh``
  (thickness), a product with the volume (area) and bimodal ``sign`` (fa), in raw units that differ by orders of
  magnitude (the pipeline's z-scoring removes the scales, not the shapes); behaviour measures are ``sin`` of
  projections, two of them categorical (argmax of three projections).
  The regression target adds three standardised terms, each a non-linear function of one modality's tokens:
  gene-gene products (epistasis) and recessive indicators; brain thresholds ``max(|thickness - 2.5| - 0.8, 0)`` and
  ``[fa high] * volume`` within regions; behaviour ``x_j^2 * sign(x_k)`` and one category; plus noise
  (at most 80% of its variance is explainable). Missingness as in scale.py (5% of subjects lack genotypes, 10%
  imaging, 5% behaviour; 3% of behaviour tokens and 1% of brain values missing).
* **Runs**: for each objective (``supervised``: the target, MSE; ``masked``: masked token modelling, the
  reconstruction loss), each seed and each variant (``mot``: attention, FFN and norms untied; ``dense``: one
  shared set; same FLOPs per token, checked with ``mot_neuro.model.accounting.training_flops``), one fit of
  ``--steps`` optimizer steps through the CLI's own objects (``lightning_cli(..., run=False)``), in a fresh
  process, validated every ``--val-every`` steps on the fixed validation split (holdout: 10% of the subjects).
  Validation draws its masks from a fixed seed (the training random stream is put back afterwards), so every
  validation of every run scores the same masked tokens.
* **Steps to dense quality** (as in the demo-scale section of BENCHMARKS.md and ``mot-neuro ablate``): per seed,
  the first validation step at which MoT's validation loss is at or below dense's *best* validation loss,
  divided by the step of that best. A MoT run that never gets there has no ratio (``null`` in the JSON, with a
  note and the ratio it is censored at: its last step over dense's best step), never a made-up number.
* **Aggregate** per objective: the geometric mean of the seeds' ratios with a 95% t-interval on the log ratios
  (n - 1 degrees of freedom: with 3 seeds a bootstrap has only 10 distinct resamples); median and mean; each
  seed's best validation loss for MoT and dense, and the mean paired difference of the best losses with its
  t-interval. With a censored seed the aggregate is not computed (``null``), and the note says so.

    python benchmarks/steps_to_dense.py                                        # 20,000 subjects, 3 seeds: ~40 min
                                                                               # on 2 shared cores (12 fits)
    python benchmarks/steps_to_dense.py --subjects 2000 --seeds 0 --steps 100  # quick look

The cohort goes into a temporary folder (``--dir`` to choose where) removed at the end. The last line printed is
one JSON object: ``steps_to_dense_ratio`` ({objective: geometric-mean ratio}) and ``ci`` ({objective: [low,
high]}), the per-seed table under ``results``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCALE = Path(__file__).resolve().parent / "scale.py"
OBJECTIVES = ("supervised", "masked")
VARIANTS = {"dense": [], "mot": ["attention", "ffn", "norm"]}
LATENT = 8  # size of each subject's latent vector
NOISE_SHARE = 0.2  # of the target's variance: pure noise
STRUCTURE_STREAM, BLOCK_STREAM, CALIBRATION_STREAM = 0x5D5, 0xB10C, 0xCA1
VALIDATION_SEED = 12345  # the random stream validation draws its masks from, the same for every validation


def load_scale():
    """``benchmarks/scale.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("scale_benchmark", SCALE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=20_000, help="cohort size")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (model init, masks)")
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    p.add_argument("--val-every", type=int, default=25, help="validation every this many steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (both variants)")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--dropout", type=float, default=0.0, help="residual dropout (both variants)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--gene", type=int, default=24, help="gene tokens (1 feature)")
    p.add_argument("--brain", type=int, default=16, help="brain regions (4 features)")
    p.add_argument("--behaviour", type=int, default=12, help="behaviour measures (1 feature; 2 categorical)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the cohort (the same for every run)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each its own process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    p.add_argument("--block", type=int, default=4096, help="subjects generated and written at a time")
    p.add_argument("--dir", default=None, help="parent of the temporary data folder (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the data folder (its path is printed)")
    # one run in this process (what the driver starts in a subprocess per run)
    p.add_argument("--run", help=argparse.SUPPRESS)  # "<objective>:<variant>:<seed>"
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_args(args) -> None:
    if args.subjects < 100:
        raise SystemExit("need --subjects >= 100 (10% of them validate)")
    if args.steps < 2 or not 1 <= args.val_every <= args.steps:
        raise SystemExit("need --steps >= 2 and 1 <= --val-every <= --steps")
    if min(args.gene, args.brain) < 4 or args.behaviour < 6:
        raise SystemExit("need --gene >= 4, --brain >= 4 and --behaviour >= 6 (the planted terms use that many)")
    if args.jobs < 1 or args.threads < 0:
        raise SystemExit("need --jobs >= 1 and --threads >= 0")


# ---------------------------------------------------------------------------------------------- planted cohort
def cohort_layouts(args) -> dict:
    """scale.py's layouts (gene: 1 feature; brain: volume, thickness, area, fa, the last 10% of regions volume
    only; behaviour: 1 feature, the last two categorical) at this benchmark's token counts."""
    return load_scale().layouts(SimpleNamespace(gene=args.gene, brain=args.brain, behaviour=args.behaviour))


def _unit_rows(rng: np.random.Generator, *shape: int) -> np.ndarray:
    w = rng.standard_normal((*shape, LATENT))
    return w / np.linalg.norm(w, axis=-1, keepdims=True)


@lru_cache(maxsize=8)
def structure(seed: int, n_gene: int, n_regions: int, n_behaviour: int, n_categories: int) -> dict:
    """The cohort's fixed structure: loadings of every token on the latent vector, allele frequencies, which
    tokens the target reads, and the mean and sd of each target term (from a calibration sample, so that a block
    is standardised the same way whatever its size or position)."""
    from statistics import NormalDist

    rng = np.random.default_rng((seed, STRUCTURE_STREAM))
    freq = rng.uniform(0.1, 0.5, n_gene)  # minor allele frequency; Hardy-Weinberg genotype shares
    inv = NormalDist().inv_cdf
    s = {
        "gene_w": _unit_rows(rng, n_gene),
        "freq": freq,
        # dosage = (score > t1) + (score > t2): P(dosage >= 1) = 1 - (1 - f)^2, P(dosage = 2) = f^2
        "t1": np.array([inv((1 - f) ** 2) for f in freq]),
        "t2": np.array([inv(1 - f**2) for f in freq]),
        "brain_w": _unit_rows(rng, n_regions, 4),
        "behaviour_w": _unit_rows(rng, n_behaviour - n_categories),
        "category_w": _unit_rows(rng, n_categories, 3),
    }
    order = rng.permutation(n_gene)
    n_pairs = min(6, n_gene // 2 - 1)
    s["pairs"] = order[: 2 * n_pairs].reshape(n_pairs, 2)  # epistatic pairs
    s["recessive"] = order[2 * n_pairs : 2 * n_pairs + min(4, n_gene - 2 * n_pairs)]
    n_cortical = n_regions - int(0.1 * n_regions)  # scale.py's subcortical regions have volume only
    s["fa_regions"] = rng.choice(n_cortical, size=min(4, n_cortical), replace=False)
    n_numeric = n_behaviour - n_categories
    half = min(4, n_numeric // 2)
    s["squared"], s["signs"] = np.arange(half), np.arange(half, 2 * half)
    # standardisation of the three terms, from 20,000 calibration subjects
    calibration = np.random.default_rng((seed, CALIBRATION_STREAM))
    values = _modality_values(calibration, 20_000, s, n_regions)
    terms = _target_terms(values, s)
    s["term_mean"] = {k: float(v.mean()) for k, v in terms.items()}
    s["term_sd"] = {k: float(v.std()) for k, v in terms.items()}
    return s


def _modality_values(rng: np.random.Generator, n: int, s: dict, n_regions: int) -> dict:
    """Complete (nothing missing yet) raw values of every modality of ``n`` subjects."""
    u = rng.standard_normal((n, LATENT))
    score = 0.9 * u @ s["gene_w"].T + np.sqrt(1 - 0.81) * rng.standard_normal((n, len(s["freq"])))
    gene = (score > s["t1"]).astype(np.float32) + (score > s["t2"])
    z = np.einsum("nl,rkl->nrk", u, s["brain_w"]) + 0.3 * rng.standard_normal((n, n_regions, 4))
    volume = np.exp(0.5 * z[..., 0]) * 3000.0 + 150.0 * rng.standard_normal((n, n_regions))  # mm^3-like
    thickness = 2.5 + np.tanh(2.0 * z[..., 1]) + 0.15 * rng.standard_normal((n, n_regions))  # mm-like
    area = volume / 3000.0 * np.exp(0.4 * z[..., 2]) * 1200.0 + 60.0 * rng.standard_normal((n, n_regions))
    fa = 0.45 + 0.1 * np.sign(z[..., 3]) + 0.03 * rng.standard_normal((n, n_regions))
    brain = np.stack([volume, thickness, area, fa], axis=-1)
    numeric = np.sin(2.0 * u @ s["behaviour_w"].T) + 0.3 * rng.standard_normal((n, len(s["behaviour_w"])))
    logits = np.einsum("nl,ckl->nck", u, s["category_w"]) + rng.gumbel(size=(n, len(s["category_w"]), 3)) * 0.5
    categories = logits.argmax(-1).astype(np.float64)
    behaviour = np.concatenate([numeric, categories], axis=1)
    return {"gene": gene, "brain": brain, "behaviour": behaviour}


def _target_terms(values: dict, s: dict) -> dict:
    """The target's three terms, each a non-linear function of one modality's (complete) values."""
    gene, brain, behaviour = values["gene"], values["brain"], values["behaviour"]
    centred = gene - 2 * s["freq"]
    epistasis = sum(centred[:, a] * centred[:, b] for a, b in s["pairs"])
    recessive = (gene[:, s["recessive"]] == 2).sum(1)
    thickness = brain[..., 1] - 2.5  # its centre, in the raw unit
    threshold = np.maximum(np.abs(thickness) - 0.8, 0.0).sum(1)
    fa_volume = ((brain[:, s["fa_regions"], 3] > 0.45) * brain[:, s["fa_regions"], 0] / 3000.0).sum(1)
    products = (behaviour[:, s["squared"]] ** 2 * np.sign(behaviour[:, s["signs"]])).sum(1)
    category = behaviour[:, -2] == 2
    return {
        "gene": epistasis + 0.5 * recessive,
        "brain": threshold + 0.5 * fa_volume,
        "behaviour": products + 0.5 * category,
    }


def planted_block(start: int, n: int, seed: int, shapes: dict):
    """Participants and (values, present) per modality of subjects ``start .. start + n - 1``, in the form of
    scale.py's ``synthetic_block`` (same missingness and confounds); depends only on ``(seed, start)``."""
    import pandas as pd

    n_gene, n_behaviour = len(shapes["gene"].token_names), len(shapes["behaviour"].token_names)
    brain_mask = shapes["brain"].feature_mask
    n_regions = brain_mask.shape[0]
    n_categories = len(shapes["behaviour"].categories or {})
    s = structure(seed, n_gene, n_regions, n_behaviour, n_categories)
    rng = np.random.default_rng((seed, BLOCK_STREAM, start))
    values = _modality_values(rng, n, s, n_regions)
    terms = _target_terms(values, s)
    signal = sum((terms[k] - s["term_mean"][k]) / s["term_sd"][k] for k in terms) / np.sqrt(3.0)
    noise = rng.standard_normal(n) * np.sqrt(NOISE_SHARE / (1 - NOISE_SHARE)) * signal.std()

    has = {name: rng.random(n) >= share for name, share in (("gene", 0.05), ("brain", 0.10), ("behaviour", 0.05))}
    gene = values["gene"].astype(np.float32)[..., None]
    gene_present = np.repeat(has["gene"][:, None], n_gene, axis=1)
    brain = values["brain"].astype(np.float32) * brain_mask
    brain[(rng.random(brain.shape) < 0.01) & brain_mask] = np.nan
    brain_present = np.repeat(has["brain"][:, None], n_regions, axis=1)
    behaviour = values["behaviour"].astype(np.float32)[..., None]
    behaviour_present = (rng.random((n, n_behaviour)) >= 0.03) & has["behaviour"][:, None]
    for array, present in ((gene, gene_present), (brain, brain_present), (behaviour, behaviour_present)):
        array[~present] = 0.0
    participants = pd.DataFrame(
        {
            "eid": (1_000_000 + start + np.arange(n)).astype(str),
            "target": signal + noise,
            "age": rng.normal(60.0, 8.0, n).round(1),
            "sex": rng.integers(0, 2, n).astype(float),
            "site": np.char.add("site_", rng.integers(0, 5, n).astype(str)),
        }
    )
    arrays = {
        "gene": (gene, gene_present),
        "brain": (brain, brain_present),
        "behaviour": (behaviour, behaviour_present),
    }
    return participants, arrays


def write_cohort(args, folder: Path) -> dict:
    from data_adapters.cache import CohortWriter

    shapes = cohort_layouts(args)
    started = time.perf_counter()
    with CohortWriter(
        folder, n_subjects=args.subjects, modalities=shapes, targets=["target"], confounds=["age", "sex", "site"]
    ) as writer:
        for start in range(0, args.subjects, args.block):
            writer.append(*planted_block(start, min(args.block, args.subjects - start), args.data_seed, shapes))
    return {"build_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------- one run
def data_options(args, workdir: Path) -> dict:
    """The DataModule's options, the same for every run: holdout splits, 10% validation (10% test, unused)."""
    return {
        "cohort_dir": str(workdir / "cohort"),
        "targets": ["target"],
        "confounds": ["age", "sex", "site"],
        "splits_file": str(workdir / "splits.json"),
        "scheme": "holdout",
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "batch_size": args.batch_size,
        "num_workers": 0,
    }


def make_splits(args, workdir: Path) -> None:
    """Write the splits file once, before the runs (which may start together) read it."""
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    NeuroOmicsDataModule(**data_options(args, workdir)).setup("fit")


def write_config(args, workdir: Path, objective: str, variant: str, seed: int) -> Path:
    import yaml

    config = {
        "seed_everything": seed,
        "data": data_options(args, workdir),
        "model": {
            "objective": objective,
            "encoder": {
                "untie": VARIANTS[variant],
                "dim": args.dim,
                "n_layers": args.layers,
                "n_heads": args.heads,
                "dropout": args.dropout,
            },
            "optimizer": {"lr": args.lr, "warmup_steps": args.warmup_steps},
        },
        "trainer": load_scale().quiet_cpu_trainer(
            workdir, args.steps, max_epochs=-1, val_check_interval=args.val_every, check_val_every_n_epoch=None
        ),
    }
    path = workdir / f"config-{objective}-{variant}-{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def flops_per_token(module, batch) -> dict:
    """Training FLOPs per token of the backbone (``accounting.training_flops``) and forward FLOPs per token of the
    whole encoder (tokenizers included) on a real batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mot_neuro.model.accounting import count_parameters, training_flops

    layout = module.encoder_config.layout()
    backbone = training_flops(module.encoder.backbone, layout)
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.encoder(batch)
    rows = next(iter(batch["values"].values())).shape[0]
    return {
        "backbone_training_per_token": backbone["training_per_token"],
        "backbone_forward_per_token": backbone["forward_per_token"],
        "encoder_forward_per_token": counter.get_total_flops() / (rows * layout.seq_len),
        "backbone_params": count_parameters(module.encoder.backbone)["total"],
        "params": sum(p.numel() for p in module.parameters()),
        "seq_len": layout.seq_len,
    }


def run_one(args) -> dict:
    """One fit: the validation curve [(step, val/loss)], its time, and the model's FLOPs per token."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from mot_neuro.cli import lightning_cli

    if args.threads:
        torch.set_num_threads(args.threads)
    objective, variant, seed = args.run.split(":")
    workdir = Path(args.workdir)

    class ValidationCurve(Callback):
        """val/loss after each validation; validation draws its masks from a fixed stream, and the training
        stream is restored after it (so training does not depend on how often it is validated)."""

        def __init__(self):
            self.curve, self._saved = [], None
            self.step_times, self.validation_s, self._started = [], 0.0, 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._started = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.step_times.append(time.perf_counter() - self._started)

        def on_validation_start(self, trainer, pl_module):
            self._saved = torch.get_rng_state()
            torch.manual_seed(VALIDATION_SEED)
            self._started = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            self.validation_s += time.perf_counter() - self._started
            torch.set_rng_state(self._saved)
            if not trainer.sanity_checking:
                self.curve.append((int(trainer.global_step), float(trainer.callback_metrics["val/loss"])))

    config = write_config(args, workdir, objective, variant, int(seed))
    cli = lightning_cli(["--config", str(config)], run=False)
    curve = ValidationCurve()
    cli.trainer.callbacks.append(curve)
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - started
    if not curve.curve or curve.curve[-1][0] != args.steps:
        # the last step is not a multiple of --val-every: validate once more there, as the other runs do
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    batch = next(iter(cli.datamodule.val_dataloader()))
    return {
        "objective": objective,
        "variant": variant,
        "seed": int(seed),
        "curve": curve.curve,
        "fit_s": seconds,
        "step_ms": 1000 * statistics.median(curve.step_times),
        "validation_s": curve.validation_s,
        "train_rows": int(len(cli.datamodule.rows["train"])),
        "val_rows": int(len(cli.datamodule.rows["val"])),
        "flops": flops_per_token(cli.model, batch),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------- steps to dense
def steps_to_dense(mot_curve, dense_curve) -> dict:
    """The steps-to-dense ratio of one seed from two validation curves, each ``[(step, loss), ...]``.

    ``target``: dense's best loss, ``dense_best_step``: the first step it got there; ``step_reached``: the first
    step at which MoT's loss is at or below the target (None if never); ``ratio = step_reached / dense_best_step``,
    ``math.inf`` when MoT never reaches it (``censored_at``: MoT's last step / dense_best_step, the ratio is only
    known to exceed it). Non-finite losses never count as reaching the target."""
    dense = sorted((float(s), float(v)) for s, v in dense_curve)
    mot = sorted((float(s), float(v)) for s, v in mot_curve)
    finite = [(s, v) for s, v in dense if math.isfinite(v)]
    if not finite or not mot:
        raise ValueError("steps_to_dense needs a finite dense curve and a MoT curve")
    target = min(v for _, v in finite)
    best_step = next(s for s, v in finite if v == target)
    if best_step <= 0:
        raise ValueError(f"dense's best validation loss is at step {best_step:g}: no ratio is defined")
    reached = next((s for s, v in mot if math.isfinite(v) and v <= target), None)
    out = {
        "target": target,
        "dense_best_step": best_step,
        "step_reached": reached,
        "ratio": reached / best_step if reached is not None else math.inf,
        "censored_at": None if reached is not None else mot[-1][0] / best_step,
    }
    out["note"] = (
        ""
        if reached is not None
        else f"MoT never reached dense's best {target:.5g} in {mot[-1][0]:g} steps: ratio > {out['censored_at']:.3g}"
    )
    return out


def _t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def t_interval(values) -> tuple[float, float, float]:
    """Mean and 95% t-interval (NaN interval for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = _t_quantile(values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def summarize(per_seed: list[dict]) -> dict:
    """Aggregate of one objective's seeds (each a :func:`steps_to_dense` result plus best losses)."""
    ratios = [row["ratio"] for row in per_seed]
    differences = [row["mot_best"] - row["dense_best"] for row in per_seed]
    diff_mean, diff_low, diff_high = t_interval(differences)
    out = {
        "n_seeds": len(per_seed),
        "n_reached": sum(math.isfinite(r) for r in ratios),
        "geometric_mean_ratio": None,
        "ci": None,
        "median_ratio": None,
        "mean_ratio": None,
        "best_loss_difference": {"mean": diff_mean, "ci": [diff_low, diff_high]},  # MoT - dense, paired by seed
        "note": "",
    }
    if all(math.isfinite(r) for r in ratios):
        log_mean, log_low, log_high = t_interval(np.log(ratios))
        out.update(
            geometric_mean_ratio=math.exp(log_mean),
            ci=[math.exp(log_low), math.exp(log_high)],
            median_ratio=float(statistics.median(ratios)),
            mean_ratio=float(np.mean(ratios)),
        )
        if len(ratios) < 2:
            out["note"] = "one seed: no interval"
    else:
        censored = len(ratios) - out["n_reached"]
        out["note"] = f"MoT never reached dense's best in {censored} of {len(ratios)} seed(s): no aggregate ratio"
        finite_or_censored = [
            r if math.isfinite(r) else row["censored_at"] for r, row in zip(ratios, per_seed, strict=True)
        ]
        out["median_ratio_lower_bound"] = float(statistics.median(finite_or_censored))
    return out


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# ---------------------------------------------------------------------------------------------- driver
def _machine() -> dict:
    from machine import cpu_name

    cpu = cpu_name()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "load_average": load,
    }


def _command(args, run: str, workdir: Path) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--run", run, "--workdir", str(workdir)]
    for flag in ("steps", "val_every", "batch_size", "lr", "warmup_steps", "dropout", "dim", "layers", "heads"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return command + ["--threads", str(args.threads)]


def _run_all(args, workdir: Path, runs: list[str]) -> dict[str, dict]:
    """Each run in its own process, ``--jobs`` at a time; run order interleaves the variants."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    pending, active, results = list(runs), {}, {}
    while pending or active:
        while pending and len(active) < args.jobs:
            run = pending.pop(0)
            log = open(workdir / f"{run.replace(':', '-')}.log", "w+")  # noqa: SIM115 (closed below)
            active[run] = (
                subprocess.Popen(
                    _command(args, run, workdir), stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, text=True
                ),
                log,
                time.perf_counter(),
            )
        time.sleep(0.2)
        for run, (process, log, started) in list(active.items()):
            if process.poll() is None:
                continue
            del active[run]
            log.seek(0)
            output = log.read()
            log.close()
            if process.returncode != 0:
                for p, _, _ in active.values():
                    p.kill()
                raise RuntimeError(f"run {run} failed:\n{output[-4000:]}")
            results[run] = json.loads(output.strip().splitlines()[-1])
            print(f"{run:<22} done in {time.perf_counter() - started:6.1f} s", flush=True)
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.run:
        print(json.dumps(run_one(args)))
        return {}
    check_args(args)
    root = Path(tempfile.mkdtemp(prefix="mot-neuro-steps-", dir=args.dir))
    started = time.perf_counter()
    try:
        build = write_cohort(args, root / "cohort")
        print(f"cohort: {args.subjects} subjects written in {build['build_s']:.1f} s", flush=True)
        make_splits(args, root)
        # dense and MoT of a seed side by side (with --jobs 2): the same load on both
        runs = [f"{o}:{v}:{s}" for o in args.objectives for s in args.seeds for v in VARIANTS]
        results = _run_all(args, root, runs)
    finally:
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - started

    flops = {v: results[f"{args.objectives[0]}:{v}:{args.seeds[0]}"]["flops"] for v in VARIANTS}
    print("\nFLOPs per token (backbone training = forward + backward, accounting.training_flops; encoder forward):")
    for variant, f in flops.items():
        print(
            f"  {variant:<6} backbone training {f['backbone_training_per_token']:>10,.0f}   encoder forward "
            f"{f['encoder_forward_per_token']:>10,.0f}   backbone params {f['backbone_params']:>8,}   "
            f"all params {f['params']:>8,}   tokens {f['seq_len']}"
        )
    equal = flops["mot"]["backbone_training_per_token"] == flops["dense"]["backbone_training_per_token"]
    print(f"  equal FLOPs per token: {equal}")

    table, summaries = [], {}
    for objective in args.objectives:
        per_seed = []
        for seed in args.seeds:
            mot, dense = (results[f"{objective}:{v}:{seed}"] for v in ("mot", "dense"))
            row = steps_to_dense(mot["curve"], dense["curve"])
            row.update(
                objective=objective,
                seed=seed,
                dense_best=row["target"],
                mot_best=min(v for _, v in mot["curve"]),
                mot_best_step=min(mot["curve"], key=lambda p: p[1])[0],
                dense_final=dense["curve"][-1][1],
                mot_final=mot["curve"][-1][1],
                fit_s={"mot": mot["fit_s"], "dense": dense["fit_s"]},
                step_ms={"mot": mot["step_ms"], "dense": dense["step_ms"]},
                curves={"mot": mot["curve"], "dense": dense["curve"]},
            )
            per_seed.append(row)
        summaries[objective] = summarize(per_seed)
        table += per_seed

    print(
        f"\n{'objective':<11}{'seed':>5}{'dense best':>12}{'at step':>9}{'MoT best':>11}{'at step':>9}"
        f"{'MoT reached':>13}{'ratio':>8}{'dense final':>13}{'MoT final':>11}"
    )
    for r in table:
        reached = "never" if r["step_reached"] is None else f"{r['step_reached']:.0f}"
        ratio = f"{r['ratio']:.2f}" if math.isfinite(r["ratio"]) else f">{r['censored_at']:.2f}"
        print(
            f"{r['objective']:<11}{r['seed']:>5}{r['dense_best']:>12.4f}{r['dense_best_step']:>9.0f}"
            f"{r['mot_best']:>11.4f}{r['mot_best_step']:>9.0f}{reached:>13}{ratio:>8}"
            f"{r['dense_final']:>13.4f}{r['mot_final']:>11.4f}"
        )
    for objective, s in summaries.items():
        ratio = "n/a" if s["geometric_mean_ratio"] is None else f"{s['geometric_mean_ratio']:.2f}"
        ci = "n/a" if not s["ci"] or not all(map(math.isfinite, s["ci"])) else f"[{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"
        d = s["best_loss_difference"]
        print(
            f"{objective}: steps-to-dense ratio (geometric mean of {s['n_seeds']} seeds) {ratio}, 95% CI {ci}; "
            f"MoT reached dense's best in {s['n_reached']}/{s['n_seeds']}; best loss MoT - dense "
            f"{d['mean']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]" + (f"; {s['note']}" if s["note"] else "")
        )

    first = next(iter(results.values()))
    summary = {
        "benchmark": "steps_to_dense",
        "machine": _machine(),
        "wall_s": wall,
        "settings": {
            "subjects": args.subjects,
            "train_rows": first["train_rows"],
            "val_rows": first["val_rows"],
            "seeds": args.seeds,
            "steps": args.steps,
            "val_every": args.val_every,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": args.warmup_steps,
            "dropout": args.dropout,
            "model": {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads},
            "tokens": {"gene": args.gene, "brain": args.brain, "behaviour": args.behaviour, "summary": 1},
            "jobs": args.jobs,
            "threads": first["threads"],
        },
        "flops_per_token": flops,
        "equal_flops_per_token": equal,
        "results": [{k: v for k, v in r.items() if k != "curves"} for r in table],
        "curves": {f"{r['objective']}:{r['seed']}": r["curves"] for r in table},
        "summary": summaries,
        "steps_to_dense_ratio": {o: s["geometric_mean_ratio"] for o, s in summaries.items()},
        "ci": {o: s["ci"] for o, s in summaries.items()},
    }
    summary = _json_safe(summary)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
