"""Train/validation/test splits made once, saved as JSON, and reused by every experiment.

Two schemes:

* ``kfold``: the test sets of the ``n_folds`` folds partition the subjects; in each fold a validation set of
  about ``val_fraction`` of all subjects is carved out of the remaining subjects, the rest is train.
* ``holdout``: one fold with a test set of about ``test_fraction`` and a validation set of about
  ``val_fraction`` of all subjects.

``groups`` (site, family) keep the subjects of one group inside one of train/val/test; so does ``relatedness``
(a kinship file, :mod:`~mot_neuro.data.relatedness`) for relatives, joined with ``groups`` into connected
components. Grouped folds whose train, val or test part is far from its target size (a val or test part more than
twice or under half its size, a train part under half; :func:`_far_from_target`) are refused, naming the largest
group: one family holding most of the cohort makes folds whose metrics mislead. ``stratify`` keeps
the distribution of a target about equal across sets: a continuous target is cut into ``n_bins`` quantile
bins, a missing value is a stratum of its own, and strata too small to spread over the sets are merged with
the next smallest one (so scikit-learn never has to warn about them).

The same inputs and seed give the same splits with the same scikit-learn version; saving them
(:mod:`~mot_neuro.data.split_file`: the scheme, the settings, a fingerprint and the IDs) is what makes them the
same for every experiment. Withdrawn participants found in saved splits are removed from them, every other subject
keeping its part (:func:`withdraw_from_splits`).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    KFold,
    ShuffleSplit,
    StratifiedGroupKFold,
    StratifiedKFold,
    StratifiedShuffleSplit,
)

from data_adapters.errors import AdapterError

from .column_values import number_label as _label
from .relatedness import Relatedness, as_relatedness, related_groups, related_pairs_crossing
from .split_file import PARTS, SCHEMES, Splits

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- checking arguments
def fraction_problems(val_fraction, test_fraction, *, prefix: str = "") -> list[str]:
    """What is wrong with the validation and test fractions (each must lie strictly between 0 and 1), one
    message per bad fraction; ``prefix`` goes before the option names (``"data."`` for a data config)."""
    return [
        f"{prefix}{label} must be between 0 and 1 (exclusive), got {value!r}"
        for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value < 1
    ]


def held_out_problem(scheme: str, n_folds, val_fraction, test_fraction, *, prefix: str = "") -> str | None:
    """Why validation plus test sets of these sizes leave no training subjects, or None. The fractions must
    already be valid (:func:`fraction_problems`), and ``n_folds`` for a k-fold scheme."""
    held_out = val_fraction + (1 / n_folds if scheme == "kfold" else test_fraction)
    if held_out < 1:
        return None
    test = f"1/n_folds = {1 / n_folds:.3g}" if scheme == "kfold" else f"{prefix}test_fraction = {test_fraction}"
    return (
        f"{prefix}val_fraction ({val_fraction}) + {test} leaves no training subjects; lower {prefix}val_fraction"
        " or the test size"
    )


def _check_arguments(scheme, n_folds, val_fraction, test_fraction, seed, n_bins) -> None:
    if scheme not in SCHEMES:
        raise AdapterError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "kfold" and (isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2):
        raise AdapterError(f"n_folds must be an integer >= 2 for k-fold splits, got {n_folds!r}")
    problems = fraction_problems(val_fraction, test_fraction)
    problem = problems[0] if problems else held_out_problem(scheme, n_folds, val_fraction, test_fraction)
    if problem:
        raise AdapterError(problem)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AdapterError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise AdapterError(f"n_bins must be an integer >= 2, got {n_bins!r}")


def _check_ids(subject_ids) -> np.ndarray:
    ids = np.asarray([str(s) for s in subject_ids], dtype=str)
    if len(ids) == 0:
        raise AdapterError("no subject IDs given")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = unique[counts > 1]
        raise AdapterError(
            f"{len(dup)} subject ID(s) appear more than once; make IDs unique first", subject=str(dup[0])
        )
    return ids


def _aligned(values, ids: np.ndarray, what: str) -> pd.Series:
    """``values`` as a Series in the order of ``ids``: a Series indexed by these IDs is aligned by ID,
    anything else by position."""
    if isinstance(values, pd.Series) and not isinstance(values.index, pd.RangeIndex):
        index = values.index.astype(str)
        if index.is_unique and set(index) == set(ids):
            return values.set_axis(index).reindex(ids).reset_index(drop=True)
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if array.ndim != 1 or len(array) != len(ids):
        raise AdapterError(
            f"{what} has shape {array.shape} for {len(ids)} subject IDs; pass one value per subject, in the order"
            " of subject_ids"
        )
    return pd.Series(array)


# ---------------------------------------------------------------------------------------------- making splits
def stratum_codes(stratify: pd.Series, n_bins: int) -> np.ndarray:
    """Integer stratum per subject: quantile bins for a continuous target, classes otherwise, NaN its own."""
    missing = stratify.isna().to_numpy()
    observed = stratify[~missing]
    codes = np.full(len(stratify), -1, dtype=np.int64)
    numeric = pd.api.types.is_numeric_dtype(observed) and not pd.api.types.is_bool_dtype(observed)
    if numeric and observed.nunique() > n_bins:
        codes[~missing] = pd.qcut(observed.astype(float), n_bins, labels=False, duplicates="drop")
    else:
        codes[~missing] = pd.factorize(observed.astype(str), sort=True)[0]
    codes[missing] = codes.max() + 1
    return codes


def _coarsen(strata: np.ndarray | None, min_count: int, max_strata: int | None = None) -> np.ndarray | None:
    """Strata where each has at least ``min_count`` members (and at most ``max_strata`` strata), made by
    merging the smallest stratum into the next smallest; None when one stratum is left."""
    if strata is None:
        return None
    labels, codes = np.unique(strata, return_inverse=True)
    counts = np.bincount(codes).astype(np.int64)
    alive = list(range(len(labels)))
    while len(alive) > 1:
        order = sorted(alive, key=lambda s: (counts[s], s))
        too_many = max_strata is not None and len(alive) > max_strata
        if counts[order[0]] >= min_count and not too_many:
            break
        small, into = order[0], order[1]
        codes[codes == small] = into
        counts[into] += counts[small]
        alive.remove(small)
    if len(alive) == 1:
        return None
    return np.unique(codes, return_inverse=True)[1]


def _random_state(seed: int, *key: int) -> int:
    return int(np.random.SeedSequence([seed, *key]).generate_state(1)[0])


def _carve(
    n: int, n_take: int, strata: np.ndarray | None, groups: np.ndarray | None, random_state: int, what: str
) -> np.ndarray:
    """Positions of a set of about ``n_take`` of ``n`` subjects, stratified by ``strata``, whole ``groups``."""
    dummy = np.zeros(n)
    if groups is None:
        y = _coarsen(strata, min_count=2, max_strata=min(n_take, n - n_take))
        if y is None:
            splitter = ShuffleSplit(n_splits=1, test_size=n_take, random_state=random_state)
        else:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_take, random_state=random_state)
        return next(splitter.split(dummy, y))[1]
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise AdapterError(
            f"only {n_groups} group left when carving out the {what} set; groups must not be split, so use more"
            " groups (or fewer folds), or no groups"
        )
    # a k-fold over groups, first fold taken: sets of whole groups of about n/k subjects, balanced by stratum
    n_splits = int(min(max(round(n / n_take), 2), n_groups))
    y = _coarsen(strata, min_count=n_splits)
    y = np.zeros(n, dtype=np.int64) if y is None else y
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return next(splitter.split(dummy, y, groups))[1]


def _settings(scheme, n_folds, val_fraction, test_fraction, stratify, groups, seed, n_bins, relatedness=None) -> dict:
    def name(values):
        if values is None:
            return None
        return str(values.name) if isinstance(values, pd.Series) and values.name is not None else "array"

    return {
        "seed": int(seed),
        "n_folds": int(n_folds) if scheme == "kfold" else 1,
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction) if scheme == "holdout" else None,
        "stratify": name(stratify),
        "groups": name(groups),
        "n_bins": int(n_bins),
        "relatedness": None if relatedness is None else as_relatedness(relatedness).settings(),
    }


def make_splits(
    subject_ids: Sequence,
    *,
    scheme: str = "kfold",
    n_folds: int = 5,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    stratify=None,
    groups=None,
    seed: int = 0,
    n_bins: int = 5,
    relatedness: Relatedness | str | os.PathLike | Mapping | None = None,
) -> Splits:
    """Seeded, grouped, stratified splits of ``subject_ids`` (see the module docstring).

    ``stratify`` and ``groups`` hold one value per subject, in the order of ``subject_ids`` (a Series
    indexed by these IDs is aligned by ID); a Series' name is recorded in the settings.

    ``relatedness``: related pairs (a :class:`~mot_neuro.data.relatedness.Relatedness`, a relatedness file, or
    ``{"path": ..., "threshold": ...}``; see :mod:`mot_neuro.data.relatedness`) kept inside one part: a subject's
    group is its connected component over "related pair" and "same ``groups`` value". The threshold and the
    file's fingerprint are recorded in the settings, the group counts under ``settings["related_groups"]``.
    """
    ids = _check_ids(subject_ids)
    _check_arguments(scheme, n_folds, val_fraction, test_fraction, seed, n_bins)
    relatedness = as_relatedness(relatedness)
    n = len(ids)
    strata = None if stratify is None else stratum_codes(_aligned(stratify, ids, "stratify"), n_bins)
    group_codes = None if groups is None else _group_codes(groups, ids)
    related_counts = None
    if relatedness is not None:
        group_codes, related_counts = related_groups(ids, relatedness, group_codes)
        _log_related(related_counts)
    n_groups = _check_enough_units(n, group_codes, scheme, n_folds)
    n_val = max(1, round(val_fraction * n))
    everyone = np.arange(n)
    if scheme == "kfold":
        outer = kfold_test_sets(n, n_folds, strata, group_codes, seed)
    else:
        outer = [_pick(everyone, max(1, round(test_fraction * n)), strata, group_codes, _random_state(seed), "test")]

    n_test = n / n_folds if scheme == "kfold" else max(1, round(test_fraction * n))
    folds = []
    for k, test in enumerate(outer):
        rest = np.setdiff1d(everyone, test)
        val = _pick(rest, n_val, strata, group_codes, _random_state(seed, k + 1), "validation")
        train = np.setdiff1d(rest, val)
        for part, members in (("train", train), ("val", val), ("test", test)):
            if len(members) == 0:
                raise AdapterError(
                    f"fold {k} has an empty {part} set ({n} subjects, {n_groups} groups); use fewer folds, other"
                    " fractions or more subjects"
                )
        if group_codes is not None:
            _check_balance(
                k,
                (len(train), len(val), len(test)),
                (n - n_test - n_val, n_val, n_test),
                group_codes,
                related=None if relatedness is None else relatedness.path,
                grouped=groups is not None,
                scheme=scheme,
            )
        folds.append(
            {part: sorted(ids[members].tolist()) for part, members in zip(PARTS, (train, val, test), strict=True)}
        )
    settings = _settings(scheme, n_folds, val_fraction, test_fraction, stratify, groups, seed, n_bins, relatedness)
    if related_counts is not None:
        settings["related_groups"] = related_counts  # counts only; not compared when the file is reused
    return Splits(scheme=scheme, folds=folds, settings=settings)


def _far_from_target(part: str, size: int, target: float) -> bool:
    """Whether a part of a grouped fold is far from its target size: a val or test part more than twice its
    target or under half of it, a train part under half of it (2 subjects of slack either way, for small sets
    of whole groups). Grouped k-folds of families and sites stay well inside these bounds."""
    if size < target / 2 - 2:
        return True
    return part != "train" and size > 2 * target + 2


def _check_balance(
    k: int, sizes: tuple, targets: tuple, group_codes: np.ndarray, *, related: str | None, grouped: bool, scheme: str
) -> None:
    """Refuse a grouped fold whose train, val or test part is far from its target size (:func:`_far_from_target`):
    groups too large for the sets (one family holding most of the cohort) make folds whose metrics mislead."""
    for part, size, target in zip(PARTS, sizes, targets, strict=True):
        if not _far_from_target(part, size, target):
            continue
        largest = int(np.bincount(group_codes).max())
        kind = (
            "family (related subjects joined through relatedness" + (" and the group column)" if grouped else ")")
            if related
            else "group"
        )
        advice = (
            [
                "a higher kinship threshold (relatedness.threshold: 0.0884 keeps second degree and closer together,"
                " 0.177 first degree)"
            ]
            if related
            else ["a finer grouping"]
        )
        if scheme == "kfold":
            advice += ["scheme: holdout", "fewer folds"]
        raise AdapterError(
            f"fold {k}: the {part} part holds {size} subjects where about {round(target)} were asked"
            f" (train/val/test {sizes[0]}/{sizes[1]}/{sizes[2]} of {sum(sizes)}): the largest {kind} holds {largest}"
            f" subjects and must stay in one part; use {', '.join(advice[:-1]) + ' or ' if len(advice) > 1 else ''}"
            f"{advice[-1]}",
            file=related,  # the relatedness file, whose families these are
        )


def split_group_labels(subject_ids, groups=None, relatedness=None) -> pd.Series | None:
    """Subject ID -> the group its splits keep whole (as text), as :func:`make_splits` groups them: the
    ``groups`` value, or with ``relatedness`` the connected component of related pairs and shared ``groups``
    values; None without either."""
    if groups is None and relatedness is None:
        return None
    ids = _check_ids(subject_ids)
    if relatedness is None:
        return pd.Series(_aligned(groups, ids, "groups").astype(str).to_numpy(object), index=ids.astype(object))
    codes = None if groups is None else _group_codes(groups, ids)
    labels, _ = related_groups(ids, as_relatedness(relatedness), codes)
    return pd.Series(labels.astype(str).astype(object), index=ids.astype(object))


def _log_related(counts: dict) -> None:
    log.info(
        "relatedness: %d related group(s) (largest %d subjects, %d subjects in them) from %d related pair(s) in the"
        " cohort; %d pair(s) and %d ID(s) of the file not in the cohort ignored; %d group(s) in all, largest %d",
        counts["related_groups"],
        counts["largest_related_group"],
        counts["subjects_in_related_groups"],
        counts["pairs_in_cohort"],
        counts["pairs_outside_cohort"],
        counts["ids_not_in_cohort"],
        counts["groups"],
        counts["largest_group"],
    )


def _group_codes(groups, ids: np.ndarray) -> np.ndarray:
    """An integer code per subject for its group; a missing group is refused."""
    group_series = _aligned(groups, ids, "groups")
    if group_series.isna().any():
        raise AdapterError(
            f"groups has {int(group_series.isna().sum())} missing value(s); give every subject a group"
            " (e.g. its own ID when it has no family or site)"
        )
    return pd.factorize(group_series.astype(str), sort=True)[0]


def _check_enough_units(n: int, group_codes: np.ndarray | None, scheme: str, n_folds: int) -> int:
    """The number of groups (subjects without groups); refused when too few for train, val and test sets."""
    n_groups = n if group_codes is None else len(np.unique(group_codes))
    needed = n_folds + 1 if scheme == "kfold" else 3
    if n_groups < needed:
        unit, more = ("groups", "more groups (a finer grouping)") if group_codes is not None else ("subjects", "more")
        raise AdapterError(
            f"{n_groups} {unit} cannot make {scheme} splits with train, val and test sets (need at least {needed});"
            f" {'lower n_folds or ' if scheme == 'kfold' else ''}use {more}"
        )
    return n_groups


def kfold_test_sets(
    n: int, n_folds: int, strata: np.ndarray | None, group_codes: np.ndarray | None, seed: int
) -> list[np.ndarray]:
    """The test sets of a k-fold split (a partition of the subjects), stratified, of whole groups."""
    dummy = np.zeros(n)
    y = _coarsen(strata, min_count=n_folds)
    if group_codes is None:
        splitter = (KFold if y is None else StratifiedKFold)(n_splits=n_folds, shuffle=True, random_state=seed)
        return [test for _, test in splitter.split(dummy, y)]
    y = np.zeros(n, dtype=np.int64) if y is None else y
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(dummy, y, group_codes)]


def _pick(
    positions: np.ndarray,
    n_take: int,
    strata: np.ndarray | None,
    group_codes: np.ndarray | None,
    random_state: int,
    what: str,
) -> np.ndarray:
    """Positions of a ``what`` set of about ``n_take`` of ``positions`` (see :func:`_carve`)."""
    if group_codes is None and n_take >= len(positions):
        raise AdapterError(
            f"{len(positions)} subjects left cannot give a {what} set of {n_take}; lower val_fraction/test_fraction"
            " or n_folds, or use more subjects"
        )
    sub_strata = None if strata is None else strata[positions]
    sub_groups = None if group_codes is None else group_codes[positions]
    return positions[_carve(len(positions), n_take, sub_strata, sub_groups, random_state, what)]


# ---------------------------------------------------------------------------------------------- checking splits
_NEW_SETTINGS = ("relatedness",)
"""Settings recorded since a later version: a file without one was made without it (None)."""


def _settings_differences(saved: dict, asked: dict) -> list[str]:
    """``"key saved X, asked Y"`` for each setting that differs. A column name saved as ``"array"`` (splits made
    from a bare array, which records no name) matches any asked name: the content checks cover those."""
    differences = []
    for key, value in asked.items():
        if key not in saved and key not in _NEW_SETTINGS:
            continue
        before = saved.get(key)
        if key in ("stratify", "groups") and "array" in (before, value) and None not in (before, value):
            continue
        if before != value:
            differences.append(
                f"{key} {'none' if before is None else repr(before)} saved,"
                f" {'none' if value is None else repr(value)} asked"
            )
    return differences


def groups_crossing(splits: Splits, subject_ids: np.ndarray, groups) -> list[tuple[int, int]]:
    """``(fold, number of groups)`` for each fold where some group has subjects in more than one of
    train/val/test; empty when every group stays inside one part."""
    ids = _check_ids(subject_ids)
    codes = pd.factorize(_aligned(groups, ids, "groups").astype(str), sort=True)[0]
    group_of = dict(zip(ids.tolist(), codes.tolist(), strict=True))
    crossing = []
    for k, fold in enumerate(splits.folds):
        parts_of_group: dict[int, set[str]] = {}
        for part in PARTS:
            for sid in fold[part]:
                parts_of_group.setdefault(group_of[sid], set()).add(part)
        count = sum(len(parts) > 1 for parts in parts_of_group.values())
        if count:
            crossing.append((k, count))
    return crossing


def check_classes(
    splits: Splits,
    subject_ids: Sequence,
    class_targets: Mapping[str, tuple],
    *,
    warn_folds: Sequence[int] | None = None,
    file=None,
    stratified_by: str | None = None,
) -> None:
    """Refuse splits where a fold's training part lacks a class of a categorical target; warn (counts only,
    never IDs) for each fold in ``warn_folds`` (default: every fold) whose val or test part lacks one, where
    metrics that need every class are undefined.

    ``class_targets``: target name -> (raw labels, one per subject in the order of ``subject_ids``, NaN where
    missing; the target's class labels). Every fold's training part is checked: a class missing from one
    fold's training rows makes that fold's model unable to predict it, and the folds are meant to be run
    together.
    """
    ids = _check_ids(subject_ids)
    position = {sid: i for i, sid in enumerate(ids.tolist())}
    warnings_to_give = []
    folds = range(splits.n_folds()) if warn_folds is None else warn_folds
    for name, (labels, classes) in class_targets.items():
        labels = np.asarray(labels, dtype=np.float64)
        for k, fold in enumerate(splits.folds):
            for part in PARTS:
                rows = np.fromiter((position[sid] for sid in fold[part]), dtype=np.int64, count=len(fold[part]))
                held = labels[rows]
                lacking = [c for c in classes if not (held == c).any()]
                if not lacking:
                    continue
                if part == "train":
                    n_class = int((labels == lacking[0]).sum())
                    again = "; delete the splits file (or point splits_file elsewhere) to make new ones" if file else ""
                    # already stratified by it: the class is too rare for the folds, and stratifying is no advice
                    advice = (
                        "use fewer folds, or merge the class with another or drop its subjects"
                        if stratified_by == name
                        else f"stratify the splits by {name!r} or use fewer folds"
                    )
                    raise AdapterError(
                        f"the training part of fold {k} has no subject of class {_label(lacking[0])} of this target"
                        f" ({n_class} subject(s) of that class in the cohort), so that fold's model could never"
                        f" predict it; {advice}{again}",
                        file=file,
                        column=name,
                    )
                if k in folds:
                    n_observed = int((~np.isnan(held)).sum())
                    warnings_to_give.append(
                        f"splits: target {name!r}: the {part} part of fold {k} has no subject of class(es)"
                        f" {', '.join(_label(c) for c in lacking)} ({n_observed} subject(s) with this target there);"
                        " metrics that need every class (AUROC, AUPRC) are undefined (NaN) on it"
                    )
    for text in warnings_to_give:
        log.warning(text)


def load_or_make_splits(
    path: str | os.PathLike,
    subject_ids: Sequence,
    *,
    class_targets: Mapping[str, tuple] | None = None,
    fold: int | None = None,
    withdrawn: Iterable[str] | None = None,
    **make_kwargs,
) -> Splits:
    """The splits saved at ``path`` when it exists, else new splits from :func:`make_splits` (``make_kwargs``),
    saved there.

    A saved file must hold exactly ``subject_ids`` and have been made with the settings asked for: any
    difference (a grouping, stratification or relatedness not applied, another seed or number of folds) is
    refused, naming the settings, saved and asked, since using it silently would ignore the configuration. With
    ``groups``, the saved folds are also checked: no group may cross train/val/test; with ``relatedness``, no
    related pair may. ``class_targets`` (see :func:`check_classes`) are checked before new splits are saved;
    warnings are given for every fold of new splits, and for ``fold`` (when given) of saved ones.

    ``withdrawn``: IDs of withdrawn participants (not in ``subject_ids``). A saved file holding some of them has
    them removed from every fold, every other subject keeping its part (:func:`withdraw_from_splits`), and is
    saved again so that the file no longer lists them; the settings record how many were removed and the
    fingerprints the splits had before, so that a checkpoint trained on them is still recognised.
    """
    path = Path(path)
    ids = _check_ids(subject_ids)
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(make_splits).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(make_kwargs) - set(defaults))
    if unknown:
        raise TypeError(f"load_or_make_splits got unexpected keyword argument(s) {unknown}")
    if make_kwargs.get("relatedness") is not None:  # read once, for making and for checking
        make_kwargs["relatedness"] = as_relatedness(make_kwargs["relatedness"])
    stratified_by = getattr(make_kwargs.get("stratify"), "name", None)
    if withdrawn is not None:
        withdrawn = {str(s) for s in withdrawn}
        still_in = int(np.isin(ids, np.asarray(sorted(withdrawn), dtype=str)).sum())
        if still_in:
            raise AdapterError(f"subject_ids holds {still_in} withdrawn subject(s); leave them out of the cohort first")
    if not path.exists():
        splits = make_splits(ids, **make_kwargs)
        if class_targets:  # before saving: a refused split is not left behind
            check_classes(splits, ids, class_targets, stratified_by=stratified_by)
        splits.save(path)
        log.info("splits: made %s with %d fold(s), saved to %s", splits.scheme, splits.n_folds(), path)
        return splits
    splits = Splits.load(path)
    removed = 0
    if withdrawn is not None:
        splits, removed = withdraw_from_splits(splits, withdrawn, file=path)
    _check_saved(splits, path, ids, {**defaults, **make_kwargs})
    if class_targets:
        warn_folds = [] if fold is None else [fold]
        check_classes(splits, ids, class_targets, warn_folds=warn_folds, file=path, stratified_by=stratified_by)
    if removed:
        splits.save(path)
        log.warning(
            "splits: %d withdrawn subject(s) removed from the saved splits %s (every other subject keeps its part);"
            " the file is saved without them",
            removed,
            path,
        )
    return splits


def withdraw_from_splits(splits: Splits, withdrawn: Iterable[str], *, file=None) -> tuple[Splits, int]:
    """``splits`` without the ``withdrawn`` IDs, and how many were removed (0: the same object back).

    Every other subject keeps its part in every fold: the experiments already run stay comparable, and removing
    subjects cannot move a group or a related pair across parts. ``settings["withdrawn"]`` records the subjects
    removed in all and the fingerprints the splits had before (a checkpoint of those splits saw no subject that
    these splits hold out). A fold left with an empty part is refused."""
    gone = {str(s) for s in withdrawn}
    present = splits.subject_ids() & gone
    if not present:
        return splits, 0
    folds = [{part: [sid for sid in fold[part] if sid not in gone] for part in PARTS} for fold in splits.folds]
    for k, fold in enumerate(folds):
        for part in PARTS:
            if not fold[part]:
                raise AdapterError(
                    f"removing {len(present)} withdrawn subject(s) leaves the {part} part of fold {k} of the saved"
                    " splits empty; delete the file to make new splits",
                    file=file,
                )
    settings = dict(splits.settings)
    before = dict(settings.get("withdrawn") or {})
    settings["withdrawn"] = {
        "subjects_removed": int(before.get("subjects_removed", 0)) + len(present),
        "earlier_fingerprints": [*before.get("earlier_fingerprints", []), splits.fingerprint()],
    }
    return Splits(scheme=splits.scheme, folds=folds, settings=settings), len(present)


def _check_saved(splits: Splits, path: Path, ids: np.ndarray, asked: dict) -> None:
    """Refuse saved splits of other subjects, made with other settings than ``asked`` (every argument of
    :func:`make_splits`), or whose folds split a group of ``asked["groups"]`` or a related pair of
    ``asked["relatedness"]``."""
    saved, wanted = splits.subject_ids(), set(ids.tolist())
    if saved != wanted:
        removed = (splits.settings.get("withdrawn") or {}).get("subjects_removed")
        hint = (
            f" (the file had {removed} withdrawn subject(s) removed: give the same data.withdrawals file)"
            if removed and wanted - saved
            else ""
        )
        raise AdapterError(
            f"the splits file holds other subjects than the cohort: {len(saved - wanted)} subject(s) only in the"
            f" file, {len(wanted - saved)} only in the cohort{hint}. Delete the file to make new splits for this"
            " cohort, or point to another splits path",
            file=path,
        )
    _check_arguments(*(asked[key] for key in ("scheme", "n_folds", "val_fraction", "test_fraction", "seed", "n_bins")))
    expected = {"scheme": asked["scheme"], **_settings(**asked)}
    differing = _settings_differences({"scheme": splits.scheme, **splits.settings}, expected)
    if differing:
        raise AdapterError(
            f"the saved splits were made with other settings than asked ({'; '.join(differing)}); delete the file"
            " to make new splits with these settings, or point splits_file at another path",
            file=path,
        )
    if asked["groups"] is not None:
        crossing = groups_crossing(splits, ids, asked["groups"])
        if crossing:
            k, count = crossing[0]
            raise AdapterError(
                f"in the saved splits, {count} group(s) of {expected['groups']!r} cross train/val/test in fold {k}"
                f" ({len(crossing)} fold(s) affected): they were not made with this grouping; delete the file to"
                " make grouped splits, or point splits_file at another path",
                file=path,
            )
    if asked["relatedness"] is not None:
        relatedness = as_relatedness(asked["relatedness"])
        relatedness.check_ids(ids)  # splits made with a file of other IDs kept no relative together
        crossing = related_pairs_crossing(splits.folds, ids, relatedness)
        if crossing:
            k, count = crossing[0]
            raise AdapterError(
                f"in the saved splits, {count} related pair(s) cross train/val/test in fold {k} ({len(crossing)}"
                " fold(s) affected): relatives must stay in one part; delete the file to make new splits, or point"
                " splits_file at another path",
                file=path,
            )
        counts = splits.settings.get("related_groups")
        if counts:
            _log_related(counts)
