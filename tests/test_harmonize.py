"""ComBat harmonisation fitted inside each fold (mot_neuro.data.harmonize, via FoldPreprocessor and the DataModule)."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import pandas as pd
import pytest

from data_adapters.cache import save_cohort
from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError, TokenizedModality
from mot_neuro.data.harmonize import CombatApplier, check_harmonize
from mot_neuro.data.preprocess import FoldPreprocessor, decide_targets

N = 300
TOKENS = [f"region{i}" for i in range(6)]
SHIFT = {"a": 0.0, "b": 3.0, "c": -2.0}  # additive site effect (every region)
SCALE = {"a": 1.0, "b": 2.0, "c": 0.5}  # multiplicative site effect on the noise
AGE_SLOPE, MALE = 0.1, 0.5
HARMONIZE = {"method": "combat", "batch": "site", "covariates": ["age", "sex"], "modalities": ["brain"]}


def make_cohort(seed: int = 0, n: int = N):
    """Brain regions = base + age and sex effects + site shift + site-scaled noise; site b is older, so a
    site effect and an age effect are partly confounded. Some subjects lack a scan or one region (NaN)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"sub-{i:04d}" for i in range(n)], dtype=object)
    site = rng.choice(list(SHIFT), n)
    age = rng.normal(60, 8, n) + 12.0 * (site == "b")
    sex = rng.choice(["F", "M"], n)
    noise = rng.normal(size=(n, len(TOKENS)))
    base = np.linspace(5, 10, len(TOKENS))
    values = (
        base
        + AGE_SLOPE * (age[:, None] - 60)
        + MALE * (sex == "M")[:, None]
        + np.array([SHIFT[s] for s in site])[:, None]
        + np.array([SCALE[s] for s in site])[:, None] * noise
    )
    values = values[:, :, None].astype(np.float32)
    present = np.ones((n, len(TOKENS)), dtype=bool)
    no_scan = rng.random(n) < 0.05
    present[no_scan] = False
    values[no_scan] = np.nan
    values[rng.random(n) < 0.05, 2, 0] = np.nan  # one region missing for some
    brain = TokenizedModality(name="brain", values=values, present=present, token_names=TOKENS, subject_ids=ids)
    gene = TokenizedModality(
        name="gene",
        values=rng.normal(size=(n, 4, 1)).astype(np.float32),
        present=np.ones((n, 4), dtype=bool),
        token_names=[f"g{i}" for i in range(4)],
        subject_ids=ids,
    )
    table = pd.DataFrame({"eid": ids, "site": site, "age": age, "sex": sex, "y": rng.normal(size=n)})
    # site, age and sex are no confounds: the cohort keeps every participants column
    return build_cohort(table, {"brain": brain, "gene": gene}, targets=["y"], join="outer")


def train_rows(n: int = N, seed: int = 1) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=int(0.7 * n), replace=False))


def fitted(cohort, train, **kwargs) -> FoldPreprocessor:
    kwargs.setdefault("harmonize", HARMONIZE)
    kwargs.setdefault("standardize", False)
    return FoldPreprocessor(**kwargs).fit(cohort, train)


def raw_brain(cohort) -> np.ndarray:
    return np.asarray(cohort.modalities["brain"].values, dtype=np.float64)[:, :, 0]


def complete_rows(cohort, rows) -> np.ndarray:
    raw = raw_brain(cohort)[rows]
    present = cohort.modalities["brain"].present[rows]
    return rows[np.isfinite(raw).all(axis=1) & present.all(axis=1)]


def harmonised(pre, cohort, rows) -> np.ndarray:
    """ComBat's output for ``rows`` (float64, NaN where missing), before any other step."""
    applier = CombatApplier(pre.state_dict()["harmonize"]["brain"], cohort.participants, "brain")
    return applier(rows, raw_brain(cohort)[rows])


# ---------------------------------------------------------------------------------------------- the estimates
def test_transform_of_training_rows_equals_neurocombat_output():
    from neuroCombat import neuroCombat

    cohort = make_cohort()
    train = train_rows()
    pre = fitted(cohort, train)
    state = pre.state_dict()["harmonize"]["brain"]
    fit = complete_rows(cohort, train)
    assert state["n_fit"] == len(fit) < state["n_train"] == len(train)  # complete cases only
    assert sum(state["n_fit_per_site"].values()) == len(fit)
    covars = cohort.participants.iloc[fit][["site", "age", "sex"]].reset_index(drop=True)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = neuroCombat(raw_brain(cohort)[fit].T, covars, "site", ["sex"], ["age"])["data"].T
    np.testing.assert_allclose(harmonised(pre, cohort, fit), reference, rtol=1e-10, atol=1e-9)
    # what the model gets (no confounds, no standardization): the same numbers as float32
    values, missing = pre.transform("brain", fit)
    assert not missing.any()
    np.testing.assert_allclose(values[:, :, 0], reference, rtol=1e-6)


def test_combat_removes_a_planted_site_effect_and_keeps_the_age_effect():
    cohort = make_cohort()
    train = train_rows()
    held_out = np.setdiff1d(np.arange(N), train)
    pre = fitted(cohort, train)
    site = cohort.participants["site"].to_numpy()
    age = cohort.participants["age"].to_numpy()
    male = (cohort.participants["sex"] == "M").to_numpy()
    for rows in (complete_rows(cohort, train), complete_rows(cohort, held_out)):
        raw, out = raw_brain(cohort)[rows], harmonised(pre, cohort, rows)
        # the planted covariate effects taken out, what is left per site is the site effect (and noise)
        adjust = AGE_SLOPE * (age[rows, None] - 60) + MALE * male[rows, None]
        means = {s: ((raw - adjust)[site[rows] == s].mean(), (out - adjust)[site[rows] == s].mean()) for s in SHIFT}
        sds = {  # per region, averaged
            s: ((raw - adjust)[site[rows] == s].std(axis=0).mean(), (out - adjust)[site[rows] == s].std(axis=0).mean())
            for s in SHIFT
        }
        assert abs(means["b"][0] - means["a"][0]) > 2.5 and abs(means["c"][0] - means["a"][0]) > 1.5
        assert abs(means["b"][1] - means["a"][1]) < 0.25 and abs(means["c"][1] - means["a"][1]) < 0.25
        assert sds["b"][0] / sds["c"][0] > 3  # planted: 4
        assert 0.75 < sds["b"][1] / sds["c"][1] < 1.33
    # the age effect survives harmonisation: least-squares slope on the harmonised training values
    rows = complete_rows(cohort, train)
    design = np.column_stack([np.ones(len(rows)), age[rows] - 60, male[rows]])
    slopes = np.linalg.lstsq(design, harmonised(pre, cohort, rows), rcond=None)[0][1]
    assert abs(slopes.mean() - AGE_SLOPE) < 0.03
    # without age as a covariate, ComBat takes the older site's age effect for a site effect
    blind = fitted(cohort, train, harmonize={**HARMONIZE, "covariates": ["sex"]})
    blind_slopes = np.linalg.lstsq(design, harmonised(blind, cohort, rows), rcond=None)[0][1]
    assert blind_slopes.mean() < slopes.mean() - 0.01


# ---------------------------------------------------------------------------------------------- fold safety
def test_held_out_subjects_move_no_fitted_combat_statistic():
    cohort = make_cohort()
    train = train_rows()
    other = np.setdiff1d(np.arange(N), train)
    brain = cohort.modalities["brain"]
    values = np.array(brain.values)
    values[other] = 1e3 * np.random.default_rng(3).standard_normal(values[other].shape)
    values[other[::3]] = np.nan
    wild_brain = TokenizedModality(
        name="brain",
        values=values,
        present=brain.present,
        token_names=brain.token_names,
        subject_ids=brain.subject_ids,
    )
    table = cohort.participants.reset_index()
    table.loc[other, "site"] = np.where(table.loc[other, "site"] == "a", "b", "a")  # other training sites
    table.loc[other, "age"] = 500.0
    table.loc[other, "sex"] = np.where(table.loc[other, "sex"] == "F", "M", "F")
    wild = build_cohort(table, {"brain": wild_brain, "gene": cohort.modalities["gene"]}, targets=["y"], join="outer")
    specs = decide_targets(cohort, None)
    for standardize in (False, True):
        first = fitted(cohort, train, standardize=standardize, target_specs=specs, confounds=["age"])
        second = fitted(wild, train, standardize=standardize, target_specs=specs, confounds=["age"])
        assert json.dumps(first.state_dict(), sort_keys=True) == json.dumps(second.state_dict(), sort_keys=True)
        np.testing.assert_array_equal(first.transform("brain", train)[0], second.transform("brain", train)[0])


def test_missing_values_stay_missing_and_observed_values_of_incomplete_subjects_are_harmonised():
    cohort = make_cohort()
    train = train_rows()
    pre = fitted(cohort, train)
    raw = raw_brain(cohort)
    incomplete = np.setdiff1d(train, complete_rows(cohort, train))
    partial = incomplete[np.isfinite(raw[incomplete]).any(axis=1)]  # a region missing, the scan present
    assert len(partial) > 0
    out = harmonised(pre, cohort, partial)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(raw[partial]))
    values, missing = pre.transform("brain", partial)
    np.testing.assert_array_equal(missing[:, :, 0], np.isnan(raw[partial]))
    observed = ~np.isnan(raw[partial])
    np.testing.assert_allclose(values[:, :, 0][observed], out[observed], rtol=1e-6)
    assert not np.allclose(out[observed], raw[partial][observed], atol=0.05)  # harmonised, not passed through


def test_state_round_trip_through_json_reproduces_the_transform_exactly():
    cohort = make_cohort()
    train = train_rows()
    pre = fitted(cohort, train, standardize=True, confounds=["age"])
    again = FoldPreprocessor.from_state_dict(json.loads(json.dumps(pre.state_dict())), cohort=cohort)
    rows = np.arange(N)
    for a, b in zip(pre.transform("brain", rows), again.transform("brain", rows), strict=True):
        np.testing.assert_array_equal(a, b)
    # the gene modality was not harmonised: its values equal a fit without harmonisation
    plain = FoldPreprocessor(standardize=True, confounds=["age"]).fit(cohort, train)
    np.testing.assert_array_equal(pre.transform("gene", rows)[0], plain.transform("gene", rows)[0])
    assert not np.allclose(pre.transform("brain", rows)[0], plain.transform("brain", rows)[0])


# ---------------------------------------------------------------------------------------------- refusals
def test_a_site_unseen_in_training_is_refused_naming_it_unless_the_subject_has_no_data():
    cohort = make_cohort()
    train = train_rows()
    held_out = np.setdiff1d(np.arange(N), train)
    table = cohort.participants.reset_index()
    table.loc[held_out[:4], "site"] = "d"
    table.loc[held_out[4], "site"] = None
    moved = build_cohort(table, dict(cohort.modalities), targets=["y"], join="outer")
    pre = fitted(moved, train)
    with pytest.raises(AdapterError, match=r"4 subject\(s\).*\['d'\].*stratify: site instead of group: site"):
        pre.transform("brain", held_out[:4])
    with pytest.raises(AdapterError, match="no 'site' value") as err:
        pre.transform("brain", held_out[4:5])
    # a missing site is no split problem: the message says to fill it in, naming the column and the count
    assert "1 subject(s)" in str(err.value) and "fill in the missing sites in column 'site'" in str(err.value)
    assert "stratify" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AdapterError, match=r"4 subject\(s\).*\['d'\].*; and 1 subject\(s\).*no 'site' value"):
        pre.transform("brain", held_out[:5])
    no_scan = held_out[~moved.modalities["brain"].present[held_out].any(axis=1)]
    table.loc[no_scan, "site"] = "d"
    moved = build_cohort(table, dict(cohort.modalities), targets=["y"], join="outer")
    values, missing = fitted(moved, train).transform("brain", no_scan)  # nothing to harmonise: no error
    assert missing.all()


def test_a_training_site_whose_subjects_all_lack_the_modality_is_not_harmonised_nor_refused():
    cohort = make_cohort()
    train = train_rows()
    held_out = np.setdiff1d(np.arange(N), train)
    brain = cohort.modalities["brain"]
    site = cohort.participants["site"].to_numpy()
    values, present = np.array(brain.values), np.array(brain.present)
    no_scan = np.isin(np.arange(N), train) & (site == "c")  # site c trains, but without a brain scan
    values[no_scan], present[no_scan] = np.nan, False
    lacking = TokenizedModality(
        name="brain", values=values, present=present, token_names=TOKENS, subject_ids=brain.subject_ids
    )
    changed = build_cohort(
        cohort.participants.reset_index(), {**cohort.modalities, "brain": lacking}, targets=["y"], join="outer"
    )
    pre = fitted(changed, train)  # before: "site(s) ['c'] have fewer than 2 training subjects"
    state = pre.state_dict()["harmonize"]["brain"]
    assert state["sites"] == ["a", "b"] and set(state["n_fit_per_site"]) == {"a", "b"}
    values, missing = pre.transform("brain", train[site[train] == "c"])  # nothing to harmonise: no error
    assert missing.all()
    # a held-out subject of site c with a scan has no estimate: refused as of an unseen site
    scanned = held_out[(site[held_out] == "c") & present[held_out].any(axis=1)]
    with pytest.raises(AdapterError) as err:
        pre.transform("brain", scanned)
    assert (
        f"{len(scanned)} subject(s) with modality 'brain' data have site(s) ['c'], not among the training rows'"
        in str(err.value)
    )
    assert "the training subjects of those sites all lack modality 'brain'" in str(err.value)
    assert "stratify" not in str(err.value)  # site c is in training: no split advice
    assert state["sites_without_data"] == ["c"]
    ab = held_out[site[held_out] != "c"]
    assert np.isfinite(pre.transform("brain", ab)[0]).any()


def test_an_integer_coded_covariate_is_warned_about_unless_declared_categorical(caplog):
    cohort = make_cohort()
    table = cohort.participants.reset_index()
    table["ethnicity_code"] = np.arange(N) * 7 % 4 + 1  # codes 1..4, read as numbers
    coded = build_cohort(table, dict(cohort.modalities), targets=["y"], join="outer")
    settings = {**HARMONIZE, "covariates": ["age", "ethnicity_code"]}
    caplog.set_level(logging.WARNING)
    fitted(coded, train_rows(), harmonize=settings)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned  # not age (continuous)
    assert "'ethnicity_code' holds 4 distinct whole numbers" in warned[0]
    assert "harmonize.categorical_covariates: [ethnicity_code]" in warned[0] and "\n" not in warned[0]
    caplog.clear()
    pre = fitted(coded, train_rows(), harmonize={**settings, "categorical_covariates": ["ethnicity_code"]})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    kinds = {c["name"]: c["kind"] for c in pre.state_dict()["harmonize"]["brain"]["covariates"]}
    assert kinds == {"age": "numeric", "ethnicity_code": "categorical"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({**HARMONIZE, "method": "quantile"}, r"method 'quantile' is unknown"),
        ({**HARMONIZE, "covariates": ["age", "y"]}, r"names the target 'y'"),
        ({**HARMONIZE, "batch": "y"}, r"names the target 'y'"),
        ({**HARMONIZE, "modalities": ["brian"]}, r"unknown modality\(ies\) \['brian'\]"),
        ({**HARMONIZE, "modalities": []}, r"must name the modalities"),
        ({**HARMONIZE, "covariates": ["site"]}, r"lists the batch column 'site'"),
        ({**HARMONIZE, "scanner": "x"}, r"unknown key\(s\) \['scanner'\]"),
    ],
)
def test_bad_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(AdapterError, match=message) as err:
        check_harmonize(settings, targets=["y"], modalities=["brain", "gene"])
    assert "\n" not in str(err.value)


def test_off_settings_mean_no_harmonisation():
    assert check_harmonize(None) is None
    assert check_harmonize({"method": "none"}) is None
    assert check_harmonize({"method": None, "batch": "site"}) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, c: t.assign(site="a"), r"at least 2 sites.*\['a'\]"),
        (lambda t, c: t.drop(columns="site"), r"batch column 'site' is not in the cohort's participants"),
        (lambda t, c: t.assign(site=np.where(np.arange(len(t)) == c[0], "lonely", t["site"])), r"\['lonely'\]"),
        (lambda t, c: t.assign(age=60.0), r"collinear"),
    ],
)
def test_fit_problems_are_refused_in_one_line(change, message):
    cohort = make_cohort()
    train = train_rows()
    table = change(cohort.participants.reset_index(), complete_rows(cohort, train))
    changed = build_cohort(table, dict(cohort.modalities), targets=["y"], join="outer")
    with pytest.raises(AdapterError, match=message) as err:
        fitted(changed, train)
    assert "\n" not in str(err.value)


def test_a_constant_feature_is_refused_naming_it():
    cohort = make_cohort()
    brain = cohort.modalities["brain"]
    values = np.array(brain.values)
    values[:, 3] = np.where(np.isnan(values[:, 3]), np.nan, 4.0)
    constant = TokenizedModality(
        name="brain", values=values, present=brain.present, token_names=brain.token_names, subject_ids=brain.subject_ids
    )
    table = cohort.participants.reset_index()
    changed = build_cohort(table, {**cohort.modalities, "brain": constant}, targets=["y"], join="outer")
    with pytest.raises(AdapterError, match=r"token 'region3' is constant"):
        fitted(changed, train_rows())


# ---------------------------------------------------------------------------------------------- DataModule
def datamodule(tmp_path, cohort=None, **kwargs):
    from mot_neuro.data.datamodule import NeuroOmicsDataModule

    folder = tmp_path / ("cohort" if cohort is None else "other_cohort")
    if not folder.exists():
        save_cohort(make_cohort() if cohort is None else cohort, folder)
    kwargs.setdefault("splits_file", str(tmp_path / f"splits-{kwargs.get('group')}-{kwargs.get('stratify')}.json"))
    return NeuroOmicsDataModule(cohort_dir=str(folder), targets=["y"], n_folds=3, batch_size=64, **kwargs)


def test_datamodule_harmonises_batches_records_the_setting_and_refuses_other_checkpoints(tmp_path):
    dm = datamodule(tmp_path, harmonize=HARMONIZE, stratify="site")
    plain = datamodule(tmp_path, stratify="site")
    off = datamodule(tmp_path, stratify="site", harmonize={"method": "none"})
    assert dm.preprocessing["harmonize"]["batch"] == "site" and "harmonize" not in plain.preprocessing
    assert off.preprocessing_fingerprint == plain.preprocessing_fingerprint  # off: as before the option
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))  # a worker's preprocessor comes from the state dict
    rows = batch["row"].numpy()
    expected, _ = dm.preprocessor.transform("brain", rows)
    np.testing.assert_array_equal(batch["values"]["brain"].numpy(), expected)
    plain.setup("fit")
    assert not np.allclose(plain.preprocessor.transform("brain", rows)[0], expected)
    with pytest.raises(AdapterError, match=r"data.harmonize None \(this run: \{'method': 'combat'"):
        dm._check_checkpoint_preprocessing(plain.state_dict())
    with pytest.raises(AdapterError, match=r"data.harmonize \{'method': 'combat'.*\(this run: None\)"):
        plain._check_checkpoint_preprocessing(dm.state_dict())


def test_datamodule_refuses_whole_sites_held_out_and_a_target_covariate(tmp_path):
    with pytest.raises(AdapterError, match=r"harmonize names the target 'y'"):
        datamodule(tmp_path, harmonize={**HARMONIZE, "covariates": ["y"]})
    cohort = make_cohort()
    table = cohort.participants.reset_index()
    table["site"] = table["site"] + (np.arange(N) % 2).astype(str)  # six sites: a0, a1, b0, ...
    six = build_cohort(table, dict(cohort.modalities), targets=["y"], join="outer")
    dm = datamodule(tmp_path, six, harmonize=HARMONIZE, group="site")
    with pytest.raises(AdapterError, match=r"site\(s\) \['[abc][01]'.*stratify: site instead of group: site"):
        dm.setup("fit")
    assert set(dm.splits.fold(0)["train"]).isdisjoint(dm.splits.fold(0)["test"])
    # leave-one-modality-out without brain: its harmonisation is neither fitted nor able to stop the run
    dropped = datamodule(tmp_path, six, harmonize=HARMONIZE, group="site", drop_modalities=["brain"])
    dropped.setup("fit")
    assert dropped.preprocessor.state_dict()["harmonize"] == {}
    assert dropped.preprocessing["harmonize"]["modalities"] == ["brain"]  # the setting as given, in checkpoints
