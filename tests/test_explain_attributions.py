"""Token attributions (issue 18, first part): Integrated Gradients and occlusion on token values and presence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mot_neuro.explain import (
    ALL_TOKENS,
    aggregate_attributions,
    attribution_table,
    explainable,
    integrated_gradients,
    occlusion,
)
from mot_neuro.lit_module import NeuroOmicsModule
from mot_neuro.model.inputs import DataSpec, TargetSpec
from mot_neuro.model.tokenizers import ModalitySpec

# Completeness of IG: |sum of token attributions - (output(x) - output(baseline))| within this share of
# |output(x) - output(baseline)| (plus a float32 floor), with the n_steps used below.
RELATIVE_TOLERANCE = 1e-2
ABSOLUTE_FLOOR = 1e-4

SPECS = (
    ModalitySpec("gene", n_tokens=4, n_features=3),
    # token 2 has one real feature; token 3 is categorical (3 categories)
    ModalitySpec(
        "brain",
        n_tokens=4,
        n_features=2,
        feature_mask=((True, True), (True, True), (True, False), (True, False)),
        categorical={3: 3},
    ),
)
TARGETS = {"y": TargetSpec("regression"), "dx": TargetSpec("binary", 2), "group": TargetSpec("multiclass", 3)}


def random_model(seed: int = 0) -> NeuroOmicsModule:
    """A small randomly initialised model, with weights large enough that the output is far from linear."""
    torch.manual_seed(seed)
    module = NeuroOmicsModule(
        data_spec=DataSpec(modalities=SPECS, targets=TARGETS),
        encoder={"dim": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.1},
    )
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.3)
    return module


def random_batch(n: int = 6, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    values = {"gene": torch.randn(n, 4, 3, generator=g), "brain": torch.randn(n, 4, 2, generator=g)}
    values["brain"][:, 3, 0] = torch.randint(0, 3, (n,), generator=g).float()  # category index
    missing = {name: torch.rand(v.shape, generator=g) < 0.2 for name, v in values.items()}
    present = {name: torch.ones(v.shape[:2], dtype=torch.bool) for name, v in values.items()}
    present["gene"][0, 1] = False
    present["brain"][1] = False  # subject 1 has no brain scan
    return {"values": values, "missing": missing, "present": present, "row": torch.arange(100, 100 + n)}


def assert_complete(result, n_steps: int) -> None:
    difference = result.output - result.baseline_output
    error = (result.total() - difference).abs()
    bound = RELATIVE_TOLERANCE * difference.abs() + ABSOLUTE_FLOOR
    assert (error <= bound).all(), f"n_steps={n_steps}: error {error.tolist()} vs output difference {difference}"
    assert difference.abs().max() > 0.05  # not a trivially flat output
    # captum's convergence delta measures the same thing
    torch.testing.assert_close(result.delta.abs(), error, atol=1e-4, rtol=1e-2)


@pytest.mark.parametrize("target", ["y", "dx", "group"])
def test_integrated_gradients_is_complete_on_a_random_model(target):
    module, batch = random_model(), random_batch()
    result = integrated_gradients(module, batch, target, n_steps=32)
    assert_complete(result, 32)
    assert module.training  # eval during attribution only
    # the baseline is the input with observed numeric slots of present tokens at 0
    with torch.no_grad():
        out = explainable(module.eval()).predict({k: batch[k] for k in ("values", "missing", "present")})[target]
    if target == "group":
        torch.testing.assert_close(result.output, out.max(-1).values)  # the predicted class's logit
    else:
        torch.testing.assert_close(result.output, out[:, 0])


def test_integrated_gradients_leaves_missing_padding_categorical_and_absent_at_zero():
    module, batch = random_model(), random_batch()
    result = integrated_gradients(module, batch, "y", n_steps=16)
    gene, brain = result.features["gene"], result.features["brain"]
    assert (gene[batch["missing"]["gene"]] == 0).all() and (brain[batch["missing"]["brain"]] == 0).all()
    assert (gene[~batch["missing"]["gene"]] != 0).float().mean() > 0.9  # the others move
    assert (brain[:, 2:, 1] == 0).all()  # padding slots
    assert (brain[:, 3] == 0).all() and torch.isnan(result.tokens["brain"][:, 3]).all()  # categorical: excluded
    assert (gene[0, 1] == 0).all() and (result.tokens["brain"][1, :3] == 0).all()  # absent tokens
    # the IG table has no row for the categorical token, nor for absent tokens
    table = attribution_table(result, {"gene": list("abcd"), "brain": ["r1", "r2", "r3", "hand"]})
    assert "hand" not in set(table["token"])
    assert not ((table["subject"] == 100) & (table["token"] == "b")).any()
    assert not ((table["subject"] == 101) & (table["modality"] == "brain")).any()


def test_occlusion_of_an_absent_token_changes_nothing_and_of_a_modality_equals_it_absent():
    module, batch = random_model(), random_batch()
    result = occlusion(module.eval(), batch, "y", max_rows=20)  # several chunks of stacked variants
    assert result.tokens["gene"][0, 1] == 0  # absent already
    assert (result.tokens["brain"][1] == 0).all() and result.modalities["brain"][1] == 0
    assert (result.tokens["gene"][1:, 1] != 0).all()
    predict = explainable(module).predict
    # the model agrees: hiding an absent token (subject 0's gene token 1) leaves its output as it was
    present = {**batch["present"], "gene": batch["present"]["gene"].clone()}
    present["gene"][:, 1] = False
    with torch.no_grad():
        without = predict({**batch, "present": present})["y"][:, 0]
    torch.testing.assert_close(without[0], result.output[0])
    torch.testing.assert_close(result.tokens["gene"][:, 1], result.output - without)
    for name in ("gene", "brain"):
        present = {**batch["present"], name: torch.zeros_like(batch["present"][name])}
        with torch.no_grad():
            without = predict({**batch, "present": present})["y"][:, 0]
        torch.testing.assert_close(result.modalities[name], result.output - without)
    # one token by hand
    present = {**batch["present"], "brain": batch["present"]["brain"].clone()}
    present["brain"][:, 3] = False
    with torch.no_grad():
        without = predict({**batch, "present": present})["y"][:, 0]
    torch.testing.assert_close(result.tokens["brain"][:, 3], result.output - without)


def test_tables_and_aggregate():
    module, batch = random_model(), random_batch()
    ig = integrated_gradients(module, batch, "y", n_steps=8)
    occ = occlusion(module, batch, "y")
    table = attribution_table([ig, occ])
    assert list(table.columns) == ["subject", "modality", "token", "target", "method", "value"]
    # occlusion: every present token of every subject + a total per subject having the modality
    occ_rows = table[table["method"] == "occlusion"]
    assert len(occ_rows) == (6 * 4 - 1 + 6) + (5 * 4 + 5)
    ig_rows = table[table["method"] == "integrated_gradients"]
    assert len(ig_rows) == (6 * 4 - 1 + 6) + (5 * 3 + 5)
    totals = ig_rows[ig_rows["token"] == ALL_TOKENS].groupby("subject")["value"].sum()
    np.testing.assert_allclose(totals.to_numpy(), ig.total().numpy(), rtol=1e-5, atol=1e-6)
    summary = aggregate_attributions(table)
    assert list(summary.columns) == ["modality", "token", "target", "method", "mean", "mean_abs", "sd", "n"]
    row = summary[(summary.method == "occlusion") & (summary.modality == "gene") & (summary.token == "1")].iloc[0]
    values = occ.tokens["gene"][1:, 1].double().numpy()  # subject 0 lacks it
    assert row.n == 5
    np.testing.assert_allclose(
        [row["mean"], row.mean_abs, row.sd], [values.mean(), abs(values).mean(), values.std(ddof=1)]
    )


def test_bad_requests_say_what_to_fix():
    module, batch = random_model(), random_batch()
    with pytest.raises(ValueError, match="target 'nope' is not among"):
        occlusion(module, batch, "nope")
    with pytest.raises(ValueError, match="class_index=5 is outside"):
        integrated_gradients(module, batch, "group", class_index=5)
    with pytest.raises(TypeError, match="Explainable"):
        integrated_gradients(object(), batch, "y")


# ---------------------------------------------------------------------- the demo model
def demo_batch(tmp_path, demo_cohort, n: int = 48):
    from helpers import EXPERIMENT, Case, run_cli

    data = Case(demo_cohort, tmp_path, capfd=None).data_config()
    datamodule = run_cli("--config", EXPERIMENT, "--data", data, run=False).datamodule
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    names = {name: list(datamodule.cohort.modalities[name].token_names) for name in batch["values"]}
    return batch, names


def test_integrated_gradients_is_complete_on_the_demo_checkpoint(demo_checkpoint, demo_cohort, tmp_path):
    module = NeuroOmicsModule.load_from_checkpoint(demo_checkpoint, map_location="cpu")
    batch, names = demo_batch(tmp_path, demo_cohort)
    result = integrated_gradients(module, batch, "target", n_steps=32)
    difference = result.output - result.baseline_output
    error = (result.total() - difference).abs()
    assert (error <= RELATIVE_TOLERANCE * difference.abs() + ABSOLUTE_FLOOR).all(), (error, difference)
    for name, missing in batch["missing"].items():
        assert (result.features[name][missing] == 0).all()
    behaviour = names["behaviour"]
    assert torch.isnan(result.tokens["behaviour"][:, behaviour.index("handedness")]).all()
    occ = occlusion(module, batch, "target")
    table = attribution_table([result, occ], names)
    assert set(table["modality"]) == {"gene", "brain", "behaviour"}
    assert "handedness" in set(table.loc[table.method == "occlusion", "token"])
    assert not (table.loc[table.method == "integrated_gradients", "token"] == "handedness").any()


@pytest.mark.slow  # trains the demo model (up to 15 epochs: ~6 s here once the cohort is cached)
def test_planted_brain_regions_rank_high_on_a_trained_demo_model(workdir, demo_cohort):
    """On the demo cohort, the three brain regions that carry the planted signal (ground_truth.json) rank above the
    75th percentile of brain tokens by mean |attribution| over validation and test subjects, for both methods (seen:
    they are the top 3 of 20, at 3-5x the median)."""
    import json

    import pandas as pd
    from helpers import EXPERIMENT, NO_LOGGER, Case, run_cli

    data = Case(demo_cohort, workdir, capfd=None).data_config()
    fit = ("fit", "--config", EXPERIMENT, "--data", data, "--trainer.max_epochs", "15", "--test_after_fit", "false")
    cli = run_cli(*fit, *NO_LOGGER, "--trainer.enable_progress_bar", "false")
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("test")
    names = {name: list(datamodule.cohort.modalities[name].token_names) for name in ("gene", "brain", "behaviour")}
    tables = []
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        for batch in loader:
            found = [integrated_gradients(module, batch, "target"), occlusion(module, batch, "target")]
            tables.append(attribution_table(found, names))
    summary = aggregate_attributions(pd.concat(tables, ignore_index=True))
    planted = json.loads((demo_cohort / "ground_truth.json").read_text())["genes_to_brain"]["brain_regions"]
    for method in ("integrated_gradients", "occlusion"):
        brain = summary[(summary.modality == "brain") & (summary.token != ALL_TOKENS) & (summary.method == method)]
        assert len(brain) == 20
        score = brain.set_index("token")["mean_abs"]
        assert (score[planted] > score.quantile(0.75)).all(), (method, score.sort_values(ascending=False))
