"""Per-tower FFN widths and mixture-of-experts FFN towers of the MoT backbone (pure torch)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from op_log import OpLog
from test_backbone import HOST_SYNC_OPS, INDEXING_OPS

from mot_neuro.model import (
    EncoderConfig,
    ModalityLayout,
    ModalitySpec,
    MoESwiGLU,
    MoTBackbone,
    MoTConfig,
    NeuroOmicsEncoder,
    SwiGLU,
    count_parameters,
    training_flops,
)

MODALITIES = ("gene", "brain", "behaviour")
LAYOUT = ModalityLayout.from_counts({"gene": 5, "brain": 7, "behaviour": 3})
D, LAYERS = 32, 2
WIDTHS = {"gene": 40, "behaviour": 96}
MOE = {"brain": {"n_experts": 4, "top_k": 2, "hidden_dim": 24, "balance_weight": 0.01}}


def make(seed: int = 0, **overrides) -> MoTBackbone:
    torch.manual_seed(seed)
    kwargs = dict(modalities=MODALITIES, dim=D, n_layers=LAYERS, n_heads=4)
    kwargs.update(overrides)
    return MoTBackbone(MoTConfig(**kwargs)).eval()


def tokens(batch: int = 4, seq: int = LAYOUT.seq_len, dim: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, seq, dim, generator=torch.Generator().manual_seed(seed))


def random_present(batch: int = 4, seq: int = LAYOUT.seq_len, seed: int = 2) -> torch.Tensor:
    present = torch.rand(batch, seq, generator=torch.Generator().manual_seed(seed)) > 0.3
    present[0] = False  # a subject with no token at all
    present[1, LAYOUT.segment("brain")] = False  # a subject without the MoE modality
    return present


# ------------------------------------------------------------------------------------------------ per-tower widths
def test_per_tower_widths_parameter_count_matches_formula():
    model = make(ffn_hidden_dims=WIDTHS)
    widths = {"gene": 40, "brain": model.cfg.ffn_hidden_dim, "behaviour": 96}
    # per layer: two norms, QKV + output projection, SwiGLU (w_in 2h x d, w_out d x h); then the final norm
    expected = {t: LAYERS * (2 * D + 4 * D * D + 3 * D * h) + D for t, h in widths.items()}
    counts = count_parameters(model)
    assert counts["total"] == sum(expected.values())
    assert counts["per_modality"] == expected == counts["per_modality_stored"]
    assert counts["moe"] == {}
    assert model.blocks[1].ffn["behaviour"].w_out.weight.shape == (D, 96)
    # attention stays one width: QKV of every tower is 3D x D
    assert {tuple(m.weight.shape) for m in model.blocks[0].qkv.values()} == {(3 * D, D)}


CONFIGS = {
    "widths": dict(ffn_hidden_dims=WIDTHS),
    "moe": dict(moe=MOE),
    "widths+moe": dict(ffn_hidden_dims=WIDTHS, moe=MOE),
    "moe_top1_output_norm": dict(moe={"brain": {"n_experts": 3, "top_k": 1}}, norm_placement="output", qk_norm=True),
    "moe_ffn_only": dict(untie=("ffn",), moe=MOE, ffn_hidden_dims={"gene": 48}),
    "moe_on_two_towers": dict(moe={**MOE, "gene": {"n_experts": 2, "top_k": 1}}),
    "dense_moe": dict(untie=(), moe={"shared": {"n_experts": 4, "top_k": 2}}),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_present", [False, True])
def test_fixed_layout_equals_general_path(overrides, with_present):
    model = make(**overrides)
    x = tokens()
    present = random_present() if with_present else None
    ids = LAYOUT.modality_ids(MODALITIES)
    fixed = model(x, LAYOUT, present)
    fixed_load, fixed_aux = model.expert_load(), model.aux_loss()
    by_ids = model(x, ids.expand(4, -1), present)
    ids_load, ids_aux = model.expert_load(), model.aux_loss()
    by_masks = model(x, [ids == i for i in range(3)], present)
    assert fixed.shape == x.shape and torch.isfinite(fixed).all()
    torch.testing.assert_close(by_ids, fixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_masks, fixed, rtol=1e-5, atol=1e-5)
    # the general path never computes absent tokens; the fixed path weights them 0: same statistics
    assert fixed_load.keys() == ids_load.keys() == model.expert_load().keys()
    for key in fixed_load:
        torch.testing.assert_close(ids_load[key], fixed_load[key])
    torch.testing.assert_close(ids_aux, fixed_aux)


def test_tower_with_two_runs_merges_its_statistics():
    """brain and behaviour share an MoE tower but are not adjacent in this layout: two runs, one statistic."""
    towers = {"gene": "gene", "brain": "bb", "behaviour": "bb"}
    model = make(towers=towers, moe={"bb": {"n_experts": 4, "top_k": 2}})
    layout = ModalityLayout(("brain", "gene", "behaviour"), (7, 5, 3))
    x = tokens()
    present = torch.rand(4, 15, generator=torch.Generator().manual_seed(3)) > 0.3
    fixed = model(x, layout, present)
    stats = model.blocks[0].router_stats["bb"]
    assert stats.tokens == present[:, :7].sum() + present[:, 12:].sum()
    fixed_load = model.expert_load()
    general = model(x, layout.modality_ids(MODALITIES).expand(4, -1), present)
    torch.testing.assert_close(general, fixed, rtol=1e-5, atol=1e-5)
    for key, load in model.expert_load().items():
        torch.testing.assert_close(load, fixed_load[key])


# --------------------------------------------------------------------------------------------------------- MoE
def test_model_with_statistics_of_a_training_forward_can_be_deep_copied():
    model = make(moe=MOE).train()
    model(tokens(), LAYOUT)
    assert model.aux_loss().requires_grad
    clone = copy.deepcopy(model)  # as EMA/SWA callbacks do
    assert clone.expert_load() == {} and model.expert_load() != {}
    torch.testing.assert_close(clone(tokens(), LAYOUT), model(tokens(), LAYOUT))


def test_moe_router_and_experts_get_gradients():
    model = make(moe=MOE).train()
    x = tokens()
    out = model(x, LAYOUT, random_present())
    load = model.expert_load()
    assert set(load) == {"block0.brain", "block1.brain"}
    for value in load.values():
        assert value.shape == (4,) and not value.requires_grad
        torch.testing.assert_close(value.sum(), torch.tensor(1.0))
    aux = model.aux_loss()
    assert aux.dim() == 0 and aux > 0
    (out.square().mean() + aux).backward()
    for block in model.blocks:
        moe = block.ffn["brain"]
        assert isinstance(moe, MoESwiGLU)
        assert moe.router.weight.grad.abs().sum() > 0
        assert moe.w_in.grad.abs().sum() > 0 and moe.w_out.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    # the main loss alone already trains the router, through the gates
    model.zero_grad()
    model(x, LAYOUT).square().mean().backward()
    assert model.blocks[-1].ffn["brain"].router.weight.grad.abs().sum() > 0


def test_top1_router_learns_only_from_the_balancing_loss():
    """Documented trade-off of renormalised gates: a single chosen expert always gets gate 1."""

    def task_gradient(top_k: int) -> torch.Tensor:
        model = make(moe={"brain": {"n_experts": 3, "top_k": top_k}}).train()
        model(tokens(), LAYOUT).square().mean().backward()
        return model.blocks[-1].ffn["brain"].router.weight.grad.abs().max()

    assert task_gradient(1) < 1e-4 * task_gradient(2)  # zero up to rounding (p / p)
    model = make(moe={"brain": {"n_experts": 3, "top_k": 1}}).train()
    model(tokens(), LAYOUT)
    model.aux_loss().backward()
    assert model.blocks[-1].ffn["brain"].router.weight.grad.abs().sum() > 0


def test_balancing_loss_moves_expert_load_toward_uniform():
    torch.manual_seed(0)
    moe = MoESwiGLU(dim=16, hidden_dim=8, n_experts=4, top_k=1)
    g = torch.Generator().manual_seed(0)
    direction = F.normalize(torch.randn(16, generator=g), dim=0)
    x = direction + 0.5 * torch.randn(512, 16, generator=g)
    with torch.no_grad():
        moe.router.weight.normal_(0.0, 0.02, generator=g)
        moe.router.weight[0] += 3.0 * direction  # skewed: expert 0 wins most tokens
    _, stats = moe(x)
    load_before, loss_before = stats.load().max().item(), stats.balance_loss().item()
    assert load_before > 0.8
    optimizer = torch.optim.Adam(moe.router.parameters(), lr=0.05)
    for _ in range(60):
        _, stats = moe(x)
        optimizer.zero_grad()
        stats.balance_loss().backward()
        optimizer.step()
    _, stats = moe(x)
    assert stats.load().max().item() < load_before - 0.3
    assert stats.balance_loss().item() < loss_before


def test_backbone_aux_loss_is_the_weighted_sum_over_layers():
    moe = {"brain": {"n_experts": 4, "top_k": 2, "balance_weight": 0.5}, "gene": {"n_experts": 2, "top_k": 1}}
    model = make(moe=moe)
    model(tokens(), LAYOUT)
    expected = sum(
        moe[tower].get("balance_weight", 0.01) * stats.balance_loss()
        for block in model.blocks
        for tower, stats in block.router_stats.items()
    )
    torch.testing.assert_close(model.aux_loss(), expected)
    assert len(model.expert_load()) == 2 * LAYERS


@pytest.mark.parametrize("top_k", [4, 2, 1])
def test_experts_that_are_copies_of_one_ffn_compute_that_ffn(top_k):
    torch.manual_seed(0)
    ffn = SwiGLU(16, 24)
    moe = MoESwiGLU(16, 24, n_experts=4, top_k=top_k)
    torch.nn.init.normal_(moe.router.weight, 0.0, 0.5)
    moe.load_from_dense(ffn)
    x = torch.randn(3, 5, 16)
    out, _ = moe(x)
    torch.testing.assert_close(out, ffn(x), rtol=1e-5, atol=1e-6)  # gates sum to 1


def test_top_k_routing_matches_an_explicit_loop_over_experts():
    torch.manual_seed(0)
    moe = MoESwiGLU(16, 8, n_experts=5, top_k=2)
    for p in moe.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    x = torch.randn(40, 16)
    out, stats = moe(x)
    probs = moe.router(x).softmax(-1)
    top = probs.topk(2, dim=-1)
    gates = top.values / top.values.sum(-1, keepdim=True)
    expected = torch.zeros_like(out)
    for slot in range(2):
        for e in range(5):
            gate, up = F.linear(x, moe.w_in[e]).chunk(2, dim=-1)
            expert = F.linear(F.silu(gate) * up, moe.w_out[e])
            expected += (top.indices[:, slot] == e).float()[:, None] * gates[:, slot, None] * expert
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    counts = torch.bincount(top.indices.flatten(), minlength=5).float()
    torch.testing.assert_close(stats.load(), counts / counts.sum())


def test_ties_still_choose_exactly_top_k_experts():
    moe = MoESwiGLU(8, 4, n_experts=4, top_k=2)
    torch.nn.init.zeros_(moe.router.weight)  # every logit equal
    _, stats = moe(torch.randn(10, 8))
    torch.testing.assert_close(stats.load(), torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_absent_tokens_do_not_change_router_statistics():
    model = make(moe=MOE)
    x = tokens()
    present = random_present()
    out = model(x, LAYOUT, present)
    load, aux = model.expert_load(), model.aux_loss()
    brain = LAYOUT.segment("brain")
    assert model.blocks[0].router_stats["brain"].tokens == present[:, brain].sum()
    changed = x.clone()
    changed[~present] = 50.0 * torch.randn(int((~present).sum()), D)
    out_changed = model(changed, LAYOUT, present)
    torch.testing.assert_close(out_changed[present], out[present], rtol=1e-5, atol=1e-5)
    for key, value in model.expert_load().items():
        torch.testing.assert_close(value, load[key])
    torch.testing.assert_close(model.aux_loss(), aux)
    # and they do count when marked present: the weighting is what keeps them out
    model(changed, LAYOUT)
    assert model.blocks[0].router_stats["brain"].tokens == 4 * 7


def test_fixed_layout_path_with_widths_and_moe_has_no_indexing_and_no_host_sync():
    model = make(ffn_hidden_dims=WIDTHS, moe=MOE, qk_norm=True).train()
    x = tokens()
    present = random_present()
    with OpLog() as log:
        out = model(x, LAYOUT, present)
        (out.square().mean() + model.aux_loss()).backward()
        model.expert_load()
    assert log.ops["mm"] > 0
    assert not (set(log.ops) & (INDEXING_OPS | HOST_SYNC_OPS)), sorted(set(log.ops) & (INDEXING_OPS | HOST_SYNC_OPS))


def test_bf16_autocast_with_moe():
    model = make(moe=MOE, ffn_hidden_dims=WIDTHS).train()
    x = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, LAYOUT, random_present())
        loss = out.float().square().mean() + model.aux_loss()
    loss.backward()
    assert torch.isfinite(out.float()).all() and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# -------------------------------------------------------------------------------------------------- accounting
def test_moe_accounting_counts_activated_parameters():
    model = make(moe=MOE, ffn_hidden_dims={"gene": 40})
    counts = count_parameters(model)
    e, k, h = 4, 2, 24
    router, expert = D * e, 3 * D * h
    assert counts["moe"] == {
        "brain": {
            "n_experts": e,
            "top_k": k,
            "total": LAYERS * (router + e * expert),
            "activated": LAYERS * (router + k * expert),
        }
    }
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["per_modality"]["brain"] < counts["per_modality_stored"]["brain"]
    assert counts["per_modality_stored"]["brain"] - counts["per_modality"]["brain"] == LAYERS * (e - k) * expert
    for m in ("gene", "behaviour"):
        assert counts["per_modality"][m] == counts["per_modality_stored"][m]


def test_measured_flops_evaluate_every_expert():
    model = make(moe=MOE, ffn_hidden_dims=WIDTHS)
    flops = training_flops(model, LAYOUT, batch_size=2)
    e, h = 4, 24
    ffn = {"gene": 6 * D * 40, "brain": 2 * D * e + e * 6 * D * h, "behaviour": 6 * D * 96}  # per token
    per_layer = LAYOUT.seq_len * (8 * D * D + 4 * LAYOUT.seq_len * D) + sum(
        n * ffn[m] for m, n in LAYOUT.as_dict().items()
    )
    assert flops["forward"] == 2 * LAYERS * per_layer
    activated_brain = 2 * D * e + 2 * 6 * D * h
    assert ffn["brain"] > activated_brain  # dense expert evaluation costs more than the activated experts


# -------------------------------------------------------------------------------------------------- warm start
def test_dense_warm_start_into_moe_tower_reproduces_dense_output():
    dense = make(seed=0, untie=())
    mot = make(seed=1, moe={"brain": {"n_experts": 3, "top_k": 2}}, qk_norm=False)
    x = tokens()
    present = random_present()
    assert not torch.allclose(mot(x, LAYOUT, present), dense(x, LAYOUT, present), atol=1e-3)
    mot.load_towers_from(dense)
    torch.testing.assert_close(mot(x, LAYOUT, present), dense(x, LAYOUT, present), rtol=1e-5, atol=1e-6)
    ids = LAYOUT.modality_ids(MODALITIES).expand(4, -1)
    torch.testing.assert_close(mot(x, ids, present), dense(x, ids, present), rtol=1e-5, atol=1e-6)
    # MoE -> MoE of the same shape copies routers and experts
    other = make(seed=2, moe={"brain": {"n_experts": 3, "top_k": 2}})
    other.load_towers_from(mot)
    torch.testing.assert_close(other(x, LAYOUT, present), mot(x, LAYOUT, present))


def test_warm_start_refuses_mismatched_ffns():
    dense = make(untie=())
    with pytest.raises(ValueError, match="width"):
        make(moe={"brain": {"n_experts": 3, "hidden_dim": 24}}).load_towers_from(dense)
    with pytest.raises(ValueError, match="cannot warm start"):
        make(ffn_hidden_dims={"gene": 40}).load_towers_from(dense)
    with pytest.raises(ValueError, match="MoESwiGLU"):
        make().load_towers_from(make(moe=MOE))
    with pytest.raises(ValueError, match="cannot warm start"):
        make(moe={"brain": {"n_experts": 2, "hidden_dim": 24}}).load_towers_from(make(moe=MOE))


# ------------------------------------------------------------------------------------------------------ no MoE
def test_aux_loss_is_zero_without_moe():
    model = make(ffn_hidden_dims=WIDTHS).train()
    assert model.aux_loss().dim() == 0 and model.aux_loss() == 0  # before any forward
    model(tokens(), LAYOUT, random_present())
    aux = model.aux_loss()
    assert aux.dim() == 0 and aux == 0
    assert model.expert_load() == {}


# ----------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(untie=("attention", "norm"), ffn_hidden_dims={"gene": 40}), "needs 'ffn' in untie"),
        (dict(ffn_hidden_dims={"eeg": 40}), "unknown FFN tower"),
        (dict(ffn_hidden_dims={"gene": 0}), ">= 1"),
        (dict(moe={"eeg": {"n_experts": 2}}), "unknown FFN tower"),
        (dict(untie=("attention",), moe={"brain": {"n_experts": 2}}), "unknown FFN tower"),
        (dict(moe={"brain": {"top_k": 2}}), "n_experts required"),
        (dict(moe={"brain": {"n_experts": 2, "experts": 2}}), "keys are"),
        (dict(moe={"brain": {"n_experts": 2, "top_k": 3}}), "top_k <= n_experts"),
        (dict(moe={"brain": {"n_experts": 2, "balance_weight": -1}}), "balance_weight"),
        (dict(ffn_hidden_dims={"brain": 40}, moe={"brain": {"n_experts": 2, "hidden_dim": 8}}), "give it once"),
    ],
)
def test_config_errors_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoTConfig(modalities=MODALITIES, dim=D, n_layers=1, n_heads=4, **kwargs)


def test_config_is_normalised_and_dense_twin_drops_tower_options():
    cfg = MoTConfig(MODALITIES, dim=D, ffn_hidden_dims=WIDTHS, moe={"brain": {"n_experts": 4}})
    assert cfg.moe == {"brain": {"n_experts": 4, "top_k": 2, "hidden_dim": None, "balance_weight": 0.01}}
    assert MoTConfig(MODALITIES, moe={"brain": {"n_experts": 1}}).moe["brain"]["top_k"] == 1
    assert cfg.ffn_width("gene") == 40 and cfg.ffn_width("brain") == cfg.ffn_hidden_dim
    assert MoTConfig(**{f: getattr(cfg, f) for f in ("modalities", "dim", "ffn_hidden_dims", "moe")}) == cfg
    dense = cfg.dense()
    assert dense.is_dense and dense.ffn_hidden_dims is None and dense.moe is None
    shared = MoTConfig(MODALITIES, dim=D, untie=(), moe={"shared": {"n_experts": 2}})
    assert shared.dense().moe == shared.moe


# ------------------------------------------------------------------------------------------------------ encoder
def test_encoder_passes_widths_and_moe_through_and_round_trips():
    specs = [ModalitySpec("gene", n_tokens=6, n_features=2), ModalitySpec("brain", n_tokens=4, n_features=3)]
    cfg = EncoderConfig(
        modalities=specs,
        dim=16,
        n_layers=2,
        n_heads=2,
        ffn_hidden_dims={"gene": 24},
        moe={"brain": {"n_experts": 3, "top_k": 2}},
    )
    backbone_cfg = cfg.backbone_config()
    assert backbone_cfg.ffn_hidden_dims == {"gene": 24}
    assert backbone_cfg.moe["brain"]["n_experts"] == 3
    d = cfg.to_dict()
    restored = EncoderConfig.from_dict(json.loads(json.dumps(d)))
    assert restored.to_dict() == d and restored.backbone_config() == backbone_cfg
    torch.manual_seed(0)
    encoder = NeuroOmicsEncoder(cfg)
    batch = {"values": {"gene": torch.randn(3, 6, 2), "brain": torch.randn(3, 4, 3)}}
    out = encoder(batch)
    assert torch.isfinite(out.hidden).all()
    assert encoder.backbone.aux_loss() > 0
    assert set(encoder.backbone.expert_load()) == {"block0.brain", "block1.brain"}
