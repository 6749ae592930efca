"""Fold-safe preprocessing (mot_neuro.data.preprocess): fitted on training rows only."""

from __future__ import annotations

import json
import mmap
import warnings

import numpy as np
import pandas as pd
import pytest

from data_adapters.cache import load_cohort, save_cohort
from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError, TokenizedModality
from mot_neuro.data.preprocess import FoldPreprocessor, decide_targets

N = 400
SITE_EFFECT = {"a": 0.0, "b": 6.0, "c": -4.0}
TOKENS = ["thick", "area", "volume", "const", "hand"]  # "hand" is categorical (index in feature 0)


def make_cohort(seed: int = 0, n: int = N):
    """Brain tokens [n, 5, 3] with a planted age + site effect on (thick, 0), NaNs in volume, absent area tokens,
    a constant slot and a categorical token; a small gene modality; three targets."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"sub-{i:04d}" for i in range(n)], dtype=object)
    age = rng.normal(60, 8, n)
    site = rng.choice(["a", "b", "c"], n)
    values = rng.normal(size=(n, len(TOKENS), 3)).astype(np.float32) * 2 + 10
    values[:, 0, 0] = 0.5 * age + np.array([SITE_EFFECT[s] for s in site]) + rng.normal(size=n)
    feature_mask = np.ones((len(TOKENS), 3), dtype=bool)
    feature_mask[1, 2] = False  # area has two features
    feature_mask[4, 1:] = False  # hand: one categorical feature
    values[:, 1, 2] = 0.0
    values[:, 3, :] = 7.0  # constant
    values[:, 4, 1:] = 0.0
    values[:, 4, 0] = rng.integers(0, 3, n)
    volume = values[:, 2, :]
    volume[rng.random((n, 3)) < 0.1] = np.nan  # raw NaNs in volume (a view)
    present = np.ones((n, len(TOKENS)), dtype=bool)
    present[rng.random(n) < 0.15, 1] = False  # area absent for some
    brain = TokenizedModality(
        name="brain",
        values=values,
        present=present,
        token_names=TOKENS,
        subject_ids=ids,
        feature_mask=feature_mask,
        categories={"hand": ["left", "right", "both"]},
    )
    gene = TokenizedModality(
        name="gene",
        values=rng.normal(size=(n, 6, 1)).astype(np.float32) * 3 - 1,
        present=np.ones((n, 6), dtype=bool),
        token_names=[f"g{i}" for i in range(6)],
        subject_ids=ids,
    )
    y_reg = rng.normal(50, 10, n)
    y_reg[rng.random(n) < 0.05] = np.nan
    participants = pd.DataFrame(
        {
            "eid": ids,
            "age": age,
            "site": site,
            "y_reg": y_reg,
            "y_bin": (rng.random(n) < 0.3).astype(float),
            "y_cls": rng.integers(0, 4, n).astype(float),
        }
    )
    return build_cohort(
        participants, {"brain": brain, "gene": gene}, targets=["y_reg", "y_bin", "y_cls"], confounds=["age", "site"]
    )


def train_rows(n: int = N, seed: int = 1) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=int(0.7 * n), replace=False))


def wild_copy(cohort, train: np.ndarray):
    """The same cohort with every non-train row replaced by absurd values, presence, confounds and targets."""
    other = np.setdiff1d(np.arange(cohort.n_subjects), train)
    rng = np.random.default_rng(5)
    modalities = {}
    for name, m in cohort.modalities.items():
        values = np.array(m.values)
        present = np.array(m.present)
        values[other] = 1e6 * rng.standard_normal(values[other].shape) + 1e6
        values[other[::2]] = np.nan
        present[other] = rng.random(present[other].shape) < 0.5
        present[other, 0] = True  # keep every subject in the (inner-joined) cohort
        modalities[name] = TokenizedModality(
            name=name,
            values=values,
            present=present,
            token_names=m.token_names,
            subject_ids=m.subject_ids,
            feature_mask=m.feature_mask,
            categories=m.categories,
        )
    table = cohort.participants.reset_index()
    table.loc[other, "age"] = 1e6
    table.loc[other, "site"] = "zzz"
    table.loc[other, ["y_reg", "y_bin", "y_cls"]] = 1e6
    return build_cohort(table, modalities, targets=cohort.targets, confounds=cohort.confounds)


def fitted(cohort, train, **kwargs):
    kwargs.setdefault("confounds", ["age", "site"])
    kwargs.setdefault("target_kinds", {"y_cls": "multiclass"})
    return FoldPreprocessor(**kwargs).fit(cohort, train)


def canonical(state: dict) -> str:
    return json.dumps(state, sort_keys=True)


# ---------------------------------------------------------------------------------------------- fold safety
@pytest.mark.parametrize("confounds", [["age", "site"], []])
def test_non_training_rows_change_nothing_that_is_fitted(confounds):
    cohort = make_cohort()
    train = train_rows()
    wild = wild_copy(cohort, train)
    assert not np.array_equal(
        np.asarray(wild.modalities["brain"].values), np.asarray(cohort.modalities["brain"].values)
    )
    # target kinds are the cohort's, decided once (decide_targets); given them, nothing else depends on other rows
    specs = decide_targets(cohort, {"y_cls": "multiclass"})
    first = fitted(cohort, train, confounds=confounds, target_specs=specs)
    second = fitted(wild, train, confounds=confounds, target_specs=specs)
    assert canonical(first.state_dict()) == canonical(second.state_dict())
    for name in ("brain", "gene"):
        for a, b in zip(first.transform(name, train), second.transform(name, train), strict=True):
            np.testing.assert_array_equal(a, b)
    for name, values in first.transform_targets(train).items():
        np.testing.assert_array_equal(values, second.transform_targets(train)[name])


# ---------------------------------------------------------------------------------------------- confounds
def test_confound_regression_removes_a_planted_age_and_site_effect_in_train_and_held_out_rows():
    cohort = make_cohort()
    train = train_rows()
    held_out = np.setdiff1d(np.arange(N), train)
    age = cohort.participants["age"].to_numpy()
    site = cohort.participants["site"].to_numpy()
    raw = np.asarray(cohort.modalities["brain"].values)[:, 0, 0]
    assert np.corrcoef(raw, age)[0, 1] > 0.5
    pre = fitted(cohort, train)
    for rows in (train, held_out):
        out = pre.transform("brain", rows)[0][:, 0, 0]
        assert abs(np.corrcoef(out, age[rows])[0, 1]) < 0.15
        site_means = [out[site[rows] == s].mean() for s in SITE_EFFECT]
        assert np.ptp(site_means) < 0.35  # raw site differences are 10 units, i.e. several SDs
    raw_site_means = [raw[held_out][site[held_out] == s].mean() for s in SITE_EFFECT]
    assert np.ptp(raw_site_means) > 5


def test_unseen_confound_category_gets_the_training_average_with_a_counted_warning():
    cohort = make_cohort()
    train = train_rows()
    table = cohort.participants.reset_index()
    held_out = np.setdiff1d(np.arange(N), train)
    table.loc[held_out[:3], "site"] = "d"
    table.loc[held_out[3], "site"] = None
    table.loc[held_out[4], "age"] = np.nan
    cohort = build_cohort(table, cohort.modalities, targets=cohort.targets, confounds=cohort.confounds)
    pre = fitted(cohort, train)
    with pytest.warns(UserWarning, match=r"'site': 3 row\(s\)") as record:
        values, _ = pre.transform("brain", held_out)
    assert not any("sub-" in str(w.message) for w in record)
    assert np.isfinite(values).all()
    # a missing confound (None, NaN) is the training average too, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre.transform("brain", held_out[3:5])


def test_fit_reads_confound_columns_from_participants_only():
    cohort = make_cohort()
    with pytest.raises(AdapterError, match="confound not in participants") as err:
        FoldPreprocessor(confounds=["scanner"]).fit(cohort, train_rows())
    assert err.value.column == "scanner"


# ---------------------------------------------------------------------------------------------- standardize, impute
@pytest.mark.parametrize("confounds", [["age", "site"], []])
def test_standardized_training_values_have_mean_0_sd_1_per_observed_slot(confounds):
    cohort = make_cohort()
    train = train_rows()
    values, missing = fitted(cohort, train, confounds=confounds).transform("brain", train)
    feature_mask = cohort.modalities["brain"].feature_mask
    for t in range(3):  # the numeric tokens
        for f in np.flatnonzero(feature_mask[t]):
            observed = values[~missing[:, t, f], t, f]
            assert abs(observed.mean()) < 1e-5
            assert observed.std() == pytest.approx(1.0, abs=1e-4)
    # the constant slot has SD ~0: it is centred and divided by 1, not blown up
    np.testing.assert_allclose(values[:, 3, :], 0.0, atol=1e-6)


def test_missing_values_are_imputed_as_0_and_flagged_only_inside_the_feature_mask():
    cohort = make_cohort()
    brain = cohort.modalities["brain"]
    raw = np.asarray(brain.values)
    rows = np.arange(N)
    values, missing = fitted(cohort, train_rows()).transform("brain", rows)
    assert values.dtype == np.float32 and missing.dtype == bool
    assert values.shape == missing.shape == raw.shape
    assert np.isfinite(values).all()
    nan = np.isnan(raw[:, 2, :])
    assert nan.any()
    np.testing.assert_array_equal(missing[:, 2, :], nan)
    np.testing.assert_array_equal(values[:, 2, :][nan], 0.0)
    absent = ~brain.present[:, 1]
    assert absent.any()
    np.testing.assert_array_equal(missing[absent, 1, :2], True)
    np.testing.assert_array_equal(values[absent, 1, :2], 0.0)
    np.testing.assert_array_equal(missing[~absent, 1, :2], False)
    # unused slots (feature_mask False) are 0 and never flagged
    np.testing.assert_array_equal(missing[:, 1, 2], False)
    np.testing.assert_array_equal(values[:, 1, 2], 0.0)


def test_without_standardization_values_pass_through_and_missing_get_the_training_mean():
    cohort = make_cohort()
    train = train_rows()
    raw = np.asarray(cohort.modalities["brain"].values)
    values, missing = fitted(cohort, train, confounds=[], standardize=False).transform("brain", np.arange(N))
    observed = ~missing[:, 2, 0]
    np.testing.assert_array_equal(values[observed, 2, 0], raw[observed, 2, 0])
    train_mean = np.nanmean(raw[train, 2, 0])
    np.testing.assert_allclose(values[~observed, 2, 0], train_mean, rtol=1e-6)


def test_categorical_tokens_pass_through_as_category_indices():
    cohort = make_cohort()
    table = cohort.participants.reset_index()
    brain = cohort.modalities["brain"]
    present = np.array(brain.present)
    present[:10, 4] = False
    modality = TokenizedModality(
        name="brain",
        values=brain.values,
        present=present,
        token_names=brain.token_names,
        subject_ids=brain.subject_ids,
        feature_mask=brain.feature_mask,
        categories=brain.categories,
    )
    cohort = build_cohort(table, {"brain": modality}, targets=["y_reg"], confounds=["age", "site"])
    values, missing = fitted(cohort, train_rows(), target_kinds=None).transform("brain", np.arange(N))
    raw = np.asarray(brain.values)[:, 4, 0]
    np.testing.assert_array_equal(values[10:, 4, 0], raw[10:])
    np.testing.assert_array_equal(values[:10, 4, 0], 0.0)
    np.testing.assert_array_equal(missing[:10, 4, 0], True)
    np.testing.assert_array_equal(missing[10:, 4, 0], False)


def test_impute_other_than_mean_is_refused():
    with pytest.raises(AdapterError, match="impute must be one of"):
        FoldPreprocessor(impute="median")


# ---------------------------------------------------------------------------------------------- memory maps, state
def test_memory_mapped_cohort_in_small_blocks_gives_the_in_memory_result(tmp_path):
    cohort = make_cohort()
    train = train_rows()
    mapped = load_cohort(save_cohort(cohort, tmp_path / "cohort"), mmap=True)
    base = mapped.modalities["brain"].values
    while not isinstance(base, mmap.mmap):  # the arrays are views of the mapped files, not copies
        base = base.base
    assert not mapped.modalities["brain"].values.flags.writeable
    in_memory = fitted(cohort, train, block_rows=7)
    from_disk = fitted(mapped, train, block_rows=7)
    one_block = fitted(cohort, train)
    assert canonical(in_memory.state_dict()) == canonical(from_disk.state_dict())
    rows = np.arange(N)
    for name in ("brain", "gene"):
        expected = one_block.transform(name, rows)
        for a, b in zip(in_memory.transform(name, rows), from_disk.transform(name, rows), strict=True):
            np.testing.assert_array_equal(a, b)
        got = from_disk.transform(name, rows)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)  # other summation order only
        np.testing.assert_array_equal(got[1], expected[1])


def test_state_dict_round_trip_through_json_reproduces_transform_exactly():
    cohort = make_cohort()
    train = train_rows()
    pre = fitted(cohort, train)
    state = json.loads(json.dumps(pre.state_dict()))
    restored = FoldPreprocessor.from_state_dict(state, cohort)
    assert canonical(restored.state_dict()) == canonical(pre.state_dict())
    assert restored.target_kinds == pre.target_kinds and restored.n_classes == pre.n_classes
    rows = np.arange(N)[::-1]  # any order
    for name in ("brain", "gene"):
        for a, b in zip(pre.transform(name, rows), restored.transform(name, rows), strict=True):
            np.testing.assert_array_equal(a, b)
    for name, values in pre.transform_targets(rows).items():
        np.testing.assert_array_equal(values, restored.transform_targets(rows)[name])
    with pytest.raises(AdapterError, match="no cohort"):
        FoldPreprocessor.from_state_dict(state).transform("brain", rows)
    with pytest.raises(AdapterError, match="version"):
        FoldPreprocessor.from_state_dict({**state, "version": 99})


# ---------------------------------------------------------------------------------------------- targets
def test_regression_targets_are_standardized_with_training_statistics_and_inverted():
    cohort = make_cohort()
    train = train_rows()
    pre = fitted(cohort, train)
    y = cohort.participants["y_reg"].to_numpy()
    scaled = pre.transform_targets(train)["y_reg"]
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(scaled), np.isnan(y[train]))
    assert abs(np.nanmean(scaled)) < 1e-5 and np.nanstd(scaled) == pytest.approx(1.0, abs=1e-5)
    held_out = np.setdiff1d(np.arange(N), train)
    back = pre.inverse_target("y_reg", pre.transform_targets(held_out)["y_reg"])
    np.testing.assert_allclose(back, y[held_out], rtol=1e-5)
    np.testing.assert_array_equal(pre.inverse_target("y_bin", [0.0, 1.0]), [0.0, 1.0])


def test_target_kinds_are_inferred_or_declared():
    cohort = make_cohort()
    train = train_rows()
    inferred = FoldPreprocessor().fit(cohort, train)
    assert inferred.target_kinds == {"y_reg": "regression", "y_bin": "binary", "y_cls": "regression"}
    assert inferred.n_classes == {}
    declared = fitted(cohort, train)
    assert declared.target_kinds["y_cls"] == "multiclass" and declared.n_classes == {"y_cls": 4}
    targets = declared.transform_targets(np.arange(N))
    np.testing.assert_array_equal(targets["y_cls"], cohort.participants["y_cls"].to_numpy(np.float32))
    np.testing.assert_array_equal(targets["y_bin"], cohort.participants["y_bin"].to_numpy(np.float32))
    with pytest.raises(AdapterError, match="binary target must hold only 0 and 1") as err:
        FoldPreprocessor(target_kinds={"y_cls": "binary"}).fit(cohort, train)
    assert err.value.column == "y_cls"
    with pytest.raises(AdapterError, match="multiclass target must hold integer"):
        FoldPreprocessor(target_kinds={"y_reg": "multiclass"}).fit(cohort, train)
    with pytest.raises(AdapterError, match="target kind must be one of"):
        FoldPreprocessor(target_kinds={"y_reg": "ordinal"})
    with pytest.raises(AdapterError, match="not targets of the cohort"):
        FoldPreprocessor(target_kinds={"age": "regression"}).fit(cohort, train)


def test_held_out_class_labels_unknown_to_training_are_refused():
    cohort = make_cohort()
    specs = decide_targets(cohort, {"y_cls": "multiclass"})  # 4 classes, decided before the label is changed
    table = cohort.participants.reset_index()
    train = train_rows()
    held_out = np.setdiff1d(np.arange(N), train)
    table.loc[held_out[0], "y_cls"] = 9
    cohort = build_cohort(table, cohort.modalities, targets=cohort.targets, confounds=cohort.confounds)
    # decided from the whole cohort, label 9 leaves classes 4..8 without a subject: refused before any fit
    with pytest.raises(AdapterError, match="no subject of class 4"):
        fitted(cohort, train)
    pre = fitted(cohort, train, target_specs=specs)
    pre.transform_targets(train)
    with pytest.raises(AdapterError, match=r"labels outside 0\.\.3"):
        pre.transform_targets(held_out)


# ---------------------------------------------------------------------------------------------- row errors
def test_bad_rows_are_refused_with_the_valid_range():
    cohort = make_cohort(n=20)
    with pytest.raises(AdapterError, match=r"row 20, but the cohort has 20 subjects \(rows 0\.\.19\)"):
        FoldPreprocessor().fit(cohort, np.array([0, 5, 20]))
    with pytest.raises(AdapterError, match="row -1"):
        FoldPreprocessor().fit(cohort, np.array([-1, 2]))
    with pytest.raises(AdapterError, match="train_rows is empty"):
        FoldPreprocessor().fit(cohort, np.array([], dtype=int))
    with pytest.raises(AdapterError, match="integer row positions"):
        FoldPreprocessor().fit(cohort, np.array([0.5, 1.0]))
    pre = FoldPreprocessor().fit(cohort, np.arange(10))
    with pytest.raises(AdapterError, match="row 25"):
        pre.transform("brain", [1, 25])
    with pytest.raises(AdapterError, match="was not fitted"):
        pre.transform("eeg", [1])
    with pytest.raises(RuntimeError, match="not fitted"):
        FoldPreprocessor().transform("brain", [0])
    mask = np.zeros(20, dtype=bool)
    mask[:10] = True
    assert canonical(FoldPreprocessor().fit(cohort, mask).state_dict()) == canonical(pre.state_dict())
