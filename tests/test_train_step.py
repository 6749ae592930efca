"""The training step of NeuroOmicsModule (issue 7): no host synchronisation on the fixed layout, epoch metrics from
device-side predictions, bf16 autocast, ``torch.compile`` (same loss, same checkpoint keys), and the end-to-end
benchmark at tiny size."""

from __future__ import annotations

import sys
from copy import deepcopy

import pytest
import torch
import yaml
from helpers import CONFIGS, DEMO_DATA, ROOT
from op_log import OpLog

HOST_SYNC_OPS = {"_local_scalar_dense", "item", "nonzero"}
INDEXING_OPS = {"index", "index_put", "index_put_", "masked_select", "masked_scatter", "nonzero"}


@pytest.fixture(scope="module")
def demo(demo_cohort, tmp_path_factory):
    """The demo data config on the session's demo cohort, its cache and splits in a temporary folder:
    (datamodule, first training batch)."""
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    folder = tmp_path_factory.mktemp("demo")

    def moved(value):
        if isinstance(value, str) and value.startswith("outputs/demo_cohort"):
            return str(demo_cohort / value.removeprefix("outputs/demo_cohort").lstrip("/"))
        if isinstance(value, str) and value.startswith("outputs/"):
            return str(folder / value)
        return {k: moved(v) for k, v in value.items()} if isinstance(value, dict) else value

    datamodule = NeuroOmicsDataModule(**moved(deepcopy(DEMO_DATA)))
    datamodule.setup("fit")
    return datamodule, next(iter(datamodule.train_dataloader()))


def module(datamodule, encoder: dict | None = None, **overrides):
    """The demo's model (configs/model/mot.yaml over the defaults), with ``encoder`` options and other settings."""
    from mot_neuro.lit_module import NeuroOmicsModule

    config = yaml.safe_load((CONFIGS / "model" / "mot.yaml").read_text())
    config["encoder"] = {**config["encoder"], **(encoder or {})}
    return NeuroOmicsModule(data_spec=datamodule.model_inputs, **config, **overrides)


def with_missing_targets(batch):
    """A copy of the batch whose first three subjects have no target (the step must not count them on the host)."""
    targets = {name: value.clone() for name, value in batch["targets"].items()}
    for value in targets.values():
        value[:3] = float("nan")
    return {**batch, "targets": targets}


@pytest.mark.parametrize(
    "settings",
    [
        {"objective": "supervised"},
        {"objective": "masked"},
        {"objective": "both", "modality_dropout": 0.2},
        {"objective": "both", "encoder": {"untie": []}},  # the dense twin
        {"objective": "supervised", "encoder": {"moe": {"brain": {"n_experts": 4, "top_k": 2}}}},
        {"objective": "both", "bf16": True},
    ],
    ids=["supervised", "masked", "both+dropout", "dense", "moe", "bf16"],
)
def test_training_step_runs_no_host_sync(demo, settings, monkeypatch):
    """Forward (tokenizers, backbone, heads, losses, metric bookkeeping) and backward of ``training_step`` on a demo
    batch: no op that needs a value on the host (``item``, ``nonzero``, ...) and no boolean indexing.

    ``self.log`` is stubbed: turning logged tensors into numbers (progress bar, logger) is Lightning's business and
    happens outside the step. The optimizer step is not logged here either."""
    settings = dict(settings)
    bf16 = settings.pop("bf16", False)
    datamodule, batch = demo
    model = module(datamodule, **settings).train()
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kwargs: logged.__setitem__(name, value))
    batch = with_missing_targets(batch)
    with OpLog() as log, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.training_step(batch, 0)
        loss.backward()
    assert log.ops["mm"] + log.ops["bmm"] + log.ops["addmm"] > 0  # the log did see the computation
    found = sorted(set(log.ops) & (HOST_SYNC_OPS | INDEXING_OPS))
    assert not found, found
    assert torch.isfinite(loss) and "train/loss" in logged
    if bf16:
        assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_epoch_metrics_count_only_observed_targets(demo, monkeypatch):
    """Predictions stay on the device during the epoch; at its end the metrics see the observed subjects only,
    the same values as computing them directly."""
    import torchmetrics

    datamodule, batch = demo
    model = module(datamodule, encoder={"dropout": 0.0}).train()
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kwargs: logged.__setitem__(name, value))
    batches = [with_missing_targets(batch), batch]
    predictions, truths = [], []
    model.on_train_epoch_start()
    for index, b in enumerate(batches):
        model.training_step(b, index)
        with torch.no_grad():
            value = model.heads["target"](model(b).pooled).squeeze(-1)
        observed = ~torch.isnan(b["targets"]["target"])
        predictions.append(model._unscale("target", value)[observed])
        truths.append(model._unscale("target", b["targets"]["target"])[observed])
    assert len(model._outputs["train__target"]) == 2
    model.on_train_epoch_end()
    prediction, truth = torch.cat(predictions), torch.cat(truths)
    assert len(truth) == 2 * len(batch["row"]) - 3
    torch.testing.assert_close(logged["train/target/r2"], torchmetrics.functional.r2_score(prediction, truth))
    torch.testing.assert_close(logged["train/target/mae"], (prediction - truth).abs().mean())
    assert not model._outputs  # handed to the metrics, and the metrics reset
    # an interrupted epoch leaves nothing behind for the next one
    model.training_step(batch, 0)
    model.on_train_epoch_start()
    assert not model._outputs


def test_optimizer_is_fused_adamw(demo):
    """One kernel per parameter group: on CPU the default loops over MoT's many per-tower tensors."""
    from types import SimpleNamespace

    model = module(demo[0], freeze_towers=["brain"])
    model._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what configure_optimizers reads
    optimizer = model.configure_optimizers()["optimizer"]
    model._trainer = None
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}  # frozen towers left out
    assert len(trained) < len(list(model.parameters()))


@pytest.mark.parametrize("untie", [[], ["attention", "ffn", "norm"]], ids=["dense", "mot"])
@pytest.mark.slow  # torch.compile: seconds of compilation per variant
def test_compiled_module_matches_eager_and_keeps_checkpoint_keys(demo, untie, tmp_path):
    """``compile: true`` (inductor on CPU): same loss and gradients on a demo batch -- with dropout, masked tokens and
    modality dropout, since compiled random ops draw what eager ones draw --, same state_dict keys, and checkpoints
    move between compiled and eager modules both ways. Tiny model: compilation dominates the time."""
    import lightning

    from mot_neuro.lit_module import NeuroOmicsModule

    datamodule, batch = demo
    tiny = {
        "encoder": {"dim": 16, "n_layers": 1, "n_heads": 2, "untie": untie},
        "objective": "both",
        "modality_dropout": 0.2,
    }
    eager = module(datamodule, **tiny)
    compiled = module(datamodule, **tiny, compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())
    losses = []
    for model in (eager, compiled):
        model.log = lambda *args, **kwargs: None
        torch.manual_seed(1)
        loss = model.train().training_step(batch, 0)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)

    # the parts of a Lightning checkpoint that loading reads: saved compiled, loaded eager; and back
    def save(model, path):
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": lightning.__version__,
            },
            path,
        )
        return path

    loaded = NeuroOmicsModule.load_from_checkpoint(save(compiled, tmp_path / "compiled.ckpt"), compile=False)
    assert loaded.hparams.compile is False and loaded.encoder._compiled_call_impl is None
    again = NeuroOmicsModule.load_from_checkpoint(save(loaded, tmp_path / "eager.ckpt"), compile=True)
    assert again.encoder._compiled_call_impl is not None
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)


def test_compile_setting_is_checked_and_survives_copies(demo):
    import pickle

    from mot_neuro.lit_module import compile_mode

    assert compile_mode(False) is None and compile_mode(True) == "default"
    assert compile_mode("max-autotune") == "max-autotune"
    with pytest.raises(ValueError, match="torch.compile mode"):
        module(demo[0], compile="fastest")
    # copies (deepcopy, pickling into spawned processes) stay compiled; torch itself drops the compiled call
    compiled = module(demo[0], encoder={"dim": 16, "n_layers": 1, "n_heads": 2}, compile=True)
    for copy in (deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert copy.encoder._compiled_call_impl is not None
    assert (
        deepcopy(module(demo[0], encoder={"dim": 16, "n_layers": 1, "n_heads": 2})).encoder._compiled_call_impl is None
    )


def test_inner_layer_embeddings_run_eagerly_under_compile(demo):
    """``embed_layer`` stops the backbone early with a hook; that path bypasses the compiled call (no compilation
    happens here, so this is cheap) and gives what the eager module gives."""
    datamodule, batch = demo
    torch.manual_seed(0)
    eager = module(datamodule, encoder={"dim": 16, "n_layers": 2, "n_heads": 2}).eval()
    compiled = module(datamodule, encoder={"dim": 16, "n_layers": 2, "n_heads": 2}, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    eager.embed_layer = compiled.embed_layer = 0
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        expected, got = eager.predict_step(batch, 0), compiled.predict_step(batch, 0)
    assert counters["stats"]["unique_graphs"] == before
    torch.testing.assert_close(got["pooled"], expected["pooled"])


@pytest.mark.slow  # the benchmark end to end, training steps
def test_benchmark_runs_at_tiny_size(tmp_path, capsys):
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_step

    small = ["--subjects", "40", "--batch-size", "8", "--reps", "2", "--steps", "2", "--warmup", "1"]
    small += ["--profile-steps", "2", "--dim", "8", "--layers", "1", "--heads", "2", "--no-compile"]
    result = train_step.main([*small, "--dir", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    assert result["mot_vs_dense_eager"] > 0 and result["mot_vs_dense_compiled"] is None
    assert result["mot_per_run_vs_dense_eager"] > 0
    for key in ("compiled_vs_eager_dense", "compiled_vs_eager_mot", "targets", "median_step_ms"):
        assert key in result
    for share in (result["data_share_profiler"], result["data_share_timer"]):
        assert set(share) == {"dense_eager", "mot_eager", "mot_per_run_eager"}
        assert all(0 < v < 1 for v in share.values())
    assert list(tmp_path.iterdir()) == []  # the demo cohort went to a temporary folder, removed after
