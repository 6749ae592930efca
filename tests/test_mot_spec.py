"""MoTBackbone computes its executable specification, :mod:`mot_neuro.model.reference` (the paper's
per-modality equations written with boolean masks), with the same weights, in fp32 at tight tolerance.

Covered: both norm placements, QK-norm on and off, causal or not, padding and absent tokens (whole subjects
too), towers shared by several modalities, tied parts (dense twin), per-tower FFN widths, the fixed-layout
and the general (ids) paths, modalities interleaved in any order. Weights are drawn at scale ~1 and every
tower differently (``build``), so a token routed to the wrong tower shows far above the tolerance; the
sensitivity test checks that.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_routing_properties import BATCH, SEEDS, build, examples, model_configs, presence, random_ids, tokens

from mot_neuro.model import PAD_ID, ModalityLayout, MoTConfig
from mot_neuro.model.reference import MaskRoutedMoT

# float32 with other reduction orders (thread counts differ between runs): 1e-5 was crossed by 1.1e-5 once;
# a routing error moves outputs by 1e-2 and more (test_specification_notices_a_token_routed_to_the_wrong_tower)
TOL = dict(rtol=1e-4, atol=1e-4)
MODALITIES = ("gene", "brain", "behaviour")
LAYOUT = ModalityLayout(("brain", "gene", "behaviour"), (5, 3, 4))  # not the model's order
GROUPINGS = {
    "own towers": None,
    "two modalities share a tower": {"gene": "omics", "brain": "brain", "behaviour": "omics"},
}


def masks_of(ids: torch.Tensor, n: int = len(MODALITIES)) -> list[torch.Tensor]:
    return [ids == i for i in range(n)]


def batch_with_padding_and_absence(seed: int, batch: int = 3):
    generator = torch.Generator().manual_seed(seed)
    ids = LAYOUT.modality_ids(MODALITIES).expand(batch, -1).clone()
    ids[1, [2, 7]] = PAD_ID
    present = torch.rand(batch, LAYOUT.seq_len, generator=generator) > 0.25
    present[-1] = False  # a subject with nothing present
    return tokens(batch, LAYOUT.seq_len, 16, seed), ids, present


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("placement", ["pre", "output"])
def test_backbone_equals_specification(placement, qk_norm, grouping):
    cfg = MoTConfig(
        MODALITIES, dim=16, n_layers=2, n_heads=2, norm_placement=placement, qk_norm=qk_norm, towers=GROUPINGS[grouping]
    )
    model = build(cfg, seed=1)
    spec = MaskRoutedMoT.from_backbone(model)
    x, ids, present = batch_with_padding_and_absence(seed=2)
    fixed_ids = LAYOUT.modality_ids(MODALITIES).expand(len(x), -1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, LAYOUT), spec(x, masks_of(fixed_ids)), **TOL)
        torch.testing.assert_close(model(x, LAYOUT, present), spec(x, masks_of(fixed_ids), present), **TOL)
        torch.testing.assert_close(model(x, ids, present), spec(x, masks_of(ids), present), **TOL)
        torch.testing.assert_close(model(x, masks_of(ids)), spec(x, masks_of(ids)), **TOL)
        out = spec(x, masks_of(ids), present)
    untouched = ~present | (ids == PAD_ID)
    assert torch.equal(out[untouched], x[untouched])  # absent and padding tokens come out as they went in


@pytest.mark.parametrize(
    "overrides",
    [{"untie": ()}, {"untie": ("ffn",)}, {"causal": True}, {"ffn_hidden_dims": {"gene": 8, "behaviour": 24}}],
)
def test_backbone_equals_specification_for_other_variants(overrides):
    cfg = MoTConfig(MODALITIES, dim=16, n_layers=2, n_heads=4, norm_placement="pre", qk_norm=True, **overrides)
    model = build(cfg, seed=3)
    spec = MaskRoutedMoT.from_backbone(model)
    x, ids, present = batch_with_padding_and_absence(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(x, ids, present), spec(x, masks_of(ids), present), **TOL)


def test_specification_notices_a_token_routed_to_the_wrong_tower():
    """The comparison has teeth: swapping two modalities' parameters in the specification breaks it."""
    model = build(MoTConfig(MODALITIES, dim=16, n_layers=1, n_heads=2, ffn_hidden_dim=16), seed=5)
    spec = MaskRoutedMoT.from_backbone(model)
    x, ids, _ = batch_with_padding_and_absence(seed=6)
    for name in ("wq", "wo", "attn_norm", "w_down"):
        modules = getattr(spec.blocks[0], name)
        modules[0], modules[1] = modules[1], modules[0]
    with torch.no_grad():
        assert not torch.allclose(model(x, ids), spec(x, masks_of(ids)), atol=1e-2)


def test_specification_refuses_what_it_does_not_cover():
    model = build(MoTConfig(MODALITIES, dim=16, n_layers=1, n_heads=2, moe={"brain": {"n_experts": 2}}), seed=7)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        MaskRoutedMoT.from_backbone(model)
    spec = MaskRoutedMoT(16, 1, 2, 16, 3, norm_placement="pre")
    with pytest.raises(ValueError, match="norm_placement"):
        spec.copy_from(build(MoTConfig(MODALITIES, dim=16, n_layers=1, n_heads=2, norm_placement="output"), seed=8))


@examples(40)
@given(data=st.data(), cfg=model_configs(), batch=BATCH, seq=st.integers(1, 10), seed=SEEDS)
def test_backbone_equals_specification_for_random_configs_and_routings(data, cfg, batch, seq, seed):
    """Any config (placement, QK-norm, causal, untied parts, tower grouping), ids interleaved at random with
    padding, any presence: the general path equals the specification; so does the fixed layout path."""
    model = build(cfg, seed)
    spec = MaskRoutedMoT.from_backbone(model)
    n = len(cfg.modalities)
    ids = random_ids(data.draw, n, batch, seq, pad=True)
    present = data.draw(presence(ids), label="present")
    x = tokens(batch, seq, cfg.dim, seed + 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x, ids, present), spec(x, masks_of(ids, n), present), **TOL)
        layout = ModalityLayout(cfg.modalities, tuple(1 + i for i in range(n)))
        fixed_ids = layout.modality_ids(cfg.modalities).expand(batch, -1)
        x = tokens(batch, layout.seq_len, cfg.dim, seed + 2)
        torch.testing.assert_close(model(x, layout), spec(x, masks_of(fixed_ids, n)), **TOL)
