"""Behaviour of the tokenizers, decoders and the NeuroOmicsEncoder (pure torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from op_log import OpLog

from mot_neuro.model import (
    SUMMARY,
    EncoderConfig,
    ModalityDecoder,
    ModalitySpec,
    ModalityTokenizer,
    NeuroOmicsEncoder,
    count_parameters,
    dense_twin_config,
    training_flops,
)

DIM = 16
GENE = ModalitySpec("gene", n_tokens=6, n_features=2)
# Brain regions with 3 feature slots; region 1 has only 2 real features, region 3 only 1.
BRAIN = ModalitySpec(
    "brain",
    n_tokens=4,
    n_features=3,
    feature_mask=((True, True, True), (True, True, False), (True, True, True), (True, False, False)),
)
# Behaviour: token 1 is a categorical measure with 3 categories (feature 0 holds the index).
BEHAVIOUR = ModalitySpec("behaviour", n_tokens=3, n_features=1, categorical={1: 3})
SPECS = [GENE, BRAIN, BEHAVIOUR]


def make_config(**overrides) -> EncoderConfig:
    kwargs = dict(modalities=SPECS, dim=DIM, n_layers=2, n_heads=2)
    kwargs.update(overrides)
    return EncoderConfig(**kwargs)


def make_encoder(seed: int = 0, **overrides) -> NeuroOmicsEncoder:
    torch.manual_seed(seed)
    return NeuroOmicsEncoder(make_config(**overrides)).eval()


def make_batch(specs=SPECS, batch: int = 4, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {"values": {}, "missing": {}, "present": {}}
    for spec in specs:
        values = torch.randn(batch, spec.n_tokens, spec.n_features, generator=g)
        for token, n in spec.categorical.items():
            values[:, token, 0] = torch.randint(0, n, (batch,), generator=g).float()
        out["values"][spec.name] = values
        out["missing"][spec.name] = torch.rand(batch, spec.n_tokens, spec.n_features, generator=g) < 0.2
        out["present"][spec.name] = torch.rand(batch, spec.n_tokens, generator=g) > 0.2
    return out


def make_tokenizer(spec: ModalitySpec, projection: str = "per_token", seed: int = 0) -> ModalityTokenizer:
    torch.manual_seed(seed)
    return ModalityTokenizer(spec, DIM, projection)


def no_missing(values: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(values, dtype=torch.bool)


# ------------------------------------------------------------------------------------------------ encoder output
def test_encoder_output_shapes():
    encoder = make_encoder()
    batch = make_batch()
    out = encoder(batch)
    seq = 1 + 6 + 4 + 3
    assert encoder.layout.names == (SUMMARY, "gene", "brain", "behaviour")
    assert out.hidden.shape == (4, seq, DIM)
    assert out.pooled.shape == (4, DIM)
    assert out.present.shape == (4, seq) and out.present.dtype == torch.bool
    assert out.present[:, 0].all()  # summary token always present
    assert {k: tuple(v.shape) for k, v in out.tokens.items()} == {
        "gene": (4, 6, DIM),
        "brain": (4, 4, DIM),
        "behaviour": (4, 3, DIM),
    }
    assert {k: tuple(v.shape) for k, v in out.per_modality.items()} == {m.name: (4, DIM) for m in SPECS}
    torch.testing.assert_close(out.tokens["brain"], out.hidden[:, 7:11])
    torch.testing.assert_close(out.pooled, out.hidden[:, 0])
    assert torch.isfinite(out.hidden).all()


def test_per_modality_is_mean_of_present_tokens_and_mean_pooling_skips_summary():
    encoder = make_encoder(pooling="mean")
    batch = make_batch()
    batch["present"]["gene"][2] = False  # subject 2 has no gene token
    out = encoder(batch)
    present = batch["present"]["brain"]
    expected = torch.stack([out.tokens["brain"][b, present[b]].mean(0) for b in range(4)])
    torch.testing.assert_close(out.per_modality["brain"], expected)
    assert (out.per_modality["gene"][2] == 0).all()
    all_present = out.present[:, 1:]
    expected_pooled = torch.stack([out.hidden[b, 1:][all_present[b]].mean(0) for b in range(4)])
    torch.testing.assert_close(out.pooled, expected_pooled)


def test_absent_tokens_do_not_influence_present_ones():
    encoder = make_encoder()
    batch = make_batch()
    out = encoder(batch)
    changed = make_batch()
    absent = ~batch["present"]["gene"]
    assert absent.any()
    changed["values"]["gene"] = torch.where(absent[..., None], 100.0, batch["values"]["gene"])
    out2 = encoder(changed)
    torch.testing.assert_close(out2.pooled, out.pooled)
    torch.testing.assert_close(out2.per_modality["brain"], out.per_modality["brain"])


# ---------------------------------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("projection", ["per_token", "shared"])
def test_changing_one_token_changes_only_its_embedding(projection):
    tokenizer = make_tokenizer(GENE, projection)
    values = torch.randn(3, 6, 2)
    before = tokenizer(values, no_missing(values))
    changed = values.clone()
    changed[:, 4] += 1.0
    after = tokenizer(changed, no_missing(values))
    differs = (after - before).abs().amax(dim=(0, 2)) > 0
    assert differs.tolist() == [False, False, False, False, True, False]


@pytest.mark.parametrize("projection", ["per_token", "shared"])
def test_per_token_projection_gives_each_token_its_own_map(projection):
    tokenizer = make_tokenizer(GENE, projection)
    values = torch.randn(1, 1, 2).expand(1, 6, 2).contiguous()  # every token has the same values
    content = tokenizer(values, no_missing(values)) - tokenizer.identity
    same = torch.allclose(content[0, 0], content[0, 1])
    assert same == (projection == "shared")


def test_padded_feature_slots_do_not_change_the_output():
    tokenizer = make_tokenizer(BRAIN)
    values = torch.randn(3, 4, 3)
    missing = no_missing(values)
    before = tokenizer(values, missing)
    padded = ~BRAIN.feature_mask_tensor()
    garbage = torch.where(padded, torch.tensor(float("nan")), values)
    garbage[:, 3, 2] = float("inf")
    missing_in_padding = missing | padded  # a missing flag in a padding slot means nothing either
    after = tokenizer(garbage, missing_in_padding)
    torch.testing.assert_close(after, before, rtol=0, atol=0)

    encoder = make_encoder()
    batch = make_batch()
    out = encoder(batch)
    batch["values"]["brain"] = torch.where(padded, 1e6, batch["values"]["brain"])
    torch.testing.assert_close(encoder(batch).hidden, out.hidden, rtol=0, atol=0)


def test_missing_flags_use_the_learned_missing_embedding():
    tokenizer = make_tokenizer(BRAIN)
    values = torch.randn(2, 4, 3)
    missing = no_missing(values)
    before = tokenizer(values, missing)
    missing[0, 2, 1] = True
    after = tokenizer(values, missing)
    assert torch.isfinite(after).all()
    # Exactly the missing-value embedding of that slot is added to that token, nothing else changes.
    expected = before.clone()
    expected[0, 2] += tokenizer.missing_weight[2, 1]
    torch.testing.assert_close(after, expected)
    # An imputed value of 0 does not look like an observed 0.
    zeros = torch.zeros(1, 4, 3)
    flagged = no_missing(zeros)
    flagged[0, 0, 0] = True
    assert not torch.allclose(tokenizer(zeros, flagged)[0, 0], tokenizer(zeros, no_missing(zeros))[0, 0])


def test_masked_tokens_hide_their_values():
    tokenizer = make_tokenizer(BEHAVIOUR)
    values = make_batch([BEHAVIOUR], batch=3)["values"]["behaviour"]
    masked = torch.tensor([[True, False, False], [False, True, False], [True, True, True]])
    out = tokenizer(values, no_missing(values), masked)
    other = values.clone()
    other[masked] = torch.tensor([2.0])  # new numbers / another category under every masked token
    other_missing = masked[..., None].clone()
    out2 = tokenizer(other, other_missing, masked)
    torch.testing.assert_close(out2[masked], out[masked], rtol=0, atol=0)
    expected = tokenizer.mask_embedding + tokenizer.identity
    torch.testing.assert_close(out[2], expected.detach())
    # Unmasked tokens are the ordinary embedding.
    torch.testing.assert_close(out[~masked], tokenizer(values, no_missing(values))[~masked])


def test_categorical_tokens_use_their_embedding_and_unknown_means_missing():
    tokenizer = make_tokenizer(BEHAVIOUR)
    table = tokenizer.categorical["1"].weight
    values = torch.zeros(5, 3, 1)
    values[:, 1, 0] = torch.tensor([0.0, 2.0, 7.0, -1.0, 1.0])  # 7 and -1 are not categories
    missing = no_missing(values)
    missing[4, 1, 0] = True
    out = tokenizer(values, missing)
    identity = tokenizer.identity[1]
    for row, category in enumerate([0, 2, 3, 3, 3]):  # row 3 of the table = missing or unknown
        torch.testing.assert_close(out[row, 1], table[category] + identity)


def test_tokenizer_input_shapes_are_checked():
    tokenizer = make_tokenizer(BRAIN)
    with pytest.raises(ValueError, match=r"brain.*\[batch, 4, 3\]"):
        tokenizer(torch.randn(2, 4, 2), torch.zeros(2, 4, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="masked"):
        tokenizer(torch.randn(2, 4, 3), torch.zeros(2, 4, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------------ decoder
def test_decoder_loss_counts_only_masked_real_observed_slots():
    torch.manual_seed(0)
    spec = ModalitySpec("brain", 3, 2, feature_mask=((True, True), (True, False), (True, True)))
    decoder = ModalityDecoder(spec, DIM)
    with torch.no_grad():
        decoder.bias.normal_()  # so the predictions are not all near zero
    hidden = torch.randn(2, 3, DIM)
    values = torch.randn(2, 3, 2)
    values[0, 1, 1] = float("nan")  # a padding slot: never looked at
    missing = no_missing(values)
    missing[0, 0, 1] = True  # imputed: not a target
    masked = torch.tensor([[True, True, False], [False, True, False]])
    predicted = decoder(hidden)
    counted = [(0, 0, 0), (0, 1, 0), (1, 1, 0)]  # (0, 0, 1) imputed; (*, 1, 1) padding
    manual = torch.stack([(predicted[i] - values[i]) ** 2 for i in counted]).mean()
    torch.testing.assert_close(decoder.loss(hidden, values, missing, masked), manual)
    total, count = decoder.loss_sum(hidden, values, missing, masked)
    assert int(count) == len(counted)


def test_decoder_categorical_token_adds_cross_entropy():
    torch.manual_seed(0)
    spec = ModalitySpec("behaviour", 2, 1, categorical={1: 4})
    decoder = ModalityDecoder(spec, DIM, projection="shared")
    hidden = torch.randn(3, 2, DIM)
    values = torch.tensor([[[0.5], [2.0]], [[-1.0], [3.0]], [[0.1], [1.0]]])
    missing = no_missing(values)
    missing[2, 1, 0] = True  # category not observed: not counted
    masked = torch.tensor([[True, True], [False, True], [False, True]])
    logits = decoder.category_logits(hidden)[1]
    squared = (decoder.numeric(hidden)[0, 0, 0] - values[0, 0, 0]) ** 2
    cross_entropy = F.cross_entropy(logits[:2], torch.tensor([2, 3]), reduction="sum")
    expected = (squared + cross_entropy) / 3
    torch.testing.assert_close(decoder.loss(hidden, values, missing, masked), expected)
    # forward reports the most likely category in feature 0 of the categorical token.
    torch.testing.assert_close(decoder(hidden)[:, 1, 0], logits.argmax(-1).float())


def test_decoder_loss_is_zero_with_a_gradient_when_nothing_is_masked():
    spec = ModalitySpec("behaviour", 3, 2, categorical={0: 3})
    decoder = ModalityDecoder(spec, DIM)
    hidden = torch.randn(2, 3, DIM, requires_grad=True)
    values = torch.zeros(2, 3, 2)
    loss = decoder.loss(hidden, values, no_missing(values), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert hidden.grad is not None and (hidden.grad == 0).all()
    assert all(p.grad is not None and (p.grad == 0).all() for p in decoder.parameters())


# ---------------------------------------------------------------------------------------- dense twin, ablations
def test_dense_twin_has_fewer_parameters_same_shapes_and_flops():
    cfg = make_config()
    mot, dense = NeuroOmicsEncoder(cfg), NeuroOmicsEncoder(dense_twin_config(cfg))
    assert dense.cfg.untie == () and cfg.untie == ("attention", "ffn", "norm")
    assert count_parameters(dense.backbone)["total"] < count_parameters(mot.backbone)["total"]
    assert sum(p.numel() for p in dense.parameters()) < sum(p.numel() for p in mot.parameters())
    batch = make_batch()
    out_mot, out_dense = mot(batch), dense(batch)
    for a, b in zip(out_mot, out_dense, strict=True):
        if isinstance(a, dict):
            assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
        else:
            assert a.shape == b.shape
    flops_mot = training_flops(mot.backbone, mot.layout)["forward_per_token"]
    assert flops_mot == training_flops(dense.backbone, dense.layout)["forward_per_token"]


def test_summary_tokens_get_their_own_tower_unless_told_otherwise():
    towers = {"gene": "omics", "brain": "imaging", "behaviour": "imaging"}
    encoder = make_encoder(towers=towers)
    assert encoder.backbone.cfg.tower("ffn", SUMMARY) == SUMMARY
    encoder = make_encoder(towers={**towers, SUMMARY: "imaging"})
    assert encoder.backbone.cfg.tower_names("ffn") == ["imaging", "omics"]


def test_modality_with_zero_tokens_leaves_it_out():
    specs = [GENE, ModalitySpec("brain", 0, 3), BEHAVIOUR]
    encoder = make_encoder(modalities=specs)
    full = make_batch()
    without = {key: {m: t for m, t in part.items() if m != "brain"} for key, part in full.items()}
    out = encoder(without)
    assert out.hidden.shape == (4, 1 + 6 + 3, DIM)
    assert out.tokens["brain"].shape == (4, 0, DIM)
    assert (out.per_modality["brain"] == 0).all()
    # Brain data in the batch is ignored by a 0-token brain modality.
    torch.testing.assert_close(encoder(full).hidden, out.hidden)
    out.pooled.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())  # DDP needs no find_unused_parameters
    # A modality with tokens cannot just be left out of the batch.
    with pytest.raises(ValueError, match="n_tokens=0"):
        make_encoder()(without)


@pytest.mark.parametrize(
    "overrides", [dict(), dict(pooling="mean"), dict(n_summary_tokens=0, pooling="mean"), dict(n_summary_tokens=3)]
)
def test_subject_with_no_present_token_stays_finite(overrides):
    encoder = make_encoder(**overrides).train()
    batch = make_batch()
    for name in batch["present"]:
        batch["present"][name][0] = False
    out = encoder(batch)
    assert torch.isfinite(out.hidden).all() and torch.isfinite(out.pooled).all()
    for pooled in out.per_modality.values():
        assert (pooled[0] == 0).all()
    if overrides.get("pooling") == "mean":
        assert (out.pooled[0] == 0).all()
    (out.pooled.square().sum() + sum(v.sum() for v in out.per_modality.values())).backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------------------------------------------- gradients
def test_gradient_reaches_every_tokenizer_parameter():
    encoder = make_encoder().train()
    batch = make_batch()
    for name in batch["present"]:
        batch["present"][name][:] = True
        batch["missing"][name][3] = True  # every slot imputed once: every missing-value embedding is used
    batch["missing"]["behaviour"][0, 1, 0] = True  # the categorical "missing" row is used too
    masked = {spec.name: torch.zeros(4, spec.n_tokens, dtype=torch.bool) for spec in SPECS}
    for m in masked.values():
        m[1, 2] = True  # one masked token per modality: every mask embedding is used
    out = encoder(batch, masked)
    out.hidden.square().sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None, name
        if not name.startswith("tokenizers."):
            continue
        if name.endswith("value_weight") or name.endswith("missing_weight"):
            tokenizer = encoder.tokenizers[name.split(".")[1]]
            used = tokenizer.numeric_slots  # slots of categorical tokens and padding get no gradient
            assert (p.grad[used].abs().sum(-1) > 0).all(), name
            assert (p.grad[~used] == 0).all(), name
        else:
            assert p.grad.abs().sum() > 0, name
    table_grad = encoder.tokenizers["behaviour"].categorical["1"].weight.grad
    assert table_grad[3].abs().sum() > 0  # the missing row learned something
    assert encoder.summary_tokens.grad.abs().sum() > 0


def test_mask_embedding_stays_in_the_graph_without_masking():
    encoder = make_encoder()
    encoder(make_batch()).pooled.sum().backward()
    grad = encoder.tokenizers["gene"].mask_embedding.grad
    assert grad is not None and (grad == 0).all()


# --------------------------------------------------------------------------------------------- configs and state
def test_config_and_spec_round_trip_through_json():
    spec = BRAIN
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ModalitySpec.from_dict(json.loads(json.dumps(d))) == spec
    behaviour = ModalitySpec.from_dict(json.loads(json.dumps(BEHAVIOUR.to_dict())))
    assert behaviour.categorical == {1: 3} and behaviour == BEHAVIOUR and hash(behaviour) == hash(BEHAVIOUR)

    cfg = make_config(untie=("ffn",), towers={"gene": "gene", "brain": "b", "behaviour": "b"}, projection="shared")
    d = cfg.to_dict()
    restored = EncoderConfig.from_dict(json.loads(json.dumps(d)))
    assert restored == cfg
    assert restored.to_dict() == d
    first = NeuroOmicsEncoder(cfg).eval()
    second = NeuroOmicsEncoder(restored).eval()
    second.load_state_dict(first.state_dict())  # same parameter names and shapes
    batch = make_batch()
    torch.testing.assert_close(second(batch).pooled, first(batch).pooled)


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="reserved"):
        make_config(modalities=[GENE, ModalitySpec(SUMMARY, 2, 1)])
    with pytest.raises(ValueError, match="n_summary_tokens"):
        make_config(n_summary_tokens=0)
    with pytest.raises(ValueError, match="projection"):
        make_config(projection="dense")
    with pytest.raises(ValueError, match="unknown part"):
        make_config(untie=("ffm",))
    with pytest.raises(ValueError, match="feature_mask"):
        ModalitySpec("brain", 2, 3, feature_mask=((True,) * 3,))
    with pytest.raises(ValueError, match="categorical token 5"):
        ModalitySpec("behaviour", 3, 1, categorical={5: 2})
    with pytest.raises(ValueError, match="unknown EncoderConfig"):
        EncoderConfig.from_dict({**make_config().to_dict(), "heads": 3})


# --------------------------------------------------------------------------------------------------- hot path


def test_forward_and_loss_have_no_boolean_indexing_or_host_sync():
    encoder = make_encoder()
    decoder = ModalityDecoder(BEHAVIOUR, DIM)
    batch = make_batch()
    masked = {"behaviour": torch.ones(4, 3, dtype=torch.bool)}
    with OpLog() as log:
        out = encoder(batch, masked)
        loss = decoder.loss(
            out.tokens["behaviour"], batch["values"]["behaviour"], batch["missing"]["behaviour"], masked["behaviour"]
        )
    assert torch.isfinite(loss)
    forbidden = {"nonzero", "masked_select", "masked_scatter", "index_put", "index_put_", "_local_scalar_dense", "item"}
    assert not forbidden & set(log.ops), log.ops


@pytest.mark.slow  # a process of its own (imports torch)
def test_model_modules_import_no_lightning_or_pandas():
    code = (
        "import sys, mot_neuro.model.encoder, mot_neuro.model.tokenizers; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'pandas', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
