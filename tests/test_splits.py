"""Saved, grouped, stratified splits (mot_neuro.data.splits)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from data_adapters.core import AdapterError
from mot_neuro.data.splits import Splits, load_or_make_splits, make_splits

N = 300
IDS = [f"sub-{i:04d}" for i in range(N)]
RNG = np.random.default_rng(0)
CASES = np.zeros(N, dtype=int)
CASES[RNG.choice(N, size=N // 5, replace=False)] = 1  # 20% cases
SITES = RNG.integers(0, 25, N)
AGE = RNG.normal(60, 8, N)

VARIANTS = {
    "plain": {},
    "stratified": {"stratify": CASES},
    "continuous": {"stratify": AGE},
    "grouped": {"groups": SITES},
    "both": {"stratify": CASES, "groups": SITES},
}


def parts_of(fold: dict) -> dict[str, set]:
    return {part: set(fold[part]) for part in ("train", "val", "test")}


@pytest.mark.parametrize("scheme", ["kfold", "holdout"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_subject_is_in_exactly_one_part_of_every_fold(scheme, variant):
    splits = make_splits(IDS, scheme=scheme, **VARIANTS[variant])
    assert splits.n_folds() == (5 if scheme == "kfold" else 1)
    for k in range(splits.n_folds()):
        fold = splits.fold(k)
        sizes = {part: len(ids) for part, ids in fold.items()}
        assert all(sizes.values())
        everyone = np.concatenate(list(fold.values()))
        assert len(everyone) == N and set(everyone) == set(IDS)
        assert all(list(ids) == sorted(ids) for ids in fold.values())
        assert abs(sizes["val"] - 0.1 * N) <= (0.05 * N if "groups" in VARIANTS[variant] else 1)
        if scheme == "holdout":
            assert abs(sizes["test"] - 0.2 * N) <= (0.07 * N if "groups" in VARIANTS[variant] else 1)
    if scheme == "kfold":
        tests = [splits.fold(k)["test"] for k in range(5)]
        assert sum(map(len, tests)) == N and set(np.concatenate(tests)) == set(IDS)


@pytest.mark.parametrize("scheme", ["kfold", "holdout"])
def test_groups_never_cross_train_val_test(scheme):
    splits = make_splits(IDS, scheme=scheme, groups=SITES, stratify=CASES, seed=3)
    site_of = dict(zip(IDS, SITES, strict=True))
    for fold in splits.folds:
        seen: dict[int, set] = {}
        for part, ids in fold.items():
            for sid in ids:
                seen.setdefault(site_of[sid], set()).add(part)
        assert all(len(parts) == 1 for parts in seen.values())


@pytest.mark.parametrize("groups", [None, SITES])
def test_stratification_keeps_the_case_rate_in_every_test_fold(groups):
    position = {sid: i for i, sid in enumerate(IDS)}
    splits = make_splits(IDS, stratify=CASES, groups=groups, seed=1)
    for k in range(splits.n_folds()):
        test = [position[sid] for sid in splits.fold(k)["test"]]
        assert abs(CASES[test].mean() - 0.2) <= 0.10
        if groups is None:
            assert abs(CASES[test].mean() - 0.2) <= 0.02  # exact stratification is possible without groups


def test_missing_stratify_values_are_a_stratum_of_their_own():
    target = AGE.copy()
    target[:25] = np.nan
    splits = make_splits(IDS, stratify=target)
    missing = set(IDS[:25])
    counts = [len(missing & set(fold["test"])) for fold in splits.folds]
    assert counts == [5, 5, 5, 5, 5]
    assert splits.settings["stratify"] == "array"


def test_a_series_indexed_by_id_is_aligned_by_id_and_named_in_settings():
    shuffled = RNG.permutation(N)
    series = pd.Series(CASES[shuffled], index=np.array(IDS)[shuffled], name="diagnosis")
    by_id = make_splits(IDS, stratify=series)
    by_position = make_splits(IDS, stratify=CASES)
    assert by_id.folds == by_position.folds
    assert by_id.settings["stratify"] == "diagnosis"


def test_same_seed_same_splits_other_seed_other_splits():
    a = make_splits(IDS, stratify=CASES, groups=SITES, seed=7)
    b = make_splits(list(reversed(IDS)), stratify=CASES[::-1], groups=SITES[::-1], seed=7)
    assert a.folds == make_splits(IDS, stratify=CASES, groups=SITES, seed=7).folds
    assert a.fingerprint() == make_splits(IDS, stratify=CASES, groups=SITES, seed=7).fingerprint()
    c = make_splits(IDS, stratify=CASES, groups=SITES, seed=8)
    assert a.folds != c.folds and a.fingerprint() != c.fingerprint()
    assert b.subject_ids() == a.subject_ids()


def test_save_load_round_trip_is_equal_with_a_stable_fingerprint(tmp_path):
    splits = make_splits(IDS, stratify=CASES, groups=SITES, seed=2)
    path = tmp_path / "nested" / "splits.json"
    splits.save(path)
    loaded = Splits.load(path)
    assert loaded == splits
    assert loaded.fingerprint() == splits.fingerprint()
    assert len(splits.fingerprint()) == 16 and int(splits.fingerprint(), 16) >= 0
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["fingerprint"] == splits.fingerprint()
    loaded.save(path)
    assert Splits.load(path).fingerprint() == splits.fingerprint()
    assert sorted(os.listdir(path.parent)) == ["splits.json"]  # no temporary file left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "splits.json"
    old = make_splits(IDS, seed=0)
    old.save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        make_splits(IDS, seed=1).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["splits.json"]


def test_load_or_make_splits_makes_once_then_reuses(tmp_path):
    path = tmp_path / "splits.json"
    made = load_or_make_splits(path, IDS, stratify=CASES, seed=4)
    assert path.is_file()
    again = load_or_make_splits(path, list(reversed(IDS)), stratify=CASES, seed=4)
    assert again == made
    # a saved file made with other settings is refused, naming them (saved and asked), never silently used
    with pytest.raises(AdapterError, match="seed 4 saved, 99 asked") as err:
        load_or_make_splits(path, IDS, stratify=CASES, seed=99)
    assert "delete the file" in str(err.value)


def test_load_or_make_splits_refuses_a_file_with_other_subjects_by_count_never_by_id(tmp_path):
    path = tmp_path / "splits.json"
    load_or_make_splits(path, IDS)
    cohort = IDS[3:] + ["new-1", "new-2"]
    with pytest.raises(AdapterError) as err:
        load_or_make_splits(path, cohort)
    message = str(err.value)
    assert "3 subject(s) only in the file" in message and "2 only in the cohort" in message
    assert "Delete the file" in message
    assert not any(sid in message for sid in [*IDS, "new-1", "new-2"])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"format": "mot-neuro-splits", "version": 1, "folds": [', "not valid JSON"),
        ("[1, 2]", "not a mot-neuro splits file"),
        ('{"format": "mot-neuro-splits", "version": 7}', "version 7"),
        (
            '{"format": "mot-neuro-splits", "version": 1, "scheme": "kfold", "settings": {},'
            ' "folds": [{"train": ["a"], "val": ["a"], "test": ["b"]}]}',
            "appear twice",
        ),
    ],
)
def test_bad_files_give_a_clear_error(tmp_path, content, match):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(AdapterError, match=match) as err:
        Splits.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(AdapterError, match=match):
        load_or_make_splits(path, IDS)


def test_edited_file_no_longer_matches_its_fingerprint(tmp_path):
    path = tmp_path / "splits.json"
    make_splits(IDS).save(path)
    data = json.loads(path.read_text())
    first = data["folds"][0]
    first["train"], moved = first["train"][1:], first["train"][0]
    first["val"] = sorted([*first["val"], moved])
    path.write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="fingerprint"):
        Splits.load(path)
    del data["fingerprint"]  # an intended edit: accepted without it
    path.write_text(json.dumps(data))
    assert moved in Splits.load(path).fold(0)["val"]
    with pytest.raises(AdapterError, match="not found"):
        Splits.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_folds": 1}, "n_folds must be an integer >= 2"),
        ({"val_fraction": 0}, "val_fraction must be between 0 and 1"),
        ({"val_fraction": 1.5}, "val_fraction must be between 0 and 1"),
        ({"scheme": "holdout", "test_fraction": -0.1}, "test_fraction must be between 0 and 1"),
        ({"scheme": "holdout", "test_fraction": 0.5, "val_fraction": 0.5}, "leaves no training subjects"),
        ({"scheme": "bootstrap"}, "scheme must be one of"),
        ({"stratify": CASES[:-1]}, r"stratify has shape \(299,\) for 300 subject IDs"),
        ({"groups": SITES[:10]}, "groups has shape"),
        (
            {"groups": SITES % 4},
            r"4 groups cannot make kfold splits .*need at least 6.*lower n_folds or use more groups",
        ),
        ({"groups": np.where(SITES < 3, None, SITES)}, "groups has .* missing value"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    with pytest.raises(AdapterError, match=match):
        make_splits(IDS, **kwargs)


def test_duplicated_ids_and_tiny_cohorts_are_refused():
    with pytest.raises(AdapterError, match="appear more than once"):
        make_splits([*IDS, IDS[0]])
    with pytest.raises(AdapterError, match="cannot make kfold splits"):
        make_splits(IDS[:4], n_folds=5)


def test_fold_out_of_range_names_the_valid_range():
    splits = make_splits(IDS)
    assert set(splits.fold(4)) == {"train", "val", "test"}
    for k in (5, -1):
        with pytest.raises(AdapterError, match=rf"fold {k} does not exist.*5 fold\(s\), 0\.\.4"):
            splits.fold(k)
