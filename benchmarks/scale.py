"""Scale: a synthetic cohort of N subjects x 600 tokens streamed into the cache, trained on and embedded whole.

For every size N (default 10,000 and 100,000), the phases of ``--phases`` (default build, train, embed; add
``explain`` for ``mot-neuro explain``), each in a fresh process so that its peak memory is its own:

* ``build``: N subjects generated block by block (``--block`` subjects at a time) and streamed into a
  cohort folder with ``data_adapters.cache.CohortWriter``: gene (300 tokens x 1 feature), brain (200
  regions x 4 statistics, the last 10% of regions subcortical with volume only, 1% NaN) and behaviour (100 measures,
  two of them categorical); 5% of subjects lack genotypes, 10% imaging, 5% behaviour, 3% of behaviour
  tokens are missing. Participants hold a regression target and the confounds age, sex, site.
* ``train``: ``NeuroOmicsDataModule(cohort_dir=...)`` through the CLI's own objects (``lightning_cli(...,
  run=False)``) with the demo-size model ``configs/model/mot.yaml`` on CPU: setup (load the memory maps, make
  the splits, fit the fold's confound regression and scaling on the training rows), then ``--steps`` timed
  optimizer steps after ``--warmup`` untimed ones, each timed from the end of the previous one (data loading
  included; median). After each timed step, outside its time, the *attention bound* on the same batch: the
  model's ``scaled_dot_product_attention`` forward and backward alone, once per layer, on the step's shapes and
  key-padding mask. ``step_vs_attention_bound`` = median step / median bound (1.0 would be a step that costs no
  more than its attention). Subjects per second = batch size / median step.
* ``embed``: the calls ``mot-neuro embed`` makes (``EmbeddingWriter``, ``trainer.predict(...,
  return_predictions=False)``) over all N subjects with the trained checkpoint, batches of
  ``--embed-batch-size``; timed from the start of predict to the merged, sorted parquet file.
* ``explain`` (optional; needs train): ``mot-neuro explain`` itself (``explain_main``) on the trained checkpoint
  over the fold's test split, once per ``--explain-subjects`` M (a fresh process each) with ``--max_subjects M``,
  ``--methods`` / ``--n_steps`` from ``--explain-methods`` / ``--explain-n-steps``, batches of
  ``--explain-batch-size``, no logger, no figures. Timed whole (setup, predict, tables: ``explain_s``) and its
  predict loop alone (``explain_predict_s``, wall and process CPU). The predict loop reads only the batches that
  hold the first M subjects; ``explain_marginal_subjects_per_s`` (from the difference between the smallest and
  largest M) is the cost of explaining one more subject. Memory should not grow with M: ``explain_rss_growth_mb`` is
  largest M's peak RSS minus smallest M's.

Memory per phase: ``peak_rss`` is the process's ``ru_maxrss`` (everything resident, memory-mapped file
pages included: what a scheduler sees), ``peak_anon`` the largest anonymous resident size sampled every
20 ms from ``/proc/self/status`` (the process's own allocations), and ``rss_after_imports`` the resident
size once torch and Lightning are imported. Flat memory means the 100,000-subject figures stay close to the
10,000 ones (``flatness``: largest N's peak over smallest N's).

    python benchmarks/scale.py                           # 10,000 and 100,000 subjects
    python benchmarks/scale.py --sizes 2000 --steps 10   # quick look
    python benchmarks/scale.py --sizes 100000 --phases build train explain --explain-subjects 32 256

Data go into a temporary folder (``--dir`` to choose where; ~5 KB per subject) removed at the end. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "configs" / "model" / "mot.yaml"
GENE_TOKENS, BRAIN_REGIONS, BEHAVIOUR_MEASURES = 300, 200, 100  # defaults of --gene, --brain, --behaviour
BRAIN_STATS = 4
SUBCORTICAL_SHARE = 0.1  # of brain regions, with volume only
CATEGORIES = {"handedness": ["left", "right", "ambidextrous"], "smoking": ["never", "former", "current"]}
SITES = 5
PHASES = ("build", "train", "embed", "explain")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="cohort sizes (subjects)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps before them (>= 1)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (the demo config's)")
    p.add_argument("--embed-batch-size", type=int, default=256)
    p.add_argument("--block", type=int, default=2048, help="subjects generated and written at a time")
    p.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=["build", "train", "embed"],
        help="phases to run (in this order; embed and explain need train, train needs build)",
    )
    p.add_argument(
        "--explain-subjects",
        type=int,
        nargs="+",
        default=[32, 256],
        metavar="M",
        help="explain phase: --max_subjects of each run (one process each; two or more show growth with M)",
    )
    p.add_argument(
        "--explain-methods",
        nargs="+",
        default=["integrated_gradients"],
        help="explain phase: --methods (occlusion is one forward per token: 600 per subject here)",
    )
    p.add_argument("--explain-n-steps", type=int, default=16, help="explain phase: Integrated Gradients' --n_steps")
    p.add_argument(
        "--explain-batch-size", type=int, default=16, help="explain phase: batch (IG runs n_steps times its rows)"
    )
    p.add_argument(
        "--explain-no-attention", action="store_true", help="explain phase: --no_attention (default: recorded)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gene", type=int, default=GENE_TOKENS, help="gene tokens (1 feature)")
    p.add_argument("--brain", type=int, default=BRAIN_REGIONS, help=f"brain regions ({BRAIN_STATS} features)")
    p.add_argument("--behaviour", type=int, default=BEHAVIOUR_MEASURES, help="behaviour measures (1 feature)")
    p.add_argument("--dir", default=None, help="parent of the temporary data folder (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the data folder (its path is printed)")
    # one phase in this process (what the driver runs in a subprocess per phase)
    p.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-subjects", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- memory
def _status_kb(fields: tuple[str, ...]) -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in fields:
                out[key] = int(value.split()[0])
    return out


class MemorySampler:
    """Largest RssAnon / RssFile of this process, sampled every ``interval`` s in a thread (Linux only)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = os.path.exists("/proc/self/status")

    def _sample(self) -> None:
        for key, kb in _status_kb(("RssAnon", "RssFile")).items():
            self.peak[key] = max(self.peak[key], kb)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        if self.available:
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._sample()


def _memory_figures(sampler: MemorySampler, after_imports_kb: int) -> dict:
    figures = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kB on Linux
        "rss_after_imports_mb": after_imports_kb / 1024,
    }
    if sampler.available:
        figures["peak_anon_mb"] = sampler.peak["RssAnon"] / 1024
        figures["peak_file_mb"] = sampler.peak["RssFile"] / 1024
    return figures


def _rss_now_kb() -> int:
    return _status_kb(("VmRSS",)).get("VmRSS", 0) if os.path.exists("/proc/self/status") else 0


# ---------------------------------------------------------------------------------------------- synthetic cohort
def layouts(args) -> dict:
    from data_adapters.cache import ModalityLayout

    brain_mask = np.ones((args.brain, BRAIN_STATS), dtype=bool)
    brain_mask[args.brain - int(SUBCORTICAL_SHARE * args.brain) :, 1:] = False  # subcortical regions: volume only
    measures = [f"measure_{i:03d}" for i in range(args.behaviour - len(CATEGORIES))] + list(CATEGORIES)
    return {
        "gene": ModalityLayout([f"gene_{i:03d}" for i in range(args.gene)], feature_names=["burden"]),
        "brain": ModalityLayout(
            [f"region_{i:03d}" for i in range(args.brain)],
            n_features=BRAIN_STATS,
            feature_mask=brain_mask,
            feature_names=["volume", "thickness", "area", "fa"],
        ),
        "behaviour": ModalityLayout(measures, feature_names=["value"], categories=CATEGORIES),
    }


def synthetic_block(start: int, n: int, seed: int, shapes: dict):
    """Participants and (values, present) per modality of subjects ``start .. start + n - 1``; depends only on
    ``(seed, start)``, so the cohort is the same for any block size that divides the same way."""
    import pandas as pd

    rng = np.random.default_rng((seed, start))
    n_gene, n_behaviour = len(shapes["gene"].token_names), len(shapes["behaviour"].token_names)
    brain_mask = shapes["brain"].feature_mask
    has = {name: rng.random(n) >= share for name, share in (("gene", 0.05), ("brain", 0.10), ("behaviour", 0.05))}

    gene = rng.standard_normal((n, n_gene, 1), dtype=np.float32)
    gene_present = np.repeat(has["gene"][:, None], n_gene, axis=1)

    brain = rng.standard_normal((n, *brain_mask.shape), dtype=np.float32) * brain_mask
    brain[(rng.random(brain.shape) < 0.01) & brain_mask] = np.nan
    brain_present = np.repeat(has["brain"][:, None], brain_mask.shape[0], axis=1)

    behaviour = rng.standard_normal((n, n_behaviour, 1), dtype=np.float32)
    behaviour[:, -len(CATEGORIES) :, 0] = rng.integers(0, 3, (n, len(CATEGORIES)))  # category indices
    behaviour_present = (rng.random((n, n_behaviour)) >= 0.03) & has["behaviour"][:, None]

    for values, present in ((gene, gene_present), (brain, brain_present), (behaviour, behaviour_present)):
        values[~present] = 0.0
    signal = gene[:, :10, 0].sum(1) + np.nan_to_num(brain[:, :10, 0]).sum(1) + behaviour[:, :5, 0].sum(1)
    participants = pd.DataFrame(
        {
            "eid": (1_000_000 + start + np.arange(n)).astype(str),
            "target": 0.3 * signal + rng.standard_normal(n),
            "age": rng.normal(60.0, 8.0, n).round(1),
            "sex": rng.integers(0, 2, n).astype(float),
            "site": np.char.add("site_", rng.integers(0, SITES, n).astype(str)),
        }
    )
    arrays = {
        "gene": (gene, gene_present),
        "brain": (brain, brain_present),
        "behaviour": (behaviour, behaviour_present),
    }
    return participants, arrays


def phase_build(args, workdir: Path) -> dict:
    from data_adapters.cache import CohortWriter

    shapes = layouts(args)
    folder = workdir / "cohort"
    started = time.perf_counter()
    with CohortWriter(
        folder, n_subjects=args.n, modalities=shapes, targets=["target"], confounds=["age", "sex", "site"]
    ) as writer:
        for start in range(0, args.n, args.block):
            participants, arrays = synthetic_block(start, min(args.block, args.n - start), args.seed, shapes)
            writer.append(participants, arrays)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"build_s": seconds, "build_subjects_per_s": args.n / seconds, "cohort_mb": size / 2**20}


# ---------------------------------------------------------------------------------------------- train / embed
def quiet_cpu_trainer(workdir: Path, max_steps: int, **settings) -> dict:
    """Trainer settings of a timed benchmark run: one CPU device, ``max_steps`` steps, no logger, checkpoints,
    progress bar, model summary or sanity validation; ``settings`` add to or replace them."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(workdir / "outputs"),
        **settings,
    }


def write_config(args, workdir: Path, batch_size: int, max_steps: int) -> Path:
    import yaml

    config = {
        "seed_everything": args.seed,
        "data": {
            "cohort_dir": str(workdir / "cohort"),
            "targets": ["target"],
            "confounds": ["age", "sex", "site"],
            "splits_file": str(workdir / "splits.json"),
            "batch_size": batch_size,
            "num_workers": 0,
        },
        "model": str(MODEL_CONFIG),
        "trainer": quiet_cpu_trainer(workdir, max_steps, limit_val_batches=0),
    }
    path = workdir / f"config-{batch_size}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def attention_bound(pl_module, batch) -> float:
    """Seconds of the model's global attention alone on this batch: one ``scaled_dot_product_attention`` forward
    and backward per layer, on the step's shapes ``[B, heads, S, head_dim]`` and with its key-padding mask, on
    random queries, keys and values. No training step can be faster than this (it is the backbone's only part
    quadratic in the number of tokens)."""
    import torch
    import torch.nn.functional as F

    from mot_neuro.model.routing import attention_mask

    encoder = pl_module.encoder
    cfg = encoder.backbone.cfg
    batch_size = next(iter(batch["values"].values())).shape[0]
    present = [torch.ones(batch_size, encoder.cfg.n_summary_tokens, dtype=torch.bool)]
    for spec in encoder.cfg.modalities:
        given = batch["present"].get(spec.name)
        present.append(torch.ones(batch_size, spec.n_tokens, dtype=torch.bool) if given is None else given.bool())
    present = torch.cat(present, dim=1)
    mask = attention_mask(present, cfg.causal)
    shape = (batch_size, cfg.n_heads, present.shape[1], cfg.head_dim)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    started = time.perf_counter()
    for _ in range(cfg.n_layers):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=cfg.attention_dropout)
        out.sum().backward()
    return time.perf_counter() - started


def phase_train(args, workdir: Path) -> dict:
    from lightning.pytorch.callbacks import Callback

    from mot_neuro.cli import lightning_cli

    class StepTimer(Callback):
        """Each timed step's wall time (from the end of the previous step: data loading included), and after it,
        outside that time, the attention bound on the same batch: the two interleaved, so load hits both alike."""

        def __init__(self, warmup: int):
            self.warmup, self.resumed = warmup, None
            self.steps, self.bounds = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            ended = time.perf_counter()
            if self.resumed is not None:
                self.steps.append(ended - self.resumed)
            if trainer.global_step >= self.warmup:
                self.bounds.append(attention_bound(pl_module, batch))
                self.resumed = time.perf_counter()

    config = write_config(args, workdir, args.batch_size, args.warmup + args.steps)
    started = time.perf_counter()
    cli = lightning_cli(["--config", str(config)], run=False)
    setup = time.perf_counter() - started
    timer = StepTimer(args.warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.save_checkpoint(workdir / "model.ckpt")
    step = statistics.median(timer.steps)
    bound = statistics.median(timer.bounds)
    return {
        "train_setup_s": setup,
        "train_step_ms": 1000 * step,
        "train_subjects_per_s": args.batch_size / step,
        "attention_bound_ms": 1000 * bound,
        "step_vs_attention_bound": step / bound,
        "train_rows": int(len(cli.datamodule.rows["train"])),
    }


def phase_embed(args, workdir: Path) -> dict:
    import warnings

    import pyarrow.parquet as pq

    from mot_neuro.cli import lightning_cli
    from mot_neuro.embed import EmbeddingWriter

    config = write_config(args, workdir, args.embed_batch_size, 1)
    output = workdir / "embeddings.parquet"
    started = time.perf_counter()
    cli = lightning_cli(["--config", str(config), "--data.predict_split", "all"], run=False)
    setup = time.perf_counter() - started
    writer = EmbeddingWriter(output, metadata={"config": str(config)})
    cli.trainer.callbacks.append(writer)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        cli.trainer.predict(
            cli.model, datamodule=cli.datamodule, ckpt_path=str(workdir / "model.ckpt"), return_predictions=False
        )
    seconds = time.perf_counter() - started
    rows = pq.ParquetFile(output).metadata.num_rows
    if rows != args.n:
        raise RuntimeError(f"embedded {rows} subjects, the cohort has {args.n}")
    return {"embed_setup_s": setup, "embed_s": seconds, "embed_subjects_per_s": rows / seconds, "embedded": rows}


def phase_explain(args, workdir: Path) -> dict:
    """``mot-neuro explain`` on the trained checkpoint, ``--max_subjects args.max_subjects``; its predict loop
    timed on its own (wall and process CPU: all of torch's threads) by wrapping the command's ``_predict``."""
    import pandas as pd

    from mot_neuro.explain import command

    config = write_config(args, workdir, args.explain_batch_size, 1)
    output = workdir / f"explain-{args.max_subjects}"
    predict = command._predict
    timed = {}

    def timed_predict(cli, path):
        wall, cpu = time.perf_counter(), time.process_time()
        predict(cli, path)
        timed["wall"], timed["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
        timed["split_rows"] = int(len(cli.datamodule.rows["test"]))

    argv = ["--config", str(config), "--ckpt_path", str(workdir / "model.ckpt"), "--output", str(output)]
    argv += ["--split", "test", "--max_subjects", str(args.max_subjects), "--no_figures"]
    argv += ["--methods", *args.explain_methods, "--n_steps", str(args.explain_n_steps)]
    argv += ["--trainer.logger", "false"] + (["--no_attention"] if args.explain_no_attention else [])
    command._predict = timed_predict
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        code = command.explain_main(argv)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        command._predict = predict
    if code != 0:
        raise RuntimeError(f"mot-neuro explain exited with {code}")
    summary = json.loads((output / "summary.json").read_text())
    explained = summary["subjects_per_run"]
    expected = min(args.max_subjects, timed["split_rows"])
    if explained != expected:
        raise RuntimeError(f"explained {explained} subjects, expected {expected}")
    rows = len(pd.read_parquet(output / "attributions.parquet"))
    shutil.rmtree(output)
    return {
        "max_subjects": args.max_subjects,
        "explained": explained,
        "test_split_rows": timed["split_rows"],
        "explain_s": seconds,
        "explain_cpu_s": cpu_seconds,
        "explain_predict_s": timed["wall"],
        "explain_predict_cpu_s": timed["cpu"],
        "explain_subjects_per_s": explained / timed["wall"],
        "explain_subjects_per_cpu_s": explained / timed["cpu"],
        "attribution_rows": rows,
        "ig_max_gap": max(r["ig_max_gap"] for r in summary["runs"]),
    }


def run_phase(args) -> None:
    if args.phase == "build":
        import data_adapters.cache  # noqa: F401  (no torch: the writer is usable without it)
    else:
        import lightning.pytorch  # noqa: F401  (imported before the baseline reading: in every real run)
        import torch  # noqa: F401

    after_imports = _rss_now_kb()
    workdir = Path(args.workdir)
    with MemorySampler() as sampler:
        phases = {"build": phase_build, "train": phase_train, "embed": phase_embed, "explain": phase_explain}
        result = phases[args.phase](args, workdir)
    result.update({f"{args.phase}_{k}": v for k, v in _memory_figures(sampler, after_imports).items()})
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------- driver
def _phase(args, phase: str, n: int, workdir: Path, max_subjects: int | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--n", str(n)]
    if phase == "explain":
        command += ["--max-subjects", str(max_subjects), "--explain-batch-size", str(args.explain_batch_size)]
        command += ["--explain-methods", *args.explain_methods, "--explain-n-steps", str(args.explain_n_steps)]
        command += ["--explain-no-attention"] if args.explain_no_attention else []
    command += ["--workdir", str(workdir), "--seed", str(args.seed), "--block", str(args.block)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    command += ["--embed-batch-size", str(args.embed_batch_size)]
    command += ["--gene", str(args.gene), "--brain", str(args.brain), "--behaviour", str(args.behaviour)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if done.returncode != 0:
        what = phase if max_subjects is None else f"{phase} (M={max_subjects})"
        raise RuntimeError(f"phase {what} at N={n} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _explain_figures(runs: list[dict]) -> dict:
    """The explain runs of one N (one per M) and what compares them: peak RSS growth from the smallest M to the
    largest, and the marginal throughput (extra subjects / extra predict seconds; None with one M)."""
    small = min(runs, key=lambda r: r["explained"])
    large = max(runs, key=lambda r: r["explained"])
    extra_s = large["explain_predict_s"] - small["explain_predict_s"]
    extra = large["explained"] - small["explained"]
    return {
        "explain": runs,
        "explain_peak_rss_mb": max(r["explain_peak_rss_mb"] for r in runs),
        **(
            {"explain_peak_anon_mb": max(r["explain_peak_anon_mb"] for r in runs)}
            if "explain_peak_anon_mb" in small
            else {}
        ),
        "explain_rss_growth_mb": large["explain_peak_rss_mb"] - small["explain_peak_rss_mb"],
        "explain_marginal_subjects_per_s": extra / extra_s if extra > 0 and extra_s > 0 else None,
    }


def _machine() -> dict:
    import torch
    from machine import cpu_name

    cpu = cpu_name()
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.phase:
        run_phase(args)
        return {}
    if args.steps < 1 or args.warmup < 1 or any(n < 10 for n in args.sizes):
        raise SystemExit("need --steps >= 1, --warmup >= 1 and sizes of at least 10 subjects")
    if min(args.gene, args.brain) < 1 or args.behaviour <= len(CATEGORIES):
        raise SystemExit(f"need --gene, --brain >= 1 and --behaviour > {len(CATEGORIES)} (its categorical measures)")
    phases = [phase for phase in PHASES if phase in args.phases]
    needs = {"train": "build", "embed": "train", "explain": "train"}
    for phase in phases:
        if phase in needs and needs[phase] not in phases:
            raise SystemExit(f"--phases: {phase} needs {needs[phase]}")
    if "explain" in phases and (min(args.explain_subjects) < 1 or args.explain_batch_size < 1):
        raise SystemExit("need --explain-subjects and --explain-batch-size >= 1")
    root = Path(tempfile.mkdtemp(prefix="mot-neuro-scale-", dir=args.dir))
    tokens = args.gene + args.brain + args.behaviour
    results = []
    try:
        for n in args.sizes:
            workdir = root / f"n{n}"
            workdir.mkdir()
            row = {"n_subjects": n, "tokens": tokens}
            for phase in phases:
                if phase == "explain":
                    row.update(_explain_figures([_phase(args, phase, n, workdir, m) for m in args.explain_subjects]))
                else:
                    row.update(_phase(args, phase, n, workdir))
                print(f"N={n:>7} {phase:<7} done", flush=True)
            results.append(row)
            if not args.keep:
                shutil.rmtree(workdir)
    finally:
        if args.keep:
            print(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    columns = [
        ("build_s", "build s", "{:.1f}"),
        ("build_peak_rss_mb", "build RSS MB", "{:.0f}"),
        ("train_setup_s", "train setup s", "{:.1f}"),
        ("train_subjects_per_s", "train subj/s", "{:.0f}"),
        ("train_step_ms", "step ms", "{:.0f}"),
        ("step_vs_attention_bound", "step/attn", "{:.2f}"),
        ("train_peak_rss_mb", "train RSS MB", "{:.0f}"),
        ("embed_subjects_per_s", "embed subj/s", "{:.0f}"),
        ("embed_peak_rss_mb", "embed RSS MB", "{:.0f}"),
    ]
    columns = [column for column in columns if column[0] in results[0]]
    print(f"\n{'subjects':>9}" + "".join(f"{title:>15}" for _, title, _ in columns))
    for row in results:
        print(f"{row['n_subjects']:>9}" + "".join(f"{fmt.format(row[key]):>15}" for key, _, fmt in columns))
    if "explain" in phases:
        explain_columns = [
            ("explained", "explained", "{:d}"),
            ("explain_s", "explain s", "{:.1f}"),
            ("explain_predict_s", "predict s", "{:.1f}"),
            ("explain_subjects_per_s", "subj/s", "{:.2f}"),
            ("explain_subjects_per_cpu_s", "subj/cpu-s", "{:.2f}"),
            ("explain_peak_rss_mb", "RSS MB", "{:.0f}"),
            ("explain_peak_anon_mb", "anon MB", "{:.0f}"),
        ]
        print(f"\n{'subjects':>9}" + "".join(f"{title:>12}" for _, title, _ in explain_columns))
        for row in results:
            for run in row["explain"]:
                print(
                    f"{row['n_subjects']:>9}"
                    + "".join(f"{fmt.format(run[key]):>12}" for key, _, fmt in explain_columns if key in run)
                )
            marginal = row["explain_marginal_subjects_per_s"]
            print(
                f"N={row['n_subjects']}: explain peak RSS growth from M={args.explain_subjects[0]} to the largest M"
                f" {row['explain_rss_growth_mb']:+.0f} MB; one more subject explained:"
                f" {'-' if marginal is None else f'{marginal:.2f} subj/s'}"
            )
    flatness = {}
    if len(results) > 1:
        small, large = min(results, key=lambda r: r["n_subjects"]), max(results, key=lambda r: r["n_subjects"])
        for key in sorted(k for k in small if k.endswith(("peak_rss_mb", "peak_anon_mb"))):
            flatness[key] = large[key] / small[key]
        print("largest N's peak memory / smallest N's: " + ", ".join(f"{k} {v:.2f}x" for k, v in flatness.items()))
    summary = {
        "benchmark": "scale",
        "machine": _machine(),
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "embed_batch_size": args.embed_batch_size,
            "phases": phases,
            "block": args.block,
            "tokens": {"gene": args.gene, "brain": args.brain, "behaviour": args.behaviour},
            "model": str(MODEL_CONFIG.relative_to(ROOT)),
        },
        "results": results,
        "flatness": flatness,
        # the headline figures, at the largest size
        "step_vs_attention_bound": results[-1].get("step_vs_attention_bound"),
        "train_peak_rss_mb": max((r["train_peak_rss_mb"] for r in results if "train_peak_rss_mb" in r), default=None),
    }
    if "explain" in phases:
        summary["settings"]["explain"] = {
            "subjects": args.explain_subjects,
            "methods": args.explain_methods,
            "n_steps": args.explain_n_steps,
            "batch_size": args.explain_batch_size,
            "attention": not args.explain_no_attention,
            "split": "test",
        }
        summary["explain_rss_growth_mb"] = results[-1]["explain_rss_growth_mb"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
