"""Numbers a reviewer accepts, checked against a computation written independently of the module: scikit-learn,
scipy, or the formula spelled out here.

Unit cases drive the module's own step and epoch-end code on tiny hand-made batches (``self.log`` captured, no
trainer); one CLI case fits the demo cohort for one step and reads back ``--predictions_file``.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import CONFIGS, EXPERIMENT, Case, run_cli
from scipy import stats
from sklearn import metrics as skm
from test_trust_metrics import _epoch_metrics as epoch_metrics

from mot_neuro.cli import main
from mot_neuro.lit_module import NeuroOmicsModule

# ====================================================================== helpers: a tiny module, hand-made batches
# modality a: 2 tokens x 1 feature; b: 3 tokens x 2 features, its last token holding one real feature only
SPEC_MODALITIES = [
    {"name": "a", "n_tokens": 2, "n_features": 1, "feature_mask": []},
    {"name": "b", "n_tokens": 3, "n_features": 2, "feature_mask": [[True, True], [True, True], [True, False]]},
]
FEATURE_MASK = {"a": np.ones((2, 1), bool), "b": np.array([[1, 1], [1, 1], [1, 0]], bool)}


def tiny_module(targets: dict | None = None, **options) -> NeuroOmicsModule:
    torch.manual_seed(0)
    spec = {"modalities": SPEC_MODALITIES, "targets": targets or {}}
    encoder = {"dim": 8, "n_heads": 2, "n_layers": 1, "dropout": 0.0, **options.pop("encoder", {})}
    module = NeuroOmicsModule(data_spec=spec, encoder=encoder, **options).eval()
    module._trainer = SimpleNamespace(
        world_size=1, sanity_checking=False, global_rank=0, current_epoch=0, global_step=0, fn="fit"
    )
    return module


def capture_logs(module: NeuroOmicsModule) -> dict[str, float]:
    logged: dict[str, float] = {}
    module.log = lambda key, value, **_: logged.__setitem__(
        key, float(value.detach() if torch.is_tensor(value) else value)
    )
    return logged


def batch(seed: int, size: int, *, absent: tuple[str, ...] = (), targets: dict | None = None, first_row: int = 0):
    """A batch as the DataModule builds it; modalities in ``absent`` are missing for every subject."""
    g = torch.Generator().manual_seed(seed)
    values, missing, present = {}, {}, {}
    for m in SPEC_MODALITIES:
        shape = (size, m["n_tokens"], m["n_features"])
        values[m["name"]] = torch.randn(shape, generator=g)
        missing[m["name"]] = torch.rand(shape, generator=g) < 0.2  # some values missing inside present tokens
        present[m["name"]] = torch.rand(shape[:2], generator=g) < 0.8
        if m["name"] in absent:
            present[m["name"]][:] = False
    return {
        "values": values,
        "missing": missing,
        "present": present,
        "targets": {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (targets or {}).items()},
        "row": torch.arange(first_row, first_row + size),
    }


def one_hot_probabilities(labels, n_classes: int) -> np.ndarray:
    """Class probabilities whose largest entry is ``labels``."""
    probabilities = np.full((len(labels), n_classes), 0.1 / (n_classes - 1))
    probabilities[np.arange(len(labels)), labels] = 0.9
    return probabilities


# ====================================================================== accuracy: plain and balanced
def test_accuracy_and_balanced_accuracy_equal_scikit_learn_on_labels_8_1_1_with_one_error():
    truth = np.array([0] * 8 + [1, 2])
    predicted = truth.copy()
    predicted[8] = 0  # the one subject of class 1 classified as 0
    values, notes = epoch_metrics("multiclass", one_hot_probabilities(predicted, 3), truth, n_classes=3)
    assert skm.accuracy_score(truth, predicted) == pytest.approx(0.9)
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(truth, predicted), abs=1e-6)
    assert values["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(truth, predicted), abs=1e-6)
    assert values["balanced_accuracy"] == pytest.approx((1 + 0 + 1) / 3, abs=1e-6)  # the mean of class recalls
    assert not notes


def test_binary_balanced_accuracy_equals_scikit_learn_at_probability_one_half():
    rng = np.random.default_rng(0)
    truth = np.r_[np.ones(7), np.zeros(33)]  # imbalanced: balanced != plain accuracy
    probability = np.clip(0.35 * truth + rng.uniform(0.05, 0.6, 40), 0.01, 0.99)
    values, notes = epoch_metrics("binary", probability, truth)
    labels = (probability > 0.5).astype(int)
    assert values["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(truth, labels), abs=1e-6)
    assert skm.balanced_accuracy_score(truth, labels) != pytest.approx(skm.accuracy_score(truth, labels))
    assert not notes


def test_balanced_accuracy_follows_the_undefined_metric_rules():
    # fewer than two observed values: NaN with the reason, like every other metric
    values, notes = epoch_metrics("multiclass", one_hot_probabilities([0, 1, 2], 3), [1, np.nan, np.nan], n_classes=3)
    assert math.isnan(values["balanced_accuracy"]) and "(needs >= 2)" in notes["test/y/balanced_accuracy"]
    # one class present: defined (that class's recall, as scikit-learn computes it), with a note
    truth, predicted = np.ones(6, int), np.array([1, 1, 0, 1, 2, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn: y_pred contains classes not in y_true
        expected = skm.balanced_accuracy_score(truth, predicted)
    values, notes = epoch_metrics("multiclass", one_hot_probabilities(predicted, 3), truth, n_classes=3)
    assert values["balanced_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert "mean recall of the 1 class(es) present; class(es) [0, 2] absent" in notes["test/y/balanced_accuracy"]


def test_accuracy_names_are_higher_is_better_for_the_analysis():
    from mot_neuro.analysis import _higher_is_better

    assert _higher_is_better("test/y/balanced_accuracy") and _higher_is_better("test/y/accuracy")


# ====================================================================== regression metrics do not lose digits
def test_regression_metrics_of_a_target_with_mean_1000_sds_equal_scikit_learn_on_float64():
    """The target as the data pipeline hands it over (standardised with the training mean and SD in float64, then
    float32) and the scale the module reports in; the reference is computed on the raw float64 values."""
    rng = np.random.default_rng(7)
    sd, mean = 2.5, 2500.0  # mean / SD = 1000
    train = rng.normal(mean, sd, 5000)
    fitted_mean, fitted_sd = float(train.mean()), float(train.std(ddof=1))
    truth = rng.normal(mean + 0.5 * sd, sd, 20000)  # a test set whose mean differs from the training one
    prediction = mean + 0.6 * (truth - mean) + rng.normal(0, 0.8 * sd, truth.size)
    standardised = [((x - fitted_mean) / fitted_sd).astype(np.float32) for x in (prediction, truth)]
    values, notes = epoch_metrics(
        "regression", standardised[0], standardised[1], scale={"mean": fitted_mean, "sd": fitted_sd}
    )
    assert values["r2"] == pytest.approx(skm.r2_score(truth, prediction), abs=1e-5)
    assert values["pearson"] == pytest.approx(stats.pearsonr(truth, prediction).statistic, abs=1e-5)
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(truth, prediction), rel=1e-5)
    assert not notes


# ====================================================================== the MoE balancing term is not in the loss
MOE = {"b": {"n_experts": 3, "top_k": 1, "balance_weight": 0.5}}


def _regression_batch(seed: int = 3, size: int = 6) -> dict:
    y = np.linspace(-1.0, 1.5, size)
    y[1] = np.nan  # an unobserved target counts nowhere
    return batch(seed, size, targets={"y": y})


def test_val_loss_is_the_task_loss_and_the_balancing_term_is_logged_beside_it():
    module = tiny_module({"y": {"kind": "regression"}}, encoder={"moe": MOE})
    logged = capture_logs(module)
    b = _regression_batch()
    returned = module.validation_step(b, 0)
    with torch.no_grad():  # the task loss, recomputed: mean squared error over observed targets
        out = module.encoder(b)
        balance = float(module.encoder.backbone.aux_loss())
        prediction = module.heads["y"](out.pooled).squeeze(-1).double().numpy()
    y = b["targets"]["y"].double().numpy()
    observed = ~np.isnan(y)
    task = float(np.mean((prediction[observed] - y[observed]) ** 2))
    assert balance > 1e-3  # the term is there, so the test tells the two apart
    assert logged["val/loss"] == pytest.approx(task, rel=1e-5)
    assert logged["val/moe_balance"] == pytest.approx(balance, rel=1e-5)
    assert logged["val/objective"] - logged["val/loss"] == pytest.approx(logged["val/moe_balance"], rel=1e-5)
    assert float(returned) == pytest.approx(logged["val/objective"], rel=1e-6)
    # training optimises the objective: the router, which only the balancing term reaches with top-1, learns
    module.train()
    objective = module.training_step(b, 0)
    assert logged["train/objective"] == pytest.approx(float(objective)) != pytest.approx(logged["train/loss"])
    objective.backward()
    router = [p for n, p in module.named_parameters() if "router" in n]
    assert router and any(p.grad is not None and p.grad.abs().sum() > 0 for p in router)


def test_without_moe_there_is_no_objective_and_the_loss_is_returned():
    module = tiny_module({"y": {"kind": "regression"}})
    logged = capture_logs(module)
    returned = module.validation_step(_regression_batch(), 0)
    assert "val/objective" not in logged and "val/moe_balance" not in logged
    assert float(returned) == pytest.approx(logged["val/loss"])


def test_a_non_finite_balancing_term_still_stops_training():
    from mot_neuro.lit_module import NonFiniteLossError

    module = tiny_module({"y": {"kind": "regression"}}, encoder={"moe": MOE})
    logged = capture_logs(module)
    module.encoder.backbone.aux_loss = lambda: torch.tensor(math.nan)
    module.validation_step(_regression_batch(), 0)
    assert math.isfinite(logged["val/loss"]) and math.isnan(logged["val/objective"])
    with pytest.raises(NonFiniteLossError, match="val/loss became NaN"):
        module.check_finite_loss("val")


# ====================================================================== reconstruction: pooled per-entry means
def _fixed_masks(seed: int, b: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: (torch.rand(p.shape, generator=g) < 0.6) & p for m, p in b["present"].items()}


def _squared_errors(module: NeuroOmicsModule, b: dict, masks: dict) -> dict[str, np.ndarray]:
    """Per modality: the squared error of every counted entry (numeric slot of a masked token, real and observed),
    from the decoders' predictions of this batch."""
    with torch.no_grad():
        out = module.encoder(b, masked=masks)
        errors = {}
        for m in module.active:
            predicted = module.decoders[m].numeric(out.tokens[m]).double().numpy()
            counted = masks[m].numpy()[..., None] & FEATURE_MASK[m] & ~b["missing"][m].numpy()
            errors[m] = ((predicted - b["values"][m].double().numpy()) ** 2)[counted]
    return errors


def test_epoch_reconstruction_is_the_pooled_mean_over_every_counted_entry():
    module = tiny_module(objective="masked")
    logged = capture_logs(module)
    # batches of different sizes (so different counts); modality b absent from every subject of the second
    batches = [batch(10, 7), batch(11, 3, absent=("b",)), batch(12, 5)]
    masks = [_fixed_masks(20 + i, b) for i, b in enumerate(batches)]
    module.on_validation_epoch_start()
    errors = {m: [] for m in module.active}
    batch_means = {m: [] for m in module.active}
    for i, (b, mask) in enumerate(zip(batches, masks, strict=True)):
        module._mask = lambda inputs, mask=mask: mask
        module.validation_step(b, i)
        for m, e in _squared_errors(module, b, mask).items():
            errors[m].append(e)
            batch_means[m].append(e.mean() if e.size else 0.0)
    assert errors["b"][1].size == 0 and all(e.size for e in errors["a"])
    module.on_validation_epoch_end()
    pooled = {m: np.concatenate(parts).mean() for m, parts in errors.items()}
    for m in module.active:
        assert logged[f"val/recon/{m}"] == pytest.approx(pooled[m], rel=1e-5)
    assert logged["val/recon"] == pytest.approx(pooled["a"] + pooled["b"], rel=1e-5)
    # what batch means weighted by batch size gave: the empty batch's 0 pulled modality b down
    sizes = [len(b["row"]) for b in batches]
    assert np.average(batch_means["b"], weights=sizes) < 0.9 * pooled["b"]


def test_a_modality_hidden_at_test_has_nan_reconstruction_with_a_note():
    module = tiny_module(objective="masked", mask_fraction=1.0)
    logged = capture_logs(module)
    module.mask_at_test = ["b"]
    module.on_test_epoch_start()
    for i in range(2):
        module.test_step(batch(30 + i, 4), i)
    module.on_test_epoch_end()
    assert math.isnan(logged["test/recon/b"])  # not 0, a perfect reconstruction
    assert math.isfinite(logged["test/recon/a"]) and logged["test/recon"] == pytest.approx(logged["test/recon/a"])
    assert "hidden by mask_at_test" in module.metric_notes["test/recon/b"]


def test_training_loss_for_the_optimiser_is_unchanged():
    """The step's loss is the sum over modalities of the batch's mean per counted entry (0 when none)."""
    module = tiny_module(objective="masked").train()
    logged = capture_logs(module)
    b = batch(40, 6, absent=("b",))
    mask = _fixed_masks(41, b)
    module._mask = lambda inputs: mask
    torch.manual_seed(0)
    loss = module.training_step(b, 0)
    errors = _squared_errors(module, b, mask)  # dropout is 0: the same forward
    expected = sum(e.mean() if e.size else 0.0 for e in errors.values())
    assert float(loss) == pytest.approx(expected, rel=1e-5) and logged["train/loss"] == pytest.approx(float(loss))


# ====================================================================== --predictions_file
def _fit_with_predictions(case: Case):
    import yaml

    participants = case.participants.copy()
    participants["tertile"] = pd.qcut(participants["target"], 3, labels=False)
    table = case.csv("participants.csv", participants)
    data = case.data_config(targets=["target", "diagnosis", "tertile"], target_kinds={"tertile": "multiclass"})
    config = yaml.safe_load(data.read_text())
    config["participants"] = str(table)
    data.write_text(yaml.safe_dump(config, sort_keys=False))
    return run_cli(
        "fit", "--config", EXPERIMENT, "--trainer", CONFIGS / "trainer" / "cpu.yaml",
        "--data", data, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--predictions_file", case.path("out") / "predictions.parquet",
    )  # fmt: skip


@pytest.mark.slow  # fits through the CLI
def test_fit_writes_test_predictions_that_reproduce_the_logged_test_metrics(case):
    cli = _fit_with_predictions(case)
    path = case.path("out") / "predictions.parquet"
    assert [p.name for p in path.parent.iterdir()] == ["predictions.parquet"]  # no temporary file left
    table = pd.read_parquet(path)
    assert list(table.columns) == ["row", "target", "kind", "truth", "score", "score_0", "score_1", "score_2"]
    assert "eid" not in table.columns and table["row"].dtype == np.int64
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    test_rows = np.asarray(cli.datamodule.rows["test"])
    truth = cli.datamodule.preprocessor.transform_targets(test_rows)  # the pipeline's own truth, per test row
    for name, part in table.groupby("target"):
        observed = test_rows[~np.isnan(truth[name])]
        assert sorted(part["row"]) == sorted(observed), name  # exactly the test split's rows with a value
    assert set(table["row"]) == set(test_rows)

    binary = table[table.target == "diagnosis"]
    assert set(binary["kind"]) == {"binary"} and set(binary["truth"]) <= {0.0, 1.0}
    assert logged["test/diagnosis/auroc"] == pytest.approx(skm.roc_auc_score(binary.truth, binary.score), abs=1e-6)
    expected = skm.balanced_accuracy_score(binary.truth, binary.score > 0.5)
    assert logged["test/diagnosis/balanced_accuracy"] == pytest.approx(expected, abs=1e-6)

    regression = table[table.target == "target"]
    assert regression[["score_0", "score_1", "score_2"]].isna().all().all()
    assert logged["test/target/r2"] == pytest.approx(skm.r2_score(regression.truth, regression.score), abs=1e-5)
    mae = skm.mean_absolute_error(regression.truth, regression.score)
    assert logged["test/target/mae"] == pytest.approx(mae, rel=1e-5)
    raw = case.participants.set_index("eid")["target"]  # truth in the target's units, as in participants
    eids = cli.datamodule.cohort.participants.index[regression["row"].to_numpy()]
    np.testing.assert_allclose(regression["truth"], raw.loc[eids].to_numpy(), rtol=1e-6)

    multiclass = table[table.target == "tertile"]
    scores = multiclass[["score_0", "score_1", "score_2"]].to_numpy()
    assert multiclass["score"].isna().all() and np.allclose(scores.sum(1), 1.0, atol=1e-5)
    labels = multiclass["truth"].to_numpy().astype(int)
    present = np.unique(labels)
    auroc = np.mean([skm.roc_auc_score(labels == c, scores[:, c]) for c in present])
    assert logged["test/tertile/auroc"] == pytest.approx(auroc, abs=1e-6)
    assert logged["test/tertile/accuracy"] == pytest.approx(skm.accuracy_score(labels, scores.argmax(1)), abs=1e-6)

    # mot-neuro test writes the file again from the checkpoint the fit's test used: the same predictions
    path.unlink()
    test = [
        "test",
        "--config",
        EXPERIMENT,
        "--trainer",
        CONFIGS / "trainer" / "cpu.yaml",
        "--data",
        case.path("data.yaml"),
    ]
    test += ["--trainer.logger", "false", "--ckpt_path", cli.trainer.checkpoint_callback.best_model_path]
    assert main([str(a) for a in [*test, "--predictions_file", path]]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(path), table)
    # and the other subcommands accept the key (one experiment file serves them all)
    with pytest.raises(SystemExit) as done:
        main(["predict", "--config", str(EXPERIMENT), "--predictions_file", str(path), "--print_config"])
    assert done.value.code == 0
