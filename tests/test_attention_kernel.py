"""Global attention stays on a fused scaled_dot_product_attention kernel in training.

The math path materialises the ``[batch, heads, seq, seq]`` matrix (and, with attention dropout, a random mask
over it): at 600 tokens that was most of a training step's time and memory (BENCHMARKS.md, "Scale"). These tests
forbid the math backend and run the default configuration forward and backward, so they fail if any change sends
it back there where a fused kernel exists (on CPU, the flash kernel; on CUDA, flash, memory-efficient or cuDNN).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from mot_neuro.lit_module import NeuroOmicsModule
from mot_neuro.model import PAD_ID, ModalityLayout, MoTBackbone, MoTConfig
from mot_neuro.model.config import MoTOptions
from mot_neuro.model.encoder import EncoderOptions

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]

SPEC = {
    "modalities": [
        {"name": "gene", "n_tokens": 5, "n_features": 1, "feature_mask": [], "categorical": {}},
        {"name": "brain", "n_tokens": 7, "n_features": 2, "feature_mask": [], "categorical": {}},
    ],
    "targets": {"y": {"kind": "regression", "n_classes": None, "scale": {"mean": 0.0, "sd": 1.0}}},
    "fingerprint": "kernel-test",
}


def _train_step_fused_only(run) -> None:
    """``run()`` returns a loss; forward and backward with the math backend forbidden (raises if it is needed)."""
    with sdpa_kernel(FUSED):
        run().backward()


def test_attention_dropout_is_off_by_default():
    assert MoTOptions().attention_dropout == 0.0 and EncoderOptions().attention_dropout == 0.0


def test_default_model_trains_on_a_fused_kernel_with_absent_tokens():
    torch.manual_seed(0)
    module = NeuroOmicsModule(data_spec=SPEC).train()
    assert module.encoder.backbone.cfg.dropout > 0  # residual dropout stays on: only attention dropout is off
    batch_size = 6
    present = {"gene": torch.rand(batch_size, 5) > 0.3, "brain": torch.ones(batch_size, 7, dtype=torch.bool)}
    present["brain"][0] = False  # a subject without imaging
    batch = {
        "values": {"gene": torch.randn(batch_size, 5, 1), "brain": torch.randn(batch_size, 7, 2)},
        "present": present,
    }
    _train_step_fused_only(lambda: module.encoder(batch).pooled.square().mean())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("routing", ["fixed", "ids"])
def test_backbone_paths_stay_fused_with_padding_and_causal_masks(routing, causal):
    torch.manual_seed(0)
    layout = ModalityLayout.from_counts({"a": 3, "b": 4, "c": 2})
    model = MoTBackbone(MoTConfig(layout.names, dim=16, n_heads=2, dropout=0.1, causal=causal)).train()
    x = torch.randn(3, layout.seq_len, 16, requires_grad=True)
    present = torch.rand(3, layout.seq_len) > 0.3
    if routing == "fixed":
        _train_step_fused_only(lambda: model(x, layout, present).sum())
    else:
        ids = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2]).expand(3, -1).clone()
        ids[~present] = PAD_ID
        _train_step_fused_only(lambda: model(x, ids).sum())
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_attention_dropout_needs_the_math_path_which_the_guard_detects():
    """What the tests above guard against: with attention dropout no fused kernel applies (PyTorch's rule), so the
    restricted run fails. If PyTorch gains a fused dropout kernel this test says so and can go."""
    layout = ModalityLayout.from_counts({"a": 3, "b": 4})
    model = MoTBackbone(MoTConfig(layout.names, dim=16, n_heads=2, attention_dropout=0.1)).train()
    x = torch.randn(2, layout.seq_len, 16)
    with pytest.raises(RuntimeError, match="No available kernel"):
        _train_step_fused_only(lambda: model(x, layout).sum())
    model.eval()  # no dropout at inference: fused again
    with torch.no_grad(), sdpa_kernel(FUSED):
        model(x, layout)
