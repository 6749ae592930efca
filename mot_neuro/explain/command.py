"""``mot-neuro explain``: which modalities, tokens (brain regions, genes, measures) and variants drive a trained
model's predictions, how stable that is, and how it compares with a permuted-target null.

::

    mot-neuro explain --config configs/experiments/demo.yaml --ckpt_path fold0.ckpt fold1.ckpt \\
        --null_ckpt_path null-fold0.ckpt --output outputs/explain

Each checkpoint (its fold and seed read from it; a null checkpoint is one trained with
``--data.permute_targets SEED``) is run over its fold's ``--split`` subjects (default: test), batch by batch with
Lightning's predict loop, and for every target: Integrated Gradients on token values and occlusion of tokens and
modalities (:mod:`mot_neuro.explain.attributions`), and the cross-modal attention of every layer and head with its
rollout (:mod:`mot_neuro.model.attention_maps`). Only running summaries are kept (:mod:`mot_neuro.explain.summary`),
so memory does not grow with the subjects.

The output folder (replaced as a whole when the run succeeds; nothing is left of a failed one):

* ``attributions.parquet`` / ``.csv`` -- per run and ``modality, token, feature, target, method``: ``value`` (mean
  attribution over subjects), ``mean_abs`` (importance), ``sd``, ``sd_abs``, ``n``, with ``fold``, ``seed``,
  ``variant``, ``null``, ``run``, ``checkpoint``. ``token == "*"``: the modality's total; ``feature`` names a
  variant (or feature slot) for feature-level Integrated Gradients, ``""`` otherwise.
* ``attention.parquet`` / ``.csv`` -- per run: ``layer`` (or ``rollout``), ``head`` (or ``mean``), ``query``,
  ``key``, ``share``.
* ``stability.csv`` -- Spearman correlation of token importances between runs of a variant (with two or more);
  ``null_comparison.csv`` -- each token's share of its modality's importance against the null runs'.
* ``subjects.parquet`` (``--per_subject``) -- every subject's attribution of every token.
* ``figures/`` -- for each variant (its real runs averaged): brain modalities from a labelled NIfTI atlas painted
  with their importances (``brain_<modality>_<variant>_<method>.nii.gz`` and nilearn stat-map and glass-brain
  PNGs), a genome plot of variant importances for genotype modalities, a bar chart per modality, and the
  cross-modal attention rollout of every variant side by side.
* ``summary.json`` -- what was run, the subjects explained, IG's completeness and the figures made.

With an MLflow logger in the experiment's trainer config (the default), the folder is also logged as the
artifacts of one MLflow run (``explain/``), tagged ``mot_neuro.command=explain``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback

from mot_neuro.experiment import EXPERIMENT_HELP, experiment_overrides, lightning_cli, set_overrides
from mot_neuro.explain.attributions import IG, OCCLUSION
from mot_neuro.explain.batch import METHODS, BatchExplainer, TokenNames
from mot_neuro.explain.stability import null_comparison, rank_stability
from mot_neuro.explain.summary import SUMMARY_COLUMNS

RUN_COLUMNS = ["run", "variant", "fold", "seed", "null", "checkpoint"]


def checkpoint_data_state(path: str) -> dict:
    """The DataModule's state saved in a checkpoint (fold, seed, preprocessing), ``{}`` for an older one."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = saved.get("NeuroOmicsDataModule") if isinstance(saved, dict) else None
    return dict(state or {})


def _variant(model) -> str:
    from mot_neuro.model import PARTS

    untie = tuple(model.encoder_config.untie)
    if not untie:
        return "dense"
    return "mot" if set(untie) == set(PARTS) else "mot-" + "+".join(untie)


def _token_names(datamodule) -> dict[str, TokenNames]:
    names = {}
    for name, modality in datamodule.cohort.modalities.items():
        source = modality.source or {}
        per_token = source.get("token_features") or {}
        features = {}
        if modality.n_features > 1:
            if per_token:
                features = {t: [str(f) for f in per_token.get(t, [])] for t in modality.token_names}
            elif modality.feature_names:
                features = {t: [str(f) for f in modality.feature_names] for t in modality.token_names}
        names[name] = TokenNames(list(modality.token_names), features)
    return names


class ExplainCallback(Callback):
    """Runs a :class:`BatchExplainer` on every predict batch (the module's own predict output is not kept)."""

    def __init__(self, options: argparse.Namespace, chosen: set[str] | None, per_subject) -> None:
        self.options = options
        self.chosen = chosen
        self.per_subject = per_subject
        self.explainer: BatchExplainer | None = None
        self.datamodule = None
        self.found: set[str] = set()

    def on_predict_start(self, trainer, pl_module) -> None:
        self.datamodule = trainer.datamodule
        self.explainer = BatchExplainer(
            pl_module,
            targets=self.options.targets,
            methods=self.options.methods,
            names=_token_names(self.datamodule),
            subject_ids=np.asarray(self.datamodule.cohort.subject_ids, dtype=object),
            n_steps=self.options.n_steps,
            attention=not self.options.no_attention,
            per_subject=self.per_subject,
        )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        import torch

        explainer = self.explainer
        rows = batch["row"].detach().cpu().numpy()
        keep = np.ones(len(rows), dtype=bool)
        if self.chosen is not None:
            ids = explainer.subject_ids[rows]
            keep = np.isin(ids, list(self.chosen))
            self.found.update(ids[keep].tolist())
        limit = self.options.max_subjects
        if limit is not None:
            room = max(0, limit - explainer.n_subjects)
            keep &= np.cumsum(keep) <= room
        explainer.add(batch, torch.as_tensor(keep, device=batch["row"].device))


def _read_subjects(path: str, id_column: str) -> set[str]:
    from mot_neuro.data.withdrawals import read_id_list

    return read_id_list(path, id_column=id_column, what="--subjects file")


class _SubjectRows:
    """The per-subject table, appended to a parquet file a batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = None
        self.run: dict = {}

    def __call__(self, table: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = table.assign(**{k: v for k, v in self.run.items() if k != "checkpoint"})
        frame["subject"] = frame["subject"].astype(str)
        frame["seed"] = frame["seed"].astype("Int64")
        arrow = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, arrow.schema)
        self.writer.write_table(arrow.cast(self.writer.schema))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mot-neuro explain",
        description="Attributions (Integrated Gradients, occlusion) of tokens and modalities, cross-modal attention,"
        " stability across folds and seeds and a permuted-target null, as tables and figures (brain maps, genome"
        " plot, heatmaps). The model's settings come from each checkpoint; the data from the experiment.",
        epilog=EXPERIMENT_HELP,
        allow_abbrev=False,
    )
    parser.add_argument("--config", required=True, help="the experiment config the checkpoints were trained with")
    parser.add_argument(
        "--ckpt_path", required=True, nargs="+", help="checkpoints to explain: folds, seeds, MoT and dense twins"
    )
    parser.add_argument(
        "--null_ckpt_path",
        nargs="+",
        default=[],
        help="checkpoints trained with --data.permute_targets SEED: the null the tokens are compared against",
    )
    parser.add_argument("--output", default="outputs/explain", help="output folder (replaced when the run succeeds)")
    parser.add_argument("--split", choices=["test", "val", "train", "all"], default="test", help="subjects to explain")
    parser.add_argument("--subjects", default=None, help="a file of subject IDs (one per line): explain only these")
    parser.add_argument("--max_subjects", type=int, default=None, help="explain at most this many subjects per run")
    parser.add_argument("--targets", nargs="+", default=None, help="heads to explain (default: all)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--n_steps", type=int, default=32, help="Integrated Gradients' path points")
    parser.add_argument("--no_attention", action="store_true", help="skip the cross-modal attention")
    parser.add_argument("--per_subject", action="store_true", help="also write every subject's attributions")
    for option, what in (
        ("--brain_maps", "paint on their atlas (auto: every one from a labelled NIfTI atlas; none: no maps)"),
        ("--genome_plots", "plot along the genome (auto: every one with variant positions; none: no plots)"),
    ):
        parser.add_argument(option, nargs="+", default=["auto"], metavar="MODALITY", help=f"modalities to {what}")
    parser.add_argument("--no_figures", action="store_true", help="tables only")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    return parser


def _check_options(args: argparse.Namespace) -> None:
    if args.max_subjects is not None and args.max_subjects < 1:
        raise ValueError(f"--max_subjects {args.max_subjects}: give a positive number")
    if args.n_steps < 2:
        raise ValueError(f"--n_steps {args.n_steps}: Integrated Gradients needs at least 2 path points")
    for path in [*args.ckpt_path, *args.null_ckpt_path]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
    for option in ("brain_maps", "genome_plots"):
        chosen = getattr(args, option)
        if len(chosen) > 1 and ({"auto", "none"} & set(chosen)):
            raise ValueError(f"--{option}: give 'auto', 'none' or modality names, not a mix ({chosen})")


def _run_label(variant: str, fold, seed, null: bool, taken: set[str]) -> str:
    label = f"{variant}-fold{fold}-seed{'?' if seed is None else seed}" + ("-null" if null else "")
    base, k = label, 1
    while label in taken:
        k += 1
        label = f"{base}-{k}"
    taken.add(label)
    return label


def _explain_checkpoint(args, overrides, path: str, null: bool, keep_logger: bool, chosen, subject_rows):
    state = checkpoint_data_state(path)
    permuted = (state.get("preprocessing") or {}).get("permute_targets")
    if null and permuted is None:
        raise ValueError(
            f"--null_ckpt_path {path}: not a null model (it was not trained with --data.permute_targets SEED)"
        )
    if not null and permuted is not None:
        raise ValueError(
            f"--ckpt_path {path} was trained on permuted targets (data.permute_targets {permuted}): pass it as"
            " --null_ckpt_path"
        )
    run_overrides = [
        "--data.predict_split",
        args.split,
        "--data.permute_targets",
        "null" if permuted is None else str(permuted),
        "--trainer.inference_mode",
        "false",  # Integrated Gradients needs gradients inside the predict loop
        "--trainer.devices",
        "1",
        "--trainer.fast_dev_run",
        "false",
        "--trainer.limit_predict_batches",
        "1.0",
        "--trainer.enable_progress_bar",
        "false",
    ]
    if "fold" in state:  # each checkpoint on its own fold's subjects
        run_overrides += ["--data.fold", str(int(state["fold"]))]
    if not keep_logger:
        run_overrides += ["--trainer.logger", "false"]
    cli = lightning_cli(["--config", args.config, *overrides, *run_overrides], run=False, model_checkpoint=path)
    from lightning.pytorch.callbacks import Checkpoint

    # the config's ModelCheckpoint is for fit; restoring this checkpoint would only warn about its folder
    cli.trainer.callbacks = [c for c in cli.trainer.callbacks if not isinstance(c, Checkpoint)]
    callback = ExplainCallback(args, chosen, subject_rows)
    cli.trainer.callbacks.append(callback)
    if args.max_subjects is not None and not args.subjects:
        # the first max_subjects of the split are explained: the loop need not read (and predict) the rest
        cli.trainer.limit_predict_batches = -(-args.max_subjects // cli.datamodule.hparams.batch_size)
    variant = _variant(cli.model)
    fold = int(state.get("fold", cli.datamodule.hparams.fold))
    seed = state.get("seed")
    return cli, callback, variant, fold, seed


def _predict(cli, path: str) -> None:
    from mot_neuro.embed import _state_dict_mismatch
    from mot_neuro.experiment_cli import checkpoint_model_settings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        # explain leaves out the config's ModelCheckpoint (for fit), whose state the checkpoint holds
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks")
        try:
            cli.trainer.predict(
                cli.model, datamodule=cli.datamodule, ckpt_path=path, return_predictions=False, weights_only=True
            )
        except RuntimeError as err:
            if "state_dict" not in str(err):
                raise
            raise _state_dict_mismatch(path, checkpoint_model_settings(path), cli.model, err) from err


def _modalities(datamodule) -> dict[str, SimpleNamespace]:
    """Name, token names and source of each cohort modality (what the figures need), without its arrays."""
    return {
        name: SimpleNamespace(name=name, token_names=list(m.token_names), source=dict(m.source or {}))
        for name, m in datamodule.cohort.modalities.items()
    }


def _write_table(table: pd.DataFrame, folder: Path, stem: str) -> None:
    table.to_parquet(folder / f"{stem}.parquet", index=False)
    table.to_csv(folder / f"{stem}.csv", index=False)


def _replace_folder(staging: Path, output: Path) -> None:
    """Put the finished ``staging`` folder at ``output``: a reader sees the previous folder or the new one."""
    old = None
    if output.exists():
        old = output.with_name(f"{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def explain_main(argv: list[str]) -> int:
    """``mot-neuro explain`` (see the module docstring)."""
    args, unparsed = _parser().parse_known_args(argv)
    overrides = [*experiment_overrides("explain", unparsed), *set_overrides(args.set)]
    _check_options(args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    tracked: dict = {}  # the MLflow logger once the first run made one
    try:
        result = _explain(args, overrides, staging, tracked)
        _replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if tracked.get("logger") is not None:  # its run must not read as a finished explain without artifacts
            tracked["logger"].finalize("failed")
        raise
    logger = tracked.get("logger")
    if logger is not None:
        _log_to_mlflow(logger, output, result)
    print(
        f"explained {result['subjects_per_run']} subjects per run over {len(result['runs'])} run(s)"
        f" ({', '.join(r['run'] for r in result['runs'])}); tables and figures in {output}"
    )
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _explain(args, overrides, staging: Path, tracked: dict) -> dict:
    checkpoints = [(p, False) for p in args.ckpt_path] + [(p, True) for p in args.null_ckpt_path]
    subject_rows = _SubjectRows(staging / "subjects.parquet") if args.per_subject else None
    chosen = None
    summaries, attention, runs, notes, taken = [], [], [], [], set()
    modalities = None
    try:
        for index, (path, null) in enumerate(checkpoints):
            cli, callback, variant, fold, seed = _explain_checkpoint(
                args, overrides, path, null, index == 0, chosen, subject_rows
            )
            if args.subjects and chosen is None:
                chosen = _read_subjects(args.subjects, cli.datamodule.hparams.id_column)
                callback.chosen = chosen
            run = {
                "run": _run_label(variant, fold, seed, null, taken),
                "variant": variant,
                "fold": fold,
                "seed": seed,
                "null": null,
                "checkpoint": str(path),
            }
            if subject_rows is not None:
                subject_rows.run = run
            if index == 0:  # the run's MLflow logger (the config's; later checkpoints run without one)
                tracked["logger"] = cli.trainer.logger if _is_mlflow(cli.trainer.logger) else None
            _predict(cli, path)
            explainer = callback.explainer
            if explainer is None or explainer.n_subjects == 0:
                among = f" (none of the subjects of {args.subjects} is in it)" if chosen is not None else ""
                raise ValueError(f"{path}: no subject of the {args.split} split of fold {fold} was explained{among}")
            if explainer.max_ig_gap > 1.0:
                raise ValueError(
                    f"{path}: Integrated Gradients did not converge (attributions miss the output difference by"
                    f" {explainer.max_ig_gap:.1f}x the tolerance for some subject): rerun with a larger --n_steps"
                    f" (now {args.n_steps})"
                )
            summaries.append(explainer.summary.table().assign(**run))
            attention.append(explainer.attention_summary.table().assign(**run))
            runs.append({**run, "n_subjects": explainer.n_subjects, "ig_max_gap": explainer.max_ig_gap})
            if modalities is None:
                modalities = _modalities(cli.datamodule)
            if chosen is not None:
                unknown = sorted(chosen - callback.found)
                if unknown and not null:
                    notes.append(
                        f"{run['run']}: {len(unknown)} of the {len(chosen)} subjects of {args.subjects} are not in"
                        f" its {args.split} split (e.g. {unknown[0]}) and were not explained"
                    )
    finally:
        if subject_rows is not None:
            subject_rows.close()
    table = pd.concat(summaries, ignore_index=True)[SUMMARY_COLUMNS + RUN_COLUMNS]
    table["seed"] = table["seed"].astype("Int64")
    _write_table(table, staging, "attributions")
    attention_table = pd.concat(attention, ignore_index=True)
    if not attention_table.empty:
        attention_table["seed"] = attention_table["seed"].astype("Int64")
        _write_table(attention_table, staging, "attention")
    notes += _reading_notes(table, attention_table)
    stability = rank_stability(table)
    if not stability.empty:
        stability.to_csv(staging / "stability.csv", index=False)
    comparison = null_comparison(table)
    if not comparison.empty:
        comparison.to_csv(staging / "null_comparison.csv", index=False)
    figures = {} if args.no_figures else _figures(args, table, attention_table, modalities, staging / "figures")
    result = {
        "config": args.config,
        "split": args.split,
        "methods": list(args.methods),
        "n_steps": args.n_steps,
        "runs": runs,
        "subjects_per_run": sorted({r["n_subjects"] for r in runs}),
        "stability_median": _medians(stability),
        "figures": sorted(str(p.relative_to(staging)) for p in figures.values()),
        "notes": notes,
    }
    result["subjects_per_run"] = (
        result["subjects_per_run"][0] if len(result["subjects_per_run"]) == 1 else result["subjects_per_run"]
    )
    (staging / "summary.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def _reading_notes(table: pd.DataFrame, attention_table: pd.DataFrame) -> list[str]:
    """What a reader of the tables should know: too few null runs for exceeds_null to mean much, and attention
    that hardly differs from no preference (then its heatmap says little about what the model uses)."""
    from mot_neuro.explain.summary import ROLLOUT, UNIFORM

    notes = []
    n_null = int(table.loc[table["null"], "run"].nunique())
    if 0 < n_null < 5:
        notes.append(
            f"null_comparison.csv compares with {n_null} null run(s): exceeds_null is then a comparison with"
            " that many draws, not a test; train more null models (--data.permute_targets 1, 2, 3, ...)"
        )
    if attention_table.empty or not (attention_table["layer"] == UNIFORM).any():
        return notes
    for run, rows in attention_table[~attention_table["null"]].groupby("run", sort=False):
        rollout = rows[rows["layer"] == ROLLOUT].set_index(["query", "key"])["share"]
        uniform = rows[rows["layer"] == UNIFORM].set_index(["query", "key"])["share"]
        distance = float((rollout - uniform).abs().max())
        if distance < 0.05:
            notes.append(
                f"{run}: its attention rollout is within {distance:.3f} of no preference (attention spread evenly"
                " over the present tokens) in every cell: the heatmap shows token counts, not what the model uses;"
                " read the attributions"
            )
    return notes


def _medians(stability: pd.DataFrame) -> dict:
    if stability.empty:
        return {}
    overall = stability[stability["modality"] == "all"]
    medians = overall.groupby(["variant", "target", "method"])["spearman"].median()
    return {"/".join(key): round(float(value), 4) for key, value in medians.items()}


def _is_mlflow(logger) -> bool:
    from lightning.pytorch.loggers import MLFlowLogger

    return isinstance(logger, MLFlowLogger)


def _log_to_mlflow(logger, output: Path, result: dict) -> None:
    client, run_id = logger.experiment, logger.run_id
    client.set_tag(run_id, "mot_neuro.command", "explain")
    metrics = {"explain/n_runs": len(result["runs"])}
    per_run = result["subjects_per_run"]
    metrics["explain/subjects_per_run"] = per_run if isinstance(per_run, int) else min(per_run)
    metrics["explain/ig_max_gap"] = max(r["ig_max_gap"] for r in result["runs"])
    for key, value in result["stability_median"].items():
        metrics[f"explain/stability/{key}"] = value
    logger.log_metrics(metrics)
    client.log_artifacts(run_id, str(output), "explain")
    logger.finalize("success")


# ----------------------------------------------------------------------------------------------------- figures
def _mean_over_runs(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["variant", "modality", "token", "feature", "target", "method"]
    return table.groupby(keys, sort=False, dropna=False)[["value", "mean_abs", "sd", "sd_abs"]].mean().reset_index()


def _chosen(option: list[str], names: list[str]) -> tuple[list[str], bool]:
    if option == ["none"]:
        return [], False
    if option == ["auto"]:
        return names, False
    unknown = sorted(set(option) - set(names))
    if unknown:
        raise ValueError(f"modalities {unknown} are not modalities of the cohort {names}")
    return list(option), True


def _figures(args, table, attention_table, modalities, folder: Path) -> dict[str, Path]:
    from mot_neuro.explain import figures as draw
    from mot_neuro.explain.locations import atlas_regions, variant_positions
    from mot_neuro.explain.summary import UNIFORM, attention_matrix

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    real = _mean_over_runs(table[~table["null"]])
    names = list(modalities)
    brain, brain_required = _chosen(args.brain_maps, names)
    genome, genome_required = _chosen(args.genome_plots, names)
    atlases = {m: atlas_regions(modalities[m], required=brain_required) for m in brain}
    positions = {m: variant_positions(modalities[m], required=genome_required) for m in genome}
    for (variant, target, method), rows in real.groupby(["variant", "target", "method"], sort=False):
        tag = f"{variant}_{target}_{method}"
        tokens = rows[(rows["feature"] == "") & (rows["token"] != "*")]
        chart = tokens.assign(value=tokens["mean_abs"], sd=tokens["sd_abs"])[["modality", "token", "value", "sd"]]
        label = f"mean |attribution| to {target} ({_method_name(method)})"
        made[f"bars_{tag}"] = draw.modality_bar_charts(chart, folder / f"bars_{tag}.png", f"{variant}: {label}")
        for modality, regions in atlases.items():
            if regions is None:
                continue
            importance = tokens[tokens["modality"] == modality].set_index("token")["mean_abs"]
            values = [float(importance.get(t, np.nan)) for t in regions.tokens]
            stem = f"map_{modality}_{tag}"
            made[stem] = draw.paint_atlas(regions.atlas, regions.label_ids, values, folder / f"{stem}.nii.gz")
            pictures = draw.brain_map_figures(made[stem], folder / stem, f"{variant} {modality}: {label}", signed=False)
            made.update({f"{stem}_{kind}": path for kind, path in pictures.items()})
        if method != IG:
            continue
        for modality, where in positions.items():
            if where is None:
                continue
            plot = _genome_rows(rows[rows["modality"] == modality], where)
            if plot.empty:
                continue
            made[f"genome_{modality}_{tag}"] = draw.manhattan_figure(
                plot,
                folder / f"genome_{modality}_{tag}.png",
                f"{variant} {modality}: {label}, per variant",
            )
    if not attention_table.empty:
        real_attention = attention_table[~attention_table["null"]]
        panels, uniform = {}, None
        for variant, rows in real_attention.groupby("variant", sort=False):
            mean = rows.groupby(["layer", "head", "query", "key"], sort=False)["share"].mean().reset_index()
            panels[variant] = attention_matrix(mean)
            if uniform is None and (mean["layer"] == UNIFORM).any():  # the same for every variant of one data
                uniform = attention_matrix(mean, layer=UNIFORM)
        if uniform is not None:
            panels["no preference (uniform)"] = uniform
        made["attention"] = draw.attention_heatmaps(
            panels,
            folder / "attention_rollout.png",
            "cross-modal attention rollout: share of each query group's attention on each key group",
        )
    return made


def _genome_rows(rows: pd.DataFrame, where: pd.DataFrame) -> pd.DataFrame:
    """Variant importances with their positions: feature-level rows, or whole tokens of one variant each."""
    features = rows[rows["feature"] != ""]
    if not features.empty:
        merged = features.merge(where, on=["token", "feature"], how="inner")
    else:
        single = where.groupby("token").filter(lambda g: len(g) == 1)
        merged = (
            rows[(rows["feature"] == "") & (rows["token"] != "*")].drop(columns="feature").merge(single, on="token")
        )
    return merged.assign(value=merged["mean_abs"])[["feature", "chromosome", "position", "value"]]


def _method_name(method: str) -> str:
    return {IG: "Integrated Gradients", OCCLUSION: "occlusion"}.get(method, method)
