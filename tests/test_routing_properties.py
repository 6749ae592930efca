"""Property-based tests (hypothesis) of MoT routing: the equivalences of the foundation issue hold for
random layouts, modality names and orders, paddings, presence masks and model variants.

What is drawn: 1-4 modalities with random identifier names, in random orders; tokens per modality
(0 for some, never all); batch size; padding tokens (``PAD_ID``) at random places; presence masks with
whole subjects or whole modalities absent; causal or not; QK-norm; the untied parts (any subset of
attention/ffn/norm); tower groupings and tower names; norm placement. Dims are tiny (8-16, 1-2 layers), so
one example takes milliseconds. Weights are redrawn at scale ~1 (norm weights around 1, not all equal),
so that every tower computes something visibly its own: with the default 0.02 init the network is
nearly the identity and a token routed to the wrong tower would hide below float32 tolerance.

Reproducibility: every test runs under ``PROFILE``: ``derandomize=True`` (examples come from a hash of
the test, not from a random seed) and ``database=None`` (no failing examples are saved or replayed;
Hypothesis still caches character tables in ``.hypothesis/``, which it gitignores). CI then checks the
same examples on every run and every machine (for one Hypothesis version), a red CI run fails the same
way on a laptop, and the outcome never depends on what an earlier run saved. Hypothesis prints the shrunk
failing example. For a deeper search locally, raise the example counts with the environment variable
``MOT_NEURO_PROPERTY_SCALE`` (e.g. ``MOT_NEURO_PROPERTY_SCALE=20``); derandomized runs with more
examples explore further.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace

import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from mot_neuro.model import PAD_ID, PARTS, ModalityLayout, MoTBackbone, MoTConfig
from mot_neuro.model.layout import check_modality_names
from mot_neuro.model.reference import MaskRoutedMoT

PROFILE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SCALE = float(os.environ.get("MOT_NEURO_PROPERTY_SCALE", "1"))


def examples(n: int) -> settings:
    return settings(PROFILE, max_examples=max(1, round(n * SCALE)))


TOL = dict(rtol=2e-5, atol=2e-5)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, **TOL)


# ----------------------------------------------------------------------------------------- strategies
def usable(name: str) -> bool:
    try:
        check_modality_names([name])
    except ValueError:
        return False
    return True


IDENTIFIERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True).filter(usable)
UNTIE = [tuple(p for i, p in enumerate(PARTS) if mask >> i & 1) for mask in range(2**3)]  # every subset


@st.composite
def model_configs(draw, *, causal=None, reference=False) -> MoTConfig:
    """A small MoTConfig: random names, order, towers and variant. ``reference``: only the published
    reference's variant (output norms, every part untied, no QK norm); ``tests/test_mot_spec.py`` checks
    every variant against the specification."""
    n = draw(st.integers(1, 4))
    names = draw(st.lists(IDENTIFIERS, min_size=n, max_size=n, unique=True))
    # Tower grouping: group[i] says which tower modality i uses; tower names may reuse modality names.
    group = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    pool = list(dict.fromkeys(names + draw(st.lists(IDENTIFIERS, min_size=n, max_size=n))))
    tower_names = draw(st.permutations(pool))[:n]
    n_heads = draw(st.sampled_from([1, 2, 4]))
    if reference:
        untie, placement, qk_norm, causal = PARTS, "output", False, False
    else:
        untie = draw(st.sampled_from(UNTIE))
        placement = draw(st.sampled_from(["pre", "output"]))
        qk_norm = draw(st.booleans())
        causal = draw(st.booleans()) if causal is None else causal
    event(f"{n} modalities, {len(set(group))} towers")
    event(f"untie={'+'.join(untie) or 'none'}")
    return MoTConfig(
        modalities=names,
        dim=draw(st.sampled_from([8, 12, 16])),
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads,
        ffn_hidden_dim=draw(st.sampled_from([4, 16, 24])),
        untie=untie,
        towers={m: tower_names[g] for m, g in zip(names, group, strict=True)},
        norm_placement=placement,
        qk_norm=qk_norm,
        causal=causal,
    )


@st.composite
def layouts(draw, modalities) -> ModalityLayout:
    """Some of the model's modalities in a random order, 0-4 tokens each, at least one token in all."""
    order = draw(st.permutations(modalities))
    order = order[: draw(st.integers(1, len(order)))]
    counts = draw(st.lists(st.integers(0, 4), min_size=len(order), max_size=len(order)))
    if not any(counts):
        counts[draw(st.integers(0, len(order) - 1))] = draw(st.integers(1, 4))
    event(
        f"layout: {'model order' if list(order) == list(modalities) else 'other order'}, {len(order)} of "
        f"{len(modalities)} modalities, {'some' if 0 in counts else 'no'} zero counts"
    )
    return ModalityLayout(tuple(order), tuple(counts))


@st.composite
def presence(draw, ids: torch.Tensor, allow_none: bool = True) -> torch.Tensor | None:
    """``[B, S]`` present mask: random tokens, whole subjects and whole (subject, modality) blocks absent."""
    if allow_none and draw(st.booleans()):
        return None
    batch, seq = ids.shape

    def absent(size: int) -> torch.Tensor:  # True 1 time in 4; shrinks towards False (present)
        return torch.tensor(draw(st.lists(st.sampled_from([False, False, False, True]), min_size=size, max_size=size)))

    n_mod = int(ids.max()) + 1 if bool((ids >= 0).any()) else 1
    block_absent = absent(batch * n_mod).view(batch, n_mod).gather(1, ids.clamp_min(0))
    present = ~absent(batch * seq).view(batch, seq) & ~absent(batch)[:, None] & ~block_absent
    event(f"present: {'a subject fully absent' if (~present).all(1).any() else 'no subject fully absent'}")
    return present


def random_ids(draw, n_modalities: int, batch: int, seq: int, pad: bool) -> torch.Tensor:
    low = PAD_ID if pad else 0
    values = draw(st.lists(st.integers(low, n_modalities - 1), min_size=batch * seq, max_size=batch * seq))
    return torch.tensor(values, dtype=torch.long).view(batch, seq)


def permutations(draw, batch: int, seq: int, shared: bool) -> torch.Tensor:
    """``[B, S]`` token orders: one for every subject, or the same for all (``shared``)."""
    if shared:
        return torch.tensor(draw(st.permutations(range(seq))), dtype=torch.long).expand(batch, seq)
    return torch.tensor([draw(st.permutations(range(seq))) for _ in range(batch)], dtype=torch.long)


def take(t: torch.Tensor | None, order: torch.Tensor) -> torch.Tensor | None:
    """Reorder the tokens of a ``[B, S, ...]`` tensor, subject by subject."""
    if t is None:
        return None
    index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
    return t.gather(1, index)


# -------------------------------------------------------------------------------------------- helpers
def build(cfg: MoTConfig, seed: int) -> MoTBackbone:
    """A backbone in eval mode whose every tower is drawn independently at scale ~1."""
    model = MoTBackbone(cfg).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # RMSNorm weights: around 1, different per tower
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
    return model


def tokens(batch: int, seq: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, seq, dim, generator=torch.Generator().manual_seed(seed))


SEEDS = st.integers(0, 2**16)
BATCH = st.integers(1, 3)


# ------------------------------------------------------------------------------------------ properties
@examples(60)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seed=SEEDS)
def test_fixed_layout_equals_general_path_and_mask_list_in_any_token_order(data, cfg, batch, seed):
    """Fixed layout == ids == list of masks; for bidirectional attention also with the tokens (and their
    ids and presence) shuffled, differently per subject, as any general routing may place them."""
    model = build(cfg, seed)
    layout = data.draw(layouts(cfg.modalities), label="layout")
    seq = layout.seq_len
    x = tokens(batch, seq, cfg.dim, seed + 1)
    ids = layout.modality_ids(cfg.modalities).expand(batch, seq)
    present = data.draw(presence(ids), label="present")
    fixed = model(x, layout, present)
    assert torch.isfinite(fixed).all()

    shared = data.draw(st.booleans(), label="same order for every subject")
    order = permutations(data.draw, batch, seq, shared) if not cfg.causal else torch.arange(seq).expand(batch, seq)
    x_p, ids_p, present_p = take(x, order), take(ids, order), take(present, order)
    if shared:  # ids [S] and masks [S] are broadcast over the batch
        ids_p = ids_p[0]
    expected = take(fixed, order)
    assert_close(model(x_p, ids_p, present_p), expected)
    assert_close(model(x_p, [ids_p == i for i in range(len(cfg.modalities))], present_p), expected)


@examples(30)
@given(data=st.data(), cfg=model_configs(reference=True), batch=BATCH, seed=SEEDS)
def test_boolean_mask_reference_agrees_in_any_token_order(data, cfg, batch, seed):
    """The published reference's routing (``x[mask]`` at every projection), as written in the executable
    specification :mod:`mot_neuro.model.reference`, computes what the backbone computes, for any interleaving
    of the modalities and any tower grouping."""
    model = build(cfg, seed)
    layout = data.draw(layouts(cfg.modalities), label="layout")
    seq = layout.seq_len
    x = tokens(batch, seq, cfg.dim, seed + 1)
    ids = layout.modality_ids(cfg.modalities).expand(batch, seq)
    order = permutations(data.draw, batch, seq, shared=False)
    reference = MaskRoutedMoT.from_backbone(model)
    ids_p = take(ids, order)
    masks = [ids_p == i for i in range(len(cfg.modalities))]
    with torch.no_grad():
        assert_close(reference(take(x, order), masks), take(model(x, layout), order))


@examples(60)
@given(data=st.data(), cfg=model_configs(causal=False), batch=BATCH, seq=st.integers(1, 12), seed=SEEDS)
def test_permuting_tokens_with_their_ids_permutes_outputs(data, cfg, batch, seq, seed):
    """Bidirectional attention has no notion of position: reordering tokens together with their ids,
    padding and presence reorders the outputs the same way."""
    model = build(cfg, seed)
    ids = random_ids(data.draw, len(cfg.modalities), batch, seq, pad=True)
    present = data.draw(presence(ids), label="present")
    x = tokens(batch, seq, cfg.dim, seed + 1)
    order = permutations(data.draw, batch, seq, shared=data.draw(st.booleans(), label="shared order"))
    out = model(x, ids, present)
    assert_close(model(take(x, order), take(ids, order), take(present, order)), take(out, order))


@examples(60)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seq=st.integers(1, 10), seed=SEEDS)
def test_padding_anywhere_does_not_change_real_tokens(data, cfg, batch, seq, seed):
    """Inserting PAD_ID tokens holding garbage, at any places (different per subject), leaves the real
    tokens' outputs as they were (causal too: the real tokens keep their order) and the padding unchanged."""
    model = build(cfg, seed)
    ids = random_ids(data.draw, len(cfg.modalities), batch, seq, pad=data.draw(st.booleans(), label="pad in base"))
    present = data.draw(presence(ids), label="present")
    x = tokens(batch, seq, cfg.dim, seed + 1)
    base = model(x, ids, present)

    n_pad = data.draw(st.integers(1, 5), label="padding tokens per subject")
    rows = []  # per subject: source token index, or -1 for an inserted padding token
    for _ in range(batch):
        row = list(range(seq))
        for where in data.draw(st.lists(st.integers(0, seq), min_size=n_pad, max_size=n_pad), label="pad places"):
            row.insert(where, -1)
        rows.append(row)
    source = torch.tensor(rows)
    real = source >= 0
    garbage = 1e3 * tokens(batch, seq + n_pad, cfg.dim, seed + 2)
    padded_x = torch.where(real[..., None], take(x, source.clamp_min(0)), garbage)
    padded_ids = torch.where(real, take(ids, source.clamp_min(0)), PAD_ID)
    padded_present = None if present is None else take(present, source.clamp_min(0)) | ~real
    padded = model(padded_x, padded_ids, padded_present)

    assert_close(padded[real].view(batch, seq, -1), base)
    torch.testing.assert_close(padded[~real], padded_x[~real], rtol=0, atol=0)


@examples(60)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seed=SEEDS, fixed=st.booleans())
def test_absent_tokens_values_do_not_reach_present_tokens(data, cfg, batch, seed, fixed):
    """Absent (and padding) tokens neither attend nor are attended: changing their values changes no
    present token's output, and they come out equal to their input -- in both routing paths."""
    model = build(cfg, seed)
    if fixed:
        layout = data.draw(layouts(cfg.modalities), label="layout")
        routing = layout
        ids = layout.modality_ids(cfg.modalities).expand(batch, -1)
    else:
        ids = random_ids(data.draw, len(cfg.modalities), batch, data.draw(st.integers(1, 12), label="seq"), pad=True)
        routing = ids
    present = data.draw(presence(ids, allow_none=False), label="present")
    real = present & (ids != PAD_ID)
    x = tokens(batch, ids.shape[1], cfg.dim, seed + 1)
    changed = torch.where(real[..., None], x, 50 * tokens(batch, ids.shape[1], cfg.dim, seed + 2))
    out, out_changed = model(x, routing, present), model(changed, routing, present)
    assert torch.isfinite(out).all() and torch.isfinite(out_changed).all()
    assert_close(out_changed[real], out[real])
    torch.testing.assert_close(out_changed[~real], changed[~real], rtol=0, atol=0)


def routings(draw, cfg: MoTConfig, batch: int):
    """A fixed layout (with its ids) or random ids with padding, and a presence mask."""
    if draw(st.booleans()):
        layout = draw(layouts(cfg.modalities))
        ids = layout.modality_ids(cfg.modalities).expand(batch, -1)
        routing = layout
    else:
        ids = random_ids(draw, len(cfg.modalities), batch, draw(st.integers(1, 10)), pad=True)
        routing = ids
    return routing, ids, draw(presence(ids))


@examples(40)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seed=SEEDS)
def test_mot_whose_towers_are_copies_of_one_set_equals_dense(data, cfg, batch, seed):
    """Warm-started from a dense model, every tower holds the dense set: MoT then computes dense."""
    dense = build(replace(cfg, untie=()), seed)
    mot = build(cfg, seed + 7)
    mot.load_towers_from(dense)
    routing, ids, present = routings(data.draw, cfg, batch)
    x = tokens(batch, ids.shape[1], cfg.dim, seed + 1)
    assert_close(mot(x, routing, present), dense(x, routing, present))


@examples(30)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seed=SEEDS, tower=IDENTIFIERS)
def test_one_tower_for_all_modalities_is_dense(data, cfg, batch, seed, tower):
    """All modalities in one tower (any name, any untied parts) has dense's parameters and function."""
    one = build(replace(cfg, towers={m: tower for m in cfg.modalities}), seed)
    dense = build(replace(cfg, untie=()), seed + 7)
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in dense.parameters())
    one.load_towers_from(dense)
    routing, ids, present = routings(data.draw, cfg, batch)
    x = tokens(batch, ids.shape[1], cfg.dim, seed + 1)
    assert_close(one(x, routing, present), dense(x, routing, present))


@examples(30)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seed=SEEDS)
def test_one_tower_per_modality_is_mot_whatever_the_tower_names(data, cfg, batch, seed):
    """Towers named anything -- other modalities' names included, e.g. a<->b swapped -- are plain MoT."""
    n = len(cfg.modalities)
    pool = list(dict.fromkeys([*cfg.modalities, *data.draw(st.lists(IDENTIFIERS, min_size=n, max_size=n))]))
    names = data.draw(st.permutations(pool), label="tower names")[:n]
    mot = build(replace(cfg, towers=None), seed)
    named = build(replace(cfg, towers=dict(zip(cfg.modalities, names, strict=True))), seed + 7)
    assert sum(p.numel() for p in named.parameters()) == sum(p.numel() for p in mot.parameters())
    named.load_towers_from(mot)
    routing, ids, present = routings(data.draw, cfg, batch)
    x = tokens(batch, ids.shape[1], cfg.dim, seed + 1)
    assert_close(named(x, routing, present), mot(x, routing, present))


@examples(60)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seed=SEEDS)
def test_loss_on_one_modality_reaches_only_its_ffn_in_the_last_block(data, cfg, batch, seed):
    """A loss on one modality's outputs sends gradient to that modality's FFN tower in the last block
    and exactly zero (never None) to every other FFN tower of that block."""
    model = build(cfg, seed).train()
    routing, ids, present = routings(data.draw, cfg, batch)
    real = ids != PAD_ID if present is None else present & (ids != PAD_ID)
    candidates = sorted({int(i) for i in ids[real].tolist()})
    assume(candidates)  # at least one present token to put a loss on
    target = data.draw(st.sampled_from(candidates), label="modality of the loss")
    x = tokens(batch, ids.shape[1], cfg.dim, seed + 1)
    out = model(x, routing, present)
    weights = tokens(batch, ids.shape[1], cfg.dim, seed + 2)
    (out * weights)[real & (ids == target)].sum().backward()

    own = cfg.tower("ffn", cfg.modalities[target])
    for tower, ffn in model.blocks[-1].ffn.items():
        grads = [p.grad for p in ffn.parameters()]
        assert all(g is not None for g in grads), f"FFN tower {tower!r} got no gradient at all"
        if tower == own:
            assert all(torch.count_nonzero(g) > 0 for g in grads), f"own FFN tower {tower!r} got no gradient"
        else:
            assert all(torch.count_nonzero(g) == 0 for g in grads), f"gradient leaked into FFN tower {tower!r}"


# -------------------------------------------------------------------------------------------- names
ODD_NAMES = st.one_of(
    IDENTIFIERS,
    st.sampled_from(sorted(n for n in dir(nn.ModuleDict()) if n.isidentifier())),  # e.g. "training", "values"
    st.builds(lambda n, tail: n + tail, IDENTIFIERS, st.sampled_from(["\n", ".x", "-x", " ", "\u00e9"])),
    st.text(max_size=6),
)


@examples(80)
@given(names=st.lists(ODD_NAMES, min_size=1, max_size=3, unique=True), tower=ODD_NAMES)
def test_accepted_names_are_plain_identifiers_and_build_a_working_model(names, tower):
    """Names become parameter keys. The config either refuses a name with a ValueError that quotes it,
    or the name is a plain ASCII identifier and the model builds and runs, as modality and as tower."""
    try:
        cfg = MoTConfig(names, dim=8, n_layers=1, n_heads=2, towers={m: tower for m in names})
    except ValueError as error:
        assert any(repr(n) in str(error) for n in [*names, tower]), str(error)
        return
    for name in [*names, tower]:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"{name!r} was accepted"
    model = MoTBackbone(cfg)
    layout = ModalityLayout(tuple(names), (1,) * len(names))
    assert torch.isfinite(model(torch.randn(1, len(names), 8), layout)).all()
