"""Fine-tuning controls and tower grouping from config/CLI on the demo cohort (issue 6, items 1, 4, 5)."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import DEBUG_TRAINER, DENSE_EXPERIMENT, EXPERIMENT
from helpers import run_cli as cli

DEMO, DENSE, DEBUG = str(EXPERIMENT), str(DENSE_EXPERIMENT), str(DEBUG_TRAINER)


def one_batch(c):
    c.datamodule.setup("test")
    return next(iter(c.datamodule.test_dataloader()))


@pytest.mark.slow  # fits through the CLI
def test_tower_grouping_from_config(workdir):
    towers = '{"gene": "gene", "brain": "brain_behaviour", "behaviour": "brain_behaviour"}'
    c = cli("fit", "--config", DEMO, "--trainer", DEBUG, "--model.encoder.towers", towers)
    assert c.trainer.state.finished
    backbone = c.model.encoder.backbone
    assert sorted(backbone.blocks[0].ffn) == ["brain_behaviour", "gene", "summary"]


@pytest.mark.slow  # fits through the CLI
def test_frozen_towers_are_unchanged_after_training(workdir):
    args = ["--config", DEMO, "--model.freeze_towers", "[brain]", "--trainer.max_epochs", "2"]
    before = cli(*args, run=False).model  # the same seed builds the same initial weights
    frozen = {id(p) for p in before._tower_parameters("brain")}
    initial = {n: p.detach().clone() for n, p in before.named_parameters() if id(p) in frozen}
    initial_gene = {n: p.detach().clone() for n, p in before.named_parameters() if id(p) not in frozen}
    trained = cli("fit", *args, "--test_after_fit", "false").model
    after = dict(trained.named_parameters())
    assert initial and all(torch.equal(after[n], v) for n, v in initial.items())
    assert not after[next(iter(initial))].requires_grad
    changed = [n for n, v in initial_gene.items() if not torch.equal(after[n], v)]
    assert any(".gene." in n for n in changed) and any("tokenizers.gene" in n for n in changed)


@pytest.mark.slow  # fits through the CLI
def test_warm_start_from_dense_reproduces_its_outputs_then_reinit_breaks_one_tower(workdir):
    from mot_neuro.lit_module import NeuroOmicsModule

    dense_run = cli(
        "fit",
        "--config",
        DENSE,
        "--trainer.max_epochs",
        "1",
        "--test_after_fit",
        "false",
        "--checkpoint_dir",
        "ckpt_dense",
    )
    checkpoint = "ckpt_dense/last.ckpt"
    dense = NeuroOmicsModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    warm = cli("--config", DEMO, "--model.warm_start_from", checkpoint, run=False)
    mot = warm.model.eval()
    assert mot.encoder.backbone.cfg.untie  # a MoT model ...
    batch = one_batch(dense_run)
    with torch.no_grad():
        expected, got = dense(batch), mot(batch)
        torch.testing.assert_close(got.pooled, expected.pooled, rtol=1e-5, atol=1e-6)  # ... computing the dense one
        torch.testing.assert_close(mot.heads["target"](got.pooled), dense.heads["target"](expected.pooled))
    reinit = cli(
        "--config", DEMO, "--model.warm_start_from", checkpoint, "--model.reinit_towers", "[brain]", run=False
    ).model.eval()
    with torch.no_grad():
        moved = reinit(batch).pooled
    assert not torch.allclose(moved, expected.pooled, atol=1e-4)
    warm_gene = dict(mot.named_parameters())
    for name, parameter in reinit.named_parameters():
        if ".ffn.gene." in name:
            assert torch.equal(parameter, warm_gene[name])  # other towers keep the warm start


@pytest.mark.slow  # tests through the CLI (the fit: conftest.py's fitted_demo, shared)
def test_mask_at_test_hides_a_modality_and_changes_the_metrics(demo_workdir, fitted_demo):
    # the demo fitted for one epoch (any trained model: the test compares two test runs of one checkpoint), with
    # its splits file, as if that fit had run in this folder
    shutil.copy(fitted_demo.folder / "outputs" / "demo_splits.json", demo_workdir / "outputs" / "demo_splits.json")
    checkpoint = str(fitted_demo.checkpoint)
    plain = cli("test", "--config", DEMO, "--ckpt_path", checkpoint).trainer.callback_metrics
    masked = cli("test", "--config", DEMO, "--ckpt_path", checkpoint, "--mask_at_test", "[brain]")
    assert float(masked.trainer.callback_metrics["test/loss"]) != float(plain["test/loss"])
    with pytest.raises(ValueError, match=r"mask_at_test names modality\(ies\) \['imaging'\]"):
        cli("test", "--config", DEMO, "--ckpt_path", checkpoint, "--mask_at_test", "[imaging]")


def test_freezing_errors_are_clear(workdir):
    with pytest.raises(ValueError, match="unknown tower 'imaging'"):
        cli("--config", DEMO, "--model.freeze_towers", "[imaging]", run=False)
    with pytest.raises(ValueError, match="dense model has one shared set"):
        cli("--config", DENSE, "--model.freeze_towers", "[brain]", run=False)


@pytest.mark.slow  # fits through the CLI
def test_mot_with_an_moe_tower_and_per_tower_widths_trains_from_the_cli(workdir):
    """MoT+MoE as configuration: the brain FFN becomes 4 experts (top-2), behaviour gets a narrower FFN."""
    from mlflow.tracking import MlflowClient

    moe = '{"brain": {"n_experts": 4, "top_k": 2, "balance_weight": 0.01}}'
    widths = '{"behaviour": 32}'
    c = cli(
        "fit",
        "--config",
        DEMO,
        "--trainer.max_epochs",
        "1",
        "--test_after_fit",
        "false",
        "--model.encoder.moe",
        moe,
        "--model.encoder.ffn_hidden_dims",
        widths,
        "--trainer.log_every_n_steps",
        "1",
    )
    assert c.trainer.state.finished
    backbone = c.model.encoder.backbone
    assert backbone.cfg.moe["brain"]["n_experts"] == 4 and backbone.cfg.ffn_width("behaviour") == 32
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("mot-neuro").experiment_id])[0]
    metrics = run.data.metrics
    assert "train/moe_balance_epoch" in metrics and "val/moe_balance" in metrics
    loads = [k for k in metrics if k.startswith("train/expert_load/block0.brain/")]
    assert sorted(loads) == [f"train/expert_load/block0.brain/e{e}" for e in range(4)]
    assert len(client.get_metric_history(run.info.run_id, loads[0])) == c.trainer.global_step  # every step
    assert sum(metrics[k] for k in loads) == pytest.approx(1.0, abs=1e-4)  # shares of the tokens
    from mot_neuro.model import count_parameters

    counts = count_parameters(backbone)
    assert counts["moe"]["brain"]["activated"] < counts["moe"]["brain"]["total"]
    assert counts["per_modality"]["brain"] < counts["per_modality_stored"]["brain"]
