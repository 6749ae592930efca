"""Behaviour of the MoT backbone and its dense twin (pure torch)."""

from __future__ import annotations

import pytest
import torch
from op_log import OpLog

from mot_neuro.model import PAD_ID, ModalityLayout, MoTBackbone, MoTConfig, masks_to_ids

MODALITIES = ("gene", "brain", "behaviour")
LAYOUT = ModalityLayout.from_counts({"gene": 5, "brain": 7, "behaviour": 3})


def make(seed: int = 0, **overrides) -> MoTBackbone:
    torch.manual_seed(seed)
    kwargs = dict(modalities=MODALITIES, dim=32, n_layers=2, n_heads=4)
    kwargs.update(overrides)
    return MoTBackbone(MoTConfig(**kwargs)).eval()


def tokens(batch: int = 4, seq: int = LAYOUT.seq_len, dim: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, seq, dim, generator=torch.Generator().manual_seed(seed))


def random_present(batch: int, seq: int, seed: int = 2) -> torch.Tensor:
    present = torch.rand(batch, seq, generator=torch.Generator().manual_seed(seed)) > 0.3
    present[0] = False  # a subject with no token at all must not produce NaN
    present[1, : LAYOUT.counts[0]] = False  # a subject missing the whole gene modality
    return present


VARIANTS = [
    dict(),
    dict(norm_placement="output"),
    dict(qk_norm=True),
    dict(causal=True),
    dict(causal=True, qk_norm=True, norm_placement="output"),
    dict(untie=("ffn",)),
    dict(untie=("ffn", "attention")),
    dict(towers={"gene": "gene", "brain": "imaging_behaviour", "behaviour": "imaging_behaviour"}),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "default")
@pytest.mark.parametrize("with_present", [False, True])
def test_fixed_layout_equals_general_path(variant, with_present):
    model = make(**variant)
    x = tokens()
    present = random_present(*x.shape[:2]) if with_present else None
    ids = LAYOUT.modality_ids(MODALITIES)
    fixed = model(x, LAYOUT, present)
    by_ids = model(x, ids.expand(4, -1), present)
    by_masks = model(x, [ids == i for i in range(3)], present)
    assert torch.isfinite(fixed).all()
    torch.testing.assert_close(by_ids, fixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_masks, fixed, rtol=1e-5, atol=1e-5)


def test_layout_in_another_order_than_the_model():
    model = make()
    x = tokens(seq=10)
    layout = ModalityLayout(("behaviour", "gene"), (4, 6))
    ids = layout.modality_ids(MODALITIES)
    assert ids.tolist() == [2] * 4 + [0] * 6
    torch.testing.assert_close(model(x, ids), model(x, layout), rtol=1e-5, atol=1e-5)


def test_mot_with_copied_sets_equals_dense():
    dense = make(seed=0, untie=())
    mot = make(seed=1)
    x = tokens()
    assert not torch.allclose(mot(x, LAYOUT), dense(x, LAYOUT), atol=1e-3)  # independent init differs
    mot.load_towers_from(dense)
    torch.testing.assert_close(mot(x, LAYOUT), dense(x, LAYOUT), rtol=1e-5, atol=1e-6)
    ids = LAYOUT.modality_ids(MODALITIES)
    torch.testing.assert_close(mot(x, ids), dense(x, ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["fixed", "general"])
@pytest.mark.parametrize("placement", ["pre", "output"])
def test_loss_on_one_modality_reaches_only_its_ffn_in_last_block(path, placement):
    model = make(norm_placement=placement)
    x = tokens()
    routing = LAYOUT if path == "fixed" else LAYOUT.modality_ids(MODALITIES)
    out = model(x, routing)
    out[:, LAYOUT.segment("brain")].square().mean().backward()
    last = model.blocks[-1].ffn
    assert last["brain"].w_in.weight.grad.abs().sum() > 0
    for other in ("gene", "behaviour"):
        for p in last[other].parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    # Earlier blocks' other-modality FFNs do matter: their tokens feed brain tokens through attention.
    assert model.blocks[0].ffn["gene"].w_in.weight.grad.abs().sum() > 0


def test_permuting_tokens_with_ids_and_padding_permutes_outputs():
    model = make()
    batch, seq = 3, 20
    x = tokens(batch, seq)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 3, (batch, seq), generator=g)
    ids[:, -4:] = PAD_ID
    ids[2, :3] = PAD_ID
    out = model(x, ids)
    perm = torch.randperm(seq, generator=g)
    out_perm = model(x[:, perm], ids[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_real_tokens():
    model = make()
    batch, seq = 3, 15
    x = tokens(batch, seq)
    ids = torch.randint(0, 3, (batch, seq), generator=torch.Generator().manual_seed(3))
    base = model(x, ids)
    # Append padding tokens holding garbage values.
    padded_x = torch.cat([x, 1e3 * torch.randn(batch, 6, 32)], dim=1)
    padded_ids = torch.cat([ids, torch.full((batch, 6), PAD_ID)], dim=1)
    padded = model(padded_x, padded_ids)
    torch.testing.assert_close(padded[:, :seq], base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[:, seq:], padded_x[:, seq:])  # padding passes through


@pytest.mark.parametrize("causal", [False, True])
def test_absent_tokens_neither_attend_nor_are_attended_in_fixed_layout(causal):
    model = make(causal=causal)
    x = tokens()
    present = random_present(*x.shape[:2])
    out = model(x, LAYOUT, present)
    changed = x.clone()
    changed[~present] = 50.0 * torch.randn(int((~present).sum()), 32)
    out_changed = model(changed, LAYOUT, present)
    torch.testing.assert_close(out_changed[present], out[present], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_changed[~present], changed[~present])  # input unchanged, never garbage
    assert torch.isfinite(out).all()


def test_fully_absent_subject_gives_finite_gradients():
    model = make(causal=True)
    model.train()
    x = tokens().requires_grad_()
    present = torch.ones(4, LAYOUT.seq_len, dtype=torch.bool)
    present[2] = False
    present[3, 0] = False  # first token absent under a causal mask: its row would be empty
    model(x, LAYOUT, present).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_causal_outputs_ignore_later_tokens():
    model = make(causal=True)
    x = tokens()
    out = model(x, LAYOUT)
    later = x.clone()
    later[:, 10:] = torch.randn(4, LAYOUT.seq_len - 10, 32)
    torch.testing.assert_close(model(later, LAYOUT)[:, :10], out[:, :10], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(later, LAYOUT)[:, 10:], out[:, 10:])


@pytest.mark.parametrize("routing", ["ids", "layout_without_behaviour"])
def test_modality_absent_from_batch_still_gives_every_parameter_a_gradient(routing):
    model = make().train()
    if routing == "ids":
        x = tokens(seq=12)
        ids = torch.randint(0, 2, (4, 12))  # no behaviour token anywhere
        out = model(x, ids)
    else:
        layout = ModalityLayout.from_counts({"gene": 5, "brain": 7})
        x = tokens(seq=12)
        out = model(x, layout)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert torch.count_nonzero(model.blocks[-1].ffn["behaviour"].w_in.weight.grad) == 0
    assert model.blocks[-1].ffn["gene"].w_in.weight.grad.abs().sum() > 0


def test_bf16_autocast_on_cpu():
    model = make().train()
    x = tokens()
    present = random_present(*x.shape[:2])
    reference = model(x, LAYOUT, present)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, LAYOUT, present)
        loss = out.float().square().mean()
    loss.backward()
    assert out.dtype == torch.bfloat16 or out.dtype == torch.float32
    assert torch.isfinite(out.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # bf16 has ~3 significant digits
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


INDEXING_OPS = {
    "index",
    "index_put",
    "index_put_",
    "masked_select",
    "masked_scatter",
    "nonzero",
    "gather",
    "scatter",
    "index_select",
    "index_copy",
    "index_add",
    "sort",
    "argsort",
}
HOST_SYNC_OPS = {"_local_scalar_dense", "item", "nonzero"}


def test_fixed_layout_path_has_no_indexing_and_no_host_sync():
    model = make(qk_norm=True).train()
    x = tokens()
    present = random_present(*x.shape[:2])
    with OpLog() as log:
        model(x, LAYOUT, present).square().mean().backward()
    assert log.ops["mm"] > 0  # the log did see the computation
    assert not (set(log.ops) & (INDEXING_OPS | HOST_SYNC_OPS)), sorted(set(log.ops) & (INDEXING_OPS | HOST_SYNC_OPS))


def test_general_path_groups_once_per_forward():
    """Sort once, then two index ops per layer (into and out of attention), none per projection."""
    n_layers = 3
    model = make(n_layers=n_layers)
    x = tokens()
    ids = LAYOUT.modality_ids(MODALITIES).expand(4, -1)
    with OpLog() as log:
        model(x, ids)
    assert log.ops["sort"] == 1
    assert log.ops["index_select"] == 1 + n_layers  # enter the stream, then attention output per layer
    assert log.ops["index_copy"] == 1 + n_layers  # leave the stream, then attention input per layer
    assert not {"index", "index_put", "masked_select", "nonzero"} & set(log.ops)


def test_dense_and_mot_flops_are_equal_and_match_the_formula():
    from mot_neuro.model import training_flops

    mot, dense = make(), make(untie=())
    f_mot, f_dense = training_flops(mot, LAYOUT, batch_size=2), training_flops(dense, LAYOUT, batch_size=2)
    assert f_mot == f_dense
    d, h, s, layers = 32, mot.cfg.ffn_hidden_dim, LAYOUT.seq_len, 2
    projections = layers * (2 * d * 3 * d + 2 * d * d + 2 * d * 2 * h + 2 * h * d)
    attention = layers * 4 * s * d  # QK^T and PV
    assert f_mot["forward_per_token"] == projections + attention
    # backward: 2x forward for matmuls; flash attention also recomputes QK^T (2.5x)
    assert f_mot["training_per_token"] == 3 * projections + 3.5 * attention


def test_parameter_counts():
    from mot_neuro.model import count_parameters

    dense = count_parameters(make(untie=()))
    mot = count_parameters(make())
    assert mot["total"] == 3 * dense["total"]
    assert mot["per_modality"] == {m: dense["total"] for m in MODALITIES}
    ffn_only = count_parameters(make(untie=("ffn",)))
    assert ffn_only["total"] == dense["total"] + 2 * dense["per_part"]["ffn"]
    grouped = count_parameters(make(towers={"gene": "g", "brain": "bb", "behaviour": "bb"}))
    assert grouped["total"] == 2 * dense["total"]


def test_one_tower_for_all_is_dense():
    one = make(seed=3, towers={m: "all" for m in MODALITIES})
    dense = make(seed=4, untie=())
    one.load_towers_from(dense)
    x = tokens()
    torch.testing.assert_close(one(x, LAYOUT), dense(x, LAYOUT))
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in dense.parameters())


def test_one_tower_per_modality_is_mot_whatever_the_tower_names():
    named = make(seed=5, towers={m: f"tower_{m}" for m in MODALITIES})
    mot = make(seed=6)
    named.load_towers_from(mot)  # each named tower maps to one of mot's per-modality towers
    x = tokens()
    torch.testing.assert_close(named(x, LAYOUT), mot(x, LAYOUT))
    assert sum(p.numel() for p in named.parameters()) == sum(p.numel() for p in mot.parameters())


def test_depth_scaled_init():
    model = make(n_layers=12, dim=64)
    qkv = model.blocks[0].qkv["gene"].weight
    out = model.blocks[0].attn_out["gene"].weight
    ffn_out = model.blocks[5].ffn["brain"].w_out.weight
    assert abs(qkv.std().item() - 0.02) < 0.002
    expected = 0.02 / (2 * 12) ** 0.5
    assert abs(out.std().item() - expected) < 0.15 * expected
    assert abs(ffn_out.std().item() - expected) < 0.15 * expected
    # towers are drawn independently
    assert not torch.equal(model.blocks[0].qkv["gene"].weight, model.blocks[0].qkv["brain"].weight)


def test_deep_stack_keeps_activations_bounded():
    model = make(n_layers=48, dim=64)
    x = tokens(dim=64)
    out = model(x, LAYOUT)
    assert torch.isfinite(out).all()
    assert out.std() < 10 * x.std()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(untie=("ffn", "mlp")), "unknown part"),
        (dict(dim=30, n_heads=4), "divisible"),
        (dict(towers={"gene": "g"}), "missing"),
        (dict(modalities=("gene", "gene")), "unique"),
        (dict(modalities=("gene", "brain-mri")), "not usable"),
        (dict(norm_placement="post"), "norm_placement"),
    ],
)
def test_config_errors_say_what_is_wrong(kwargs, message):
    base = dict(modalities=MODALITIES, dim=32, n_layers=1, n_heads=4)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MoTConfig(**base)


def test_routing_errors_say_what_is_wrong():
    model = make()
    with pytest.raises(ValueError, match="has 15 tokens, input has 14"):
        model(tokens(seq=14), LAYOUT)
    with pytest.raises(ValueError, match="not among the model"):
        model(tokens(seq=4), ModalityLayout(("gene", "eeg"), (2, 2)))
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        model(tokens(seq=3), torch.tensor([[0, 1, 7]]).expand(4, -1))
    with pytest.raises(ValueError, match="more than one modality mask"):
        masks_to_ids([torch.tensor([True, False]), torch.tensor([True, True])])
    with pytest.raises(ValueError, match=">= 0"):
        ModalityLayout(("gene",), (-1,))


def test_warm_start_refuses_incompatible_sources():
    mot = make()
    with pytest.raises(ValueError, match="dim"):
        mot.load_towers_from(make(dim=64, untie=()))
    dense = make(modalities=("gene", "brain"), untie=())
    with pytest.raises(ValueError, match="no modality"):
        mot.load_towers_from(dense)
    # MoT -> dense would have to pick one of three modality sets for the shared one
    with pytest.raises(ValueError, match="several source sets"):
        make(untie=()).load_towers_from(mot)
