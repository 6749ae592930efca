"""explain's tables (issue 18): the streamed attribution and attention summaries, BatchExplainer over batches, rank
stability and the permuted-target null, token locations (atlas regions, variant positions), and the null model's
permuted targets. Small random models and hand-made tables only (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_explain_attributions import random_batch, random_model

from mot_neuro.explain import batch as batch_module
from mot_neuro.explain.attributions import (
    ALL_TOKENS,
    IG,
    OCCLUSION,
    aggregate_attributions,
    attribution_table,
    explainable,
    integrated_gradients,
    occlusion,
)
from mot_neuro.explain.batch import BatchExplainer, TokenNames
from mot_neuro.explain.locations import atlas_regions, variant_positions
from mot_neuro.explain.stability import STABILITY_COLUMNS, null_comparison, rank_stability
from mot_neuro.explain.summary import (
    ATTENTION_COLUMNS,
    MEAN_OF_HEADS,
    ROLLOUT,
    SUMMARY_COLUMNS,
    AttentionSummary,
    AttributionSummary,
    attention_matrix,
)
from mot_neuro.model.attention_maps import attention_rollout, modality_attention, record_attention


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: threads only contend (on a busy 2-core machine, 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ============================================================================ AttributionSummary
def direct_moments(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """What the streamed summary must give: pandas on every kept value at once (two-pass, ddof 1)."""
    frame = frame.assign(abs_value=frame["value"].abs())
    grouped = frame.groupby(by, sort=False)
    return grouped.agg(
        value=("value", "mean"),
        mean_abs=("abs_value", "mean"),
        sd=("value", "std"),
        sd_abs=("abs_value", "std"),
        n=("value", "size"),
    ).reset_index()


def test_attribution_summary_streamed_over_batches_equals_pandas_on_all_rows():
    rng = np.random.default_rng(0)
    tokens = ["far", "a", "b", "once", "never"]
    features = ["f0", "f1", "f2", "f3", "f4"]
    summary = AttributionSummary()
    seen = []
    for size in (1, 9, 4, 30, 2):
        values = rng.normal(size=(size, 5)) * 2 - 0.5
        values[:, 0] = 1e6 + rng.normal(size=size)  # large mean, sd ~1: a naive sum of squares loses the sd
        keep = rng.random((size, 5)) < 0.75
        values[rng.random((size, 5)) < 0.15] = np.nan  # kept NaN: not counted
        keep[:, 3] = False
        keep[:, 4] = False
        summary.add("gene", "y", IG, tokens, values, keep)
        summary.add("gene", "y", IG, tokens, values * 10, keep, features=features, level="feature")
        rows, cols = np.nonzero(keep & np.isfinite(values))
        seen.append(pd.DataFrame({"token": np.asarray(tokens)[cols], "value": values[rows, cols]}))
    # one subject has "once": one observation (sd NaN); nobody has "never" (no row)
    summary.add("gene", "y", IG, tokens, np.array([[np.nan, np.nan, np.nan, 3.5, np.nan]]), np.ones((1, 5), bool))
    seen.append(pd.DataFrame({"token": ["once"], "value": [3.5]}))
    summary.add("gene", "y", IG, tokens, np.full((1, 5), np.nan), np.ones((1, 5), bool), level="feature")

    table = summary.table()
    assert list(table.columns) == SUMMARY_COLUMNS
    expected = direct_moments(pd.concat(seen, ignore_index=True), ["token"])
    whole = table[table["feature"] == ""].set_index("token")
    assert set(whole.index) == {"far", "a", "b", "once"}  # "never" had n == 0: no row
    got = whole.loc[expected["token"]]
    np.testing.assert_array_equal(got["n"].to_numpy(), expected["n"].to_numpy())
    for column in ("value", "mean_abs", "sd", "sd_abs"):
        np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(), rtol=1e-9, err_msg=column)
    assert np.isnan(whole.loc["once", "sd"]) and whole.loc["once", "n"] == 1
    assert whole.loc["far", "sd"] == pytest.approx(expected.set_index("token").loc["far", "sd"], rel=1e-9)

    feature_rows = table[table["feature"] != ""].set_index("feature")
    assert list(feature_rows["token"]) == ["far", "a", "b"]  # the feature rows keep the token they belong to
    scaled = expected.set_index("token").loc[["far", "a", "b"]]
    np.testing.assert_allclose(feature_rows["mean_abs"].to_numpy(), 10 * scaled["mean_abs"].to_numpy(), rtol=1e-9)
    np.testing.assert_array_equal(feature_rows["n"].to_numpy(), scaled["n"].to_numpy())

    with pytest.raises(ValueError, match=r"gene \(integrated_gradients, token\): values \(2, 4\) for 5 keys"):
        summary.add("gene", "y", IG, tokens, np.zeros((2, 4)), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="2 feature names for 3 keys"):
        AttributionSummary().add("x", "y", IG, ["a", "b", "c"], np.zeros((1, 3)), np.ones((1, 3)), features=["1", "2"])
    assert AttributionSummary().table().columns.tolist() == SUMMARY_COLUMNS


def test_attention_summary_weights_each_batch_by_its_present_queries():
    names = ("summary", "brain", "gene")
    s1 = np.array(  # [L=1, H=2, M, M]: batch 1 has no gene query (NaN row)
        [[[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [np.nan] * 3], [[1.0, 0.0, 0.0], [0.2, 0.2, 0.6], [np.nan] * 3]]]
    )
    s2 = np.array(
        [[[[0.0, 0.5, 0.5], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]], [[0.2, 0.2, 0.6], [0.0, 1.0, 0.0], [0, 0, 1]]]]
    )
    r1 = np.array([[0.6, 0.2, 0.2], [0.5, 0.5, 0.0], [np.nan] * 3])
    r2 = np.array([[0.2, 0.4, 0.4], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    c1, c2 = np.array([2, 5, 0]), np.array([2, 1, 3])
    summary = AttentionSummary()
    summary.add(s1, r1, c1, names)
    summary.add(s2, r2, c2, names)
    table = summary.table()
    assert list(table.columns) == ATTENTION_COLUMNS
    # by hand: summary queries 2 + 2, brain 5 + 1, gene 0 + 3
    head0 = attention_matrix(table, layer="0", head="0").to_numpy()
    np.testing.assert_allclose(head0[0], [0.25, 0.375, 0.375])
    np.testing.assert_allclose(head0[1], [(5 * 0.1 + 0.4) / 6, (5 * 0.6 + 0.4) / 6, (5 * 0.3 + 0.2) / 6])
    np.testing.assert_allclose(head0[2], [0.3, 0.3, 0.4])  # batch 1 added nothing to the gene row
    head1 = attention_matrix(table, layer="0", head="1").to_numpy()
    np.testing.assert_allclose(head1[1], [(5 * 0.2 + 0.0) / 6, (5 * 0.2 + 1.0) / 6, (5 * 0.6 + 0.0) / 6])
    mean = attention_matrix(table, layer="0", head=MEAN_OF_HEADS).to_numpy()
    np.testing.assert_allclose(mean, (head0 + head1) / 2)
    rollout = attention_matrix(table).to_numpy()
    np.testing.assert_allclose(rollout[1], [(5 * 0.5 + 0.1) / 6, (5 * 0.5 + 0.8) / 6, 0.1 / 6])
    np.testing.assert_allclose(rollout[0], [0.4, 0.3, 0.3])
    assert set(table["layer"]) == {"0", ROLLOUT} and set(table["head"]) == {"0", "1", MEAN_OF_HEADS}

    never = AttentionSummary()
    never.add(s1, r1, c1, names)
    # no gene query ever (e.g. left out by drop_modalities): no gene row or column, rather than NaN and 0
    assert list(attention_matrix(never.table()).index) == ["summary", "brain"]
    assert "gene" not in set(never.table()["key"])
    with pytest.raises(ValueError, match="attention groups"):
        never.add(s1, r1, c1, ("summary", "gene", "brain"))
    assert AttentionSummary().table().columns.tolist() == ATTENTION_COLUMNS


# ============================================================================ BatchExplainer
GENE_TOKENS = list("abcd")
BRAIN_TOKENS = ["r1", "r2", "r3", "hand"]  # hand: categorical (random_model's SPECS)
GENE_FEATURES = {t: [f"{t}_v{i}" for i in range(3)] for t in GENE_TOKENS}
SUBJECT_IDS = np.array([f"sub-{i:03d}" for i in range(200)], dtype=object)


def two_batches() -> list[dict]:
    first, second = random_batch(6, seed=1), random_batch(4, seed=2)
    second["row"] = torch.arange(110, 114)
    second["present"]["gene"][3] = False  # a subject without any gene token
    return [first, second]


def explainer(model, **options) -> BatchExplainer:
    options.setdefault("targets", ["y"])
    options.setdefault("n_steps", 8)
    names = {"gene": TokenNames(GENE_TOKENS, GENE_FEATURES), "brain": TokenNames(BRAIN_TOKENS)}
    return BatchExplainer(model, names=names, subject_ids=SUBJECT_IDS, **options)


def test_batch_explainer_tables_equal_aggregates_of_the_per_subject_attributions():
    model, batches = random_model(), two_batches()
    sink = []
    run = explainer(model, targets=["y", "group"], attention=False, per_subject=sink.append)
    for batch in batches:
        assert run.add(batch) == len(batch["row"])
    assert run.n_subjects == 10
    table = run.summary.table()

    # the same attributions computed directly, batch by batch
    names = {"gene": GENE_TOKENS, "brain": BRAIN_TOKENS}
    direct = []
    for batch in batches:
        subjects = SUBJECT_IDS[batch["row"].numpy()]
        for target in ("y", "group"):
            found = [integrated_gradients(model, batch, target, n_steps=8, subjects=subjects)]
            found.append(occlusion(model, batch, target, subjects=subjects))
            direct.append(attribution_table(found, names))
    direct = pd.concat(direct, ignore_index=True)
    sunk = pd.concat(sink, ignore_index=True)
    assert (sunk["feature"] == "").all() and len(sunk) == len(direct)
    pd.testing.assert_frame_equal(
        sunk.drop(columns="feature").sort_values(["subject", "modality", "token", "target", "method"]),
        direct.sort_values(["subject", "modality", "token", "target", "method"]),
        check_like=True,
        atol=1e-6,
        rtol=1e-5,
    )
    expected = aggregate_attributions(direct).rename(columns={"mean": "value"})
    expected["sd_abs"] = (
        direct.assign(a=direct["value"].abs()).groupby(["modality", "token", "target", "method"], sort=False)["a"].std()
    ).to_numpy()
    tokens = table[table["feature"] == ""]
    merged = tokens.merge(expected, on=["modality", "token", "target", "method"], suffixes=("", "_direct"))
    assert len(merged) == len(tokens) == len(expected)
    np.testing.assert_array_equal(merged["n"], merged["n_direct"])
    for column in ("value", "mean_abs", "sd", "sd_abs"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_direct"], rtol=1e-5, atol=1e-7, err_msg=column)

    # the counts follow the batches' present masks: gene "b" is absent for subject 0 of each batch, and
    # subject 3 of the second batch has no gene token at all (no gene total either); subject 1 of each batch
    # has no brain scan
    occ = tokens[(tokens["method"] == OCCLUSION) & (tokens["target"] == "y")].set_index(["modality", "token"])
    assert occ.loc[("gene", "a"), "n"] == 9 and occ.loc[("gene", "b"), "n"] == 7
    assert occ.loc[("gene", ALL_TOKENS), "n"] == 9 and occ.loc[("brain", ALL_TOKENS), "n"] == 8
    # categorical tokens: occlusion rows, no Integrated Gradients rows
    ig = tokens[tokens["method"] == IG]
    assert "hand" in set(occ.reset_index()["token"]) and "hand" not in set(ig["token"])
    assert set(table["target"]) == {"y", "group"}


def test_batch_explainer_feature_rows_count_observed_slots_of_present_tokens():
    model, batches = random_model(), two_batches()
    run = explainer(model, methods=[IG], attention=False)
    direct = []
    for batch in batches:
        run.add(batch)
        direct.append(integrated_gradients(model, batch, "y", n_steps=8))
    table = run.summary.table()
    features = table[table["feature"] != ""]
    assert set(features["modality"]) == {"gene"}  # brain was given no feature names
    assert len(features) == 4 * 3
    for t, token in enumerate(GENE_TOKENS):
        for f, feature in enumerate(GENE_FEATURES[token]):
            row = features[(features["token"] == token) & (features["feature"] == feature)]
            assert len(row) == 1
            kept = [
                result.features["gene"][:, t, f][~batch["missing"]["gene"][:, t, f] & batch["present"]["gene"][:, t]]
                for batch, result in zip(batches, direct, strict=True)
            ]
            kept = torch.cat(kept).double().numpy()
            assert row["n"].item() == len(kept) > 0
            np.testing.assert_allclose(row["value"].item(), kept.mean(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(row["mean_abs"].item(), np.abs(kept).mean(), rtol=1e-5, atol=1e-7)
    # the batches do have missing slots of present tokens: a count of present tokens would differ
    missing = sum(int((b["missing"]["gene"] & b["present"]["gene"][..., None]).sum()) for b in batches)
    assert missing > 0 and features["n"].sum() == sum(int(b["present"]["gene"].sum()) * 3 for b in batches) - missing


def test_batch_explainer_keep_masks_rows():
    model, (batch, _) = random_model(), two_batches()
    keep = torch.tensor([True, False, True, True, False, True])
    masked = explainer(model, methods=[OCCLUSION])
    assert masked.add(batch, keep) == 4 and masked.n_subjects == 4
    assert masked.add(batch, torch.zeros(6, dtype=torch.bool)) == 0 and masked.n_subjects == 4
    subset = {
        key: ({k: v[keep] for k, v in value.items()} if isinstance(value, dict) else value[keep])
        for key, value in batch.items()
    }
    alone = explainer(model, methods=[OCCLUSION])
    alone.add(subset)
    pd.testing.assert_frame_equal(masked.summary.table(), alone.summary.table())
    pd.testing.assert_frame_equal(masked.attention_summary.table(), alone.attention_summary.table())
    # subject 1 (no brain scan) was left out: every brain row is about the 4 kept subjects
    brain = masked.summary.table().query("modality == 'brain'")
    assert (brain["n"] == 4).all()


def test_batch_explainer_refuses_bad_options_naming_them():
    model = random_model()
    with pytest.raises(ValueError, match=r"--targets \['nope'\] are not heads"):
        explainer(model, targets=["y", "nope"])
    with pytest.raises(ValueError, match="--methods"):
        explainer(model, methods=[])
    with pytest.raises(ValueError, match="--methods"):
        explainer(model, methods=["saliency"])
    with pytest.raises(ValueError, match="--n_steps 1"):
        explainer(model, n_steps=1)
    assert explainer(model, targets=None).targets == ["y", "dx", "group"]  # default: every head


def test_batch_explainer_ig_gap_flags_too_few_path_points():
    model, (batch, _) = random_model(), two_batches()
    gaps = {}
    for n_steps in (2, 32):
        run = explainer(model, methods=[IG], n_steps=n_steps, attention=False)
        run.add(batch)
        gaps[n_steps] = run.max_ig_gap
    assert gaps[32] < 1.0 < gaps[2], gaps  # 2 points miss the output difference on this sharp random model


def test_batch_explainer_ig_modality_total_leaves_out_subjects_with_no_scored_token():
    """A subject whose only present brain token is categorical (which IG does not score) has no IG brain total:
    a 0 would pull the modality's mean importance down (and a modality of categorical tokens only would show an
    importance of exactly 0 under IG)."""
    model, (batch, _) = random_model(), two_batches()
    batch["present"]["brain"][2] = torch.tensor([False, False, False, True])  # only "hand"
    run = explainer(model, methods=[IG, OCCLUSION], attention=False)
    run.add(batch)
    totals = run.summary.table().query("modality == 'brain' and token == '*'").set_index("method")
    assert totals.loc[IG, "n"] == 4  # 6 subjects, one without a brain scan, one with only the categorical token
    assert totals.loc[OCCLUSION, "n"] == 5  # hiding "hand" is a change occlusion measures
    direct = integrated_gradients(model, batch, "y", n_steps=8).modalities["brain"][[0, 3, 4, 5]].double().numpy()
    assert totals.loc[IG, "mean_abs"] == pytest.approx(np.abs(direct).mean(), rel=1e-5)


def test_batch_explainer_handles_a_batch_of_one_and_a_modality_left_out():
    """drop_modalities gives the model a modality with 0 tokens and the batch no values for it."""
    from mot_neuro.lit_module import NeuroOmicsModule
    from mot_neuro.model.inputs import DataSpec, TargetSpec
    from mot_neuro.model.tokenizers import ModalitySpec

    specs = (ModalitySpec("gene", n_tokens=3, n_features=2), ModalitySpec("dropped", n_tokens=0, n_features=4))
    torch.manual_seed(0)
    model = NeuroOmicsModule(
        data_spec=DataSpec(modalities=specs, targets={"dx": TargetSpec("binary", 2)}),
        encoder={"dim": 8, "n_layers": 1, "n_heads": 2},
    )
    one = {
        "values": {"gene": torch.randn(1, 3, 2)},
        "missing": {"gene": torch.zeros(1, 3, 2, dtype=torch.bool)},
        "present": {"gene": torch.tensor([[True, False, True]])},
        "row": torch.tensor([7]),
    }
    names = {"gene": TokenNames(["g0", "g1", "g2"]), "dropped": TokenNames(["x", "y"])}
    run = BatchExplainer(model, targets=None, names=names, subject_ids=SUBJECT_IDS, n_steps=4)
    assert run.add(one) == 1
    table = run.summary.table()
    assert set(table["modality"]) == {"gene"} and set(table["token"]) == {"g0", "g2", ALL_TOKENS}
    assert (table["n"] == 1).all() and table["sd"].isna().all()
    shares = attention_matrix(run.attention_summary.table())
    np.testing.assert_allclose(shares.loc[["summary", "gene"]].sum(axis=1), 1.0, rtol=1e-5)


# ============================================================================ attention
def check_shares(table: pd.DataFrame) -> None:
    """Every query group's shares over key groups sum to 1 (or are all NaN: no query of the group) and lie
    in [0, 1]."""
    for _, rows in table.groupby(["layer", "head", "query"]):
        share = rows["share"].to_numpy()
        if np.isnan(share).all():
            continue
        assert np.isfinite(share).all() and (share >= 0).all() and (share <= 1 + 1e-6).all()
        assert share.sum() == pytest.approx(1.0, abs=1e-5)


def test_attention_of_one_batch_is_modality_attention_and_shares_sum_to_one(monkeypatch):
    model, batches = random_model(), two_batches()
    batch = batches[1]
    run = explainer(model, methods=[OCCLUSION])
    run.add(batch)
    table = run.attention_summary.table()
    check_shares(table)
    encoder = model.encoder
    with explainable(model).evaluating(), torch.no_grad(), record_attention(encoder.backbone) as record:
        present = encoder(batch).present
    shares = modality_attention(record.probs, encoder.layout, present)
    rolled = modality_attention(attention_rollout(record.probs, present=present), encoder.layout, present)
    n_layers, n_heads = shares.values.shape[:2]
    # per layer: every head and their mean; then the rollout and its no-preference reference
    assert len(table) == (n_layers * (n_heads + 1) + 2) * len(shares.names) ** 2
    for layer in range(n_layers):
        for head in range(n_heads):
            got = attention_matrix(table, layer=str(layer), head=str(head)).to_numpy()
            np.testing.assert_allclose(got, shares.values[layer, head].numpy(), rtol=1e-5, atol=1e-7)
        got = attention_matrix(table, layer=str(layer), head=MEAN_OF_HEADS).to_numpy()
        np.testing.assert_allclose(got, shares.values[layer].mean(0).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(attention_matrix(table).to_numpy(), rolled.values.numpy(), rtol=1e-5, atol=1e-7)
    # no preference: the rollout of attention spread evenly over the present keys, by hand
    even = present[:, None, :].float().expand(-1, present.shape[1], -1)
    even = (even / even.sum(-1, keepdim=True))[:, None]
    reference = modality_attention(attention_rollout([even] * n_layers, present=present), encoder.layout, present)
    got = attention_matrix(table, layer="uniform").to_numpy()
    np.testing.assert_allclose(got, reference.values.numpy(), rtol=1e-5, atol=1e-7)

    # two batches, each recorded one row at a time (a small attention budget): the same as both at once
    whole = explainer(model, methods=[OCCLUSION])
    for b in batches:
        whole.add(b)
    monkeypatch.setattr(batch_module, "ATTENTION_BYTES", 1)
    sliced = explainer(model, methods=[OCCLUSION])
    for b in batches:
        sliced.add(b)
    check_shares(whole.attention_summary.table())
    pd.testing.assert_frame_equal(
        whole.attention_summary.table(), sliced.attention_summary.table(), check_exact=False, atol=1e-6
    )
    # and it is the count-weighted mean of the two batches' matrices, not their plain mean
    first = explainer(model, methods=[OCCLUSION])
    first.add(batches[0])
    a, b = attention_matrix(first.attention_summary.table()), attention_matrix(table)
    counts = []
    for one in batches:
        with torch.no_grad():
            p = encoder(one).present
        ids = encoder.layout.modality_ids()
        counts.append(np.array([int(p[:, ids == m].sum()) for m in range(len(shares.names))], dtype=float))
    weighted = (a.to_numpy() * counts[0][:, None] + b.to_numpy() * counts[1][:, None]) / (counts[0] + counts[1])[
        :, None
    ]
    assert not np.allclose(counts[0] / counts[0].sum(), counts[1] / counts[1].sum())  # the weights do differ
    np.testing.assert_allclose(attention_matrix(whole.attention_summary.table()).to_numpy(), weighted, rtol=1e-5)


# ============================================================================ rank stability, null comparison
def run_rows(run: str, scores: dict[str, list[float]], *, variant="mot", fold=0, seed=1, null=False, **extra):
    """A run's rows of explain's attribution table: whole tokens ``t0, t1, ...`` of each modality with these
    ``mean_abs``, plus a modality total and a feature-level row that the comparisons must leave out."""
    rows = []
    for modality, values in scores.items():
        rows += [(modality, f"t{i}", "", v) for i, v in enumerate(values)]
        rows.append((modality, ALL_TOKENS, "", 1e3 * (1 + fold)))
        rows.append((modality, "t0", "variant1", -1e3 * (1 + fold)))
    frame = pd.DataFrame(rows, columns=["modality", "token", "feature", "mean_abs"])
    return frame.assign(
        target="y",
        method=IG,
        value=frame["mean_abs"],
        run=run,
        variant=variant,
        fold=fold,
        seed=seed,
        null=null,
        **extra,
    )


def test_rank_stability_is_spearman_between_runs_of_a_variant_per_modality_and_overall():
    brain = [0.1, 0.5, 0.3, 0.9, 0.2]
    gene = [2.0, 1.0, 3.0]
    reversed_brain = [1 - v for v in brain]
    table = pd.concat(
        [
            run_rows("a", {"brain": brain, "gene": gene, "tiny": [1.0, 2.0]}, fold=0),
            run_rows(
                "b", {"brain": [10 * v for v in brain], "gene": [v + 5 for v in gene], "tiny": [2.0, 1.0]}, fold=1
            ),
            run_rows("c", {"brain": reversed_brain, "gene": [-v for v in gene], "tiny": [1.0, 2.0]}, fold=2, seed=7),
            run_rows("null", {"brain": brain, "gene": gene, "tiny": [1.0, 2.0]}, null=True),
            run_rows("dense", {"brain": brain, "gene": gene}, variant="dense"),  # alone in its variant: no pair
        ],
        ignore_index=True,
    )
    out = rank_stability(table)
    assert list(out.columns) == STABILITY_COLUMNS
    assert set(out["variant"]) == {"mot"} and "null" not in set(out["run_a"]) | set(out["run_b"])
    assert sorted(set(zip(out["run_a"], out["run_b"], strict=True))) == [("a", "b"), ("a", "c"), ("b", "c")]
    rho = out.set_index(["run_a", "run_b", "modality"])
    # a and b: the same order within brain and gene (other scales: ranks only)
    assert rho.loc[("a", "b", "brain"), "spearman"] == pytest.approx(1.0)
    assert rho.loc[("a", "b", "gene"), "spearman"] == pytest.approx(1.0)
    assert rho.loc[("a", "c", "brain"), "spearman"] == pytest.approx(-1.0)
    assert rho.loc[("a", "c", "gene"), "spearman"] == pytest.approx(-1.0)
    # fewer than 3 tokens: NaN, with the count
    assert np.isnan(rho.loc[("a", "b", "tiny"), "spearman"]) and rho.loc[("a", "b", "tiny"), "n_tokens"] == 2
    # "all": every whole token of every modality (no totals, no feature rows)
    assert (rho.xs("all", level="modality")["n_tokens"] == 10).all()
    everything_a = brain + gene + [1.0, 2.0]
    everything_c = reversed_brain + [-v for v in gene] + [1.0, 2.0]
    from scipy.stats import spearmanr

    assert rho.loc[("a", "c", "all"), "spearman"] == pytest.approx(spearmanr(everything_a, everything_c).statistic)
    assert rho.loc[("a", "c", "all"), ["fold_a", "fold_b", "seed_a", "seed_b"]].tolist() == [0, 2, 1, 7]
    # a token only one run scored is left out of that pair
    partial = table[~((table["run"] == "b") & (table["token"] == "t4"))]
    again = rank_stability(partial).set_index(["run_a", "run_b", "modality"])
    assert again.loc[("a", "b", "brain"), "n_tokens"] == 4 and again.loc[("a", "c", "brain"), "n_tokens"] == 5
    assert rank_stability(table[table["null"]]).empty

    # over all modalities at once: one order for every token of the run, kept or reversed
    scores = {"brain": brain, "gene": gene}
    twins = pd.concat(
        [
            run_rows("t1", scores, variant="twin"),
            run_rows("t2", {m: [3 * v for v in values] for m, values in scores.items()}, variant="twin", fold=1),
            run_rows("t3", {m: [-v for v in values] for m, values in scores.items()}, variant="twin", fold=2),
        ],
        ignore_index=True,
    )
    overall = rank_stability(twins).query("modality == 'all'").set_index(["run_a", "run_b"])["spearman"]
    assert overall.to_dict() == pytest.approx({("t1", "t2"): 1.0, ("t1", "t3"): -1.0, ("t2", "t3"): -1.0})


def test_null_comparison_shares_and_exceeds_null():
    real_a = {"brain": [4.0, 1.0, 3.0, 2.0], "gene": [1.0, 1.0, 2.0]}
    real_b = {"brain": [8.0, 1.0, 5.0, 6.0], "gene": [3.0, 1.0, 0.0]}
    null_1 = {"brain": [1.0, 1.0, 1.0, 1.0], "gene": [0.2, 0.5, 0.3]}
    null_2 = {"brain": [2.0, 5.0, 2.0, 1.0], "gene": [1.0, 1.0, 2.0]}
    table = pd.concat(
        [
            run_rows("a", real_a),
            run_rows("b", real_b, fold=1),
            run_rows("n1", null_1, null=True),
            run_rows("n2", null_2, fold=1, null=True, variant="dense"),  # any variant's null counts
        ],
        ignore_index=True,
    )
    out = null_comparison(table)
    assert len(out) == 7 and set(out["variant"]) == {"mot"}
    assert (out["n_runs"] == 2).all() and (out["n_null_runs"] == 2).all()

    def shares(scores):
        return {m: np.asarray(v) / np.sum(v) for m, v in scores.items()}

    real = [shares(real_a), shares(real_b)]
    null = [shares(null_1), shares(null_2)]
    for modality in ("brain", "gene"):
        rows = out[out["modality"] == modality].set_index("token").loc[[f"t{i}" for i in range(len(real_a[modality]))]]
        expected_share = (real[0][modality] + real[1][modality]) / 2
        null_max = np.maximum(null[0][modality], null[1][modality])
        np.testing.assert_allclose(rows["share"], expected_share)
        np.testing.assert_allclose(rows["null_share"], (null[0][modality] + null[1][modality]) / 2)
        np.testing.assert_allclose(rows["null_max_share"], null_max)
        assert rows["share"].sum() == pytest.approx(1.0) and rows["null_share"].sum() == pytest.approx(1.0)
        np.testing.assert_array_equal(rows["exceeds_null"], expected_share > null_max)
        np.testing.assert_allclose(rows["share_ratio"], rows["share"] / rows["null_share"])
    brain = out[out["modality"] == "brain"].set_index("token")
    # t0 is the top brain token of both real runs: percentile 1 (rank within the modality, 1 = most important)
    assert brain.loc["t0", "percentile"] == 1.0 and brain.loc["t1", "percentile"] == 0.25
    assert brain["exceeds_null"].any() and not brain["exceeds_null"].all()  # the case is not trivial either way
    # no null runs, or no real ones: an empty table with the columns
    empty = null_comparison(table[~table["null"]])
    assert empty.empty and list(empty.columns) == list(out.columns)
    assert null_comparison(table[table["null"]]).empty


# ============================================================================ token locations
def modality(name="brain", tokens=("left", "right", "mid"), **source):
    return SimpleNamespace(name=name, token_names=list(tokens), source=source)


def test_atlas_regions_from_the_recorded_atlas_and_what_is_wrong(tmp_path):
    atlas = tmp_path / "atlas.nii.gz"
    atlas.write_bytes(b"not read here")
    found = atlas_regions(
        modality(adapter="brain.regions_from_nifti", atlas=str(atlas), label_ids=[4, 2, 9]), required=True
    )
    assert found.atlas == atlas and found.tokens == ["left", "right", "mid"] and found.label_ids == [4, 2, 9]

    gone = modality(name="cortex", atlas=str(tmp_path / "moved.nii.gz"), label_ids=[1, 2, 3])
    for required in (True, False):  # a recorded atlas that is not there is an error either way
        with pytest.raises(FileNotFoundError, match=r"modality 'cortex'.*moved\.nii\.gz"):
            atlas_regions(gone, required=required)

    tabular = modality(name="behaviour", adapter="behaviour.table")
    assert atlas_regions(tabular, required=False) is None
    with pytest.raises(
        ValueError, match=r"modality 'behaviour' did not come from a NIfTI atlas \(adapter behaviour.table\)"
    ):
        atlas_regions(tabular, required=True)
    assert atlas_regions(SimpleNamespace(name="x", token_names=[], source=None), required=False) is None

    uneven = modality(atlas=str(atlas), label_ids=[1, 2])
    assert atlas_regions(uneven, required=False) is None
    with pytest.raises(ValueError, match="modality 'brain': 2 atlas labels for 3 tokens"):
        atlas_regions(uneven, required=True)


def test_variant_positions_rows_in_slot_order():
    genes = modality(
        name="gene",
        tokens=["chr2", "chrX", "GENE_A", "empty"],
        adapter="gene.plink",
        token_features={"chr2": ["rs9", "rs3"], "chrX": ["x1"], "GENE_A": ["p", "q", "r"], "empty": []},
        feature_positions={
            "chr2": {"chromosome": "2", "positions": [900, 300]},  # slot order, whatever the positions
            "chrX": {"chromosome": "X", "positions": [5]},
            "GENE_A": {"chromosomes": ["1", "1", "2"], "positions": [10, 20, 1]},
            "empty": {"chromosome": None, "positions": []},
        },
    )
    table = variant_positions(genes, required=True)
    assert list(table.columns) == ["token", "slot", "feature", "chromosome", "position"]
    assert table.values.tolist() == [
        ["chr2", 0, "rs9", "2", 900],
        ["chr2", 1, "rs3", "2", 300],
        ["chrX", 0, "x1", "X", 5],
        ["GENE_A", 0, "p", "1", 10],
        ["GENE_A", 1, "q", "1", 20],
        ["GENE_A", 2, "r", "2", 1],
    ]
    bare = modality(name="scores", adapter="gene.feature_table", token_features={"left": ["a"]})
    assert variant_positions(bare, required=False) is None
    with pytest.raises(ValueError, match=r"modality 'scores' has no variant positions \(adapter gene.feature_table"):
        variant_positions(bare, required=True)
    broken = modality(
        name="gene",
        tokens=["t"],
        token_features={"t": ["a", "b"]},
        feature_positions={"t": {"chromosome": "1", "positions": [1]}},
    )
    with pytest.raises(ValueError):  # positions for 1 of 2 variants: not silently cut short
        variant_positions(broken, required=False)


def test_plink_records_the_bim_positions_of_each_token_in_slot_order(tmp_path):
    bed_reader = pytest.importorskip("bed_reader")
    from data_adapters.gene import plink

    data = Path(bed_reader.__file__).parent / "tests" / "data"
    # small.bed's variants, with the .bim out of position order and chromosome 1 written three ways
    for suffix in ("bed", "fam"):
        shutil.copy(data / f"small.{suffix}", tmp_path / f"x.{suffix}")
    bim = pd.read_csv(data / "small.bim", sep="\t", header=None, dtype={0: str})
    bim[0] = ["01", "chr1", "5", "Y"]
    bim[3] = [500, 100, 1000, 1004]
    bim.to_csv(tmp_path / "x.bim", sep="\t", header=False, index=False)
    reader = plink(tmp_path / "x.bed")
    source = json.loads(json.dumps(reader.source))  # as the cohort cache keeps it
    assert source["token_features"]["chr1"] == ["sid2", "sid1"]  # position order
    assert source["feature_positions"]["chr1"] == {"chromosome": "1", "positions": [100, 500]}
    table = variant_positions(
        SimpleNamespace(name="gene", token_names=reader.token_names, source=source), required=True
    )
    assert table.values.tolist() == [
        ["chr1", 0, "sid2", "1", 100],
        ["chr1", 1, "sid1", "1", 500],
        ["chr5", 0, "sid3", "5", 1000],
        ["chrY", 0, "sid4", "Y", 1004],
    ]

    # many tokens (windows, split into parts of at most 50 variants): every variant at its .bim position
    reader = plink(data / "toydata.5chrom", grouping="window", window_bp=5_000_000, max_features_per_token=50)
    bim = pd.read_csv(data / "toydata.5chrom.bim", sep="\t", header=None, dtype={0: str}).set_index(1)
    table = variant_positions(
        SimpleNamespace(name="gene", token_names=reader.token_names, source=reader.source), required=True
    )
    assert len(table) == len(bim) and table["feature"].is_unique
    np.testing.assert_array_equal(table["position"], bim.loc[table["feature"], 3])
    np.testing.assert_array_equal(table["chromosome"], bim.loc[table["feature"], 0])
    # slot order is the order of token_features (what the feature-level rows are named by)
    features = reader.source["token_features"]
    assert table.groupby("token", sort=False)["feature"].agg(list).to_dict() == features
    assert (table.groupby("token")["slot"].agg(lambda s: list(s) == list(range(len(s))))).all()
    # the token's window holds its variants
    begin = table["token"].str.extract(r":(\d+)-")[0].astype(int)
    assert ((table["position"] >= begin) & (table["position"] < begin + 5_000_000)).all()


# ============================================================================ permuted targets (null models)
def test_permuted_target_rows_permute_within_each_part_only():
    from mot_neuro.data.preprocess import permuted_target_rows

    rng = np.random.default_rng(3)
    rows = rng.permutation(40)
    train, val, test = np.sort(rows[:24]), np.sort(rows[24:32]), rows[32:]
    mapping = permuted_target_rows(40, [train, val], seed=5)
    assert mapping.dtype == np.int64 and mapping.shape == (40,)
    for part in (train, val):
        assert sorted(mapping[part]) == sorted(part)  # a permutation of the part: no target crosses parts
        assert (mapping[part] != part).sum() > len(part) // 2  # and it shuffles
    np.testing.assert_array_equal(mapping[test], test)  # test subjects read their own targets
    np.testing.assert_array_equal(mapping, permuted_target_rows(40, [train, val], seed=5))
    assert not np.array_equal(mapping, permuted_target_rows(40, [train, val], seed=6))


def tiny_cohort(n: int = 30):
    from data_adapters.cohort import build_cohort
    from data_adapters.core import TokenizedModality

    rng = np.random.default_rng(0)
    ids = np.array([f"sub-{i:02d}" for i in range(n)], dtype=object)
    brain = TokenizedModality(
        name="brain",
        values=rng.normal(size=(n, 3, 2)).astype(np.float32),
        present=np.ones((n, 3), dtype=bool),
        token_names=["a", "b", "c"],
        subject_ids=ids,
    )
    participants = pd.DataFrame(
        {
            "eid": ids,
            "y": rng.normal(50, 10, n),
            "dx": (rng.random(n) < 0.4).astype(float),
            "grp": rng.integers(0, 3, n),
        }
    )
    return build_cohort(participants, {"brain": brain}, targets=["y", "dx", "grp"])


def test_fold_preprocessor_reads_the_permuted_rows_and_keeps_them_through_its_state():
    from mot_neuro.data.preprocess import FoldPreprocessor, permuted_target_rows

    cohort = tiny_cohort()
    train, val, test = np.arange(0, 18), np.arange(18, 24), np.arange(24, 30)
    kinds = {"grp": "multiclass"}
    plain = FoldPreprocessor(target_kinds=kinds).fit(cohort, train)
    assert "target_rows" not in plain.state_dict()
    null = FoldPreprocessor(target_kinds=kinds).fit(cohort, train)
    null.target_rows = permuted_target_rows(cohort.n_subjects, [train, val], seed=11)
    rows = np.arange(30)[::-1]
    own = plain.transform_targets(null.target_rows[rows])
    permuted = null.transform_targets(rows)
    for name in ("y", "dx", "grp"):
        np.testing.assert_array_equal(permuted[name], own[name])
        np.testing.assert_array_equal(
            permuted[name][np.isin(rows, test)], plain.transform_targets(rows)[name][np.isin(rows, test)]
        )
    assert not np.array_equal(permuted["y"], plain.transform_targets(rows)["y"])

    state = json.loads(json.dumps(null.state_dict()))
    restored = FoldPreprocessor.from_state_dict(state, cohort)
    np.testing.assert_array_equal(restored.target_rows, null.target_rows)
    assert restored.target_rows.dtype == np.int64
    for name, values in restored.transform_targets(rows).items():
        np.testing.assert_array_equal(values, permuted[name])
    # values (the inputs) are not permuted
    for a, b in zip(null.transform("brain", rows), plain.transform("brain", rows), strict=True):
        np.testing.assert_array_equal(a, b)
