"""Cross-modal attention read out of the backbone (:mod:`mot_neuro.model.attention_maps`): the recorded
probabilities are the ones attention used, recording changes nothing, and the modality aggregations and
rollout compute what they say."""

from __future__ import annotations

import math

import pytest
import torch
from op_log import OpLog

from mot_neuro.model import (
    PAD_ID,
    EncoderConfig,
    ModalityLayout,
    ModalitySpec,
    MoTBackbone,
    MoTConfig,
    NeuroOmicsEncoder,
    dense_twin_config,
)
from mot_neuro.model.attention_maps import attention_rollout, modality_attention, record_attention

MODALITIES = ("gene", "brain", "behaviour")
LAYOUT = ModalityLayout(("brain", "gene", "behaviour"), (4, 3, 3))  # not the model's order
DIM, HEADS, LAYERS = 16, 2, 2
TOL = dict(rtol=1e-4, atol=1e-5)


def build(seed: int = 0, **overrides) -> MoTBackbone:
    """A backbone in eval mode with every tower drawn independently at scale ~1 (peaked, distinct attention)."""
    cfg = MoTConfig(MODALITIES, dim=DIM, n_layers=LAYERS, n_heads=HEADS, **overrides)
    model = MoTBackbone(cfg).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
    return model


def tokens(batch: int = 3, seq: int = LAYOUT.seq_len, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, seq, DIM, generator=torch.Generator().manual_seed(seed))


def absent_tokens(batch: int = 3, seq: int = LAYOUT.seq_len) -> torch.Tensor:
    present = torch.rand(batch, seq, generator=torch.Generator().manual_seed(5)) > 0.3
    present[0, 2] = False
    present[1, LAYOUT.segment("gene")] = False  # a subject without its gene tokens
    present[2] = True
    return present


VARIANTS = {
    "mot": dict(),
    "dense": dict(untie=()),
    "qk_norm, output norms": dict(qk_norm=True, norm_placement="output"),
    "causal": dict(causal=True),
    "shared tower": dict(towers={"gene": "omics", "brain": "brain", "behaviour": "omics"}),
}


def run(model: MoTBackbone, path: str, x: torch.Tensor, present: torch.Tensor | None):
    """``(routing, forward output)`` on one of the routing paths: the fixed layout with tower ops, the fixed
    layout one module call per run, or the general path (modality ids)."""
    model.tower_ops = path != "fixed, per run"
    routing = LAYOUT if path.startswith("fixed") else LAYOUT.modality_ids(MODALITIES).expand(len(x), -1)
    return routing, model(x, routing, present)


PATHS = ["fixed, tower ops", "fixed, per run", "general"]


@pytest.mark.parametrize("with_absent", [False, True], ids=["all present", "absent tokens"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_recorded_probabilities_are_the_ones_attention_used(variant, path, with_absent):
    model = build(**VARIANTS[variant])
    x = tokens()
    present = absent_tokens() if with_absent else None
    with torch.no_grad(), record_attention(model, keep_values=True) as rec:
        run(model, path, x, present)
    assert rec.layers == list(range(LAYERS))
    for probs, v, out in zip(rec.probs, rec.values, rec.outputs, strict=True):
        assert probs.shape == (3, HEADS, LAYOUT.seq_len, LAYOUT.seq_len)
        assert probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), **TOL)
        # the recorded probabilities weigh the values into exactly what scaled_dot_product_attention returned
        torch.testing.assert_close(probs @ v, out, **TOL)
        if with_absent:  # no present query gives any attention to an absent key
            absent_key = present[:, None, :, None] & ~present[:, None, None, :]
            assert torch.all(probs.masked_select(absent_key) == 0)
        if VARIANTS[variant].get("causal"):  # nor to a later token
            later = torch.ones(LAYOUT.seq_len, LAYOUT.seq_len, dtype=torch.bool).triu(1)
            assert torch.all(probs[..., later] == 0)
        else:  # bidirectional and peaked: the probabilities are far from uniform, so the check above means something
            assert probs.max() > 0.5


@pytest.mark.parametrize("variant", ["mot", "dense"])
def test_every_path_records_the_same_probabilities_in_sequence_order(variant):
    """The general path sorts tokens by modality internally; the recorded matrices are in the input's order
    anyway, and equal the fixed layout's (for present queries: the rows of absent ones differ between paths,
    their outputs are discarded)."""
    model = build(**VARIANTS[variant])
    x, present = tokens(), absent_tokens()
    recorded = {}
    for path in PATHS:
        with torch.no_grad(), record_attention(model) as rec:
            run(model, path, x, present)
        recorded[path] = rec.probs
    for path in PATHS[1:]:
        for a, b in zip(recorded[PATHS[0]], recorded[path], strict=True):
            rows = present[:, None, :, None].expand_as(a)
            torch.testing.assert_close(b[rows], a[rows], **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", ["mot", "dense"])
def test_recording_leaves_the_forward_unchanged(variant, path):
    model = build(**VARIANTS[variant])
    x, present = tokens(), absent_tokens()
    x.requires_grad_(True)
    _, plain = run(model, path, x, present)
    with record_attention(model) as rec:
        _, recorded = run(model, path, x, present)
    assert torch.equal(recorded, plain)
    assert all(not p.requires_grad for p in rec.probs)  # detached by default: nothing kept for backward
    assert all(block.attention_probe is None and "attention_probe" not in vars(block) for block in model.blocks)
    # after the context the normal forward runs exactly the ops it ran before
    with OpLog() as before:
        run(model, path, x, present)
    with record_attention(model):
        pass
    with OpLog() as after:
        run(model, path, x, present)
    assert after.ops == before.ops


def test_recording_cannot_nest_and_stops_early_with_n_blocks():
    model = build()
    with record_attention(model):
        with pytest.raises(RuntimeError, match="cannot nest"):
            with record_attention(model):
                pass
    with torch.no_grad(), record_attention(model) as rec:
        model(tokens(), LAYOUT, n_blocks=1)
    assert rec.layers == [0]
    with pytest.raises(ValueError, match="no MoTBlock"):
        with record_attention(torch.nn.Linear(2, 2)):
            pass


def test_recorded_probabilities_keep_gradients_when_asked():
    model = build()
    x = tokens().requires_grad_(True)
    with record_attention(model, detach=False) as rec:
        model(x, LAYOUT)
    rec.probs[-1][:, :, 0, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- aggregations
def test_modality_attention_by_hand():
    """Three tokens ``a a b``, one subject, one head."""
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])[None, None]
    layout = ModalityLayout(("a", "b"), (2, 1))
    result = modality_attention(probs, layout)
    assert result.names == ("a", "b")
    # a's queries: token 0 gives a 0.75, b 0.25; token 1 gives a 0.2, b 0.8; b's query: a 0.6, b 0.4
    torch.testing.assert_close(result.values, torch.tensor([[[0.475, 0.525], [0.6, 0.4]]]))
    present = torch.tensor([[True, False, True]])  # an absent query is left out of its modality's average
    torch.testing.assert_close(modality_attention(probs, layout, present).values[0, 0], torch.tensor([0.75, 0.25]))
    # the same through modality ids, in another group order, with a padding token appended
    ids = torch.tensor([[1, 1, 0, PAD_ID]])
    padded = torch.nn.functional.pad(probs, (0, 1, 0, 1))
    padded[..., 3, 3] = 1.0
    by_ids = modality_attention(padded, ids, modality_names=("b", "a"))
    torch.testing.assert_close(by_ids.values, torch.tensor([[[0.4, 0.6], [0.525, 0.475]]]))


def loop_modality_attention(probs, groups, present, n_groups):
    """Direct, token by token: ``[heads, M, M]``."""
    batch, heads, seq, _ = probs.shape
    out = torch.zeros(heads, n_groups, n_groups, dtype=torch.float64)
    for h in range(heads):
        for m in range(n_groups):
            rows = [(b, i) for b in range(batch) for i in range(seq) if groups[b, i] == m and present[b, i]]
            for n in range(n_groups):
                mass = [sum(float(probs[b, h, i, j]) for j in range(seq) if groups[b, j] == n) for b, i in rows]
                out[h, m, n] = sum(mass) / len(mass)
    return out


@pytest.mark.parametrize("variant", ["mot", "dense"])
def test_modality_attention_of_a_model_matches_a_direct_computation(variant):
    model = build(**VARIANTS[variant])
    x, present = tokens(), absent_tokens()
    with torch.no_grad(), record_attention(model) as rec:
        model(x, LAYOUT, present)
    result = modality_attention(rec.probs, LAYOUT, present)
    assert result.names == LAYOUT.names
    assert result.values.shape == (LAYERS, HEADS, 3, 3)
    torch.testing.assert_close(result.values.sum(-1), torch.ones(LAYERS, HEADS, 3), **TOL)
    groups = LAYOUT.modality_ids().expand(3, -1)
    for layer, probs in enumerate(rec.probs):
        expected = loop_modality_attention(probs, groups, present, 3).float()
        torch.testing.assert_close(result.values[layer], expected, **TOL)
    # modality ids in the model's order give the same matrix with rows and columns in that order
    ids = LAYOUT.modality_ids(MODALITIES)
    by_ids = modality_attention(rec.probs, ids, present, MODALITIES)
    order = [LAYOUT.names.index(m) for m in MODALITIES]
    torch.testing.assert_close(by_ids.values, result.values[..., order, :][..., order], **TOL)


def test_rollout_by_hand():
    """Two tokens (modalities a, b), one head, two layers.

    Layer 1 ``[[1, 0], [.5, .5]]`` -> with the residual ``[[1, 0], [.25, .75]]``; layer 2 ``[[0, 1], [1, 0]]``
    -> ``[[.5, .5], [.5, .5]]``; rollout = layer 2 @ layer 1 = ``[[.625, .375], [.625, .375]]``.
    """
    layer1 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])[None, None]
    layer2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])[None, None]
    rollout = attention_rollout([layer1, layer2])
    expected = torch.tensor([[[0.625, 0.375], [0.625, 0.375]]])
    torch.testing.assert_close(rollout, expected)
    # without the residual: the plain product, layer 2 @ layer 1 = [[.5, .5], [1, 0]]
    torch.testing.assert_close(
        attention_rollout([layer1, layer2], residual=False), torch.tensor([[[0.5, 0.5], [1.0, 0]]])
    )
    # one token per modality: the modality matrix is the token matrix
    result = modality_attention(rollout, ModalityLayout(("a", "b"), (1, 1)))
    torch.testing.assert_close(result.values, expected[0])


def test_rollout_averages_heads_and_multiplies_every_layer():
    generator = torch.Generator().manual_seed(0)
    layers = [torch.rand(2, 3, 5, 5, generator=generator).softmax(-1) for _ in range(3)]
    rollout = attention_rollout(layers)
    direct = torch.eye(5).expand(2, 5, 5)
    for probs in layers:
        a = 0.5 * probs.mean(1) + 0.5 * torch.eye(5)
        direct = torch.einsum("bij,bjk->bik", a, direct)
    torch.testing.assert_close(rollout, direct)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 5))


def test_rollout_of_a_model_with_absent_tokens():
    model = build()
    x, present = tokens(), absent_tokens()
    with torch.no_grad(), record_attention(model) as rec:
        model(x, LAYOUT, present)
    rollout = attention_rollout(rec.probs, present=present)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(3, LAYOUT.seq_len), **TOL)
    # present tokens draw nothing from absent ones; absent tokens are their own input
    both = present[:, :, None] & ~present[:, None, :]
    assert torch.all(rollout[both] == 0)
    absent = ~present
    torch.testing.assert_close(rollout[absent], torch.eye(LAYOUT.seq_len).expand(3, -1, -1)[absent])
    result = modality_attention(rollout, LAYOUT, present)
    torch.testing.assert_close(result.values.sum(-1), torch.ones(3), **TOL)


def block_diagonal_model(variant: str) -> tuple[MoTBackbone, torch.Tensor]:
    """A backbone whose attention stays within each modality, and inputs that carry their modality.

    Inputs: a one-hot of the token's modality (scaled up) plus small noise. Every tower's query and key
    projections read only that one-hot, in every head, so ``q_i . k_j`` is large for two tokens of one modality
    and ~0 otherwise; the attention and FFN output projections are zero, so every layer sees the same input.
    """
    model = build(**VARIANTS[variant])
    n = len(MODALITIES)
    with torch.no_grad():
        for block in model.blocks:
            for qkv in block.qkv.values():
                q, k, _ = qkv.weight.view(3, HEADS, DIM // HEADS, DIM).unbind(0)
                for w in (q, k):
                    w.zero_()
                    w[:, :n, :n] = 3 * torch.eye(n)
                for out in block.attn_out.values():
                    out.weight.zero_()
                for ffn in block.ffn.values():
                    ffn.w_out.weight.zero_()
            for norm in block.attn_norm.values():
                norm.weight.fill_(1.0)
    ids = LAYOUT.modality_ids(MODALITIES)
    x = 0.05 * tokens()
    x[..., :n] += 4 * torch.nn.functional.one_hot(ids, n).float()
    return model, x


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("variant", ["mot", "dense"])
def test_attention_kept_within_modalities_gives_an_identity_modality_matrix(variant, path):
    model, x = block_diagonal_model(variant)
    with torch.no_grad(), record_attention(model) as rec:
        routing, _ = run(model, path, x, None)
    per_head = modality_attention(rec.probs, routing, None, LAYOUT.names)
    torch.testing.assert_close(per_head.values, torch.eye(3).expand(LAYERS, HEADS, 3, 3), atol=1e-4, rtol=0)
    rollout = modality_attention(attention_rollout(rec.probs), routing, None, LAYOUT.names)
    torch.testing.assert_close(rollout.values, torch.eye(3), atol=1e-4, rtol=0)
    # the same model with ordinary weights mixes modalities: the check above is not true of any model
    ordinary = build(**VARIANTS[variant])
    with torch.no_grad(), record_attention(ordinary) as mixed:
        ordinary(tokens(), LAYOUT)
    off_diagonal = modality_attention(mixed.probs, LAYOUT).values * (1 - torch.eye(3))
    assert off_diagonal.sum(-1).min() > 0.05


def test_summary_tokens_are_a_group_of_their_own():
    """The encoder's layout puts summary tokens first as modality ``"summary"``: they get their own row and
    column."""
    layout = ModalityLayout(("summary", "gene", "brain"), (1, 3, 4))
    model = MoTBackbone(MoTConfig(layout.names, dim=DIM, n_layers=1, n_heads=HEADS)).eval()
    x = torch.randn(2, layout.seq_len, DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), record_attention(model) as rec:
        model(x, layout)
    result = modality_attention(rec.probs, layout)
    assert result.names == ("summary", "gene", "brain")
    assert result.values.shape == (1, HEADS, 3, 3)
    torch.testing.assert_close(result.values.sum(-1), torch.ones(1, HEADS, 3), **TOL)
    # near-uniform attention at initialisation: each group gets about its share of the 8 tokens
    torch.testing.assert_close(result.values[0, 0, 0], torch.tensor([1, 3, 4]) / 8.0, atol=0.05, rtol=0)


def test_bad_inputs_say_what_is_wrong():
    probs = torch.full((1, 1, 3, 3), 1 / 3)
    with pytest.raises(ValueError, match="modality_names"):
        modality_attention(probs, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="has 2 tokens"):
        modality_attention(probs, ModalityLayout(("a", "b"), (1, 1)))
    with pytest.raises(ValueError, match="must lie in"):
        modality_attention(probs, torch.tensor([0, 1, 5]), modality_names=("a", "b"))
    with pytest.raises(ValueError, match="no attention"):
        attention_rollout([])


@pytest.mark.parametrize("dense", [False, True], ids=["mot", "dense twin"])
def test_encoder_attention_by_modality_with_its_summary_tokens(dense):
    """Recording through the encoder (MoT and its dense twin side by side): the layout and presence it
    reports give a modality matrix with the summary tokens as their own group."""
    cfg = EncoderConfig(
        modalities=[ModalitySpec("gene", n_tokens=4, n_features=1), ModalitySpec("brain", n_tokens=3, n_features=2)],
        dim=DIM,
        n_layers=LAYERS,
        n_heads=HEADS,
        n_summary_tokens=2,
    )
    torch.manual_seed(0)
    encoder = NeuroOmicsEncoder(dense_twin_config(cfg) if dense else cfg).eval()
    g = torch.Generator().manual_seed(3)
    batch = {"values": {}, "present": {}}
    for spec in cfg.modalities:
        batch["values"][spec.name] = torch.randn(3, spec.n_tokens, spec.n_features, generator=g)
        batch["present"][spec.name] = torch.rand(3, spec.n_tokens, generator=g) > 0.3
    with torch.no_grad():
        plain = encoder(batch)
        with record_attention(encoder) as rec:
            out = encoder(batch)
    assert torch.equal(out.hidden, plain.hidden)
    result = modality_attention(rec.probs, encoder.layout, out.present)
    assert result.names == ("summary", "gene", "brain")
    assert result.values.shape == (LAYERS, HEADS, 3, 3)
    torch.testing.assert_close(result.values.sum(-1), torch.ones(LAYERS, HEADS, 3), **TOL)
