"""End-to-end training step on the demo layout: dense vs MoT, eager vs ``torch.compile``, and the data-loading share.

One step is what Lightning's automatic optimisation runs for ``mot-neuro fit --config configs/experiments/demo.yaml``:
the next batch from the real DataLoader over the cached demo cohort (memory maps, fold preprocessing, whole batches;
a new epoch starts when the loader is exhausted, as in training), ``NeuroOmicsModule.training_step`` (tokenizers,
backbone, heads, loss), backward, AdamW step, LR-schedule step. Lightning's own per-step bookkeeping is not
included: outside a Trainer ``self.log`` returns at once. Model and data settings come from ``configs/model/*.yaml``
and ``configs/data/demo.yaml`` (the demo cohort is written to a temporary folder and removed afterwards).

Variants (dense and MoT, each eager and compiled) run interleaved: every repetition runs ``--steps`` steps of each
variant in a shuffled order, so machine noise hits them alike. The step time of a variant is the median over
repetitions of (time of its ``--steps`` steps) / ``--steps``. Compiled variants are warmed up over more than one
epoch first, so that both batch shapes (full, and the epoch's last, smaller batch) are compiled before timing.

Data-loading share = time in ``next(loader)`` / time of the whole step, measured two ways: with ``torch.profiler``
(``record_function`` ranges ``data_loading`` and ``training_step`` around the two parts; it records every op, which
slows the compute part a little) over ``--profile-steps`` steps per variant, and with the plain timers of the timed
repetitions. Targets (issue 16): MoT/dense <= 1.10 eager and <= 1.05 compiled, data loading <= 5% of the step (the
worse of the two measurements, worst variant). A third eager variant, MoT with one module call per run of tokens
(``backbone.tower_ops = False``, the form before the tower ops of :mod:`mot_neuro.model.tower_ops`), shows what those
save in the same run. The last line printed is one JSON object.

    python benchmarks/train_step.py                     # defaults: demo sizes, 15 repetitions of 14 steps
    python benchmarks/train_step.py --reps 5 --no-compile    # quicker, eager only
    python benchmarks/train_step.py --num-workers 1     # batches built in a worker process
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_adapters.demo import write_demo_cohort  # noqa: E402
from mot_neuro.data.datamodule import NeuroOmicsDataModule  # noqa: E402
from mot_neuro.lit_module import NeuroOmicsModule  # noqa: E402

CONFIGS = ROOT / "configs"
CLOCK = [time.perf_counter]  # --clock thread: time.thread_time
TARGET_RATIO_EAGER, TARGET_RATIO_COMPILED = 1.10, 1.05  # issue 16
TARGET_DATA_SHARE = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    p.add_argument("--steps", type=int, default=14, help="steps of each variant per repetition (demo: 7 per epoch)")
    p.add_argument("--warmup", type=int, default=16, help="untimed steps per variant first (compiles)")
    p.add_argument("--profile-steps", type=int, default=28, help="steps per variant under torch.profiler")
    p.add_argument("--no-compile", action="store_true", help="eager variants only")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled variants")
    p.add_argument("--subjects", type=int, default=300, help="demo cohort size (the demo's default)")
    p.add_argument("--batch-size", type=int, default=None, help="default: configs/data/demo.yaml")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers; default: the data config")
    p.add_argument("--dim", type=int, default=None, help="default: configs/model/*.yaml")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="wall time, or this thread's CPU time (with --threads 1 and no workers every op runs on it: steadier"
        " than wall time on a shared machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="parent of the temporary folder (default: the system's)")
    return p.parse_args(argv)


def _into(folder: Path, value):
    """The data config's ``outputs/...`` paths, moved under ``folder``."""
    if isinstance(value, str) and value.startswith("outputs/"):
        return str(folder / value)
    if isinstance(value, dict):
        return {key: _into(folder, item) for key, item in value.items()}
    return value


def demo_datamodule(folder: Path, args) -> NeuroOmicsDataModule:
    config = _into(folder, yaml.safe_load((CONFIGS / "data" / "demo.yaml").read_text()))
    if args.batch_size is not None:
        config["batch_size"] = args.batch_size
    if args.num_workers is not None:
        config["num_workers"] = args.num_workers
    write_demo_cohort(config["generate_demo"], n_subjects=args.subjects, seed=args.seed)
    datamodule = NeuroOmicsDataModule(**config)
    datamodule.setup("fit")
    return datamodule


def model_config(name: str, args) -> dict:
    """``configs/model/<name>.yaml`` (a delta of the defaults), with the sizes given on the command line."""
    config = yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())
    encoder = config.setdefault("encoder", {})
    for key, value in (("dim", args.dim), ("n_layers", args.layers), ("n_heads", args.heads)):
        if value is not None:
            encoder[key] = value
    return config


def endless(loader):
    """Batches of successive epochs, as a Trainer draws them (the sampler reshuffles per epoch)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


class Variant:
    """A model, its optimiser and schedule (the module's own ``configure_optimizers``), and its own loader."""

    def __init__(
        self, datamodule, config: dict, compile_mode: str | None, total_steps: int, seed: int, tower_ops: bool = True
    ):
        torch.manual_seed(seed)  # dense and MoT start from the same draws, compiled as eager
        self.module = NeuroOmicsModule(data_spec=datamodule.model_inputs, **config, compile=compile_mode or False)
        self.module.encoder.backbone.tower_ops = tower_ops
        self.module.train()
        # configure_optimizers reads only trainer.estimated_stepping_batches; no Trainer stays attached
        self.module._trainer = types.SimpleNamespace(estimated_stepping_batches=total_steps)
        optimisation = self.module.configure_optimizers()
        self.module._trainer = None
        self.optimizer = optimisation["optimizer"]
        self.scheduler = optimisation["lr_scheduler"]["scheduler"]
        self.batches = endless(datamodule.train_dataloader())
        self.index = 0

    def fetch(self):
        return next(self.batches)

    def compute(self, batch) -> None:
        loss = self.module.training_step(batch, self.index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.index += 1

    def step(self) -> tuple[float, float]:
        """One step; (seconds fetching the batch, seconds of the whole step)."""
        start = CLOCK[0]()
        batch = self.fetch()
        fetched = CLOCK[0]()
        self.compute(batch)
        return fetched - start, CLOCK[0]() - start


def profiled_share(variant: Variant, steps: int) -> float:
    """Data-loading share of ``steps`` steps measured by torch.profiler's ``record_function`` ranges."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("data_loading"):
                batch = variant.fetch()
            with record_function("training_step"):
                variant.compute(batch)
    totals = {event.key: event.cpu_time_total for event in prof.key_averages()}
    data, compute = totals["data_loading"], totals["training_step"]
    return data / (data + compute)


def dynamo_summary() -> dict:
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and (torch.get_num_threads() != 1 or (args.num_workers or 0) > 0):
        raise SystemExit("--clock thread needs --threads 1 and no DataLoader workers (all work on one thread)")
    CLOCK[0] = time.thread_time if args.clock == "thread" else time.perf_counter
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer: logging is a no-op, by design
    folder = Path(tempfile.mkdtemp(prefix="mot_neuro_train_step_", dir=args.dir))
    try:
        return _run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(args, folder: Path) -> dict:
    datamodule = demo_datamodule(folder, args)
    steps_per_epoch = len(datamodule.train_dataloader())
    total_steps = args.warmup + args.reps * args.steps + args.profile_steps
    modes = [("eager", None)] + ([] if args.no_compile else [("compiled", args.compile_mode)])
    variants = {
        f"{model}_{kind}": Variant(datamodule, model_config(model, args), mode, total_steps, args.seed)
        for kind, mode in modes
        for model in ("dense", "mot")
    }
    # MoT with one module call per run of tokens (the form before the tower ops), for the same-run comparison
    variants["mot_per_run_eager"] = Variant(
        datamodule, model_config("mot", args), None, total_steps, args.seed, tower_ops=False
    )

    warmup_s = {}
    for name, variant in variants.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            variant.step()
        warmup_s[name] = time.perf_counter() - start

    per_step = {name: [] for name in variants}  # per repetition: mean seconds per step
    fetch_s = {name: 0.0 for name in variants}
    total_s = {name: 0.0 for name in variants}
    order = list(variants)
    rng = random.Random(args.seed)
    for _ in range(args.reps):
        rng.shuffle(order)
        for name in order:
            rep_total = 0.0
            for _ in range(args.steps):
                fetch, whole = variants[name].step()
                fetch_s[name] += fetch
                rep_total += whole
            total_s[name] += rep_total
            per_step[name].append(rep_total / args.steps)

    profiled = {name: profiled_share(variant, args.profile_steps) for name, variant in variants.items()}
    medians = {name: statistics.median(times) for name, times in per_step.items()}
    timer_share = {name: fetch_s[name] / total_s[name] for name in variants}

    def ratio(a: str, b: str) -> float | None:
        return round(medians[a] / medians[b], 4) if a in medians and b in medians else None

    ratios = {
        "mot_vs_dense_eager": ratio("mot_eager", "dense_eager"),
        "mot_vs_dense_compiled": ratio("mot_compiled", "dense_compiled"),
        "mot_per_run_vs_dense_eager": ratio("mot_per_run_eager", "dense_eager"),
        "compiled_vs_eager_dense": ratio("dense_compiled", "dense_eager"),
        "compiled_vs_eager_mot": ratio("mot_compiled", "mot_eager"),
    }
    worst_share = max(max(profiled.values()), max(timer_share.values()))
    targets = {"mot_vs_dense_eager": TARGET_RATIO_EAGER, "mot_vs_dense_compiled": TARGET_RATIO_COMPILED}
    ratio_met = all(ratios[key] <= limit for key, limit in targets.items() if ratios[key] is not None)

    config = variants["mot_eager"].module.hparams["encoder"]
    batch_size = datamodule.hparams.batch_size
    layout = {m.name: m.n_tokens for m in datamodule.model_inputs.modalities}
    print(
        f"demo layout {layout} + {config['n_summary_tokens']} summary token; batch {batch_size},"
        f" {steps_per_epoch} steps/epoch; dim={config['dim']} layers={config['n_layers']} heads={config['n_heads']};"
        f" workers={datamodule.hparams.num_workers}; reps={args.reps} x {args.steps} steps;"
        f" threads={torch.get_num_threads()}; torch={torch.__version__}"
    )
    print(f"{'variant':<16}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'data % (prof)':>15}{'data % (timer)':>16}")
    for name, times in per_step.items():
        q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
        print(
            f"{name:<16}{medians[name] * 1e3:>11.2f}{q[0] * 1e3:>9.2f}{q[-1] * 1e3:>9.2f}"
            f"{profiled[name] * 100:>15.1f}{timer_share[name] * 100:>16.1f}"
        )
    for key, value in ratios.items():
        print(f"{key:<26}{'n/a' if value is None else f'{value:.3f}'}")
    if not args.no_compile:
        print("warm-up (incl. compilation) s: " + ", ".join(f"{k}={v:.1f}" for k, v in warmup_s.items()))
    met = {True: "met", False: "missed"}
    print(
        f"targets: MoT/dense <= {TARGET_RATIO_EAGER} eager, <= {TARGET_RATIO_COMPILED} compiled: {met[ratio_met]};"
        f" data loading <= {TARGET_DATA_SHARE:.0%} of the step (worse of profiler and timers, worst variant):"
        f" {met[worst_share <= TARGET_DATA_SHARE]} ({worst_share:.1%})"
    )
    result = {
        **ratios,
        "data_share_profiler": {name: round(v, 4) for name, v in profiled.items()},
        "data_share_timer": {name: round(v, 4) for name, v in timer_share.items()},
        "median_step_ms": {name: round(m * 1e3, 3) for name, m in medians.items()},
        "warmup_s": {name: round(s, 2) for name, s in warmup_s.items()},
        "targets": {
            "mot_vs_dense": ratio_met,
            "data_share_le_0.05": worst_share <= TARGET_DATA_SHARE,
        },
        "dynamo": None if args.no_compile else dynamo_summary(),
        "config": {
            "layout": layout,
            "batch_size": batch_size,
            "steps_per_epoch": steps_per_epoch,
            "dim": config["dim"],
            "layers": config["n_layers"],
            "heads": config["n_heads"],
            "num_workers": datamodule.hparams.num_workers,
            "subjects": args.subjects,
            "reps": args.reps,
            "steps": args.steps,
            "warmup": args.warmup,
            "profile_steps": args.profile_steps,
            "compile_mode": None if args.no_compile else args.compile_mode,
            "threads": torch.get_num_threads(),
            "clock": args.clock,
        },
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
