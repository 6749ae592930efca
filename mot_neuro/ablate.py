"""``mot-neuro ablate``: dense vs MoT (and partial untying) and leave-one-modality-out, over seeds and folds.

Every cell of the grid is one ``mot-neuro fit`` of the experiment config with a few overrides (``untie``,
``drop_modalities``, ``seed_everything``, ``fold``), all on the experiment's saved splits. Each cell is an
MLflow run, a child of one parent run named after the ablation (tags ``mot_neuro.ablation`` on the parent,
``mot_neuro.cell`` and ``mlflow.parentRunId`` on the children).

Resumable: a cell whose child run FINISHED is skipped; a child run left RUNNING or FAILED (an interrupted
or crashed cell) is marked KILLED and the cell runs again. ``--print-commands`` prints every unfinished
cell as a standalone ``mot-neuro fit`` command (for a SLURM array, say); ``--summarize`` then only
collects the finished cells. ``--launcher slurm --launcher-config FILE`` submits the unfinished cells itself, one
submitit job array (:mod:`mot_neuro.launch`; a job stopped by a time limit or preemption is requeued and resumes
from its checkpoint), waits, and writes the same summary; ``--launcher local`` runs those jobs on this machine.
The summary (tidy results, paired tests against the full model with FDR
correction, per-modality contributions, steps to the dense model's validation loss, a PNG) is written to
the output folder and logged to the parent run.

Default grid: every variant with no modality dropped, plus the full MoT with each modality left out, for
one seed and every fold.

Harmonisation axis: ``--harmonize none combat`` runs every cell of the grid once per setting (``none``: no
harmonisation; ``combat``: the data config's own ``harmonize`` settings, which must then be there). The cells'
names end in ``__harmonize-<setting>``, and results and summaries get a ``harmonize`` column: each setting is
summarised against its own full model (``harmonize-<setting>/`` holds that setting's whole report), and
``harmonize_effect.csv`` compares every cell with the same cell under the first setting given (paired by fold
like the other comparisons; BH within each cell and metric). Without ``--harmonize`` every cell runs with the
config's own setting and the grid, its names and its tables are as before.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from mot_neuro.ablation_pairing import AT_TEST  # "brain@test": the full model tested with brain hidden
from mot_neuro.data.harmonize import check_harmonize
from mot_neuro.experiment import experiment_overrides, lightning_cli, set_overrides
from mot_neuro.launch import LAUNCHERS, LauncherConfig, launch, read_launcher_config

log = logging.getLogger(__name__)

VARIANTS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "mot_ffn": ("ffn",),
    "mot_ffn_attention": ("ffn", "attention"),
    "mot": ("attention", "ffn", "norm"),
}
FULL = ("mot", "none")
ABLATION_TAG, CELL_TAG, PARENT_TAG = "mot_neuro.ablation", "mot_neuro.cell", "mlflow.parentRunId"
OVERRIDES_TAG = "mot_neuro.cell_overrides"
HARMONIZE_SETTINGS = ("none", "combat")  # the --harmonize axis: off, or the data config's harmonize


MERGE_PREFIX = "mot_merge_"  # mot_merge_brain+behaviour: MoT with those modalities sharing one tower


def overrides_digest(extra: list[str]) -> str:
    """What the parent run records of a grid's overrides: a digest, since they may hold anything a user passes (a
    list of subject IDs included), and equal digests are all that resuming needs to know."""
    return hashlib.sha256(json.dumps(extra).encode()).hexdigest()[:16]


def variant_overrides(variant: str, modalities: list[str]) -> list[str]:
    """Model overrides of a variant: its untied parts, and for a merge variant the tower of every modality."""
    if variant.startswith(MERGE_PREFIX):
        merged = variant[len(MERGE_PREFIX) :].split("+")
        towers = {m: ("_".join(merged) if m in merged else m) for m in modalities}
        return [
            "--model.encoder.untie",
            json.dumps(list(VARIANTS["mot"])),
            "--model.encoder.towers",
            json.dumps(towers),
        ]
    return ["--model.encoder.untie", json.dumps(list(VARIANTS[variant]))]


@dataclass(frozen=True)
class Cell:
    variant: str
    dropped: str
    seed: int
    fold: int
    harmonize: str | None = None  # None: the config's own setting (no --harmonize axis)

    @property
    def id(self) -> str:
        cell = f"{self.variant}__drop-{self.dropped}__seed{self.seed}__fold{self.fold}"
        return cell if self.harmonize is None else f"{cell}__harmonize-{self.harmonize}"

    @property
    def masked_at_test(self) -> str | None:
        return self.dropped[: -len(AT_TEST)] if self.dropped.endswith(AT_TEST) else None

    @property
    def trained_by(self) -> Cell:
        """The cell whose fit this cell needs: itself, or for a test-time mask the full model it tests."""
        return Cell(self.variant, "none", self.seed, self.fold, self.harmonize) if self.masked_at_test else self

    def overrides(self, modalities: list[str], combat: dict | None = None) -> list[str]:
        """The cell's overrides of the experiment; ``combat``: the config's harmonize settings, for a cell that
        harmonises."""
        dropped = [] if self.dropped == "none" or self.masked_at_test else [self.dropped]
        harmonize = []
        if self.harmonize == "combat":
            if combat is None:
                raise ValueError("a --harmonize combat cell needs the data config's harmonize settings")
            harmonize = ["--data.harmonize", json.dumps(combat)]
        elif self.harmonize == "none":
            harmonize = ["--data.harmonize", json.dumps({"method": "none"})]
        return [
            *harmonize,
            *variant_overrides(self.variant, modalities),
            "--data.drop_modalities",
            json.dumps(dropped),
            "--seed_everything",
            str(self.seed),
            "--data.fold",
            str(self.fold),
        ]


def build_grid(
    variants: list[str],
    drops: list[str],
    seeds: list[int],
    folds: list[int],
    modalities: list[str],
    *,
    towers: str = "separate",
    eval_masking: bool = False,
    harmonize: list[str] | None = None,
) -> list[Cell]:
    """Variants with nothing dropped, plus the full variant with each modality in ``drops`` left out.

    ``towers="pairs"`` adds MoT with every pair of modalities merged into one tower (the paper's separation
    analysis); ``eval_masking`` adds, for each modality in ``drops``, the full model tested with that
    modality's tokens hidden (no retraining), reported beside leaving it out. ``harmonize`` (settings from
    :data:`HARMONIZE_SETTINGS`) repeats the grid once per setting; None: once, with the config's own setting.
    """
    from itertools import combinations

    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    bad = sorted(set(drops) - {"none", *modalities})
    if bad:
        raise ValueError(f"--drop names unknown modality(ies) {bad}; the config's modalities are {modalities}")
    if towers not in ("separate", "pairs"):
        raise ValueError(f"--towers {towers!r}: choose 'separate' or 'pairs'")
    if harmonize is not None:
        wrong = sorted(set(harmonize) - set(HARMONIZE_SETTINGS))
        if wrong or not harmonize or len(set(harmonize)) != len(harmonize):
            raise ValueError(
                f"--harmonize {harmonize}: give each of {list(HARMONIZE_SETTINGS)} at most once"
                f"{f' (unknown: {wrong})' if wrong else ''}"
            )
    full = "mot" if "mot" in variants else variants[-1]
    if towers == "pairs":
        variants = [*variants, *(f"{MERGE_PREFIX}{a}+{b}" for a, b in combinations(modalities, 2))]
    combos = [(v, "none") for v in variants if "none" in drops]
    combos += [(full, d) for d in drops if d != "none"]
    if eval_masking:
        combos += [(full, d + AT_TEST) for d in drops if d != "none"]
    levels = [None] if harmonize is None else list(harmonize)
    return [Cell(v, d, s, f, h) for h in levels for v, d in combos for s in seeds for f in folds]


def _checkpoints(out_dir: Path, cell: Cell) -> Path:
    return out_dir / "cells" / cell.trained_by.id / "checkpoints"


def _predictions(out_dir: Path, cell: Cell) -> Path:
    """Per-subject test predictions of a cell (cohort row positions, never IDs): DeLong's test pairs them."""
    return out_dir / "cells" / cell.id / "test_predictions.parquet"


def _cell_args(
    config: str,
    cell: Cell,
    parent_id: str,
    name: str,
    out_dir: Path,
    extra: list[str],
    modalities: list[str],
    combat: dict | None = None,
) -> list[str]:
    tags = {PARENT_TAG: parent_id, CELL_TAG: cell.id, ABLATION_TAG + ".member": name}
    logging_args = ["--trainer.logger.init_args.tags", json.dumps(tags), "--trainer.logger.init_args.run_name", cell.id]
    if cell.masked_at_test:
        best = sorted(_checkpoints(out_dir, cell).glob("best-*.ckpt"))
        checkpoint = str(best[-1]) if best else str(_checkpoints(out_dir, cell) / "best-*.ckpt")
        return [
            "test",
            "--config",
            config,
            *extra,
            *cell.overrides(modalities, combat),
            *logging_args,
            "--ckpt_path",
            checkpoint,
            "--mask_at_test",
            json.dumps([cell.masked_at_test]),
            "--predictions_file",
            str(_predictions(out_dir, cell)),
        ]
    return [
        "fit",
        "--config",
        config,
        *extra,
        *cell.overrides(modalities, combat),  # last: an override of the whole model or data must not undo the cell
        *logging_args,
        "--checkpoint_dir",
        str(_checkpoints(out_dir, cell)),
        "--predictions_file",
        str(_predictions(out_dir, cell)),
    ]


INTERRUPTED = ("RUNNING", "FAILED", "SCHEDULED")  # MLflow states of a cell's attempt that did not finish


@dataclass(frozen=True)
class CellTask:
    """One cell's run: its ``mot-neuro fit`` (or ``test``) arguments and where its MLflow runs are. Plain data, so
    that a launcher can pickle it into a job; calling it runs the cell in the calling process.

    Earlier attempts that did not finish are marked KILLED first, so each cell has one finished run.
    ``resumed()``: the same cell continuing a fit from its newest ``last*.ckpt`` (``--ckpt_path last``, e.g.
    ``last-sigterm.ckpt`` written when a scheduler stopped the job); the metric history of the interrupted attempt
    up to the resumed step is copied into the new run, so its validation curve is whole."""

    cell_id: str
    args: tuple[str, ...]
    tracking_uri: str
    experiment_id: str
    parent_id: str
    resume: bool = False

    def resumed(self) -> CellTask:
        return replace(self, resume=True)

    @property
    def command_args(self) -> list[str]:
        # a test-time mask only tests a saved model: it starts again instead
        resume = self.resume and self.args[0] == "fit"
        return [*self.args, "--ckpt_path", "last"] if resume else list(self.args)

    def attempts(self, client) -> list:
        runs = client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{CELL_TAG}` = '{self.cell_id}'",
        )
        return sorted(runs, key=lambda r: r.info.start_time or 0)

    def __call__(self) -> str:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        interrupted = [r for r in self.attempts(client) if r.info.status in INTERRUPTED]
        for stale in interrupted:
            client.set_terminated(stale.info.run_id, "KILLED")  # an interrupted attempt: redo (or resume) the cell
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            lightning_cli(self.command_args)
        if self.resume and interrupted:
            finished = [r for r in self.attempts(client) if r.info.status == "FINISHED"]
            if finished:
                _carry_history(client, interrupted[-1].info.run_id, finished[-1].info.run_id)
        return self.cell_id


def _carry_history(client, old_run_id: str, new_run_id: str) -> None:
    """Copy into the resumed run each metric's points that the interrupted run logged before the resumed run's
    first step of that metric (a metric the resumed run never logged, such as an interrupted test's, stays out)."""
    from mlflow.entities import Metric

    old, new = client.get_run(old_run_id), client.get_run(new_run_id)
    points = []
    for key in old.data.metrics:
        if key not in new.data.metrics:
            continue
        first = min(point.step for point in client.get_metric_history(new_run_id, key))
        points += [
            Metric(key, p.value, p.timestamp, p.step)
            for p in client.get_metric_history(old_run_id, key)
            if p.step < first
        ]
    for start in range(0, len(points), 1000):  # MLflow's batch limit
        client.log_batch(new_run_id, metrics=points[start : start + 1000])


class Ablation:
    """The grid of one experiment config and its MLflow parent run."""

    def __init__(self, config: str, name: str, out_dir: Path, extra: list[str]):
        from mlflow.tracking import MlflowClient

        self.config, self.name, self.out_dir, self.extra = config, name, out_dir, extra
        # Parse the experiment once (no run) for its modalities, folds and MLflow settings.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = lightning_cli(["--config", config, *extra], run=False)
        self.modalities = list(probe.datamodule.modality_names)
        self.n_folds = int(probe.datamodule.hparams.n_folds)
        # the config's own harmonisation (with --data overrides): what a --harmonize combat cell runs
        self.combat = check_harmonize(probe.datamodule.hparams.get("harmonize"))
        logger = probe.trainer.logger
        self.client = MlflowClient(tracking_uri=logger._tracking_uri)
        experiment = self.client.get_experiment_by_name(logger._experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(logger._experiment_name)
        else:
            self.experiment_id = experiment.experiment_id
        self.tracking_uri = logger._tracking_uri

    def parent_run(self) -> str:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ABLATION_TAG}` = '{self.name}'", max_results=1
        )
        overrides = overrides_digest(self.extra)
        if runs:
            recorded = runs[0].data.tags.get(OVERRIDES_TAG, overrides)
            if recorded != overrides:
                raise ValueError(
                    f"ablation {self.name!r} already ran its cells with other overrides (--set, --data, --model,"
                    " --trainer) than this command's; finished cells would mix settings. Use another --name for new"
                    " settings, or the overrides of the first command"
                )
            return runs[0].info.run_id
        tags = {ABLATION_TAG: self.name, "mot_neuro.config": self.config, OVERRIDES_TAG: overrides}
        return self.client.create_run(self.experiment_id, run_name=self.name, tags=tags).info.run_id

    def children(self, parent_id: str) -> dict[str, list]:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")
        by_cell: dict[str, list] = {}
        for run in runs:
            by_cell.setdefault(run.data.tags.get(CELL_TAG, ""), []).append(run)
        return by_cell

    def finished(self, parent_id: str) -> dict[str, object]:
        done = {}
        for cell_id, runs in self.children(parent_id).items():
            ok = [r for r in runs if r.info.status == "FINISHED"]
            if ok:
                done[cell_id] = max(ok, key=lambda r: r.info.end_time or 0)
        return done

    def run_cell(self, cell: Cell, parent_id: str) -> None:
        self.task(cell, parent_id)()

    def task(self, cell: Cell, parent_id: str) -> CellTask:
        """The cell as plain data that runs anywhere: in this process, or as a launcher's job."""
        return CellTask(
            cell.id, tuple(self.cell_args(cell, parent_id)), self.tracking_uri, self.experiment_id, parent_id
        )

    def command(self, cell: Cell, parent_id: str) -> str:
        return shlex.join(["mot-neuro", *self.cell_args(cell, parent_id)])

    def cell_args(self, cell: Cell, parent_id: str) -> list[str]:
        return _cell_args(
            self.config, cell, parent_id, self.name, self.out_dir, self.extra, self.modalities, self.combat
        )

    def summarize(self, parent_id: str, cells: list[Cell], metric: str | None) -> dict:
        """Collect the finished cells' metrics and write the report (per harmonisation setting when the grid has
        a ``--harmonize`` axis, see the module docstring); every file is logged to the parent run."""
        import pandas as pd

        done = self.finished(parent_id)
        records, curves, flops, ratios, predictions = [], [], {}, {}, []
        for cell in cells:
            run = done.get(cell.id)
            if run is None:
                continue
            base = {"variant": cell.variant, "dropped": cell.dropped, "seed": cell.seed, "fold": cell.fold}
            if cell.harmonize is not None:
                base["harmonize"] = cell.harmonize
            params = run.data.params
            if "split/n_train" in params and "split/n_test" in params and float(params["split/n_train"]) > 0:
                # the same saved splits for every cell of a fold: one n_test / n_train per fold
                ratios[cell.fold] = float(params["split/n_test"]) / float(params["split/n_train"])
            path = _predictions(self.out_dir, cell)
            if path.is_file():
                frame = pd.read_parquet(path)
                predictions.append(frame.loc[frame["kind"] == "binary"].assign(**base))
            if cell.dropped == "none" and "train_flops_per_token" in run.data.params:
                # same sequence and batch for every variant with nothing dropped: FLOPs per step scale with these
                flops[(cell.harmonize, cell.variant)] = float(run.data.params["train_flops_per_token"])
            for key, value in run.data.metrics.items():
                if key.startswith("test/"):
                    records.append({**base, "metric": key, "value": value})
            for point in self.client.get_metric_history(run.info.run_id, "val/loss"):
                curves.append({**base, "step": point.step, "value": point.value})
        if not records:
            raise ValueError(f"no finished cell of ablation {self.name!r} has test metrics yet")
        metric = metric or _primary_metric(pd.DataFrame(records))
        predictions = pd.concat(predictions, ignore_index=True) if predictions else None
        levels = list(dict.fromkeys(c.harmonize for c in cells))
        if levels == [None]:
            flops = {variant: value for (_, variant), value in flops.items()}
            report = _report(records, curves, flops, ratios, predictions, self.out_dir, metric)
        else:
            report = _harmonize_report(records, curves, flops, ratios, predictions, self.out_dir, metric, levels)
        for path in report["paths"].values():
            self.client.log_artifact(parent_id, str(path))
        self.client.set_tag(parent_id, "mot_neuro.primary_metric", metric)
        return report


def _report(records, curves, flops, ratios, predictions, out_dir: Path, metric: str) -> dict:
    """The report of one grid (one harmonisation setting): results, summary against the full model, contributions,
    plot and steps to the dense model's validation loss, written into ``out_dir``."""
    import pandas as pd

    from mot_neuro import analysis

    out_dir.mkdir(parents=True, exist_ok=True)
    results = analysis.tidy_results(records)
    summary = analysis.summarize(
        results,
        reference=FULL,
        test_train_ratio=ratios or None,
        predictions=predictions.drop(columns="harmonize", errors="ignore") if predictions is not None else None,
    )
    paths = analysis.write_report(results, summary, out_dir, metric=metric)
    steps = None
    if curves and {"dense", "mot"} <= {c["variant"] for c in curves}:
        variants = {c["variant"] for c in curves}
        # best, not final: the demo-sized cohorts overfit, so a final loss is reached within an epoch
        per_cell, per_variant = analysis.steps_to_reference_quality(
            pd.DataFrame(curves).drop(columns="harmonize", errors="ignore"),
            flops_per_step=flops if variants <= set(flops) else None,
            target="best",
        )
        steps = per_variant
        for frame, file in ((per_cell, "steps_to_dense.csv"), (per_variant, "steps_to_dense_summary.csv")):
            frame.to_csv(out_dir / file, index=False)
            paths[file] = out_dir / file
    return {"results": results, "summary": summary, "steps": steps, "paths": paths, "metric": metric}


def _harmonize_report(records, curves, flops, ratios, predictions, out_dir: Path, metric: str, levels) -> dict:
    """One report per harmonisation setting (in ``harmonize-<setting>/``), their tables side by side with a
    ``harmonize`` column, and ``harmonize_effect.csv``: each cell against the same cell under ``levels[0]``."""
    import pandas as pd

    from data_adapters.io import atomic_write_bytes

    reports, paths = {}, {}
    for level in levels:
        mine = [r for r in records if r["harmonize"] == level]
        if not mine:
            continue
        level_preds = None if predictions is None else predictions.loc[predictions["harmonize"] == level]
        reports[level] = _report(
            mine,
            [c for c in curves if c["harmonize"] == level],
            {variant: value for (h, variant), value in flops.items() if h == level},
            ratios,
            None if level_preds is None or level_preds.empty else level_preds,
            out_dir / f"harmonize-{level}",
            metric,
        )
        paths.update({f"harmonize-{level}/{key}": path for key, path in reports[level]["paths"].items()})

    def side_by_side(frames: dict) -> pd.DataFrame:
        tables = [frame.assign(harmonize=level) for level, frame in frames.items() if frame is not None]
        table = pd.concat(tables, ignore_index=True)
        return table.loc[:, ["harmonize", *(c for c in table.columns if c != "harmonize")]]

    results = side_by_side({level: report["results"] for level, report in reports.items()})
    summary = side_by_side({level: report["summary"] for level, report in reports.items()})
    contributions = side_by_side(
        {level: pd.read_csv(report["paths"]["contributions"]) for level, report in reports.items()}
    )
    steps = None
    if any(report["steps"] is not None for report in reports.values()):
        steps = side_by_side({level: report["steps"] for level, report in reports.items()})
    effect = harmonize_effect(results, levels, ratios, predictions)
    for name, frame in (
        ("results", results),
        ("summary", summary),
        ("contributions", contributions),
        ("harmonize_effect", effect),
    ):
        paths[name] = atomic_write_bytes(out_dir / f"{name}.csv", frame.to_csv(index=False).encode())
    return {
        "results": results,
        "summary": summary,
        "steps": steps,
        "paths": paths,
        "metric": metric,
        "harmonize_effect": effect,
    }


def harmonize_effect(results, levels, ratios, predictions=None):
    """Every (variant, dropped) cell under each harmonisation setting against the same cell under ``levels[0]``:
    :func:`mot_neuro.analysis.summarize` on those cells alone (paired by fold, seeds averaged; DeLong on the
    pooled test predictions when given; BH within the cell and metric). Columns: ``variant, dropped, harmonize,
    reference_harmonize, metric`` and the summary's statistics (``mean_diff``: this setting minus the reference
    setting)."""
    import pandas as pd

    from mot_neuro import analysis

    reference, tables = levels[0], []
    for (variant, dropped), part in results.groupby(["variant", "dropped"], sort=True):
        present = set(part["harmonize"])
        if reference not in present or len(present) < 2:
            continue
        cells = part.assign(variant=part["harmonize"], dropped="none").drop(columns="harmonize")
        preds = None
        if predictions is not None:
            mine = predictions.loc[(predictions["variant"] == variant) & (predictions["dropped"] == dropped)]
            if not mine.empty:
                preds = mine.assign(variant=mine["harmonize"], dropped="none").drop(columns="harmonize")
        summary = analysis.summarize(
            cells, reference=(reference, "none"), test_train_ratio=ratios or None, predictions=preds
        )
        summary = summary.loc[~summary["is_reference"]].rename(columns={"variant": "harmonize"})
        tables.append(
            summary.drop(columns=["dropped", "is_reference"]).assign(
                variant=variant, dropped=dropped, reference_harmonize=reference
            )
        )
    if not tables:
        return pd.DataFrame(columns=["variant", "dropped", "harmonize", "reference_harmonize", "metric"])
    table = pd.concat(tables, ignore_index=True)
    first = ["variant", "dropped", "harmonize", "reference_harmonize", "metric"]
    return table.loc[:, [*first, *(c for c in table.columns if c not in first)]]


def _primary_metric(results) -> str:
    """The first target's r2 or AUROC; for a masked-modelling-only grid the reconstruction, compared over the
    modalities both cells have (a total loss sums one term per modality, so leaving one out lowers it)."""
    names = sorted(set(results["metric"]))
    for suffix in ("/r2", "/auroc", "/accuracy", "test/recon"):
        for name in names:
            if name.endswith(suffix):
                return name
    return names[0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mot-neuro ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True, help="the experiment config every cell fits")
    p.add_argument("--name", default=None, help="ablation name (default: the config's file name + '-ablation')")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"from {list(VARIANTS)}")
    p.add_argument("--drop", nargs="+", default=None, help="'none' and modalities to leave out (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--folds", nargs="+", type=int, default=None, help="default: every fold of the splits")
    p.add_argument("--out", default=None, help="output folder (default: outputs/ablation/<name>)")
    p.add_argument(
        "--metric",
        default=None,
        help="primary metric for the plot (default: the first test/*/r2, /auroc or /accuracy; test/recon without)",
    )
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every cell")
    p.add_argument(
        "--towers",
        choices=["separate", "pairs"],
        default="separate",
        help="pairs: also MoT with every pair of modalities sharing one tower",
    )
    p.add_argument(
        "--harmonize",
        nargs="+",
        default=None,
        metavar="SETTING",
        help="run the grid once per harmonisation setting: 'none' and/or 'combat' (the data config's harmonize);"
        " default: the config's own setting only",
    )
    p.add_argument(
        "--eval-masking",
        action="store_true",
        help="also test the full model with each modality hidden (no retraining), beside leaving it out",
    )
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="inline",
        help="where unfinished cells run: inline (default: this process, one after the other), slurm (one submitit"
        " job array; requeued and resumed on preemption or time-out), local (the same jobs as subprocesses here)",
    )
    p.add_argument(
        "--launcher-config",
        default=None,
        metavar="FILE",
        help="resources of the jobs: submitit parameters (configs/launcher/slurm.yaml; needed for slurm)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print-commands", action="store_true", help="print unfinished cells as fit commands")
    mode.add_argument("--summarize", action="store_true", help="only collect finished cells")
    args, unparsed = p.parse_known_args(argv)
    # --data/--model/--trainer mean what they mean in fit, and reach every cell like --set
    args.extra = [*experiment_overrides("ablate", unparsed), *set_overrides(args.set)]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    launcher = None
    if not (args.print_commands or args.summarize):
        launcher = read_launcher_config(args.launcher, args.launcher_config)  # before any work: bad input is fast
    name = args.name or Path(args.config).stem + "-ablation"
    out_dir = Path(args.out or Path("outputs") / "ablation" / name)
    extra = args.extra
    ablation = Ablation(args.config, name, out_dir, extra)
    folds = args.folds if args.folds is not None else list(range(ablation.n_folds))
    drops = args.drop if args.drop is not None else ["none", *ablation.modalities]
    if args.harmonize is not None and "combat" in args.harmonize and ablation.combat is None:
        raise ValueError(
            "--harmonize combat runs the data config's harmonize settings, and this config has none: add"
            " data.harmonize {method: combat, batch: <site column>, covariates: [...], modalities: [...]}"
        )
    cells = build_grid(
        args.variants,
        drops,
        args.seeds,
        folds,
        ablation.modalities,
        towers=args.towers,
        eval_masking=args.eval_masking,
        harmonize=args.harmonize,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = ablation.parent_run()
    done = ablation.finished(parent)
    todo = [c for c in cells if c.id not in done]
    todo.sort(key=lambda c: c.masked_at_test is not None)  # fits first: a test-time mask needs its model
    if args.print_commands:
        # a test-time mask needs its full model's checkpoint: printed once that fit has finished
        ready = [c for c in todo if not c.masked_at_test or c.trained_by.id in done]
        for cell in ready:
            print(ablation.command(cell, parent))
        waiting = len(todo) - len(ready)
        note = f" ({waiting} test-time masks wait for their model: print again once the fits finish)" if waiting else ""
        print(
            f"# {len(ready)} of {len(cells)} cells to run{note};"
            f" then: mot-neuro ablate --config {args.config} --summarize --name {name}"
            + (f" --harmonize {' '.join(args.harmonize)}" if args.harmonize else ""),
            file=sys.stderr,
        )
        return 0
    failed = []
    if not args.summarize:
        print(f"ablation {name!r}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run")
        if launcher is not None and launcher.kind != "inline":
            failed = _launch_cells(ablation, todo, parent, launcher)
        else:
            failed = _run_cells_inline(ablation, todo, parent)
        ablation.client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    report = ablation.summarize(parent, cells, args.metric)
    _print_report(report, ablation, parent, name)
    if failed:
        print(
            f"\n{len(failed)} cell(s) failed ({', '.join(failed[:5])}); re-run the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_cells_inline(ablation: Ablation, todo: list[Cell], parent: str) -> list[str]:
    """Run the unfinished cells in this process, one after the other; the ids of those that failed."""
    failed: list[str] = []
    for number, cell in enumerate(todo, start=1):
        print(f"[{number}/{len(todo)}] {cell.id}", flush=True)
        if cell.masked_at_test and cell.trained_by.id in failed:
            failed.append(cell.id)
            continue
        try:
            ablation.run_cell(cell, parent)
        except Exception as err:  # noqa: BLE001 - one broken cell must not cost the rest of the grid
            failed.append(cell.id)
            print(f"cell {cell.id} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    return failed


def _launch_cells(ablation: Ablation, todo: list[Cell], parent: str, launcher: LauncherConfig) -> list[str]:
    """Run the unfinished cells as submitit jobs (see :mod:`mot_neuro.launch`): the fits as one job array, then the
    test-time masks whose model finished as a second (they load its best checkpoint). The ids of the cells that
    failed, each reported on stderr with its error and the job's log."""
    folder = ablation.out_dir / "jobs"
    failed: list[str] = []
    fits = [c for c in todo if not c.masked_at_test]
    masks = [c for c in todo if c.masked_at_test]
    for phase in (fits, masks):
        if phase is masks:
            done = ablation.finished(parent)
            for cell in [c for c in masks if c.trained_by.id not in done]:
                failed.append(cell.id)
                print(f"cell {cell.id} not run: its model {cell.trained_by.id} did not finish", file=sys.stderr)
            phase = [c for c in masks if c.trained_by.id in done]
        if not phase:
            continue
        outcomes = launch([(c.id, ablation.task(c, parent)) for c in phase], launcher, folder)
        for outcome in outcomes:
            if not outcome.ok:
                failed.append(outcome.name)
                print(
                    f"cell {outcome.name} failed: {outcome.error} (job {outcome.job_id}, log {outcome.stderr})",
                    file=sys.stderr,
                    flush=True,
                )
    return failed


def _print_report(report: dict, ablation: Ablation, parent: str, name: str) -> None:
    from mot_neuro.tracking import format_number

    summary, metric = report["summary"], report["metric"]
    shown = summary[summary["metric"] == metric]
    columns = ("harmonize", "variant", "dropped", "n_cells", "n", "mean", "sd", "n_pairs", "mean_diff", "p_value")
    columns += ("q_value",)
    columns += ("p_corrected_t", "q_corrected_t", "p_delong", "q_delong")
    columns = [c for c in columns if c in shown and not (c.endswith(("_t", "_delong")) and shown[c].isna().all())]
    print(
        f"\nablation {name!r}: {metric} (n: cells where it is defined, of n_cells run; n_pairs: folds paired with"
        " the full model, seeds averaged within each fold; p_value: Wilcoxon signed-rank on the fold differences,"
        " p_corrected_t: Nadeau-Bengio corrected resampled t, p_delong: DeLong on the pooled out-of-fold AUROC;"
        " q: Benjamini-Hochberg within each metric and test)"
    )
    print(shown[columns].to_string(index=False, float_format=format_number))
    # why a test is missing or limited, and cells where the metric was undefined (NaN, left out of means and pairs)
    for _, row in shown.iterrows():
        note = row.get("note")
        if isinstance(note, str) and note and not row.get("is_reference"):
            where = f"{row['harmonize']}: " if "harmonize" in row else ""
            print(f"  {where}{row['variant']}/{row['dropped']}: {note}")
    effect = report.get("harmonize_effect")
    if effect is not None and not effect.empty:
        shown = effect[effect["metric"] == metric]
        print(f"\nharmonisation: each cell minus the same cell with harmonize {shown['reference_harmonize'].iloc[0]!r}")
        keep = ("variant", "dropped", "harmonize", "n_pairs", "mean_diff", "p_value", "p_corrected_t", "p_delong")
        keep = [c for c in keep if c in shown and not (c.startswith("p_") and shown[c].isna().all() and c != "p_value")]
        print(shown[keep].to_string(index=False, float_format=format_number))
    if report["steps"] is not None:
        print(
            "\nsteps to the dense model's best val/loss (ratio of steps; the MoT paper: 0.35-0.56 at 7B); cells that"
            " never reached it are censored at their last step: Kaplan-Meier median (inf: fewer than half reached)"
            " and mean restricted to a common horizon (the shortest follow-up of any variant, the same for all)"
        )
        print(report["steps"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nMLflow parent run {parent} in {ablation.tracking_uri}")
    for key, path in report["paths"].items():
        print(f"  {key:<26} {path}")
