"""Categorical confounds declared in the data config (``categorical_confounds``), checked against an independent
least-squares fit written here: numpy ``lstsq`` on an intercept, the numeric confound and explicit dummy columns
of the sites, fitted on the training rows and applied to the held-out rows.

Integer site codes (UK Biobank's assessment centre, field 54: 11025, 11026, ...) regressed as one number leave
most of a site effect in place; declared categorical they are one-hot coded like text labels.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import NO_LOGGER, Case, assert_refused

from data_adapters.cache import save_cohort
from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError, TokenizedModality
from mot_neuro.data.datamodule import NeuroOmicsDataModule
from mot_neuro.data.preprocess import FoldPreprocessor, _category_label, _category_labels

N = 1000
# planted effects not monotonic in the code, as real centres are: a linear trend across the codes misses them
SITE_EFFECT = {11025: 0.0, 11026: 3.0, 11027: -2.0, 11028: 1.5}
CODES = np.array(list(SITE_EFFECT))
LOGGER = "mot_neuro.data.preprocess"


def sites(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).choice(CODES, n, p=[0.3, 0.3, 0.25, 0.15])


def make_cohort(site=None, *, n: int = N, seed: int = 0, sex=None):
    """Token ``roi0`` = 0.05 * age + site effect + noise (some values NaN), ``roi1`` = noise; ``site`` as given
    (default: integer codes), ``age`` in whole years (46 distinct values), ``sex`` 0/1."""
    rng = np.random.default_rng(seed)
    codes = sites(seed, n)
    age = rng.integers(40, 86, n).astype(float)
    values = rng.normal(size=(n, 2, 1))
    values[:, 0, 0] += 0.05 * age + np.array([SITE_EFFECT[c] for c in codes])
    values[rng.random(n) < 0.05, 0, 0] = np.nan
    ids = np.array([f"s{i:05d}" for i in range(n)], dtype=object)
    brain = TokenizedModality(
        name="brain",
        values=values.astype(np.float32),
        present=np.ones((n, 2), dtype=bool),
        token_names=["roi0", "roi1"],
        subject_ids=ids,
    )
    table = pd.DataFrame(
        {
            "eid": ids,
            "age": age,
            "sex": rng.integers(0, 2, n) if sex is None else sex,
            "site": codes if site is None else site,
            "y": rng.normal(size=n),
        }
    )
    return build_cohort(table, {"brain": brain}, targets=["y"], confounds=["age", "sex", "site"])


def split(n: int = N, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    train = np.sort(np.random.default_rng(seed).choice(n, size=int(0.7 * n), replace=False))
    return train, np.setdiff1d(np.arange(n), train)


def preprocessor(cohort, train, **kwargs) -> FoldPreprocessor:
    kwargs.setdefault("confounds", ["age", "site"])
    return FoldPreprocessor(**kwargs).fit(cohort, train)


def raw(cohort) -> np.ndarray:
    return np.asarray(cohort.modalities["brain"].values, dtype=np.float64)[:, 0, 0]


def reference_residuals(y, age, site, train, levels=CODES):
    """numpy least squares on the observed training rows: intercept, age, one dummy per site but the first;
    the coefficients applied to every row. Rows whose site is NaN or not a training level get the dummy
    columns' means over the training rows (the site effect averaged with the training shares of the sites)."""
    dummies = np.stack([(site == level).astype(float) for level in levels[1:]], axis=1)
    known = np.isin(site, levels[np.isin(levels, site[train])])
    dummies[~known] = dummies[train].mean(axis=0)
    fit_rows = train[~np.isnan(y[train])]
    design = np.column_stack([np.ones(len(y)), age, dummies])
    beta, *_ = np.linalg.lstsq(design[fit_rows], y[fit_rows], rcond=None)
    return y - design @ beta


def site_means(values: np.ndarray, site: np.ndarray) -> np.ndarray:
    return np.array([np.nanmean(values[site == code]) for code in CODES])


# ====================================================================== (a) declared: equals the reference fit
def test_declared_integer_sites_match_a_dummy_coded_least_squares_fit_on_train_and_held_out_rows(caplog):
    cohort = make_cohort()
    train, held_out = split()
    y, age = raw(cohort), cohort.participants["age"].to_numpy(float)
    site = cohort.participants["site"].to_numpy()
    assert np.ptp(site_means(y[held_out], site[held_out])) > 4  # the planted effect, in raw units
    expected = reference_residuals(y, age, site.astype(float), train)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    residual = preprocessor(cohort, train, categorical_confounds=["site"], standardize=False)
    assert not [r for r in caplog.records if "categorical_confounds" in r.getMessage()]  # declared: no warning
    observed = ~np.isnan(y)
    for rows in (train, held_out):
        out = residual.transform("brain", rows)[0][:, 0, 0]
        ok = observed[rows]
        np.testing.assert_allclose(out[ok], expected[rows][ok], rtol=1e-5, atol=1e-4)
    # standardized: the same residuals over their training SD; site means ~0 on both parts, in SD units
    standardized = preprocessor(cohort, train, categorical_confounds=["site"])
    sd = expected[train][observed[train]].std()
    for rows, bound in ((train, 1e-4), (held_out, 0.35)):  # train: exactly 0 (least squares); held out: noise
        out = standardized.transform("brain", rows)[0][:, 0, 0]
        ok = observed[rows]
        np.testing.assert_allclose(out[ok], expected[rows][ok] / sd, rtol=1e-4, atol=1e-4)
        assert np.abs(site_means(out[ok], site[rows][ok])).max() < bound


def test_declared_integer_codes_give_what_text_labels_give():
    codes = sites()
    as_text = make_cohort(np.array([f"centre {c}" for c in codes], dtype=object))
    as_codes = make_cohort()
    train, _ = split()
    text = preprocessor(as_text, train).transform("brain", np.arange(N))[0]
    declared = preprocessor(as_codes, train, categorical_confounds=["site"]).transform("brain", np.arange(N))[0]
    np.testing.assert_allclose(declared, text, rtol=1e-5, atol=1e-5)


# ====================================================================== (b) undeclared: the problem, warned
def test_undeclared_integer_sites_are_warned_about_and_leave_the_site_effect(caplog):
    cohort = make_cohort()
    train, held_out = split()
    site = cohort.participants["site"].to_numpy()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    pre = preprocessor(cohort, train, confounds=["age", "sex", "site"])
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned  # site only: not sex (two levels) nor age in years (46 values)
    assert "'site'" in warned[0] and "4 distinct whole numbers" in warned[0]
    assert "categorical_confounds: [site]" in warned[0] and "\n" not in warned[0]
    y = raw(cohort)
    for rows in (train, held_out):
        out = pre.transform("brain", rows)[0][:, 0, 0]
        ok = ~np.isnan(y[rows])
        assert np.abs(site_means(out[ok], site[rows][ok])).max() > 0.5  # SD units: the site effect is still there


def test_two_level_numeric_confound_is_the_same_as_a_category_and_not_warned_about(caplog):
    """With an intercept, a 0/1 column and its centred one-hot block span the same space: same residuals."""
    cohort = make_cohort()
    train, _ = split()
    caplog.set_level(logging.WARNING, logger=LOGGER)
    as_number = preprocessor(cohort, train, confounds=["age", "sex"]).transform("brain", np.arange(N))[0]
    assert not caplog.records
    declared = preprocessor(cohort, train, confounds=["age", "sex"], categorical_confounds=["sex"])
    np.testing.assert_allclose(declared.transform("brain", np.arange(N))[0], as_number, rtol=1e-5, atol=1e-5)


# ====================================================================== (c) one category whatever the dtype
def _variants(codes: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "int": codes.astype(np.int64),
        "float": codes.astype(np.float64),  # 11025.0: a CSV column with blanks is read as float
        "text": np.array([str(c) for c in codes], dtype=object),
        "text_float": np.array([f" {c}.0" for c in codes], dtype=object),  # a float column saved as text
    }


def test_integer_float_and_text_codes_are_the_same_categories_in_fit_and_transform():
    codes = sites()
    train, held_out = split()
    fitted = {
        kind: preprocessor(make_cohort(site), train, categorical_confounds=["site"])
        for kind, site in _variants(codes).items()
    }
    states = {kind: pre.state_dict()["confounds"][1] for kind, pre in fitted.items()}
    assert all(state == states["int"] for state in states.values())
    assert states["int"]["kind"] == "categorical"
    assert states["int"]["categories"] == ["11025", "11026", "11027", "11028"]
    expected = fitted["int"].transform("brain", held_out)[0]
    # fitted on one dtype, applied to rows read with another: matched by value, no "unseen" category
    with_float = make_cohort(_variants(codes)["float"])
    with_text = make_cohort(_variants(codes)["text_float"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an "unseen category" warning would fail here
        for other in (with_float, with_text):
            np.testing.assert_array_equal(fitted["int"].transform("brain", held_out, cohort=other)[0], expected)
            restored = FoldPreprocessor.from_state_dict(fitted["text"].state_dict(), other)
            np.testing.assert_allclose(restored.transform("brain", held_out)[0], expected, rtol=1e-6, atol=1e-6)


def test_blank_and_unseen_held_out_codes_get_the_training_average_as_in_the_reference():
    codes = sites().astype(float)
    train, held_out = split()
    codes[held_out[:5]] = np.nan  # blanks: the CSV column becomes float (11025.0)
    codes[held_out[5:8]] = 11099  # a centre absent from the training rows
    cohort = make_cohort(codes)
    pre = preprocessor(cohort, train, categorical_confounds=["site"], standardize=False)
    with pytest.warns(UserWarning, match=r"'site': 3 row\(s\) hold a category not seen"):
        out = pre.transform("brain", held_out)[0][:, 0, 0]
    y, age = raw(cohort), cohort.participants["age"].to_numpy(float)
    expected = reference_residuals(y, age, codes, train)[held_out]
    ok = ~np.isnan(y[held_out])
    np.testing.assert_allclose(out[ok], expected[ok], rtol=1e-5, atol=1e-4)


def _shortest_float32_text(value: np.float32) -> str:
    """The fewest significant digits that read back as the same float32, found by trying 1, 2, ... digits."""
    for digits in range(1, 10):
        text = f"{float(value):.{digits}g}"
        if np.float32(float(text)) == value:
            return text
    raise AssertionError(value)


def _as_number_label(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def test_category_labels_match_by_value_whatever_the_type():
    """Each group is one value written as the dtypes a column can be read with; groups must not share a label.
    Missing-value text is missing, text booleans are the booleans, numeric text is its number."""
    same_value = [
        [1.5, "1.5", "1.50", " 1.5 ", np.float32(1.5), np.float64(1.5)],
        [0.1, "0.1", "0.10", "1e-1", np.float32(0.1), np.float16(0.1)],
        [1e20, "1e20", "1E+20", 10**20, "100000000000000000000"],
        [True, np.True_, "True", " true ", "TRUE", 1, "1", 1.0, "1.0", np.int8(1)],
        [False, np.False_, "False", "false", 0, "0", "0.0", -0.0, "-0"],
        [11025, 11025.0, "11025", " 11025.0", "011025", np.int64(11025), np.float32(11025), "1.1025e4"],
        [-3, "-3", "-3.0", -3.0, np.float32(-3)],
        ["centre A", " centre A "],
        ["a"],
        ["A"],
    ]
    labels = [{_category_label(v) for v in group} for group in same_value]
    assert all(len(found) == 1 for found in labels), labels
    assert len(set.union(*labels)) == len(same_value)  # distinct values keep distinct labels
    assert _category_label(0.1) == "0.1" and _category_label(True) == "1" and _category_label(11025.0) == "11025"
    for missing in ["", "  ", "nan", "NaN", "NA", "n/a", "N/A", "None", "null", " NULL ", None, np.nan, pd.NA]:
        assert _category_label(missing) is None, missing
    # any float32: its shortest decimal text, found here by trying digits, is the same category as that text
    rng = np.random.default_rng(0)
    for value in (rng.normal(size=200) * 10.0 ** rng.integers(-8, 9, 200)).astype(np.float32):
        text = _shortest_float32_text(value)
        assert _category_label(value) == _category_label(text) == _as_number_label(float(text))
    assert _category_label(np.float32(1 / 3)) != _category_label(1 / 3)  # 0.33333334 is not 0.3333333333333333
    # a float32 column (factorize hands its values back as float64) and its text agree too
    column = pd.Series(np.array([0.1, 2.75, np.nan, 0.1], dtype=np.float32))
    assert list(_category_labels(column)) == ["0.1", "2.75", None, "0.1"]
    assert list(_category_labels(column.astype("Float32"))) == ["0.1", "2.75", None, "0.1"]


HALF_CODES = {11025: 0.1, 11026: 1.5, 11027: 2.75, 11028: -0.3}  # sites coded by non-whole numbers


def test_float32_and_text_codes_of_non_whole_values_are_one_category_in_fit_and_transform():
    """Fitted on a float32 column (0.1 stored as 0.10000000149011612), applied to the same sites read as
    float64 or written as text ("0.10", "1.50"): no unseen category, the same residuals, and those of the
    dummy-coded least squares reference."""
    codes = sites()
    train, held_out = split()
    as_float32 = make_cohort(np.array([HALF_CODES[c] for c in codes], dtype=np.float32))
    pre = preprocessor(as_float32, train, categorical_confounds=["site"], standardize=False)
    assert pre.state_dict()["confounds"][1]["categories"] == ["-0.3", "0.1", "1.5", "2.75"]
    y, age = raw(as_float32), as_float32.participants["age"].to_numpy(float)
    expected = reference_residuals(y, age, codes.astype(float), train)
    ok = ~np.isnan(y[held_out])
    others = {
        "float64": np.array([HALF_CODES[c] for c in codes], dtype=np.float64),
        "text": np.array([f"{HALF_CODES[c]:.2f}" for c in codes], dtype=object),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an "unseen category" warning would fail here
        own = pre.transform("brain", held_out)[0][:, 0, 0]
        np.testing.assert_allclose(own[ok], expected[held_out][ok], rtol=1e-5, atol=1e-4)
        for site in others.values():
            out = pre.transform("brain", held_out, cohort=make_cohort(site))[0][:, 0, 0]
            np.testing.assert_array_equal(out, own)


def reference_with_missing(y, age, site, train):
    """Least squares on the observed training rows with one dummy per training site but the first; a row whose
    site is missing gets the dummies' means over the training rows whose site is observed (their shares)."""
    levels = np.unique(site[train][~np.isnan(site[train])])
    dummies = np.stack([(site == level).astype(float) for level in levels[1:]], axis=1)
    observed_train = train[~np.isnan(site[train])]
    dummies[np.isnan(site)] = dummies[observed_train].mean(axis=0)
    fit_rows = train[~np.isnan(y[train])]
    design = np.column_stack([np.ones(len(y)), age, dummies])
    beta, *_ = np.linalg.lstsq(design[fit_rows], y[fit_rows], rcond=None)
    return y - design @ beta


def test_missing_value_text_is_missing_and_text_booleans_are_the_booleans():
    """Site labels with "NA", "", " n/a ", "None", "null" in training and held-out rows: those rows are missing
    (no category of their own, the training average), as the reference computes; a boolean confound applied
    to the same column as "True"/"False" text matches category by category."""
    codes = sites().astype(float)
    train, held_out = split()
    text = np.array([f"centre {int(c)}" for c in codes], dtype=object)
    blank_rows = np.concatenate([train[:10], held_out[:10]])
    text[blank_rows] = np.resize(["NA", "", " n/a ", "None", "null"], len(blank_rows))
    codes[blank_rows] = np.nan
    cohort = make_cohort(text)
    pre = preprocessor(cohort, train, categorical_confounds=["site"], standardize=False)
    assert pre.state_dict()["confounds"][1]["categories"] == [f"centre {c}" for c in CODES]
    y, age = raw(cohort), cohort.participants["age"].to_numpy(float)
    expected = reference_with_missing(y, age, codes, train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing, not unseen: no warning
        for rows in (train, held_out):
            out = pre.transform("brain", rows)[0][:, 0, 0]
            ok = ~np.isnan(y[rows])
            np.testing.assert_allclose(out[ok], expected[rows][ok], rtol=1e-5, atol=1e-4)

    flag = np.isin(sites(), [11026, 11028])
    as_bool = make_cohort(sex=flag)
    as_text = make_cohort(sex=np.array([f" {f} " if i % 2 else str(f).upper() for i, f in enumerate(flag)], object))
    fitted = preprocessor(as_bool, train, confounds=["age", "sex"], categorical_confounds=["sex"])
    assert fitted.state_dict()["confounds"][1]["categories"] == ["0", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        on_text = fitted.transform("brain", held_out, cohort=as_text)[0]
    np.testing.assert_array_equal(on_text, fitted.transform("brain", held_out)[0])
    from_text = preprocessor(as_text, train, confounds=["age", "sex"], categorical_confounds=["sex"])
    assert from_text.state_dict()["confounds"] == fitted.state_dict()["confounds"]


# ====================================================================== (d) a declaration that is not a confound
def test_declared_name_that_is_not_a_confound_is_refused_in_one_line():
    with pytest.raises(AdapterError, match="categorical_confounds lists 'centre'") as err:
        FoldPreprocessor(confounds=["age", "site"], categorical_confounds=["centre"])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"data.categorical_confounds lists 'centre', which is not in data.confounds"):
        NeuroOmicsDataModule(
            participants="p.csv", modalities={"m": {}}, confounds=["age"], categorical_confounds=["centre"]
        )


def test_cli_declared_name_that_is_not_a_confound_is_refused(case: Case):
    status, stderr = case.run("--data.categorical_confounds", "[centre]", data=case.data_config())
    assert_refused(status, stderr, "data.categorical_confounds lists 'centre'")


# ====================================================================== (e) the declaration identifies the state
def test_the_declaration_is_part_of_the_preprocessing_state_and_fingerprint():
    cohort = make_cohort()
    train, _ = split()
    declared = preprocessor(cohort, train, categorical_confounds=["site"]).state_dict()
    undeclared = preprocessor(cohort, train).state_dict()
    assert declared["settings"]["categorical_confounds"] == ["site"]
    assert undeclared["settings"]["categorical_confounds"] == []
    assert [c["kind"] for c in declared["confounds"]] == ["numeric", "categorical"]
    assert [c["kind"] for c in undeclared["confounds"]] == ["numeric", "numeric"]

    def module(**settings) -> NeuroOmicsDataModule:
        return NeuroOmicsDataModule(participants="p.csv", modalities={"m": {}}, **settings)

    with_site = module(confounds=["age", "sex", "site"], categorical_confounds=["site", "sex"])
    same = module(confounds=["age", "sex", "site"], categorical_confounds=["sex", "site"])  # order is no matter
    without = module(confounds=["age", "sex", "site"], categorical_confounds=["sex"])
    assert with_site.preprocessing_fingerprint == same.preprocessing_fingerprint
    assert with_site.preprocessing_fingerprint != without.preprocessing_fingerprint
    checkpoint = with_site.state_dict()
    assert checkpoint["preprocessing"]["categorical_confounds"] == ["sex", "site"]
    same.load_state_dict(checkpoint)  # the same declaration: accepted
    with pytest.raises(AdapterError, match=r"data.categorical_confounds \['sex', 'site'\] \(this run: \['sex'\]\)"):
        without.load_state_dict(checkpoint)
    without.load_state_dict({})  # a checkpoint from before this was recorded: nothing to compare


@pytest.mark.slow  # a Lightning fit (the checkpoint fixture)
def test_cli_checkpoint_made_with_another_declaration_is_refused_by_test(case: Case, demo_checkpoint):
    args = ("--ckpt_path", demo_checkpoint, "--data.categorical_confounds", "[site]", *NO_LOGGER)
    status, stderr = case.run(*args, command="test", data=case.data_config())
    assert_refused(status, stderr, "other preprocessing", "data.categorical_confounds [] (this run: ['site'])")


def test_the_datamodule_gives_the_declaration_to_the_fold_preprocessor(tmp_path):
    cohort = make_cohort(n=200)
    save_cohort(cohort, tmp_path / "cohort")
    datamodule = NeuroOmicsDataModule(
        cohort_dir=str(tmp_path / "cohort"),
        targets=["y"],
        confounds=["age", "site"],
        categorical_confounds=["site"],
        splits_file=str(tmp_path / "splits.json"),
    )
    datamodule.setup("fit")
    state = datamodule.preprocessor.state_dict()
    assert state["settings"]["categorical_confounds"] == ["site"]
    assert state["confounds"][1]["kind"] == "categorical"
