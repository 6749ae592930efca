"""The tower ops (one call per projection and norm for all towers, mot_neuro.model.tower_ops) compute what one
module call per run of tokens computes: outputs, every parameter's gradient and the input's, on both routing paths,
for every option that changes a block (norm placement, QK-norm, shared towers, tied parts, MoE and per-tower FFN
widths, which fall back to per-run calls for the FFN), with tokens absent and towers without any token."""

from __future__ import annotations

import copy

import pytest
import torch
from test_routing_properties import build

from mot_neuro.model import PAD_ID, ModalityLayout, MoTConfig
from mot_neuro.model.tower_ops import assigned_weights, run_assignment, tower_linear

MODALITIES = ("gene", "brain", "behaviour")
LAYOUT = ModalityLayout(("brain", "gene", "behaviour"), (5, 3, 4))  # not the model's order
TOL = dict(rtol=1e-5, atol=1e-5)
VARIANTS = {
    "pre": {},
    "output placement": {"norm_placement": "output"},
    "qk norm": {"qk_norm": True},
    "qk norm, output placement": {"qk_norm": True, "norm_placement": "output"},
    "shared tower, not adjacent": {"towers": {"gene": "omics", "brain": "brain", "behaviour": "omics"}},
    "ffn untied only": {"untie": ("ffn",)},
    "attention and norm untied": {"untie": ("attention", "norm")},
    "ffn widths differ": {"ffn_hidden_dims": {"gene": 24, "brain": 40, "behaviour": 8}},
    "mixture of experts": {"moe": {"brain": {"n_experts": 3, "top_k": 2}}},
    "causal": {"causal": True},
}


def _forward_backward(model, x, routing, present=None):
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x, routing, present)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss that weighs every output differently
    ((out * weights).sum() + model.aux_loss()).backward()
    return out.detach(), x.grad, {name: p.grad for name, p in model.named_parameters()}


def _assert_same(tower_ops_model, per_run_model, x, routing, present=None):
    out, x_grad, grads = _forward_backward(tower_ops_model, x, routing, present)
    ref_out, ref_x_grad, ref_grads = _forward_backward(per_run_model, x, routing, present)
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(x_grad, ref_x_grad, **TOL)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad is not None and ref_grads[name] is not None, name  # every parameter takes part (DDP)
        torch.testing.assert_close(grad, ref_grads[name], **TOL, msg=name)


def _pair(overrides: dict):
    model = build(MoTConfig(MODALITIES, dim=16, n_layers=2, n_heads=2, **overrides), seed=3).train()
    per_run = copy.deepcopy(model)
    per_run.tower_ops = False
    return model, per_run


@pytest.mark.parametrize("variant", VARIANTS)
def test_tower_ops_equal_per_run_calls_on_the_fixed_layout(variant):
    model, per_run = _pair(VARIANTS[variant])
    x = torch.randn(3, LAYOUT.seq_len, 16, generator=torch.Generator().manual_seed(0))
    present = torch.rand(3, LAYOUT.seq_len, generator=torch.Generator().manual_seed(1)) > 0.3
    present[0] = False  # a subject with nothing
    present[1, LAYOUT.segment("gene")] = False  # a subject without genotypes
    _assert_same(model, per_run, x, LAYOUT)
    _assert_same(model, per_run, x, LAYOUT, present)
    assert model._fixed_runs(LAYOUT).dim == 0 and per_run._fixed_runs(LAYOUT).dim == 1  # the two forms ran


@pytest.mark.parametrize("variant", VARIANTS)
def test_tower_ops_equal_per_run_calls_on_the_general_path(variant):
    model, per_run = _pair(VARIANTS[variant])
    x = torch.randn(3, LAYOUT.seq_len, 16, generator=torch.Generator().manual_seed(0))
    ids = LAYOUT.modality_ids(MODALITIES).expand(3, -1).clone()
    ids = ids[:, torch.randperm(LAYOUT.seq_len, generator=torch.Generator().manual_seed(2))]  # tokens in any order
    ids[1, :4] = PAD_ID
    _assert_same(model, per_run, x, ids)
    no_behaviour = ids.masked_fill(ids == MODALITIES.index("behaviour"), PAD_ID)  # a tower with no token at all
    _assert_same(model, per_run, x, no_behaviour)


def test_the_dense_twin_keeps_its_single_calls():
    """One tower per part: nothing to group, the batch-major stream and plain module calls as before."""
    model = build(MoTConfig(MODALITIES, dim=16, n_heads=2, untie=()), seed=0)
    assert model._fixed_runs(LAYOUT).dim == 1 and not model._fixed_runs(LAYOUT).several


def test_tower_linear_is_each_run_through_its_weights_with_scales_folded_in():
    generator = torch.Generator().manual_seed(0)
    rows = [3, 0, 5, 2]  # an empty run among them
    x = torch.randn(sum(rows), 6, generator=generator, requires_grad=True)
    weights = [torch.randn(4, 6, generator=generator, requires_grad=True) for _ in rows]
    scales = [torch.randn(6, generator=generator, requires_grad=True) for _ in rows]
    bounds = ((0, 3), (3, 3), (3, 8), (8, 10))
    out = tower_linear(x, bounds, weights, scales)
    pieces = torch.split(x, rows)
    expected = torch.cat([(p * s) @ w.t() for p, w, s in zip(pieces, weights, scales, strict=True)])
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad((out * out).sum(), [x, *weights, *scales])
    expected_grads = torch.autograd.grad((expected * expected).sum(), [x, *weights, *scales])
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.count_nonzero(grads[2]) == 0  # the empty run's weight: a zero gradient, not None


def test_per_token_weights_are_exact_copies_of_their_runs_weights():
    assignment = run_assignment([2, 0, 3], torch.device("cpu"))
    stacked = torch.randn(3, 5, dtype=torch.float64)
    picked = assigned_weights(assignment, stacked)
    assert torch.equal(picked, stacked[[0, 0, 2, 2, 2]])


def test_bf16_autocast_runs_the_tower_projections_in_bf16():
    model, per_run = _pair({})
    x = torch.randn(2, LAYOUT.seq_len, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, LAYOUT)
        ref = per_run(x, LAYOUT)
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("placement", ["pre", "output"])
def test_large_inference_batches_run_the_ffn_run_by_run_with_the_same_numbers(monkeypatch, placement):
    """Without autograd, a stream above INFERENCE_FFN_ELEMENTS takes the FFN one run at a time (bounded memory)."""
    import mot_neuro.model.mot as mot

    model, per_run = _pair({"norm_placement": placement})
    model.eval(), per_run.eval()
    x = torch.randn(3, LAYOUT.seq_len, 16, generator=torch.Generator().manual_seed(0))
    present = torch.rand(3, LAYOUT.seq_len, generator=torch.Generator().manual_seed(1)) > 0.3
    calls = []
    original = mot.MoTBlock._routed_ffn
    monkeypatch.setattr(mot.MoTBlock, "_routed_ffn", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with torch.no_grad():
        whole = model(x, LAYOUT, present)
        assert calls == []  # small: the tower ops' single calls
        monkeypatch.setattr(mot, "INFERENCE_FFN_ELEMENTS", 0)
        by_run = model(x, LAYOUT, present)
        assert len(calls) == 2 * len(model._fixed_runs(LAYOUT).block)  # two blocks, one call per run
        reference = per_run(x, LAYOUT, present)
    torch.testing.assert_close(by_run, reference, **TOL)
    torch.testing.assert_close(whole, reference, **TOL)
