"""Downstream probes (mot_neuro.probe): metrics and CIs on synthetic data, embeddings files, the demo end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import EXPERIMENT as DEMO
from scipy.stats import pearsonr
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mot_neuro.data.splits import Splits
from mot_neuro.probe import (
    COLUMNS,
    _feature_set_names,
    _metric_values,
    early_fusion_features,
    embedding_features,
    main,
    probe,
)


# ---------------------------------------------------------------------------------------------- synthetic data
def _synthetic(n: int = 400, seed: int = 0):
    """Feature set A carries both targets (y = X @ w + noise), B is noise of the same shape."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"sub{i:04d}" for i in range(n)])
    x = rng.normal(size=(n, 8))
    w = rng.normal(size=8)
    signal = x @ w
    targets = pd.DataFrame(
        {
            "score": signal + rng.normal(scale=0.5 * signal.std(), size=n),
            "case": (signal + rng.normal(scale=0.5 * signal.std(), size=n) > 0).astype(float),
            "grade": np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3])).astype(float),
        },
        index=ids,
    )
    sets = {"A": pd.DataFrame(x, index=ids), "B": pd.DataFrame(rng.normal(size=(n, 8)), index=ids)}
    order = rng.permutation(n)
    n_train, n_val = int(0.6 * n), int(0.15 * n)
    splits = {
        "train": ids[order[:n_train]],
        "val": ids[order[n_train : n_train + n_val]],
        "test": ids[order[n_train + n_val :]],
    }
    kinds = {"score": "regression", "case": "binary", "grade": "multiclass"}
    return sets, targets, splits, kinds


def _row(results: pd.DataFrame, feature_set: str, target: str, metric: str) -> pd.Series:
    hit = results[(results.feature_set == feature_set) & (results.target == target) & (results.metric == metric)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.fixture(scope="module")
def synthetic_results():
    sets, targets, splits, kinds = _synthetic()
    return probe(sets, targets, splits, kinds=kinds, n_bootstrap=300, seed=0), (sets, targets, splits, kinds)


def test_probe_tells_signal_from_noise(synthetic_results):
    results, (_, targets, splits, _) = synthetic_results
    assert list(results.columns) == list(COLUMNS)
    assert set(results.metric[results.target == "score"]) == {"r2", "mae", "pearson"}
    assert set(results.metric[results.target == "case"]) == {"auroc", "auprc", "brier", "ece"}
    assert set(results.metric[results.target == "grade"]) == {"auroc", "auprc", "accuracy", "ece"}
    a, b = _row(results, "A", "score", "r2"), _row(results, "B", "score", "r2")
    assert a.ci_low > b.ci_high
    assert _row(results, "A", "case", "auroc").value > 0.8
    assert abs(_row(results, "B", "case", "auroc").value - 0.5) < 0.15
    assert _row(results, "A", "grade", "accuracy").value > 0.6
    assert (results.n_train == 300).all() and (results.n_test == 100).all()
    assert (results.n_resamples == 300).all() and (results.n_resamples_valid == 300).all()
    assert (results.note[results.feature_set == "A"] == "").all()
    # noise: the inner CV picks the heaviest penalty of the grid, and the table says so
    assert results.note[results.feature_set == "B"].map(lambda note: not note or "heavy-penalty edge" in note).all()
    # AUROC and AUPRC resampled within class, every other metric plainly
    stratified = results.metric.isin(["auroc", "auprc"])
    assert (results.resampling[stratified] == "subjects within class (stratified)").all()
    assert (results.resampling[~stratified] == "subjects").all()
    for _, row in results.iterrows():  # the percentile CI brackets the estimate (ece is biased under resampling)
        if row.metric != "ece":
            assert row.ci_low <= row.value <= row.ci_high, (row.feature_set, row.target, row.metric)


def test_metrics_equal_sklearn_on_a_refit(synthetic_results):
    """The same pipeline refitted here, at the penalty the probe chose (its choice is checked against GridSearchCV
    in test_probe_reference.py), gives the same predictions; sklearn's metrics on them are the probe's."""
    results, (sets, targets, splits, _) = synthetic_results
    fit = np.sort(np.concatenate([splits["train"], splits["val"]]))  # the probe fits in subject ID order
    test = np.sort(splits["test"])
    x_fit, x_test = sets["A"].loc[fit].to_numpy(), sets["A"].loc[test].to_numpy()

    def pipeline(model):
        return Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler()), ("model", model)])

    alpha = _row(results, "A", "score", "r2").penalty
    ridge = pipeline(Ridge(alpha=alpha)).fit(x_fit, targets.score.loc[fit])
    y, pred = targets.score.loc[test].to_numpy(), ridge.predict(x_test)
    assert _row(results, "A", "score", "r2").value == pytest.approx(r2_score(y, pred), abs=1e-10)
    assert _row(results, "A", "score", "mae").value == pytest.approx(mean_absolute_error(y, pred), abs=1e-10)
    assert _row(results, "A", "score", "pearson").value == pytest.approx(pearsonr(y, pred)[0], abs=1e-10)

    def logistic(target):
        c = _row(results, "A", target, "auroc").penalty
        return pipeline(LogisticRegression(C=c, max_iter=2000)).fit(x_fit, targets[target].loc[fit])

    model = logistic("case")
    y, p = targets.case.loc[test].to_numpy(), model.predict_proba(x_test)[:, 1]
    assert _row(results, "A", "case", "auroc").value == pytest.approx(roc_auc_score(y, p), abs=1e-10)
    assert _row(results, "A", "case", "auprc").value == pytest.approx(average_precision_score(y, p), abs=1e-10)
    assert _row(results, "A", "case", "brier").value == pytest.approx(np.mean((p - y) ** 2), abs=1e-10)

    model = logistic("grade")
    y, proba = targets.grade.loc[test].to_numpy(), model.predict_proba(x_test)
    auroc = roc_auc_score(y, proba, multi_class="ovr", labels=model.classes_)
    assert _row(results, "A", "grade", "auroc").value == pytest.approx(auroc, abs=1e-10)
    accuracy = accuracy_score(y, model.classes_[proba.argmax(axis=1)])
    assert _row(results, "A", "grade", "accuracy").value == pytest.approx(accuracy, abs=1e-12)


def test_resample_metrics_equal_sklearn():
    """The vectorised metrics of a bootstrap resample (a vector of counts) are sklearn's on the resampled rows."""
    rng = np.random.default_rng(1)
    n = 60
    y = rng.integers(0, 2, n).astype(float)
    p = np.round(rng.random(n), 1)  # ties on purpose
    yr, pr = rng.normal(size=n), rng.normal(size=n)
    ym = rng.integers(0, 3, n).astype(float)
    pm = rng.dirichlet(np.ones(3), size=n)
    for _ in range(5):
        rows = rng.integers(0, n, n)
        counts = np.bincount(rows, minlength=n)[None].astype(float)
        binary = _metric_values("binary", counts, y, p)
        assert binary["auroc"][0] == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-12)
        assert binary["auprc"][0] == pytest.approx(average_precision_score(y[rows], p[rows]), abs=1e-12)
        regression = _metric_values("regression", counts, yr, pr)
        assert regression["r2"][0] == pytest.approx(r2_score(yr[rows], pr[rows]), abs=1e-10)
        assert regression["pearson"][0] == pytest.approx(pearsonr(yr[rows], pr[rows])[0], abs=1e-10)
        multi = _metric_values("multiclass", counts, ym, pm, classes=np.array([0.0, 1.0, 2.0]))
        expected = roc_auc_score(ym[rows], pm[rows], multi_class="ovr", labels=[0.0, 1.0, 2.0])
        assert multi["auroc"][0] == pytest.approx(expected, abs=1e-12)


def test_seeded_determinism():
    sets, targets, splits, kinds = _synthetic(n=200)
    targets = targets[["score", "case"]]
    first = probe(sets, targets, splits, kinds=kinds, n_bootstrap=100, seed=3)
    again = probe(sets, targets, splits, kinds=kinds, n_bootstrap=100, seed=3)
    pd.testing.assert_frame_equal(first, again)
    other = probe(sets, targets, splits, kinds=kinds, n_bootstrap=100, seed=4)
    assert not np.allclose(first.ci_low, other.ci_low)


def test_one_class_test_set_is_handled():
    sets, targets, splits, kinds = _synthetic(n=200)
    targets = targets[["case"]].copy()
    targets.loc[splits["test"], "case"] = 0.0  # every test subject a control: AUROC is undefined
    results = probe(sets, targets, splits, kinds=kinds, n_bootstrap=50)
    for metric in ("auroc", "auprc"):
        row = _row(results, "A", "case", metric)
        assert np.isnan(row.value) and np.isnan(row.ci_low) and row.n_resamples_valid == 0
        assert "undefined" in row.note
    brier = _row(results, "A", "case", "brier")
    assert np.isfinite(brier.value) and brier.n_resamples_valid == 50

    # a tiny test set, one case in five: resampled within class, every resample holds both classes, and the note
    # says the one case limits the CI
    targets = _synthetic(n=200)[1][["case"]]
    small = {**splits, "test": np.concatenate([splits["test"][targets.case.loc[splits["test"]] == 1][:1],
                                               splits["test"][targets.case.loc[splits["test"]] == 0][:4]])}  # fmt: skip
    small_results = probe(sets, targets, small, kinds=kinds, n_bootstrap=200)
    row = _row(small_results, "A", "case", "auroc")
    assert row.n_resamples_valid == 200 and np.isfinite(row.ci_low) and "class 1 in only 1 test subject" in row.note


def test_missing_subjects_and_bad_input():
    sets, targets, splits, kinds = _synthetic(n=200)
    targets = targets[["score"]]
    partial = {"A": sets["A"].drop(index=splits["test"][:30])}
    with pytest.warns(UserWarning, match=r"lacks 30 of 50 test subjects") as record:
        results = probe(partial, targets, splits, kinds=kinds, n_bootstrap=20)
    assert not any(sid in str(w.message) for w in record for sid in splits["test"])  # counts, never IDs
    assert (results.n_test == 20).all()
    with pytest.raises(ValueError, match="both in test and in train/val"):
        probe(sets, targets, {**splits, "val": splits["test"][:2]}, kinds=kinds)
    with pytest.raises(ValueError, match="no kind given for target"):
        probe(sets, targets, splits, kinds={})


# ---------------------------------------------------------------------------------------------- embeddings files
def _lists(values: np.ndarray) -> pa.Array:
    return pa.array([row for row in values.astype(np.float32)], type=pa.list_(pa.float32()))


def _write_embeddings(path: Path, ids, split, fold, pooled, per_modality: dict, metadata: dict) -> None:
    columns = {
        "eid": pa.array(list(ids), type=pa.string()),
        "split": pa.array(list(split), type=pa.string()),
        "fold": pa.array(list(fold), type=pa.int32()),
        "embedding": _lists(pooled),
        **{f"embedding_{m}": _lists(v) for m, v in per_modality.items()},
    }
    table = pa.table(columns).replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    pq.write_table(table, path)


def test_embedding_features(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(7)]
    pooled, brain, gene = rng.normal(size=(7, 4)), rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    path = tmp_path / "run.parquet"
    # columns in another order than the model's modalities: the late fusion follows the metadata's order
    _write_embeddings(
        path, ids, ["train"] * 7, [0] * 7, pooled, {"brain": brain, "gene": gene},
        {"variant": "dense", "layer": "null", "modalities": '["gene", "brain"]'},
    )  # fmt: skip
    sets = embedding_features(path)
    assert list(sets) == ["dense", "dense_late_fusion"]
    pooled_set, late = sets["dense"], sets["dense_late_fusion"]
    assert pooled_set.shape == (7, 4) and late.shape == (7, 5)
    assert list(pooled_set.index) == ids and pooled_set.index.name == "eid"
    assert list(pooled_set.columns) == ["emb_0", "emb_1", "emb_2", "emb_3"]
    np.testing.assert_array_equal(pooled_set.to_numpy(), pooled.astype(np.float32))
    np.testing.assert_array_equal(late.to_numpy(), np.hstack([gene, brain]).astype(np.float32))
    assert list(late.columns) == ["gene:emb_0", "gene:emb_1", "brain:emb_0", "brain:emb_1", "brain:emb_2"]

    bare = tmp_path / "bare.parquet"
    _write_embeddings(bare, ids, ["test"] * 7, [0] * 7, pooled, {}, {})
    assert list(embedding_features(bare)) == ["bare"]  # no variant recorded: the file stem; no late fusion


def test_feature_set_names():
    paths = [Path("x/mot_a.parquet"), Path("y/mot_b.parquet"), Path("z/dense.parquet"), Path("w/mot_a.parquet")]
    assert _feature_set_names(paths[:3], ["mot", "mot", "dense"]) == ["mot_a", "mot_b", "dense"]
    assert _feature_set_names([paths[0], paths[3]], ["mot", "mot"]) == ["mot_a", "mot_a_2"]


# ---------------------------------------------------------------------------------------------- demo, end to end
@pytest.fixture(scope="module")
def demo(fitted_demo):
    """The demo experiment fitted for one epoch (conftest.py's ``fitted_demo``, shared with test_embed.py and others),
    and its embeddings (EmbeddingWriter) of every fold subject, written into the fit's folder."""
    import lightning.pytorch as pl

    from mot_neuro.embed import EmbeddingWriter

    cli, workdir = fitted_demo.cli, fitted_demo.folder
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # whole-batch sampler
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            embeddings = workdir / "embeddings.parquet"
            cli.datamodule.hparams.predict_split = "all"
            cli.datamodule.hparams.batch_size = fitted_demo.batch_size
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                callbacks=[EmbeddingWriter(embeddings)],
            )  # fmt: skip
            trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    return workdir, embeddings


@pytest.mark.slow  # the fitted demo experiment and its embeddings
def test_early_fusion_features_are_fold_safe(demo, monkeypatch):
    workdir, _ = demo
    monkeypatch.chdir(workdir)
    features, targets, splits, kinds = early_fusion_features(str(DEMO))
    fold = Splits.load(workdir / "outputs" / "demo_splits.json").fold(0)
    assert {part: sorted(ids) for part, ids in splits.items()} == {part: sorted(fold[part]) for part in fold}
    everyone = sorted(np.concatenate([fold["train"], fold["val"], fold["test"]]).tolist())
    assert sorted(features.index) == everyone and features.index.name == "eid"
    assert sorted(targets.index) == everyone and list(targets.columns) == ["target"]
    assert kinds == {"target": "regression"}
    assert not features.isna().any().any()
    assert {c.split(":")[0] for c in features.columns} == {"gene", "brain", "behaviour"}
    assert "brain:L_region01:0" in features.columns
    handedness = [c for c in features.columns if c.startswith("behaviour:handedness:")]
    assert len(handedness) == 3 and all("=" in c for c in handedness)  # categorical: one-hot
    # standardised with training statistics: mean 0 over the training rows, not over all rows
    numeric = [c for c in features.columns if "=" not in c]
    train_mean = features.loc[fold["train"], numeric].mean()
    assert train_mean.abs().max() < 1e-4
    assert features.loc[fold["test"], numeric].mean().abs().max() > 0.05
    # raw targets, in their own units (not standardised)
    participants = pd.read_csv(workdir / "outputs" / "demo_cohort" / "participants.csv", dtype={"eid": str})
    raw = participants.set_index("eid")["target"]
    np.testing.assert_allclose(targets["target"].to_numpy(), raw.loc[targets.index].to_numpy())


@pytest.mark.slow  # the fitted demo experiment and its embeddings
def test_main_end_to_end(demo, monkeypatch, capsys):
    workdir, embeddings = demo
    monkeypatch.chdir(workdir)
    out = workdir / "outputs" / "probes" / "demo"
    assert main(["--config", str(DEMO), "--embeddings", str(embeddings), "--bootstrap", "100", "--out", str(out)]) == 0
    results = pd.read_csv(out / "probes.csv", keep_default_na=False, na_values=[""])
    assert list(results.columns) == list(COLUMNS)
    assert list(dict.fromkeys(results.feature_set)) == ["mot", "mot_late_fusion", "early_fusion"]
    for feature_set in ("mot", "mot_late_fusion", "early_fusion"):
        rows = results[results.feature_set == feature_set]
        assert set(rows.target) == {"target"} and set(rows.metric) == {"r2", "mae", "pearson"}
        assert rows.value.notna().all() and (rows.n_test == 60).all() and (rows.n_train == 240).all()
    assert [p.name for p in out.iterdir()] == ["probes.csv"]  # no temp file left
    printed = capsys.readouterr().out
    assert "target/r2" in printed and "early_fusion" in printed and str(out / "probes.csv") in printed


@pytest.mark.slow  # the fitted demo experiment and its embeddings
def test_main_refuses_embeddings_of_another_fold(demo, monkeypatch, tmp_path):
    workdir, embeddings = demo
    monkeypatch.chdir(workdir)
    table = pq.read_table(embeddings)
    other_fold = table.set_column(
        table.schema.get_field_index("fold"), "fold", pa.array(np.ones(len(table), dtype=np.int32))
    )
    pq.write_table(other_fold, tmp_path / "fold1.parquet")
    with pytest.raises(ValueError, match=r"embeddings of fold 1, but the config trains fold 0"):
        main(["--config", str(DEMO), "--embeddings", str(tmp_path / "fold1.parquet"), "--no-early-fusion"])

    # same fold, but a train and a test subject swapped labels: another splits file made these embeddings
    split = table.column("split").to_pylist()
    i, j = split.index("train"), split.index("test")
    split[i], split[j] = "test", "train"
    swapped = table.set_column(table.schema.get_field_index("split"), "split", pa.array(split))
    pq.write_table(swapped, tmp_path / "swapped.parquet")
    with pytest.raises(ValueError, match=r"2 subject\(s\) have another split label") as err:
        main(["--config", str(DEMO), "--embeddings", str(tmp_path / "swapped.parquet"), "--no-early-fusion"])
    assert table.column("eid")[i].as_py() not in str(err.value)
