"""mot_neuro.probe against independent computations: the resampling of its CIs, its penalty search, its grid.

* Bootstrap: resamples (AUROC/AUPRC drawn within class and, with groups, as whole groups within strata of the
  classes a group holds; other metrics drawn plainly) are replayed here one at a time with the same random draws
  and scored with scikit-learn; the percentiles must be the probe's. Every stratified resample holds every class.
* Penalty search: the probe's choice and predictions equal scikit-learn's ``GridSearchCV`` over the whole
  pipeline (imputer -> scaler -> model) with the same inner splits and the grid its documentation gives.
* Grid: with many noisy copies of one signal the penalty the data need lies beyond the old grid's end (1e3), and
  is better there on fresh data; a penalty on an edge of the grid is logged once and noted.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    log_loss,
    make_scorer,
    mean_absolute_error,
    roc_auc_score,
)
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mot_neuro.probe import _bootstrap, _pipeline, _resample_counts, _resampling, _RowSpace, penalty_grid, probe


@pytest.fixture(autouse=True)
def _one_thread():
    """Small matrices: BLAS threads only slow the reference fits on a busy machine."""
    with threadpool_limits(limits=1):
        yield


def _ids(n: int) -> np.ndarray:
    return np.array([f"s{i:04d}" for i in range(n)], dtype=object)


def _row(results: pd.DataFrame, target: str, metric: str) -> pd.Series:
    hit = results[(results.target == target) & (results.metric == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


# ---------------------------------------------------------------------------------------------- resampling
def _replay(draws_per_stratum, n_resamples: int):
    """Rows of each resample: the units drawn in every stratum, stratum after stratum."""
    return [np.concatenate([d[b] for d in draws_per_stratum]) for b in range(n_resamples)]


def test_stratified_bootstrap_equals_a_resample_by_resample_replay():
    """Binary and multiclass: AUROC/AUPRC from draws within each class (class order, ``integers(0, n_c, (B,
    n_c))``), the other metrics from plain draws (``integers(0, n, (B, n))``), each from ``default_rng(seed)``;
    metrics by scikit-learn on the drawn rows, percentiles by numpy: the probe's values and CIs exactly."""
    rng = np.random.default_rng(5)
    n, n_resamples, seed = 60, 200, 11
    y = (rng.random(n) < 0.15).astype(float)
    y[:2] = 1.0  # at least two cases
    p = np.round(rng.random(n), 1)  # ties on purpose
    draw = np.random.default_rng(seed)
    members = [np.flatnonzero(y == c) for c in np.unique(y)]
    rows = _replay([m[draw.integers(0, len(m), size=(n_resamples, len(m)))] for m in members], n_resamples)
    assert all(len(np.unique(y[r])) == 2 for r in rows)  # every resample holds both classes
    plain = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    expected = {
        "auroc": [roc_auc_score(y[r], p[r]) for r in rows],
        "auprc": [average_precision_score(y[r], p[r]) for r in rows],
        "brier": [np.mean((p[r] - y[r]) ** 2) for r in plain],
    }
    got = _bootstrap("binary", y, p, None, n_resamples, seed)
    for name, values in expected.items():
        value, low, high, valid, drawn = got[name]
        assert valid == drawn == n_resamples
        np.testing.assert_allclose([low, high], np.percentile(values, [2.5, 97.5]), rtol=0, atol=1e-12)
    assert got["auroc"][0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)

    labels = np.array([0.0, 1.0, 2.0])
    ym = rng.choice(labels, size=n, p=[0.6, 0.3, 0.1])
    pm = rng.dirichlet(np.ones(3), size=n)
    draw = np.random.default_rng(seed)
    members = [np.flatnonzero(ym == c) for c in labels]
    rows = _replay([m[draw.integers(0, len(m), size=(n_resamples, len(m)))] for m in members], n_resamples)
    auroc = [roc_auc_score(ym[r], pm[r], multi_class="ovr", labels=labels) for r in rows]
    plain = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    accuracy = [accuracy_score(ym[r], labels[pm[r].argmax(axis=1)]) for r in plain]
    got = _bootstrap("multiclass", ym, pm, labels, n_resamples, seed)
    assert got["auroc"][3] == n_resamples
    np.testing.assert_allclose(got["auroc"][1:3], np.percentile(auroc, [2.5, 97.5]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["accuracy"][1:3], np.percentile(accuracy, [2.5, 97.5]), rtol=0, atol=1e-12)


def test_accuracy_of_a_constant_classifier_varies_with_the_prevalence():
    """Accuracy, Brier and ECE are resampled plainly: a classifier that always says class 0 has the share of class
    0 as its accuracy, and its CI is that share's bootstrap CI (held to the test set's class counts it would be
    [v, v])."""
    rng = np.random.default_rng(6)
    labels = np.array([0.0, 1.0, 2.0])
    y = rng.choice(labels, size=80, p=[0.5, 0.3, 0.2])
    constant = np.tile([0.6, 0.25, 0.15], (80, 1))
    value, low, high, valid, drawn = _bootstrap("multiclass", y, constant, labels, 400, 9)["accuracy"]
    share = (y[np.random.default_rng(9).integers(0, 80, size=(400, 80))] == 0).mean(axis=1)
    assert value == pytest.approx(np.mean(y == 0)) and valid == drawn == 400 and high > low
    np.testing.assert_allclose([low, high], np.percentile(share, [2.5, 97.5]), rtol=0, atol=1e-12)


def test_cluster_bootstrap_equals_a_replay_of_whole_groups():
    """Whole groups, drawn within strata of the set of classes a group holds (all controls, all cases, mixed):
    replayed group by group, the probe's AUROC CI exactly; without classes, plain whole-group counts."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 5, size=30)
    groups = np.repeat(np.arange(30), sizes)  # codes 0..29, unequal sizes
    n = len(groups)
    group_kind = rng.choice(3, size=30, p=[0.6, 0.25, 0.15])  # 0: controls only, 1: cases only, 2: mixed
    y = np.where(group_kind[groups] == 1, 1.0, 0.0)
    for g in np.flatnonzero(group_kind == 2):
        rows_g = np.flatnonzero(groups == g)
        y[rows_g] = np.arange(len(rows_g)) % 2 if len(rows_g) > 1 else 1.0
    p = rng.random(n)
    n_resamples, seed = 400, 2

    # strata: the set of classes each group holds, in lexicographic order of (holds class 0, holds class 1)
    holds = {g: tuple(bool(((groups == g) & (y == c)).any()) for c in (0.0, 1.0)) for g in range(30)}
    patterns = sorted(set(holds.values()))
    draw = np.random.default_rng(seed)
    drawn = []
    for pattern in patterns:
        units = np.array([g for g in range(30) if holds[g] == pattern])
        drawn.append(units[draw.integers(0, len(units), size=(n_resamples, len(units)))])
    members = [np.flatnonzero(groups == g) for g in range(30)]
    rows = [np.concatenate([members[g] for g in picks]) for picks in _replay(drawn, n_resamples)]
    assert all(len(np.unique(y[r])) == 2 for r in rows)
    auroc = [roc_auc_score(y[r], p[r]) for r in rows]
    value, low, high, valid, _ = _bootstrap("binary", y, p, None, n_resamples, seed, groups)["auroc"]
    assert valid == n_resamples and value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    np.testing.assert_allclose([low, high], np.percentile(auroc, [2.5, 97.5]), rtol=0, atol=1e-12)
    assert _resampling("binary", y, groups)[1] == "groups (cluster) within class pattern (stratified)"

    # regression: one stratum of all groups; a subject weighs as often as its group is drawn
    counts = _resample_counts(np.random.default_rng(seed), 50, n, groups)
    picks = np.random.default_rng(seed).integers(0, 30, size=(50, 30))
    expected = np.array([np.bincount(row, minlength=30)[groups] for row in picks], dtype=float)
    np.testing.assert_array_equal(counts, expected)


def test_stratified_resamples_never_miss_a_class():
    """One case in ten: every resample keeps one case and nine controls (a plain bootstrap would lose about a
    third of its resamples, 0.9^10); with groups, every resample holds every class and as many groups of each
    class pattern as the test set."""
    y = np.array([1.0] + [0.0] * 9)
    strata, label = _resampling("binary", y, None)
    assert label == "subjects within class (stratified)"
    counts = _resample_counts(np.random.default_rng(0), 2000, len(y), None, strata)
    assert (counts[:, 0] == 1).all() and (counts[:, 1:].sum(axis=1) == 9).all()
    value, low, high, valid, _ = _bootstrap("binary", y, np.linspace(0.9, 0.0, 10), None, 1000, 0)["auroc"]
    assert valid == 1000 and np.isfinite(low) and np.isfinite(high)

    groups = np.repeat(np.arange(12), 3)
    yg = np.zeros(36)
    yg[groups == 0] = 1.0  # one family of cases
    yg[np.flatnonzero(groups == 5)[:1]] = 1.0  # one case in a family of controls
    yg[np.flatnonzero(groups == 7)[:1]] = 2.0  # one subject of a third class
    strata, _ = _resampling("multiclass", yg, groups)
    counts = _resample_counts(np.random.default_rng(1), 2000, 36, groups, strata)
    for c in (0.0, 1.0, 2.0):
        assert (counts[:, yg == c].sum(axis=1) > 0).all()
    for stratum in np.unique(strata):  # groups drawn per stratum: as many as it has
        in_stratum = np.isin(groups, np.flatnonzero(strata == stratum))
        assert (counts[:, in_stratum].sum(axis=1) == 3 * (strata == stratum).sum()).all()


def test_too_few_valid_resamples_give_no_ci():
    """Pearson is undefined in a resample whose predictions are constant. Under 90% valid: no CI; above: the CI of
    the valid resamples, as the replay computes it."""
    n_resamples, seed = 500, 4
    rng = np.random.default_rng(0)
    for n, varying in ((10, 1), (30, 3)):
        y = rng.normal(size=n)
        pred = np.zeros(n)
        pred[:varying] = np.arange(1, varying + 1)
        picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
        values = [pearsonr(y[r], pred[r])[0] for r in picks if np.ptp(pred[r]) > 0]
        value, low, high, valid, _ = _bootstrap("regression", y, pred, None, n_resamples, seed)["pearson"]
        assert valid == len(values)
        if valid < 0.9 * n_resamples:  # 1 - 0.9^10: about 65% valid
            assert n == 10 and np.isnan(low) and np.isnan(high)
        else:  # 1 - 0.9^30: about 96% valid
            assert n == 30
            np.testing.assert_allclose([low, high], np.percentile(values, [2.5, 97.5]), rtol=0, atol=1e-10)
        mae = _bootstrap("regression", y, pred, None, n_resamples, seed)["mae"]
        assert mae[3] == n_resamples and np.isfinite(mae[1])

    # through probe(): two test subjects, r2 undefined whenever both draws are the same subject (half the time)
    ids = _ids(42)
    x = rng.normal(size=(42, 3))
    targets = pd.DataFrame({"t": x @ [1.0, -1.0, 0.5] + 0.3 * rng.normal(size=42)}, index=ids)
    splits = {"train": ids[:30], "val": ids[30:40], "test": ids[40:]}
    results = probe({"x": pd.DataFrame(x, index=ids)}, targets, splits, kinds={"t": "regression"}, n_bootstrap=200)
    r2 = _row(results, "t", "r2")
    assert 60 < r2.n_resamples_valid < 140 and r2.n_resamples == 200 and np.isnan(r2.ci_low)
    assert f"no CI: the metric is defined in only {r2.n_resamples_valid} of 200 resamples" in r2.note
    assert np.isfinite(_row(results, "t", "mae").ci_low)


def test_probe_with_one_case_in_ten_keeps_every_resample():
    rng = np.random.default_rng(8)
    ids = _ids(130)
    x = rng.normal(size=(130, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=130) > 0.3).astype(float)
    y[120], y[121:] = 1.0, 0.0  # the test set: one case, nine controls
    splits = {"train": ids[:90], "val": ids[90:120], "test": ids[120:]}
    targets = pd.DataFrame({"case": y}, index=ids)
    results = probe({"x": pd.DataFrame(x, index=ids)}, targets, splits, kinds={"case": "binary"}, n_bootstrap=1000)
    assert (results.n_resamples_valid == 1000).all() and (results.n_resamples == 1000).all()
    ranking = results.metric.isin(["auroc", "auprc"])
    assert (results.resampling[ranking] == "subjects within class (stratified)").all()
    assert (results.resampling[~ranking] == "subjects").all()
    auroc = _row(results, "case", "auroc")
    assert np.isfinite(auroc.ci_low) and "class 1 in only 1 test subject(s)" in auroc.note


# ---------------------------------------------------------------------------------------------- penalty search
def _documented_grid(kind: str, n: int, p: int) -> np.ndarray:
    """Half-decade ridge alphas from 1e-3 to the first step >= 100 n p; whole-decade logistic Cs from the last
    step <= 0.04 / (n p) to 1e4."""
    if kind == "regression":
        return 10.0 ** np.arange(-3, np.ceil(2 * np.log10(100 * n * p)) / 2 + 0.25, 0.5)
    return 10.0 ** np.arange(np.floor(np.log10(0.04 / (n * p))), 4.5, 1.0)


def _messy_features(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Six features on scales 1e-3 .. 1e2 with 15% missing values (the imputer and scaler matter), a latent."""
    latent = rng.normal(size=n)
    x = np.column_stack([latent + rng.normal(scale=s, size=n) for s in (0.5, 1.0, 2.0, 1.0, 3.0, 1.0)])
    x[:, 3:] = rng.normal(size=(n, 3))  # three noise features
    x *= 10.0 ** np.arange(-3, 3)
    x[rng.random(x.shape) < 0.15] = np.nan
    return x, latent


def _reference_search(kind: str, x_fit, y_fit, cv):
    pipeline = Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())])
    if kind == "regression":
        model, parameter, scoring = Ridge(), "model__alpha", "neg_mean_squared_error"
    else:
        model, parameter = LogisticRegression(max_iter=2000), "model__C"
        scoring = make_scorer(
            log_loss, greater_is_better=False, response_method="predict_proba", labels=np.unique(y_fit)
        )
    pipeline.steps.append(("model", model))
    grid = _documented_grid(kind, *x_fit.shape)
    np.testing.assert_allclose(penalty_grid(kind, *x_fit.shape), grid, rtol=1e-12)
    search = GridSearchCV(pipeline, {parameter: grid}, scoring=scoring, cv=cv).fit(x_fit, y_fit)
    return search, search.best_params_[parameter]


@pytest.mark.parametrize(
    ("kind", "grouped"),
    [("regression", False), ("binary", False), ("multiclass", False), ("regression", True), ("binary", True)],
)
def test_penalty_search_equals_grid_search_over_the_whole_pipeline(kind, grouped):
    """Imputer and scaler are refitted inside every inner split: the probe's penalty and test predictions are
    those of GridSearchCV(Pipeline) with the same splits (K-fold, stratified for classification; grouped k-fold
    with groups), refitted on all training subjects."""
    rng = np.random.default_rng(21)
    n = 160
    ids = _ids(n)
    x, latent = _messy_features(rng, n)
    y = {
        "regression": latent + 0.5 * rng.normal(size=n),
        "binary": (latent + 0.7 * rng.normal(size=n) > 0).astype(float),
        "multiclass": np.digitize(latent + 0.5 * rng.normal(size=n), [-0.5, 0.5]).astype(float),
    }[kind]
    group_of = pd.Series([f"family{i // 4:02d}" for i in range(n)], index=ids)  # families of four
    order = rng.permutation(n // 4)  # whole families per split
    fam = {"train": order[:26], "val": order[26:32], "test": order[32:]}
    splits = {part: ids[np.isin(np.arange(n) // 4, f)] for part, f in fam.items()}
    seed, inner_folds = 3, 4
    results = probe(
        {"x": pd.DataFrame(x, index=ids)},
        pd.DataFrame({"t": y}, index=ids),
        splits,
        kinds={"t": kind},
        n_bootstrap=0,
        seed=seed,
        inner_folds=inner_folds,
        groups=group_of if grouped else None,
    )
    fit = np.sort(np.concatenate([splits["train"], splits["val"]]))  # the probe fits in subject ID order
    test = np.sort(splits["test"])
    position = {sid: i for i, sid in enumerate(ids)}
    x_fit, y_fit = x[[position[s] for s in fit]], y[[position[s] for s in fit]]
    x_test, y_test = x[[position[s] for s in test]], y[[position[s] for s in test]]
    if grouped:
        codes = pd.factorize(group_of.loc[fit].to_numpy(), sort=True)[0]
        if kind == "regression":
            cv = list(GroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed).split(x_fit, y_fit, codes))
        else:
            from sklearn.model_selection import StratifiedGroupKFold

            splitter = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
            cv = list(splitter.split(x_fit, y_fit, codes))
        for train, held in cv:
            assert not set(codes[train]) & set(codes[held])
    elif kind == "regression":
        cv = KFold(n_splits=inner_folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
    search, best = _reference_search(kind, x_fit, y_fit, cv)
    assert (results.penalty == best).all()  # the same grid point, so exactly equal
    # the whole loss curve, split by split: an imputer or scaler fitted on an inner split's held-out rows moves it
    tuned = _pipeline(kind, inner_folds, seed, cv if grouped else None).fit(x_fit, y_fit)
    for i in range(tuned.cv_loss_.shape[0]):
        np.testing.assert_allclose(tuned.cv_loss_[i], -search.cv_results_[f"split{i}_test_score"], rtol=1e-9)
    if kind == "regression":
        pred = search.predict(x_test)
        assert _row(results, "t", "mae").value == pytest.approx(mean_absolute_error(y_test, pred), rel=1e-10)
    elif kind == "binary":
        prob = search.predict_proba(x_test)[:, 1]
        assert _row(results, "t", "brier").value == pytest.approx(np.mean((prob - y_test) ** 2), rel=1e-10)
        assert _row(results, "t", "auroc").value == pytest.approx(roc_auc_score(y_test, prob), abs=1e-12)
    else:
        prob = search.predict_proba(x_test)
        accuracy = accuracy_score(y_test, search.classes_[prob.argmax(axis=1)])
        assert _row(results, "t", "accuracy").value == pytest.approx(accuracy, abs=1e-12)
        auroc = roc_auc_score(y_test, prob, multi_class="ovr", labels=search.classes_)
        assert _row(results, "t", "auroc").value == pytest.approx(auroc, abs=1e-12)


def test_wide_logistic_probe_reaches_the_same_optimum():
    """More features than rows: the logistic probe is fitted in the span of the training rows. Solved tightly,
    that is the optimum on the features themselves (to rounding); at the default tolerance the probe picks the C of
    GridSearchCV over the plain pipeline and predicts what it predicts, to the solver's tolerance."""
    rng = np.random.default_rng(0)
    n, p = 90, 400
    latent = rng.normal(size=n + 40)
    x = latent[:, None] * rng.normal(size=p) * 0.3 + rng.normal(size=(n + 40, p))
    y = (latent + 0.5 * rng.normal(size=n + 40) > -0.5).astype(float)
    scaler = StandardScaler().fit(x[:n])
    x_fit, x_new = scaler.transform(x[:n]), scaler.transform(x[n:])
    rows = _RowSpace().fit(x_fit)
    for c in (0.01, 1.0):
        tight = dict(C=c, tol=1e-12, max_iter=100_000)
        on_features = LogisticRegression(**tight).fit(x_fit, y[:n]).predict_proba(x_new)
        on_rows = LogisticRegression(**tight).fit(rows.transform(x_fit), y[:n]).predict_proba(rows.transform(x_new))
        np.testing.assert_allclose(on_rows, on_features, rtol=0, atol=1e-9)

    tuned = _pipeline("binary", 5, 0).fit(x[:n], y[:n])
    search, best = _reference_search("binary", x[:n], y[:n], StratifiedKFold(5, shuffle=True, random_state=0))
    assert tuned.penalty_ == best
    np.testing.assert_allclose(tuned.predict_proba(x[n:]), search.predict_proba(x[n:]), rtol=0, atol=0.02)


# ---------------------------------------------------------------------------------------------- penalty grid
def test_the_heavy_end_of_the_ridge_grid_is_practically_the_mean():
    """Effective degrees of freedom sum(l / (l + alpha)) over the eigenvalues of the standardized X'X: at most
    0.01 at the grid's top, for few and for many features (and nearly all of them at its bottom when n > p)."""
    rng = np.random.default_rng(0)
    for n, p in ((200, 5), (60, 3000)):
        x = StandardScaler().fit_transform(rng.normal(size=(n, p)) + rng.normal(size=(n, 1)))  # correlated
        eigenvalues = np.linalg.eigvalsh(x @ x.T if p > n else x.T @ x)
        grid = penalty_grid("regression", n, p)
        assert np.sum(eigenvalues / (eigenvalues + grid[-1])) <= 0.01
        assert grid[0] == pytest.approx(1e-3) and grid[-1] >= 100 * n * p
    x = StandardScaler().fit_transform(rng.normal(size=(200, 5)))
    eigenvalues = np.linalg.eigvalsh(x.T @ x)
    assert np.sum(eigenvalues / (eigenvalues + penalty_grid("regression", 200, 5)[0])) > 4.99


def _noisy_copies(rng, n: int, p: int):
    """p noisy copies of one signal (each half signal, half noise), target = signal + noise: with p close to n,
    the noise directions of X'X must be shrunk away, which takes a penalty far above the old grid's 1e3."""
    signal = rng.normal(size=n)
    x = signal[:, None] + rng.normal(size=(n, p))
    return x, signal + rng.normal(size=n)


def test_many_features_get_a_penalty_beyond_the_old_grid(caplog):
    rng = np.random.default_rng(2)
    n_fit, p = 800, 700
    x, y = _noisy_copies(rng, n_fit + 20, p)
    ids = _ids(n_fit + 20)
    splits = {"train": ids[:600], "val": ids[600:n_fit], "test": ids[n_fit:]}
    with caplog.at_level(logging.WARNING, logger="mot_neuro.probe"):
        results = probe(
            {"copies": pd.DataFrame(x, index=ids)},
            pd.DataFrame({"t": y}, index=ids),
            splits,
            kinds={"t": "regression"},
            n_bootstrap=0,
        )
    alpha = float(results.penalty.iloc[0])
    grid = _documented_grid("regression", n_fit, p)
    assert 1e3 < alpha < grid[-1] and np.isclose(grid, alpha).any()  # inside the widened grid, past the old end
    assert (results.note == "").all() and not caplog.records

    # independently, on fresh data of the same kind: the chosen penalty predicts better than the old edge's
    x_new, y_new = _noisy_copies(rng, 4000, p)
    order = np.argsort(ids[:n_fit])  # the probe fits in subject ID order (here the same)
    errors = {}
    for a in (1e3, alpha):
        model = Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=a))]).fit(
            x[:n_fit][order], y[:n_fit][order]
        )
        errors[a] = np.mean((model.predict(x_new) - y_new) ** 2)
    assert errors[alpha] < 0.97 * errors[1e3]


def test_a_penalty_on_the_edge_of_its_grid_is_logged_once_and_noted(caplog):
    """Pure noise: ridge takes the heaviest alpha (the probe is about the mean); separable classes: logistic takes
    the largest C (practically unpenalized). Each is one log line and a note on every row of that target."""
    rng = np.random.default_rng(4)
    n = 120
    ids = _ids(n)
    x = rng.normal(size=(n, 5))
    targets = pd.DataFrame({"noise": rng.normal(size=n), "separable": (x[:, 0] > 0).astype(float)}, index=ids)
    x[:, 0] += np.where(x[:, 0] > 0, 3.0, -3.0)  # a wide margin between the classes
    splits = {"train": ids[:80], "val": ids[80:100], "test": ids[100:]}
    kinds = {"noise": "regression", "separable": "binary"}
    with caplog.at_level(logging.WARNING, logger="mot_neuro.probe"):
        results = probe({"x": pd.DataFrame(x, index=ids)}, targets, splits, kinds=kinds, n_bootstrap=20)
    heavy, light = _documented_grid("regression", 100, 5)[-1], _documented_grid("binary", 100, 5)[-1]
    noise, separable = results[results.target == "noise"], results[results.target == "separable"]
    assert np.allclose(noise.penalty, heavy, rtol=1e-12)
    assert noise.note.str.contains("ridge alpha=.* on the heavy-penalty edge of its grid", regex=True).all()
    assert np.allclose(separable.penalty, light, rtol=1e-12)
    assert separable.note.str.contains("logistic C=1e\\+04 on the light-penalty edge of its grid", regex=True).all()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert "'noise'" in messages[0] and "heavy-penalty edge" in messages[0]
    assert "'separable'" in messages[1] and "light-penalty edge" in messages[1]


# ---------------------------------------------------------------------------------------------- notes
def test_a_flat_cv_loss_is_noted_instead_of_an_edge(caplog):
    """Constant features: every penalty of the grid scores exactly alike, so no penalty was chosen (the tie rule
    kept the first). The note says so, not "light-penalty edge: practically unpenalized"; the probe predicts the
    training mean (regression) or prevalence (binary), computed here directly."""
    rng = np.random.default_rng(11)
    n = 60
    ids = _ids(n)
    x = pd.DataFrame({"one": np.ones(n), "two": np.full(n, 2.0)}, index=ids)
    targets = pd.DataFrame({"yr": rng.normal(size=n), "yb": (rng.random(n) < 0.3).astype(float)}, index=ids)
    splits = {"train": ids[:40], "val": ids[40:50], "test": ids[50:]}
    with caplog.at_level(logging.WARNING, logger="mot_neuro.probe"):
        results = probe({"x": x}, targets, splits, kinds={"yr": "regression", "yb": "binary"}, n_bootstrap=20)
    flat = "CV loss flat across the penalty grid: no usable features"
    assert results.note.str.contains(flat, regex=False).all()
    assert not results.note.str.contains("edge").any()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2 and all(flat in m for m in messages)

    y_fit, y_test = targets.loc[ids[:50]], targets.loc[ids[50:]]
    mae = np.mean(np.abs(y_test.yr - y_fit.yr.mean()))
    assert _row(results, "yr", "mae").value == pytest.approx(mae, rel=1e-10)
    brier = np.mean((y_test.yb - y_fit.yb.mean()) ** 2)
    assert _row(results, "yb", "brier").value == pytest.approx(brier, abs=1e-4)
    # one prediction for every test subject: pearson is undefined for that reason, not for a missing class
    pearson = _row(results, "yr", "pearson")
    assert np.isnan(pearson.value) and "constant prediction" in pearson.note and "class" not in pearson.note

    # a feature that carries the target: the loss varies across the grid and no flat note is given
    x["signal"] = targets.yr + 0.1 * rng.normal(size=n)
    results = probe({"x": x}, targets[["yr"]], splits, kinds={"yr": "regression"}, n_bootstrap=0)
    assert not results.note.str.contains("flat").any()


def test_an_undefined_metric_names_its_reason():
    """Regression: a constant test target leaves r2 and pearson undefined (zero variance of the truth, checked
    here directly); classification: a class absent from the test set leaves the ranking metrics undefined."""
    rng = np.random.default_rng(12)
    n = 90
    ids = _ids(n)
    x = rng.normal(size=(n, 3))
    latent = x[:, 0] + 0.5 * rng.normal(size=n)
    targets = pd.DataFrame(
        {
            "yr": latent,
            "yb": (latent > 0).astype(float),
            "y3": np.digitize(latent, [-0.5, 0.5]).astype(float),
        },
        index=ids,
    )
    test = ids[70:]
    targets.loc[test, "yr"] = 2.5
    targets.loc[test, "yb"] = 0.0
    targets.loc[test, "y3"] = np.where(np.arange(len(test)) % 2, 0.0, 1.0)  # class 2 absent
    splits = {"train": ids[:60], "val": ids[60:70], "test": test}
    kinds = {"yr": "regression", "yb": "binary", "y3": "multiclass"}
    results = probe({"x": pd.DataFrame(x, index=ids)}, targets, splits, kinds=kinds, n_bootstrap=20)
    assert np.var(targets.loc[test, "yr"].to_numpy()) == 0.0
    for metric in ("r2", "pearson"):
        row = _row(results, "yr", metric)
        assert np.isnan(row.value) and "constant truth" in row.note and "class" not in row.note
    assert np.isfinite(_row(results, "yr", "mae").value)
    assert sorted(np.unique(targets.loc[test, "yb"])) == [0.0]
    for metric in ("auroc", "auprc"):
        assert "only class 0" in _row(results, "yb", metric).note
        row = _row(results, "y3", metric)
        assert np.isnan(row.value) and "class(es) 2 absent" in row.note


def test_feature_columns_missing_in_every_training_subject_are_dropped_once():
    """A column without a value in any training subject is dropped before fitting: no imputer warning (there was
    one per inner fit), a note with the count, and the same results as the set without it. A column observed in
    one training subject stays (its inner splits without it leave it out silently). The refit predictions equal a
    scikit-learn pipeline on the kept columns with the probe's penalty."""
    rng = np.random.default_rng(13)
    n = 80
    ids = _ids(n)
    x = pd.DataFrame(rng.normal(size=(n, 3)), index=ids, columns=["a", "b", "c"])
    x["once"] = np.nan
    x.loc[ids[5], "once"] = 1.0
    y = x.a + 0.5 * rng.normal(size=n)
    targets = pd.DataFrame({"yr": y, "yb": (y > 0).astype(float)}, index=ids)
    splits = {"train": ids[:50], "val": ids[50:60], "test": ids[60:]}
    kinds = {"yr": "regression", "yb": "binary"}
    with_nan = x.assign(empty=np.nan, empty_too=np.nan)
    with_nan.loc[ids[60:], "empty"] = 3.0  # observed in test subjects only: still nothing to fit on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings_free = probe({"x": with_nan}, targets, splits, kinds=kinds, n_bootstrap=50)
    assert [str(w.message) for w in caught] == []
    assert warnings_free.note.str.startswith(
        "2 feature column(s) missing (NaN) in every training subject dropped before fitting"
    ).all()
    reference = probe({"x": x}, targets, splits, kinds=kinds, n_bootstrap=50)
    numeric = ["value", "ci_low", "ci_high", "n_resamples_valid", "penalty"]
    pd.testing.assert_frame_equal(warnings_free[numeric], reference[numeric])

    fit, test = ids[:60], ids[60:]
    alpha = _row(warnings_free, "yr", "mae").penalty
    pipeline = Pipeline(
        [("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler()), ("model", Ridge(alpha=alpha))]
    ).fit(x.loc[fit].to_numpy(), y.loc[fit].to_numpy())
    mae = mean_absolute_error(y.loc[test], pipeline.predict(x.loc[test].to_numpy()))
    assert _row(warnings_free, "yr", "mae").value == pytest.approx(mae, rel=1e-9)

    # nothing observed at all: no fit, one warning, the reason in the note
    with pytest.warns(UserWarning, match="every feature column is missing"):
        empty = probe({"x": with_nan[["empty"]]}, targets[["yr"]], splits, kinds=kinds, n_bootstrap=10)
    assert empty.value.isna().all() and empty.note.str.startswith("cannot fit: every feature column").all()


def test_a_class_too_rare_to_fit_is_named_in_the_note():
    """Every class needs 2 training subjects (the inner CV is stratified); the note gives each class's count, as
    counted here, even when 2 other classes have plenty."""
    rng = np.random.default_rng(14)
    n = 70
    ids = _ids(n)
    y = np.r_[np.zeros(30), np.ones(29), [2.0], rng.integers(0, 3, 10).astype(float)]
    splits = {"train": ids[:50], "val": ids[50:60], "test": ids[60:]}
    with pytest.warns(UserWarning, match="cannot fit"):
        results = probe(
            {"x": pd.DataFrame(rng.normal(size=(n, 2)), index=ids)},
            pd.DataFrame({"y3": y}, index=ids),
            splits,
            kinds={"y3": "multiclass"},
            n_bootstrap=10,
        )
    labels, counts = np.unique(y[:60], return_counts=True)
    held = ", ".join(f"class {int(c)}: {k}" for c, k in zip(labels, counts, strict=True))
    assert held == "class 0: 30, class 1: 29, class 2: 1"
    assert results.note.str.contains(f"every class held by 2 or more of them ({held})", regex=False).all()
