"""Targets, splits and fold preprocessing that must not give a wrong or misleading number (issue 13).

Classes of failure defended here, each through the command line (bad-input corpus style: ``Case`` and
``assert_refused`` of ``helpers``) and by unit tests of the rule:

* a target's kind (and number of classes, and coding) is decided once from the whole cohort, never per fold;
  a constant target or one beyond float32's range is refused;
* a fold whose training part lacks a class of a categorical target is refused; a val/test part lacking one
  is warned about (counts, never IDs) and the run goes on;
* a value that preprocessing (confound regression, standardization) would make non-finite stops the run
  before any step, naming the modality, token and subject;
* a saved splits file that contradicts the configuration (grouping, stratification, seed, folds) is refused;
* data options out of range are refused where the option is parsed, naming it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import DEMO_DATA, NO_LOGGER, Case, assert_refused

from data_adapters.cohort import build_cohort
from data_adapters.core import AdapterError, TokenizedModality
from mot_neuro.data.datamodule import NeuroOmicsDataModule
from mot_neuro.data.preprocess import FoldPreprocessor, decide_targets
from mot_neuro.data.splits import Splits, load_or_make_splits, make_splits


# ====================================================================== helpers
def with_participants(case: Case, table: pd.DataFrame, **settings) -> Path:
    """A data config on the demo files with ``table`` as participants (written into the case folder)."""
    return case.data_config(participants=str(case.csv("participants.csv", table)), **settings)


def nothing_written(case: Case, *, splits: bool = True) -> None:
    """A refused run leaves no tracking store, no checkpoint and (unless it existed before) no splits file."""
    assert not case.path("mlflow.db").exists()
    assert not list(case.folder.rglob("*.ckpt"))
    if splits:
        assert not case.path("splits.json").exists()


def datamodule(config: Path, **changes) -> NeuroOmicsDataModule:
    settings = yaml.safe_load(config.read_text())
    settings.update(changes)
    return NeuroOmicsDataModule(**settings)


def single_case_target(case: Case) -> pd.DataFrame:
    """Participants with a binary ``rare`` target: one case among all the controls."""
    table = case.participants.copy()
    table["rare"] = 0
    table.loc[5, "rare"] = 1
    return table


# ====================================================================== kinds decided once (class 2)
@pytest.mark.slow  # fits through the CLI
def test_cli_plink_coded_binary_trains_as_binary_and_reaches_mlflow_as_such(case, caplog):
    table = case.participants.copy()
    table["diagnosis"] = table["diagnosis"] + 1  # PLINK: 1 = control, 2 = case
    data = with_participants(case, table, targets=["diagnosis"], stratify="diagnosis")
    short = ["--trainer.fast_dev_run", "false", "--trainer.max_epochs", "1"]  # fast_dev_run logs nothing to MLflow
    for stage in ("train", "val", "test"):
        short += [f"--trainer.limit_{stage}_batches", "1"]
    status, stderr = case.run(*short, data=data)
    assert status == 0, stderr[-3000:]
    said = [r.getMessage() for r in caplog.records if "PLINK's coding" in r.getMessage()]
    assert len(said) == 1 and "'diagnosis'" in said[0]  # once per run (stderr in the CLI, pytest's capture here)
    with sqlite3.connect(case.path("mlflow.db")) as db:
        params = dict(db.execute("select key, value from params").fetchall())
    kinds = {key: value for key, value in params.items() if key.endswith("diagnosis/kind")}
    assert kinds and set(kinds.values()) == {"binary"}, params
    assert any(key.endswith("diagnosis/coding") for key in params), sorted(params)
    assert not any(sid in value for value in params.values() for sid in table["eid"].head(20))


@pytest.mark.parametrize("codes", [[-3, -1], [-9]], ids=["ukb", "plink"])
def test_cli_a_case_control_target_with_missing_data_codes_is_refused(case, codes):
    """0/1 (or PLINK's 1/2) plus negative codes (UK Biobank -1/-3, PLINK -9) would train as regression."""
    table = case.participants.copy()
    offset = 1 if codes == [-9] else 0  # PLINK: 1 = control, 2 = case, -9 = missing
    table["diagnosis"] = table["diagnosis"] + offset
    table.loc[: len(codes) * 3 - 1, "diagnosis"] = codes * 3
    data = with_participants(case, table, targets=["diagnosis"])
    status, stderr = case.run("--trainer.logger", "false", data=data)
    assert_refused(status, stderr, "'diagnosis'", "look like missing-data codes", str(codes[0]))
    assert not case.path("splits.json").exists()
    declared = with_participants(case, table, targets=["diagnosis"], target_kinds={"diagnosis": "regression"})
    status, stderr = case.run("--trainer.logger", "false", data=declared)
    assert status == 0, stderr[-3000:]  # declared: the user says what the column is


def test_every_fold_trains_the_same_kind_and_coding(case):
    """A 1/2-coded binary target and a multiclass one with a rare class: each fold's model gets the same spec."""
    table = case.participants.copy()
    table["diagnosis"] = table["diagnosis"] + 1
    rng = np.random.default_rng(0)
    table["grade"] = rng.integers(0, 3, len(table))
    table.loc[rng.choice(len(table), 12, replace=False), "grade"] = 3  # rare, but spread by stratification
    data = with_participants(
        case, table, targets=["diagnosis", "grade"], target_kinds={"grade": "multiclass"}, stratify="grade"
    )
    specs = []
    for fold in range(5):
        dm = datamodule(data, fold=fold)
        targets = dm.model_inputs.targets
        specs.append({name: (t.kind, t.n_classes, t.coding) for name, t in targets.items()})
        batch = dm.preprocessor.transform_targets(dm.rows["train"])
        assert set(np.unique(batch["diagnosis"][~np.isnan(batch["diagnosis"])])) == {0.0, 1.0}
    assert specs == [{"diagnosis": ("binary", None, (1.0, 2.0)), "grade": ("multiclass", 4, None)}] * 5
    # mot-neuro probe reads the targets from participants: in the model's coding too
    from mot_neuro.probe import _fold_labels

    labels = _fold_labels(dm)[0]["diagnosis"]
    assert set(labels.dropna()) == {0.0, 1.0} and labels.sum() == (table["diagnosis"] == 2).sum()


def test_kind_does_not_depend_on_the_training_rows():
    """Old rule: kinds from the training rows (a fold without cases made a binary target regression there)."""
    rng = np.random.default_rng(1)
    n = 60
    ids = np.array([f"s{i:03d}" for i in range(n)], dtype=object)
    modality = TokenizedModality(
        name="m",
        values=rng.normal(size=(n, 2, 1)).astype(np.float32),
        present=np.ones((n, 2), dtype=bool),
        token_names=["a", "b"],
        subject_ids=ids,
    )
    y = np.zeros(n)
    y[:3] = 1
    label = np.arange(n) % 3
    table = pd.DataFrame({"eid": ids, "y": y, "label": label})
    cohort = build_cohort(table, {"m": modality}, targets=["y", "label"], confounds=[])
    specs = decide_targets(cohort, {"label": "multiclass"})
    assert specs == {"y": {"kind": "binary"}, "label": {"kind": "multiclass", "n_classes": 3}}
    with_cases = FoldPreprocessor(target_specs=specs).fit(cohort, np.arange(0, 50))
    assert with_cases.target_kinds == {"y": "binary", "label": "multiclass"} and with_cases.n_classes == {"label": 3}
    # training rows without a case: refused (a binary head that never sees a case), not turned into regression
    with pytest.raises(AdapterError, match="no subject of class 1 in the training rows") as err:
        FoldPreprocessor(target_specs=specs).fit(cohort, np.arange(10, 60))
    assert err.value.column == "y"
    # training rows without class 2 of the multiclass target: refused, never a 2-class head
    without_two = np.flatnonzero(label != 2)
    with pytest.raises(AdapterError, match="class 2") as err:
        FoldPreprocessor(target_specs=specs).fit(cohort, without_two)
    assert err.value.column == "label"


def _tiny_cohort(target: list[float]):
    n = len(target)
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    modality = TokenizedModality(
        name="m",
        values=np.ones((n, 1, 1), np.float32),
        present=np.ones((n, 1), bool),
        token_names=["a"],
        subject_ids=ids,
    )
    return build_cohort(pd.DataFrame({"eid": ids, "t": target}), {"m": modality}, targets=["t"], confounds=[])


def test_two_valued_targets_are_binary_when_coded_or_declared_and_warned_about_otherwise(caplog):
    plink = _tiny_cohort([1, 2, 2, 1, np.nan, 1])
    assert decide_targets(plink) == {"t": {"kind": "binary", "coding": [1.0, 2.0]}}
    pre = FoldPreprocessor().fit(plink, np.arange(6))
    np.testing.assert_array_equal(pre.transform_targets(np.arange(6))["t"], [0, 1, 1, 0, np.nan, 0])
    signs = _tiny_cohort([-1, 1, 1, -1])
    caplog.clear()
    assert decide_targets(signs) == {"t": {"kind": "regression"}}
    assert any("exactly two values (-1, 1)" in r.getMessage() for r in caplog.records)  # not silently regression
    assert decide_targets(signs, {"t": "binary"}) == {"t": {"kind": "binary", "coding": [-1.0, 1.0]}}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([3.0] * 10, "constant"),
        ([0, 1] * 4 + [1e39, 0], "beyond float32's range"),
        ([0, 1, 3, 3, 0, 1, 3, 0, 1, 0], "no subject of class 2"),  # multiclass labels with a gap
    ],
)
def test_degenerate_targets_are_refused_naming_the_column(values, match):
    kinds = {"t": "multiclass"} if "class 2" in match else None
    with pytest.raises(AdapterError, match=match) as err:
        decide_targets(_tiny_cohort(values), kinds)
    assert err.value.column == "t"


def test_cli_constant_target_is_refused(case):
    table = case.participants.copy()
    table["target"] = 2.5
    status, stderr = case.run(*NO_LOGGER, data=with_participants(case, table, stratify=None))
    assert_refused(status, stderr, "'target'", "constant")
    nothing_written(case)


def test_cli_target_beyond_float32_is_refused_naming_the_subject(case):
    table = case.participants.copy()
    table.loc[7, "target"] = 1e39
    status, stderr = case.run(*NO_LOGGER, data=with_participants(case, table, stratify=None))
    assert_refused(status, stderr, "'target'", "float32", f"subject {table.loc[7, 'eid']}")
    nothing_written(case)


# ====================================================================== classes missing from a part (class 1)
def test_cli_class_missing_from_a_training_part_is_refused_and_no_splits_are_saved(case):
    table = single_case_target(case)
    status, stderr = case.run(*NO_LOGGER, data=with_participants(case, table, targets=["rare"], stratify=None))
    assert_refused(status, stderr, "'rare'", "training part of fold", "class 1", "stratify")
    # already stratified by it, the class is just too rare: the advice is not to stratify
    status, stderr = case.run(*NO_LOGGER, data=with_participants(case, table, targets=["rare"], stratify="rare"))
    assert_refused(status, stderr, "'rare'", "training part of fold", "merge the class")
    assert "stratify the splits" not in stderr
    assert table.loc[5, "eid"] not in stderr  # counts, never the subject of the rare class
    nothing_written(case)


def test_cli_class_missing_from_a_saved_splits_training_part_is_refused(case):
    table = single_case_target(case)
    data = with_participants(case, table, targets=["rare"], stratify=None)
    make_splits(table["eid"], n_folds=5, val_fraction=0.15, seed=0).save(case.path("splits.json"))
    before = case.path("splits.json").read_bytes()
    status, stderr = case.run(*NO_LOGGER, data=data)
    assert_refused(status, stderr, "'rare'", "class 1", "splits.json", "delete the splits file")
    assert case.path("splits.json").read_bytes() == before
    nothing_written(case, splits=False)


def _splits_with_fold0_test_without_cases(ids: pd.Series, cases: set[str], **settings) -> Splits:
    """Splits as the config makes them, with fold 0's test cases exchanged (in every fold) for controls of fold 0's
    training part: a valid partition whose fold 0 test part holds no case."""
    splits = make_splits(ids, **settings)
    fold = splits.folds[0]
    to_move = [sid for sid in fold["test"] if sid in cases]
    controls = [sid for sid in fold["train"] if sid not in cases][: len(to_move)]
    swap = {**dict(zip(to_move, controls, strict=True)), **dict(zip(controls, to_move, strict=True))}
    folds = [{part: sorted(swap.get(s, s) for s in members) for part, members in f.items()} for f in splits.folds]
    return Splits(scheme=splits.scheme, folds=folds, settings=splits.settings)


@pytest.mark.slow  # fits through the CLI
def test_cli_class_missing_from_a_test_part_is_warned_and_the_run_goes_on(case, caplog):
    table = case.participants
    cases = set(table.loc[table["diagnosis"] == 1, "eid"])
    splits = _splits_with_fold0_test_without_cases(table["eid"], cases, n_folds=5, val_fraction=0.15, seed=0)
    splits.save(case.path("splits.json"))
    data = case.data_config(targets=["diagnosis"], stratify=None)
    status, stderr = case.run(*NO_LOGGER, data=data)
    assert status == 0, stderr[-3000:]
    # the CLI's stderr gets it through logging (pytest's log capture takes it here)
    warned = [r.getMessage() for r in caplog.records if "has no subject of class" in r.getMessage()]
    assert len(warned) == 1 and "test part of fold 0" in warned[0] and "class(es) 1" in warned[0], warned
    assert not any(sid in stderr or sid in caplog.text for sid in table["eid"])


def test_warnings_cover_every_fold_and_part_when_splits_are_made(tmp_path, caplog):
    ids = [f"s{i:03d}" for i in range(100)]
    labels = np.zeros(100)
    labels[:6] = 1  # six cases over five folds: some val parts cannot hold one
    splits = load_or_make_splits(
        tmp_path / "splits.json", ids, class_targets={"y": (labels, [0.0, 1.0])}, stratify=labels, n_folds=5
    )
    expected = set()
    for k, fold in enumerate(splits.folds):
        for part in ("val", "test"):
            if not any(labels[ids.index(s)] == 1 for s in fold[part]):
                expected.add((k, part))
    warned = {
        (k, part)
        for k in range(5)
        for part in ("val", "test")
        for r in caplog.records
        if f"{part} part of fold {k} " in r.getMessage()
    }
    assert expected and warned == expected


# ====================================================================== values made infinite (class 5)
def _held_out_subject(case: Case, data: Path) -> str:
    """The first validation subject of fold 0 (its splits file is made here and reused by the run)."""
    dm = datamodule(data)
    dm.setup()
    return str(dm.cohort.subject_ids[dm.rows["val"][0]])


def test_cli_feature_that_overflows_in_standardization_stops_the_run_before_training(case):
    clean = case.data_config()
    subject = _held_out_subject(case, clean)
    behaviour = case.behaviour.copy()
    behaviour.loc[behaviour["eid"] == subject, "memory"] = 3.39e38  # finite in float32: passes the adapters
    path = case.csv("behaviour.csv", behaviour)
    data = case.data_config(modalities={"behaviour": {**DEMO_DATA["modalities"]["behaviour"], "path_or_df": str(path)}})
    status, stderr = case.run(*NO_LOGGER, data=data)
    assert_refused(status, stderr, "'behaviour'", "'memory'", f"subject {subject}", "float32")
    nothing_written(case, splits=False)


def test_cli_confound_beyond_float32_is_refused(case):
    table = case.participants.copy()
    table["age"] = table["age"].astype(float)
    table.loc[11, "age"] = 1e300  # float64 squares overflow: the SD became inf and the confound silently 0
    status, stderr = case.run(*NO_LOGGER, data=with_participants(case, table))
    assert_refused(status, stderr, "'age'", f"subject {table.loc[11, 'eid']}", "float32")
    nothing_written(case)


def test_huge_but_finite_confound_gives_finite_statistics_and_values():
    """Confound statistics are computed on scaled values: a 1e30 confound no longer overflows the SD."""
    rng = np.random.default_rng(2)
    n = 50
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    modality = TokenizedModality(
        name="m",
        values=rng.normal(size=(n, 2, 1)).astype(np.float32),
        present=np.ones((n, 2), bool),
        token_names=["a", "b"],
        subject_ids=ids,
    )
    size = rng.normal(size=n) * 1e30
    table = pd.DataFrame({"eid": ids, "t": rng.normal(size=n), "size": size})
    cohort = build_cohort(table, {"m": modality}, targets=["t"], confounds=["size"])
    pre = FoldPreprocessor(confounds=["size"]).fit(cohort, np.arange(40))
    assert np.isfinite(pre.state_dict()["confounds"][0]["sd"])
    values, _ = pre.transform("m", np.arange(n))
    assert np.isfinite(values).all()


def test_transform_refuses_values_that_standardization_makes_infinite():
    n = 30
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    values = np.zeros((n, 2, 1), np.float32)
    values[:, 0, 0] = np.arange(n) * 1e-3
    values[25, 0, 0] = 3.39e38  # held out: training mean/SD never saw it
    modality = TokenizedModality(
        name="m", values=values, present=np.ones((n, 2), bool), token_names=["a", "b"], subject_ids=ids
    )
    cohort = build_cohort(pd.DataFrame({"eid": ids, "t": np.arange(n) % 2}), {"m": modality}, targets=["t"])
    pre = FoldPreprocessor().fit(cohort, np.arange(20))
    with pytest.raises(AdapterError, match="modality 'm', token 'a'.*float32's range after standardization") as err:
        pre.transform("m", np.arange(20, 30))
    assert err.value.subject == "s25"
    with pytest.raises(AdapterError, match="token 'a'"):
        pre.check_rows(np.arange(20, 30))
    pre.transform("m", np.arange(20, 25))  # the other rows are fine


# ====================================================================== saved splits vs configuration (class 6)
def _save_demo_splits(case: Case, data: Path) -> bytes:
    datamodule(data).setup()  # makes and saves the splits file with these settings
    return case.path("splits.json").read_bytes()


@pytest.mark.parametrize(
    ("now", "differs"),
    [
        ({"n_folds": 3}, "n_folds 5 saved, 3 asked"),
        ({"split_seed": 4}, "seed 0 saved, 4 asked"),
        ({"stratify": None}, "stratify 'target' saved, none asked"),
        ({"stratify": "diagnosis"}, "stratify 'target' saved, 'diagnosis' asked"),
        ({"val_fraction": 0.2}, "val_fraction 0.15 saved, 0.2 asked"),
    ],
)
def test_cli_saved_splits_made_with_other_settings_are_refused(case, now, differs):
    before = _save_demo_splits(case, case.data_config())
    status, stderr = case.run(*NO_LOGGER, data=case.data_config(**now))
    assert_refused(status, stderr, "splits.json", differs, "delete the file", "splits_file")
    assert case.path("splits.json").read_bytes() == before


def test_cli_saved_splits_without_groups_refused_when_a_group_is_asked(case):
    before = _save_demo_splits(case, case.data_config(n_folds=2))
    status, stderr = case.run(*NO_LOGGER, data=case.data_config(n_folds=2, group="site"))
    assert_refused(status, stderr, "splits.json", "groups none saved, 'site' asked")
    assert case.path("splits.json").read_bytes() == before
    assert not case.path("mlflow.db").exists()


def test_cli_saved_splits_whose_groups_cross_parts_are_refused(case):
    """Splits recorded with an unnamed grouping (an array) cannot be compared by name: their content is checked."""
    table = case.participants
    arbitrary = np.arange(len(table)) % 40  # some grouping, not the sites
    make_splits(table["eid"], n_folds=2, val_fraction=0.15, seed=0, stratify=table["target"], groups=arbitrary).save(
        case.path("splits.json")
    )
    status, stderr = case.run(*NO_LOGGER, data=case.data_config(n_folds=2, group="site"))
    assert_refused(status, stderr, "splits.json", "group(s) of 'site' cross train/val/test in fold 0")


# ====================================================================== option ranges (class 10)
@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("batch_size", "0", "data.batch_size"),
        ("batch_size", "-1", "data.batch_size"),
        ("num_workers", "-1", "data.num_workers"),
        ("n_folds", "1", "data.n_folds"),
        ("fold", "7", "data.fold 7 does not exist"),
        ("fold", "-1", "data.fold"),
        ("val_fraction", "1.5", "data.val_fraction"),
        ("val_fraction", "0", "data.val_fraction"),
        ("test_fraction", "-0.2", "data.test_fraction"),
        ("split_seed", "-3", "data.split_seed"),
        ("join", "left", "data.join"),
        ("scheme", "bootstrap", "data.scheme"),
    ],
)
def test_cli_data_options_out_of_range_are_refused_where_parsed(case, option, value, named):
    """With the MLflow logger on: refused before any tracking store or run is created."""
    status, stderr = case.run(f"--data.{option}", value, data=case.data_config())
    assert_refused(status, stderr, named)
    nothing_written(case)


def test_cli_out_of_range_option_in_the_data_file_is_refused(case):
    status, stderr = case.run(data=case.data_config(batch_size=0))
    assert_refused(status, stderr, "data.batch_size")
    nothing_written(case)


def test_cli_val_fraction_that_leaves_no_training_subjects_is_refused(case):
    status, stderr = case.run(data=case.data_config(scheme="holdout", val_fraction=0.5, test_fraction=0.6))
    assert_refused(status, stderr, "data.val_fraction", "leaves no training subjects")
    nothing_written(case)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"fold": 5}, "data.fold 5 does not exist"),
        ({"scheme": "holdout", "fold": 1}, "holdout has one fold"),
        ({"test_fraction": 1.0}, "data.test_fraction"),
        ({"join": "left"}, "data.join"),
        ({"split_seed": True}, "data.split_seed"),
    ],
)
def test_python_api_refuses_the_same_options(changes, named):
    with pytest.raises(ValueError, match=named):
        NeuroOmicsDataModule(participants="p.csv", modalities={"m": {}}, **changes)


def test_splits_settings_record_the_column_names(case):
    _save_demo_splits(case, case.data_config())
    settings = json.loads(case.path("splits.json").read_text())["settings"]
    assert settings["stratify"] == "target" and settings["groups"] is None
