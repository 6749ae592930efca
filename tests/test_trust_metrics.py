"""Numbers a run may not report wrongly (issue 13, classes 1, 5, 10 and 14): undefined metrics are NaN with a
reason, a NaN loss stops training, model options are range-checked where they are parsed, and the fit summary
shows the best checkpoint's validation metrics.

Unit tests compare the module's metric code with scikit-learn and scipy computed here; the CLI cases run
``mot-neuro`` in this process on the demo cohort (tests/helpers.py, as in tests/test_bad_inputs.py), with a participants
table edited so that the test fold of fold 0 holds what each case needs.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import CONFIGS, EXPERIMENT, Case, assert_refused, run_main
from lightning.pytorch.callbacks import Callback
from scipy import stats
from sklearn import metrics as skm

from mot_neuro.lit_module import NeuroOmicsModule, metric_rules

CPU_TRAINER = CONFIGS / "trainer" / "cpu.yaml"
# one real epoch of one batch: unlike the debug trainer (fast_dev_run), it logs to MLflow and tests every test row
ONE_STEP_FIT = (
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
)
SHORT_FIT = (  # a few real epochs with checkpoints, fast
    "--trainer.max_epochs",
    "3",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
)


# ====================================================================== the module's metric code, no trainer
def _module(targets: dict) -> NeuroOmicsModule:
    spec = {"modalities": [{"name": "a", "n_tokens": 2, "n_features": 1, "feature_mask": []}], "targets": targets}
    return NeuroOmicsModule(data_spec=spec, encoder={"dim": 8, "n_heads": 2, "n_layers": 1})


def _epoch_metrics(
    kind: str, prediction, truth, *, stage: str = "test", n_classes: int | None = None, scale: dict | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Run the module's end-of-epoch metric code on one epoch's outputs; what it would log."""
    target = {"kind": kind, **({"n_classes": n_classes} if n_classes else {}), **({"scale": scale} if scale else {})}
    module = _module({"y": target})
    module._trainer = SimpleNamespace(world_size=1, sanity_checking=False, global_rank=0)
    logged: dict[str, float] = {}
    module.log = lambda key, value, **_: logged.__setitem__(key, float(value))
    truth = torch.as_tensor(np.asarray(truth, dtype=np.float64), dtype=torch.float32)
    observed = ~torch.isnan(truth)
    safe = torch.where(observed, truth, torch.zeros_like(truth))
    if kind != "regression":
        safe = safe.long()
    module._outputs[f"{stage}__y"] = [(torch.as_tensor(np.asarray(prediction), dtype=torch.float32), safe, observed)]
    module._log_metrics(stage)
    return {key.rsplit("/", 1)[1]: value for key, value in logged.items()}, module.metric_notes


def _binary_set(rng, n=40, positives=None):
    truth = rng.integers(0, 2, n) if positives is None else np.r_[np.ones(positives), np.zeros(n - positives)]
    return rng.uniform(0.05, 0.95, n), truth


def test_binary_metrics_equal_scikit_learn():
    prediction, truth = _binary_set(np.random.default_rng(0))
    values, notes = _epoch_metrics("binary", prediction, truth)
    assert values["auroc"] == pytest.approx(skm.roc_auc_score(truth, prediction), abs=1e-5)
    assert values["auprc"] == pytest.approx(skm.average_precision_score(truth, prediction), abs=1e-5)
    assert values["brier"] == pytest.approx(skm.brier_score_loss(truth, prediction), abs=1e-5)
    assert not notes


@pytest.mark.parametrize("only_class", [0, 1])
def test_binary_set_with_one_class_has_nan_ranking_metrics_and_defined_brier(only_class, caplog):
    rng = np.random.default_rng(1)
    prediction = rng.uniform(0.05, 0.95, 30)
    truth = np.full(30, only_class)
    truth_with_missing = np.where(np.arange(30) % 7 == 0, np.nan, truth)  # unobserved rows do not count
    with caplog.at_level(logging.WARNING, logger="mot_neuro"):
        values, notes = _epoch_metrics("binary", prediction, truth_with_missing)
    assert math.isnan(values["auroc"]) and math.isnan(values["auprc"])  # torchmetrics alone says 0
    observed = ~np.isnan(truth_with_missing)
    assert values["brier"] == pytest.approx(np.mean((prediction[observed] - only_class) ** 2), abs=1e-5)
    assert math.isfinite(values["ece"])
    lines = [r.getMessage() for r in caplog.records]
    assert f"test/y/auroc is undefined: the test set holds one class ({only_class}) of y; logged as NaN" in lines
    assert any(line.startswith("test/y/auprc is undefined") for line in lines)
    assert notes["test/y/auroc"].startswith("undefined: the test set holds one class")


@pytest.mark.parametrize("kind", ["binary", "regression"])
@pytest.mark.parametrize("n_observed", [0, 1])
def test_fewer_than_two_observed_values_make_every_metric_nan(kind, n_observed):
    truth = np.full(6, np.nan)
    truth[:n_observed] = 1.0
    values, notes = _epoch_metrics(kind, np.full(6, 0.4), truth, stage="val")
    assert values and all(math.isnan(v) for v in values.values()), values
    assert all("(needs >= 2)" in note and "validation set" in note for note in notes.values())


def test_regression_metrics_equal_scikit_learn_and_scipy():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=50)
    prediction = truth + rng.normal(scale=0.7, size=50)
    values, notes = _epoch_metrics("regression", prediction, truth)
    assert values["r2"] == pytest.approx(skm.r2_score(truth, prediction), abs=1e-4)
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(truth, prediction), abs=1e-5)
    assert values["pearson"] == pytest.approx(stats.pearsonr(truth, prediction).statistic, abs=1e-4)
    assert not notes


def test_constant_truth_makes_r2_and_pearson_nan_and_keeps_mae():
    truth = np.full(20, 1.5)
    prediction = np.linspace(0.0, 3.0, 20)
    values, notes = _epoch_metrics("regression", prediction, truth)
    assert math.isnan(values["r2"]) and math.isnan(values["pearson"])
    assert skm.r2_score(truth, prediction, force_finite=False) == -np.inf  # scikit-learn: undefined too
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(truth, prediction), abs=1e-5)
    assert "y is constant (1.5) in the test set" in notes["test/y/r2"]


def test_constant_prediction_makes_pearson_nan_and_keeps_r2():
    truth = np.linspace(-1.0, 1.0, 20)
    prediction = np.full(20, 0.25)
    values, notes = _epoch_metrics("regression", prediction, truth)
    assert math.isnan(values["pearson"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(stats.pearsonr(truth, prediction).statistic)  # scipy agrees
    assert values["r2"] == pytest.approx(skm.r2_score(truth, prediction), abs=1e-4)
    assert "predicts one constant value" in notes["test/y/pearson"] and "test/y/r2" not in notes


def _multiclass_set(rng, truth):
    logits = rng.normal(size=(len(truth), 3))
    logits[np.arange(len(truth)), truth] += 1.0
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _one_vs_rest(truth, prediction, score, classes):
    return float(np.mean([score(truth == c, prediction[:, c]) for c in classes]))


def test_multiclass_metrics_equal_scikit_learn_and_accuracy_is_plain():
    rng = np.random.default_rng(3)
    truth = np.r_[np.zeros(40, int), np.ones(8, int), np.full(4, 2)]  # imbalanced: plain != balanced accuracy
    prediction = _multiclass_set(rng, truth)
    values, notes = _epoch_metrics("multiclass", prediction, truth, n_classes=3)
    assert values["auroc"] == pytest.approx(skm.roc_auc_score(truth, prediction, multi_class="ovr"), abs=1e-5)
    expected_ap = _one_vs_rest(truth, prediction, skm.average_precision_score, range(3))
    assert values["auprc"] == pytest.approx(expected_ap, abs=1e-5)
    accuracy = skm.accuracy_score(truth, prediction.argmax(1))
    balanced = skm.balanced_accuracy_score(truth, prediction.argmax(1))
    assert accuracy != pytest.approx(balanced)
    assert values["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert values["balanced_accuracy"] == pytest.approx(balanced, abs=1e-6)  # under its own name
    assert not notes


def test_multiclass_class_absent_averages_auroc_and_auprc_over_present_classes():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, 40)  # class 2 absent from this set
    prediction = _multiclass_set(rng, truth)
    values, notes = _epoch_metrics("multiclass", prediction, truth, n_classes=3)
    assert values["auroc"] == pytest.approx(_one_vs_rest(truth, prediction, skm.roc_auc_score, [0, 1]), abs=1e-5)
    expected_ap = _one_vs_rest(truth, prediction, skm.average_precision_score, [0, 1])
    assert values["auprc"] == pytest.approx(expected_ap, abs=1e-5)
    for metric in ("auroc", "auprc"):  # the same rule for both, and said
        assert "over the 2 classes present; class(es) [2] absent from the test set" in notes[f"test/y/{metric}"]
    # balanced accuracy too: the mean recall of the present classes, as scikit-learn computes it
    predicted = prediction.argmax(1)
    assert (predicted == 2).any()  # the absent class is predicted: torchmetrics' macro average would count it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: y_pred contains classes not in y_true
        balanced = skm.balanced_accuracy_score(truth, predicted)
    assert values["balanced_accuracy"] == pytest.approx(balanced, abs=1e-6)
    assert "mean recall of the 2 class(es) present; class(es) [2] absent" in notes["test/y/balanced_accuracy"]


def test_multiclass_set_with_one_class_is_nan():
    truth = np.full(10, 1)
    prediction = _multiclass_set(np.random.default_rng(5), truth)
    values, _ = _epoch_metrics("multiclass", prediction, truth, n_classes=3)
    assert math.isnan(values["auroc"]) and math.isnan(values["auprc"])
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(truth, prediction.argmax(1)))  # still defined


def test_a_repeated_undefined_metric_warns_once_per_run(caplog):
    module = _module({"y": {"kind": "binary"}})
    module._trainer = SimpleNamespace(world_size=1, sanity_checking=False, global_rank=0)
    module.log = lambda *a, **k: None
    with caplog.at_level(logging.WARNING, logger="mot_neuro"):
        for _ in range(3):  # three validation epochs on the same one-class set
            ones = torch.ones(8)
            module._outputs["val__y"] = [(torch.full((8,), 0.3), ones.long(), ones.bool())]
            module._log_metrics("val")
    assert sum("val/y/auroc is undefined" in r.getMessage() for r in caplog.records) == 1


def test_metric_rules_say_nothing_on_a_well_posed_set():
    assert metric_rules("binary", target="y", stage="test", n_observed=10, class_counts=[4, 6]) == ({}, {})
    regression = metric_rules(
        "regression", target="y", stage="train", n_observed=3, truth_range=(0, 1), prediction_range=(0, 2)
    )
    assert regression == ({}, {})


# ====================================================================== model options, Python API
ENCODER = {"dim": 8, "n_heads": 2, "n_layers": 1}


@pytest.mark.parametrize(
    "options, named",
    [
        ({"encoder": {"dim": -4}}, "model.encoder.dim"),
        ({"encoder": {"dim": 0}}, "model.encoder.dim"),
        ({"encoder": {"dim": 2.5}}, "model.encoder.dim"),
        ({"encoder": {"n_layers": 0}}, "model.encoder.n_layers"),
        ({"encoder": {"n_heads": 0}}, "model.encoder.n_heads"),
        ({"encoder": {"dim": 30, "n_heads": 4}}, "model.encoder.dim=30 is not divisible by n_heads=4"),
        ({"encoder": {"dropout": 1.0}}, "model.encoder.dropout"),
        ({"encoder": {"dropout": -0.1}}, "model.encoder.dropout"),
        ({"modality_dropout": 1.0}, "model.modality_dropout"),
        ({"mask_fraction": 1.5}, "model.mask_fraction"),
        ({"modality_mask_prob": -0.2}, "model.modality_mask_prob"),
        ({"optimizer": {"lr": 0.0}}, "model.optimizer.lr"),
        ({"optimizer": {"lr": float("nan")}}, "model.optimizer.lr"),
        ({"optimizer": {"lr": float("inf")}}, "model.optimizer.lr"),
        ({"optimizer": {"weight_decay": -0.01}}, "model.optimizer.weight_decay"),
        ({"optimizer": {"warmup_steps": -1}}, "model.optimizer.warmup_steps"),
        ({"optimizer": {"warmup_steps": 2.5}}, "model.optimizer.warmup_steps"),
        ({"optimizer": {"min_lr_ratio": 1.5}}, "model.optimizer.min_lr_ratio"),
        ({"optimizer": {"momentum": 0.9}}, "model.optimizer: unknown option(s) ['momentum']"),
        ({"supervised_weight": -1.0}, "model.supervised_weight"),
        ({"encoder": {"n_summary_tokens": 0}}, "model.encoder.n_summary_tokens"),
        ({"encoder": {"ffn_hidden_dims": {"a": 0}}}, "model.encoder.ffn_hidden_dims"),
        ({"encoder": {"untie": ["ffn", "everything"]}}, "model.encoder.untie"),
        ({"encoder": {"width": 8}}, "model.encoder: unknown option(s) ['width']"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_python_api_refuses_out_of_range_model_options(options, named):
    spec = {"modalities": [{"name": "a", "n_tokens": 2, "n_features": 1, "feature_mask": []}], "targets": {}}
    settings = {"objective": "masked", **options, "encoder": {**ENCODER, **options.get("encoder", {})}}
    with pytest.raises(ValueError, match=re.escape(named)):
        NeuroOmicsModule(data_spec=spec, **settings)


def test_python_api_accepts_the_edges_of_each_range():
    from mot_neuro.model.encoder import EncoderOptions

    spec = {"modalities": [{"name": "a", "n_tokens": 2, "n_features": 1, "feature_mask": []}], "targets": {}}
    module = NeuroOmicsModule(
        data_spec=spec,
        encoder=EncoderOptions(dim=8, n_heads=8, n_layers=1, dropout=0.0, n_summary_tokens=0, pooling="mean"),
        optimizer={"weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 1.0},
        objective="masked",
        mask_fraction=1.0,
        modality_mask_prob=0.0,
    )
    assert module.hparams.encoder["dim"] == 8 and type(module.hparams.encoder["dim"]) is int
    assert module.hparams.optimizer == {"lr": 3e-4, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 1.0}


# ====================================================================== CLI cases
def _mlflow_runs(folder: Path) -> list:
    from mlflow.tracking import MlflowClient

    database = folder / "mlflow.db"
    if not database.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("mot-neuro")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


# each case parses the whole experiment: four in the fast loop, the others with the slow tests
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("--model.encoder.dim", "-4", "model.encoder.dim"),
        pytest.param("--model.encoder.dim", "0", "model.encoder.dim", marks=SLOW),
        pytest.param("--model.encoder.n_layers", "0", "model.encoder.n_layers", marks=SLOW),
        pytest.param("--model.encoder.n_heads", "-2", "model.encoder.n_heads", marks=SLOW),
        ("--model.encoder.dim", "30", "n_heads=4"),  # 30 is not divisible by the default 4 heads
        pytest.param("--model.encoder.dropout", "1.0", "model.encoder.dropout", marks=SLOW),
        ("--model.optimizer.lr", "0", "model.optimizer.lr"),
        pytest.param("--model.optimizer.lr", "-0.001", "model.optimizer.lr", marks=SLOW),
        pytest.param("--model.optimizer.weight_decay", "-0.1", "model.optimizer.weight_decay", marks=SLOW),
        pytest.param("--model.optimizer.warmup_steps", "-5", "model.optimizer.warmup_steps", marks=SLOW),
        pytest.param("--model.optimizer.min_lr_ratio", "1.5", "model.optimizer.min_lr_ratio", marks=SLOW),
        pytest.param("--model.mask_fraction", "2", "model.mask_fraction", marks=SLOW),
        pytest.param("--model.modality_dropout", "-0.5", "model.modality_dropout", marks=SLOW),
        pytest.param("--model.encoder.n_summary_tokens", "0", "model.encoder.n_summary_tokens", marks=SLOW),
        pytest.param("--model.encoder.ffn_hidden_dims", "{brain: 0}", "model.encoder.ffn_hidden_dims", marks=SLOW),
        ("--model.objective", "supervisd", "model.objective"),
    ],
)
def test_cli_refuses_an_out_of_range_model_option_before_any_run(case, option, value, named):
    status, out, err = run_main(
        case.capfd, "fit", "--config", EXPERIMENT, "--trainer", CONFIGS / "trainer" / "debug.yaml", option, value
    )
    assert_refused(status, err, named)
    assert _mlflow_runs(case.folder) == []  # refused before a run was created, or anything logged
    assert not (case.folder / "outputs" / "checkpoints").exists()


# ---------------------------------------------------------------------- cohorts edited on the test fold
@pytest.fixture(scope="module")
def fold0(demo_cohort, tmp_path_factory) -> dict:
    """The splits of the demo data config (made once) and the subjects of fold 0's test part."""
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    folder = tmp_path_factory.mktemp("fold0")
    config = yaml.safe_load(Case(demo_cohort, folder, None).data_config().read_text())
    datamodule = NeuroOmicsDataModule(**config)
    datamodule.setup()
    return {"splits": Path(config["splits_file"]), "test": set(datamodule.splits.fold(0)["test"])}


def _edited_cohort(case: Case, fold0: dict, edit, **settings) -> Path:
    """A data config on a participants table changed by ``edit(table, is_test_subject)``, with fold 0's saved
    splits (made on the unedited table) so that the test fold is the one edited."""
    participants = case.participants.copy()
    edit(participants, participants["eid"].isin(fold0["test"]))
    table = case.csv("participants.csv", participants)
    shutil.copy(fold0["splits"], case.path("splits.json"))
    data = case.data_config(**settings)
    config = yaml.safe_load(data.read_text())
    config["participants"] = str(table)
    data.write_text(yaml.safe_dump(config, sort_keys=False))
    return data


def _one_class_test_fold(participants, test):
    participants.loc[test, "diagnosis"] = 0


def _metric(run, key: str) -> float:
    assert key in run.data.metrics, sorted(run.data.metrics)
    return run.data.metrics[key]


@pytest.mark.slow  # fits through the CLI
def test_fit_with_a_one_class_test_fold_logs_nan_auroc_with_a_reason(case, fold0, caplog):
    data = _edited_cohort(case, fold0, _one_class_test_fold, targets=["target", "diagnosis"])
    with caplog.at_level(logging.WARNING, logger="mot_neuro"):
        status, out, err = run_main(
            case.capfd, "fit", "--config", EXPERIMENT, "--trainer", CPU_TRAINER, *ONE_STEP_FIT, "--data", data
        )
    assert status == 0, err[-3000:]
    reason = "the test set holds one class (0) of diagnosis"
    assert f"test/diagnosis/auroc is undefined: {reason}; logged as NaN" in caplog.text
    assert f"test/diagnosis/auprc is undefined: {reason}; logged as NaN" in caplog.text
    summary = re.search(r"test/diagnosis/auroc\s+(\S+)\s+\((.*)\)", out)
    assert summary and summary.group(1) == "nan" and reason in summary.group(2), out
    (run,) = _mlflow_runs(case.folder)
    assert run.info.status == "FINISHED"
    for key in ("test/diagnosis/auroc", "test/diagnosis/auprc"):
        assert math.isnan(_metric(run, key))  # stored as NaN by the SQLite store and read back as NaN, not 0
    for key in ("test/diagnosis/brier", "test/diagnosis/ece", "test/target/r2", "val/diagnosis/auroc"):
        assert math.isfinite(_metric(run, key)), key  # defined metrics keep their numbers


def _constant_target_on_test_fold(participants, test):
    participants.loc[test, "target"] = 1.5


@pytest.mark.slow  # fits through the CLI
def test_a_constant_regression_target_on_the_test_fold_gives_nan_r2_and_pearson(case, fold0, caplog):
    data = _edited_cohort(case, fold0, _constant_target_on_test_fold)
    with caplog.at_level(logging.WARNING, logger="mot_neuro"):
        status, out, err = run_main(
            case.capfd, "fit", "--config", EXPERIMENT, "--trainer", CPU_TRAINER, *ONE_STEP_FIT, "--data", data
        )
    assert status == 0, err[-3000:]
    assert "test/target/r2 is undefined: target is constant (1.5) in the test set" in caplog.text
    assert "test/target/pearson is undefined" in caplog.text
    for key in ("r2", "pearson"):
        assert re.search(rf"test/target/{key}\s+nan\s+\(undefined: target is constant", out), out
    mae = re.search(r"test/target/mae\s+(\S+)\n", out)
    assert mae and math.isfinite(float(mae.group(1)))
    (run,) = _mlflow_runs(case.folder)
    assert math.isnan(_metric(run, "test/target/r2")) and math.isnan(_metric(run, "test/target/pearson"))
    assert math.isfinite(_metric(run, "test/target/mae"))


def _tertiles_without_the_top_one_on_test_fold(participants, test):
    participants["tertile"] = pd.qcut(participants["target"], 3, labels=False)
    participants.loc[test & (participants["tertile"] == 2), "tertile"] = 1


def test_multiclass_class_absent_from_the_test_fold_is_averaged_over_present_classes(case, fold0, caplog):
    data = _edited_cohort(
        case,
        fold0,
        _tertiles_without_the_top_one_on_test_fold,
        targets=["target", "tertile"],
        target_kinds={"tertile": "multiclass"},
    )
    with caplog.at_level(logging.WARNING, logger="mot_neuro"):
        status, out, err = run_main(
            case.capfd,
            "fit",
            "--config",
            EXPERIMENT,
            "--trainer",
            CONFIGS / "trainer" / "debug.yaml",
            "--data",
            data,
            "--trainer.logger",
            "false",
        )
    assert status == 0, err[-3000:]
    note = "over the 2 classes present; class(es) [2] absent from the test set"
    for metric in ("auroc", "auprc"):
        assert f"test/tertile/{metric}: one-vs-rest average {note}" in caplog.text
        line = re.search(rf"test/tertile/{metric}\s+(\S+)\s+\((.*)\)", out)
        assert line and math.isfinite(float(line.group(1))) and note in line.group(2), out


def _assert_stopped(status, err: str, *pieces: str) -> None:
    """Exit 2 and one error line holding ``pieces``, no traceback. The run got as far as training, so the
    libraries' own notices (MLflow creating its store, Lightning's hints) may come before it on stderr."""
    assert status == 2, f"exit status {status!r}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err[-3000:]
    for piece in pieces:
        assert piece in errors[0], f"{piece!r} not in {errors[0]!r}"


def _nan_loss_args(case: Case, *extra: str) -> list:
    return [
        "fit",
        "--config",
        EXPERIMENT,
        "--trainer",
        CPU_TRAINER,
        *SHORT_FIT,
        "--model.optimizer.lr",
        "1e38",  # one AdamW step moves weights by ~lr: the next forward overflows float32
        "--model.optimizer.warmup_steps",
        "0",
        "--checkpoint_dir",
        case.path("ckpt"),
        *extra,
    ]


@pytest.mark.slow  # fits through the CLI
def test_a_nan_validation_loss_stops_fit_before_any_checkpoint(case):
    # one training step, on the initial weights (a finite loss), then validation on the blown-up ones
    # the whole training part in one batch: "--trainer.limit_train_batches 1" was at times parsed as 1.0 (100%)
    status, out, err = run_main(case.capfd, *_nan_loss_args(case, "--data.batch_size", "512"))
    _assert_stopped(
        status, err, "val/loss became NaN or infinite in epoch 0", "model.optimizer.lr=1e+38", "input scale"
    )
    (run,) = _mlflow_runs(case.folder)
    assert run.info.status == "FAILED"
    assert not case.path("ckpt").exists() or not list(case.path("ckpt").glob("*.ckpt"))  # no best, no last
    assert "best checkpoint" not in out and "mot-neuro fit finished" not in out


@pytest.mark.slow  # fits through the CLI
def test_a_nan_training_loss_stops_fit_without_validation(case):
    status, out, err = run_main(
        case.capfd, *_nan_loss_args(case, "--trainer.limit_val_batches", "0", "--trainer.limit_train_batches", "3")
    )
    _assert_stopped(status, err, "train/loss became NaN or infinite in epoch 0", "model.optimizer.lr")
    (run,) = _mlflow_runs(case.folder)
    assert run.info.status == "FAILED"
    assert not case.path("ckpt").exists() or not list(case.path("ckpt").glob("*.ckpt"))


# ---------------------------------------------------------------------- the fit summary
class PlantedScore(Callback):
    """Logs ``val/planted``, a planted value per epoch, for ModelCheckpoint to monitor: which epoch is best is
    then known, while the real validation metrics of every epoch are logged as usual."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = 0.0 if trainer.sanity_checking else self.values[trainer.current_epoch]
        pl_module.log("val/planted", value)


def _planted_fit(case: Case, values: list[float]) -> tuple[int, str, str]:
    callbacks = [
        {"class_path": "test_trust_metrics.PlantedScore", "init_args": {"values": values}},
        {"class_path": "mot_neuro.tracking.RunSummary"},
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": "ckpt", "monitor": "val/planted", "save_last": True, "filename": "best-{epoch}"},
        },
    ]
    return run_main(
        case.capfd,
        "fit",
        "--config",
        EXPERIMENT,
        "--trainer",
        CPU_TRAINER,
        *SHORT_FIT,
        "--trainer.callbacks",
        json.dumps(callbacks),
        "--test_after_fit",
        "false",
    )


@pytest.mark.slow  # fits through the CLI
def test_fit_summary_shows_the_best_checkpoints_epoch_and_its_validation_metrics(case, caplog):
    from mlflow.tracking import MlflowClient

    with caplog.at_level(logging.WARNING):
        status, out, err = _planted_fit(case, [2.0, 1.0, 3.0])  # best: epoch 1, neither first nor last
    assert status == 0, err[-3000:]
    assert re.search(r"best checkpoint \S+best-epoch=1\.ckpt \(epoch 1; val/planted 1\.0000\)", out), out
    assert "validation metrics of the best checkpoint (epoch 1):" in out
    (run,) = _mlflow_runs(case.folder)
    client = MlflowClient(f"sqlite:///{case.folder / 'mlflow.db'}")
    for key in ("val/loss", "val/target/r2", "val/target/mae"):
        history = client.get_metric_history(run.info.run_id, key)
        by_epoch = [point.value for point in sorted(history, key=lambda point: point.step)]
        assert len(by_epoch) == 3
        printed = re.search(rf"  {key}\s+(\S+)\n", out).group(1)
        assert printed == f"{by_epoch[1]:.4f}", key  # the best epoch's, as MLflow recorded it for that epoch
    # 3 epochs x 2 steps = 6 steps, below the demo's 20 warm-up steps: said once
    assert "model.optimizer.warmup_steps=20 is not below the run's 6 training steps" in caplog.text
    assert "best checkpoint is from the first epoch" not in caplog.text
    checkpoint = torch.load(case.path("ckpt") / "best-epoch=1.ckpt", weights_only=True)  # plain hyperparameters
    assert type(checkpoint["hyper_parameters"]["encoder"]["dim"]) is int


@pytest.mark.slow  # fits through the CLI
def test_a_best_checkpoint_from_the_first_epoch_is_warned(case, caplog):
    with caplog.at_level(logging.WARNING):
        status, out, err = _planted_fit(case, [1.0, 2.0, 3.0])
    assert status == 0, err[-3000:]
    assert "validation metrics of the best checkpoint (epoch 0):" in out
    warned = [r.getMessage() for r in caplog.records if "best checkpoint is from the first epoch" in r.getMessage()]
    assert len(warned) == 1 and "model.optimizer.warmup_steps=20" in warned[0] and "\n" not in warned[0]


# ---------------------------------------------------------------------- ablation summaries
def test_ablation_summary_leaves_undefined_cells_out_and_counts_them(case):
    """Cells whose test fold held one class logged NaN AUROC: the summary counts them, never averages them."""
    from mlflow.tracking import MlflowClient

    from mot_neuro.ablate import ABLATION_TAG, CELL_TAG, OVERRIDES_TAG, PARENT_TAG, Cell, overrides_digest

    client = MlflowClient(tracking_uri=f"sqlite:///{case.folder / 'mlflow.db'}")
    experiment = client.create_experiment("mot-neuro")
    tags = {ABLATION_TAG: "nan-cells", OVERRIDES_TAG: overrides_digest([])}
    parent = client.create_run(experiment, tags=tags).info.run_id
    auroc = {
        ("mot", 0): 0.70,
        ("mot", 1): math.nan,
        ("mot", 2): 0.74,
        ("mot", 3): 0.78,
        ("dense", 0): 0.60,
        ("dense", 1): 0.66,
        ("dense", 2): math.nan,
        ("dense", 3): 0.69,
    }
    for (variant, fold), value in auroc.items():
        cell = Cell(variant, "none", 0, fold)
        run = client.create_run(experiment, tags={PARENT_TAG: parent, CELL_TAG: cell.id}).info.run_id
        client.log_metric(run, "test/diagnosis/auroc", value)
        client.set_terminated(run, "FINISHED")
    status, out, err = run_main(
        case.capfd,
        "ablate",
        "--config",
        EXPERIMENT,
        "--name",
        "nan-cells",
        "--summarize",
        "--variants",
        "dense",
        "mot",
        "--drop",
        "none",
        "--folds",
        "0",
        "1",
        "2",
        "3",
        "--out",
        case.path("ablation"),
    )
    assert status == 0, err[-3000:]
    summary = pd.read_csv(case.path("ablation") / "summary.csv")
    dense = summary[(summary.variant == "dense") & (summary.metric == "test/diagnosis/auroc")].iloc[0]
    assert (dense.n_cells, dense.n) == (4, 3)
    assert dense["mean"] == pytest.approx(np.mean([0.60, 0.66, 0.69]))
    assert dense.n_pairs == 2  # folds 0 and 3: fold 1 is undefined for mot, fold 2 for dense
    assert dense.mean_diff == pytest.approx(np.mean([0.60 - 0.70, 0.69 - 0.78]))
    assert "1 of 4 cell(s) undefined (NaN)" in dense.note
    results = pd.read_csv(case.path("ablation") / "results.csv")
    assert results["value"].isna().sum() == 2  # kept as NaN in the tidy table, not dropped or zeroed
    assert "dense/none: 1 of 4 cell(s) undefined (NaN)" in out  # printed with the row's note


def test_summarize_gives_nan_when_no_cell_is_defined():
    from mot_neuro.analysis import summarize

    records = [
        {"variant": v, "dropped": "none", "seed": 0, "fold": f, "metric": "auroc", "value": value}
        for v, values in {"mot": [0.7, 0.8, 0.75], "dense": [math.nan] * 3}.items()
        for f, value in enumerate(values)
    ]
    row = summarize(records).set_index("variant").loc["dense"]
    assert row.n_cells == 3 and row.n == 0 and math.isnan(row["mean"]) and row.n_pairs == 0
    assert math.isnan(row.p_value) and "3 of 3 cell(s) undefined" in row.note


# ====================================================================== regression metrics in any units
def _test_metrics(case: Case, data: Path) -> dict[str, float]:
    status, out, err = run_main(
        case.capfd, "fit", "--config", EXPERIMENT, "--trainer", CPU_TRAINER, *ONE_STEP_FIT, "--data", data,
        "--trainer.logger", "false",
    )  # fmt: skip
    assert status == 0, err[-3000:]
    found = dict(re.findall(r"test/target/(\w+)\s+(\S+)\n", out))
    return {key: float(value) for key, value in found.items()}


@pytest.mark.slow  # fits through the CLI
def test_regression_metrics_do_not_depend_on_the_target_units(case, fold0):
    """r2 and Pearson r are unchanged by an affine change of the target's units, and mae scales with it. In raw
    float32 units a target far from 0 lost r2 to cancellation, one in small units read r2 = 1 (torchmetrics'
    absolute tolerance), and one in huge units overflowed to NaN."""
    reference = _test_metrics(case, _edited_cohort(case, fold0, lambda table, test: None))
    for scale, offset in ((1e-4, 0.0), (1.0, 3e4), (1e-13, 0.0), (1e25, 0.0)):

        def rescale(table, test, scale=scale, offset=offset):
            table["target"] = table["target"] * scale + offset

        rescaled = _test_metrics(case, _edited_cohort(case, fold0, rescale))
        assert rescaled["r2"] == pytest.approx(reference["r2"], abs=2e-3), (scale, offset)
        assert rescaled["pearson"] == pytest.approx(reference["pearson"], abs=2e-3), (scale, offset)
        assert rescaled["mae"] == pytest.approx(reference["mae"] * scale, rel=2e-3), (scale, offset)


def test_a_feature_in_small_units_is_standardised_not_flattened():
    """The constant-feature rule is relative to the mean: a spread of 1e-13 around 1e-13 is a spread."""
    from mot_neuro.data.preprocess import usable_sd

    assert usable_sd(1e-13, 2e-13) and usable_sd(3e-20, 0.0)
    assert not usable_sd(0.0, 5.0) and not usable_sd(1e-14, 1e3)  # a constant, or float round-off of one
