"""A cohort: participants (targets, confounds) and modalities aligned to one subject order.

:func:`build_cohort` aligns tokenized modalities with a participants table by subject ID.

Join semantics. A subject "has" a modality when at least one of its tokens is present there (a row of
NaNs counts as not having it). The subject order is the participants table's order.

* ``join="inner"``: subjects with a participants row and data in every modality.
* ``join="outer"``: subjects with a participants row and data in at least one modality; the modalities a
  subject lacks are rows with ``present=False`` (nothing is imputed).
* Subjects found in a modality but not in participants are dropped (no targets, no confounds) and counted.

Targets and confounds come from the participants table only, and are kept out of the inputs: any token
whose name equals a target or confound column is removed from its modality and listed in the report
(a behaviour table that still holds the target would otherwise hand the answer to the model). It is an
error when:

* a target or confound column is not in participants (even if a modality has a token of that name:
  move the column into participants), or it is the ID column, or it is listed both as target and confound;
* removing those tokens leaves a modality with no tokens (the modality *was* the target);
* a target or confound column has no observed value among the aligned subjects;
* among those subjects, a target or confound holds an infinite value, a target holds text (class labels
  are integers), or a confound mixes numbers and text. Missing values (empty cells, NaN) are allowed.

ID matching. Before joining, every modality must match the participants table well enough: at least
``min_match`` (default 0.5) of the modality's subjects must be participants, *and* the modality must cover at
least that fraction of the participants. Below that the IDs are almost always written differently in the two
files (leading zeros lost, ``1.00012E+06`` written by a spreadsheet, a ``sub-`` prefix on one side), and an
outer join would silently go on without the modality. The error names the modality, the counts, the ID style
of each side (digits masked: ``'00###'``) and, when it recognises one, the cause. A modality that really
covers only part of the cohort is accepted with ``min_match`` lowered for it (``min_match={"brain": 0.1}``).

The report (:meth:`Cohort.report`) holds counts only, never subject IDs, so it can go into logs;
:attr:`Cohort.match_counts` gives the same counts as a flat dict of integers (for MLflow).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .cohort_columns import check_columns, check_observed_values
from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, normalize_ids
from .id_matching import (  # noqa: F401  (diagnose_id_mismatch, id_style: also imported from here)
    DEFAULT_MIN_MATCH,
    check_match,
    diagnose_id_mismatch,
    id_style,
    resolve_min_match,
)
from .tables import read_table, require_id_column, require_rows

JOINS = ("inner", "outer")


def _table_text(df: pd.DataFrame) -> str:
    if df.empty:
        return "  (none)"
    return "\n".join("  " + line for line in df.to_string(index=False).splitlines())


@dataclass
class CohortReport:
    """Counts that describe how a cohort was aligned; ``str(report)`` prints them as tables."""

    join: str
    n_subjects: int
    n_participants: int
    modalities: pd.DataFrame
    """One row per modality: tokens, features, subjects in its input, how many of those are not in
    participants, and subjects with data in the cohort."""
    overlaps: pd.DataFrame
    """One row per combination of modalities (a True/False column per modality) with its subject count."""
    dropped: pd.DataFrame
    """Columns ``reason``, ``subjects``."""
    excluded_tokens: pd.DataFrame
    """Columns ``modality``, ``token``, ``reason``: tokens removed because they are targets or confounds."""
    columns: pd.DataFrame
    """Targets and confounds: ``column``, ``role``, ``observed``, ``missing`` among the cohort's subjects."""

    def to_dict(self) -> dict:
        """Plain JSON-able data (for run metadata)."""

        def records(df: pd.DataFrame) -> list[dict]:
            return [
                {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in df.to_dict("records")
            ]

        return {
            "join": self.join,
            "n_subjects": self.n_subjects,
            "n_participants": self.n_participants,
            "modalities": records(self.modalities),
            "overlaps": records(self.overlaps),
            "dropped": records(self.dropped),
            "excluded_tokens": records(self.excluded_tokens),
            "columns": records(self.columns),
        }

    def __str__(self) -> str:
        return "\n".join(
            [
                f"Cohort: {self.n_subjects} subjects ({self.join} join; {self.n_participants} rows in participants)",
                "Modalities:",
                _table_text(self.modalities),
                "Subjects per combination of modalities:",
                _table_text(self.overlaps),
                "Dropped:",
                _table_text(self.dropped),
                "Tokens removed from the inputs (targets/confounds):",
                _table_text(self.excluded_tokens),
                "Targets and confounds:",
                _table_text(self.columns),
            ]
        )


@dataclass
class Cohort:
    """Participants indexed by subject ID (strings) and modalities aligned to that index, row for row."""

    participants: pd.DataFrame
    modalities: dict[str, TokenizedModality]
    targets: list[str]
    confounds: list[str] = field(default_factory=list)
    id_column: str = DEFAULT_ID_COLUMN
    join: str = "inner"
    build_info: dict = field(default_factory=dict)
    """What alignment saw and dropped (counts only); kept so that a saved cohort can still report."""

    def __post_init__(self) -> None:
        self.targets = list(self.targets)
        self.confounds = list(self.confounds)
        ids = self.subject_ids
        for name, modality in self.modalities.items():
            if modality.n_tokens == 0:
                raise AdapterError(f"modality {name!r} has no tokens")
            if len(modality.subject_ids) != len(ids) or not np.array_equal(modality.subject_ids.astype(str), ids):
                raise AdapterError(f"modality {name!r} is not aligned with participants (use build_cohort)")
        missing = [c for c in [*self.targets, *self.confounds] if c not in self.participants.columns]
        if missing:
            raise AdapterError(f"target/confound column(s) {missing} not in participants")

    @property
    def subject_ids(self) -> np.ndarray:
        return self.participants.index.to_numpy().astype(str)

    @property
    def n_subjects(self) -> int:
        return len(self.participants)

    def __len__(self) -> int:
        return self.n_subjects

    @property
    def match_counts(self) -> dict[str, int]:
        """How the modalities matched the participants, as integer counts (never IDs) for a tracking store:
        ``subjects`` (in the cohort), ``participants`` (rows of the participants table), ``dropped`` and, per
        modality ``m``: ``m/in_input`` (subjects in its file), ``m/matched`` (of those, participants),
        ``m/only_in_modality`` (not participants: dropped), ``m/participants_without`` (participants with
        no row in it), ``m/with_data`` (cohort subjects with at least one present token); with ``exclude``d
        (withdrawn) IDs, ``withdrawn/found``, ``withdrawn/not_found`` and ``withdrawn/in_participants``."""
        info = self.build_info
        counts = {"subjects": int(self.n_subjects), "participants": int(info.get("n_participants", self.n_subjects))}
        counts["dropped"] = counts["participants"] - counts["subjects"]
        inputs = info.get("modality_inputs", {})
        for name, modality in self.modalities.items():
            given = inputs.get(name, {})
            for key, label in (
                ("subjects", "in_input"),
                ("matched", "matched"),
                ("not_in_participants", "only_in_modality"),
                ("participants_without", "participants_without"),
            ):
                if key in given:
                    counts[f"{name}/{label}"] = int(given[key])
            counts[f"{name}/with_data"] = int(np.asarray(modality.present).any(axis=1).sum())
        for key, count in (info.get("withdrawn") or {}).items():  # withdrawn IDs left out (data.withdrawals)
            counts[f"withdrawn/{key}"] = int(count)
        return counts

    def report(self) -> CohortReport:
        info = self.build_info
        input_counts = info.get("modality_inputs", {})
        modality_rows = []
        has = {}
        for name, modality in self.modalities.items():
            has[name] = modality.present.any(axis=1)
            counts = input_counts.get(name, {})
            modality_rows.append(
                {
                    "modality": name,
                    "tokens": modality.n_tokens,
                    "features": modality.n_features,
                    "subjects in input": counts.get("subjects", np.nan),
                    "with data in input": counts.get("with_data", np.nan),
                    "matched participants": counts.get("matched", np.nan),
                    "not in participants": counts.get("not_in_participants", np.nan),
                    "with data in cohort": int(has[name].sum()),
                }
            )
        modalities = pd.DataFrame(modality_rows)
        if has:
            combos = pd.DataFrame(has)
            overlaps = combos.value_counts(sort=False).rename("subjects").reset_index()
            overlaps = overlaps.sort_values(["subjects", *has], ascending=False, kind="stable").reset_index(drop=True)
        else:
            overlaps = pd.DataFrame(columns=["subjects"])
        column_rows = [
            {
                "column": column,
                "role": role,
                "observed": int(self.participants[column].notna().sum()),
                "missing": int(self.participants[column].isna().sum()),
            }
            for role, names in (("target", self.targets), ("confound", self.confounds))
            for column in names
        ]
        return CohortReport(
            join=self.join,
            n_subjects=self.n_subjects,
            n_participants=int(info.get("n_participants", self.n_subjects)),
            modalities=modalities,
            overlaps=overlaps,
            dropped=pd.DataFrame(info.get("dropped", []), columns=["reason", "subjects"]),
            excluded_tokens=pd.DataFrame(info.get("excluded_tokens", []), columns=["modality", "token", "reason"]),
            columns=pd.DataFrame(column_rows, columns=["column", "role", "observed", "missing"]),
        )


def _participants_frame(participants, id_column: str) -> tuple[pd.DataFrame, str | None]:
    df, file = read_table(participants, id_column=id_column, what="participants table")
    df.columns = [str(c) for c in df.columns]
    require_id_column(df, id_column, file)
    require_rows(df, file, "participants table")
    ids = normalize_ids(df[id_column], file=file, column=id_column)
    df = df.drop(columns=[id_column])
    df.index = pd.Index(ids.astype(str), name=id_column)
    return df, file


def _column_list(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    return [str(v) for v in value]


def _without_tokens(modality: TokenizedModality, drop: set[str]) -> TokenizedModality:
    keep = [t for t, token in enumerate(modality.token_names) if token not in drop]
    if len(keep) == modality.n_tokens:
        return modality
    names = [modality.token_names[t] for t in keep]
    return TokenizedModality(
        name=modality.name,
        values=modality.values[:, keep],
        present=modality.present[:, keep],
        token_names=names,
        subject_ids=modality.subject_ids,
        feature_mask=modality.feature_mask[keep],
        feature_names=None if modality.feature_names is None else list(modality.feature_names),
        categories={k: list(v) for k, v in modality.categories.items() if k in names},
        source=dict(modality.source),
    )


def _prepare_modality(name: str, modality, protected: set[str]) -> tuple[TokenizedModality, list[str]]:
    """The modality under its cohort name with string IDs, minus target/confound tokens (and their names)."""
    if not isinstance(modality, TokenizedModality):
        raise AdapterError(f"modality {name!r} is a {type(modality).__name__}, expected a TokenizedModality")
    if modality.n_tokens == 0:
        raise AdapterError(f"modality {name!r} has no tokens")
    ids = normalize_ids(modality.subject_ids, file=f"modality {name!r}", column="subject_ids")
    removed = [t for t in modality.token_names if t in protected]
    if len(removed) == modality.n_tokens:
        raise AdapterError(
            f"modality {name!r}: every token ({removed[:5]}) is a target or confound column, so nothing would"
            " be left as input (the modality is the answer); drop the modality or that column from targets/confounds"
        )
    modality = _without_tokens(modality, set(removed))
    if modality.name != name or not np.array_equal(ids, modality.subject_ids):
        modality = TokenizedModality(
            name=name,
            values=modality.values,
            present=modality.present,
            token_names=modality.token_names,
            subject_ids=ids,
            feature_mask=modality.feature_mask,
            feature_names=modality.feature_names,
            categories=modality.categories,
            source=modality.source,
        )
    return modality, removed


def build_cohort(
    participants: str | os.PathLike | pd.DataFrame,
    modalities: Mapping[str, TokenizedModality],
    *,
    targets: Iterable[str] | str,
    confounds: Iterable[str] | str = (),
    join: str = "inner",
    id_column: str = DEFAULT_ID_COLUMN,
    min_match: float | Mapping[str, float] = DEFAULT_MIN_MATCH,
    exclude: Iterable[str] | None = None,
) -> Cohort:
    """Align ``modalities`` (name -> modality) with a participants table (CSV/TSV/parquet or DataFrame).

    See the module docstring for the join semantics, the ID matching (``min_match``: a fraction, or
    modality -> fraction), which tokens are removed and what is an error.
    ``targets`` may be empty (masked-modelling pretraining needs none). ``exclude``: subject IDs (withdrawn
    participants, as normalized ID strings) removed from the participants and from every modality before
    anything else is matched or checked; ``build_info["withdrawn"]`` counts how many were found and not found.
    """
    if join not in JOINS:
        raise AdapterError(f"join must be one of {JOINS}, got {join!r}")
    targets = _column_list(targets)
    confounds = _column_list(confounds)
    if not modalities:
        raise AdapterError("no modalities given; pass a dict of name -> TokenizedModality")
    thresholds = resolve_min_match(min_match, [str(name) for name in modalities])
    table, file = _participants_frame(participants, id_column)
    check_columns(table, targets, confounds, modalities, id_column, file)
    prepared, excluded = _prepare_modalities(modalities, targets, confounds)
    n_participants = len(table)
    table, prepared, withdrawn = _without_subjects(table, prepared, exclude)
    modality_inputs, has = _match_modalities(prepared, table, thresholds, file)
    keep = _subjects_to_keep(has, join, modality_inputs, table, id_column, file)
    dropped = _dropped_counts(modality_inputs, has, keep, join)
    if withdrawn and withdrawn["in_participants"]:
        dropped.insert(0, {"reason": "participants withdrawn (exclude)", "subjects": withdrawn["in_participants"]})
    full_table, table = table, table[keep]
    check_observed_values(full_table, table, targets, confounds, file)
    aligned = {name: m.reindex(table.index.to_numpy().astype(str)) for name, m in prepared.items()}
    return Cohort(
        participants=table,
        modalities=aligned,
        targets=targets,
        confounds=confounds,
        id_column=id_column,
        join=join,
        build_info={
            "n_participants": n_participants,
            "modality_inputs": modality_inputs,
            "dropped": dropped,
            "excluded_tokens": excluded,
            **({} if withdrawn is None else {"withdrawn": withdrawn}),
        },
    )


def _without_subjects(
    table: pd.DataFrame, prepared: dict[str, TokenizedModality], exclude: Iterable[str] | None
) -> tuple[pd.DataFrame, dict[str, TokenizedModality], dict | None]:
    """Participants and modalities without the ``exclude`` IDs, and counts: ``found`` (in participants or a
    modality), ``not_found``, ``in_participants``."""
    if exclude is None:
        return table, prepared, None
    gone = {str(s) for s in exclude}
    listed = np.asarray(sorted(gone), dtype=object)
    in_participants = table.index.isin(listed)
    found = set(table.index[in_participants])
    kept = {}
    for name, modality in prepared.items():
        ids = modality.subject_ids.astype(str)
        drop = np.isin(ids, listed)
        found |= set(ids[drop].tolist())
        kept[name] = modality.reindex(ids[~drop].astype(object)) if drop.any() else modality
    counts = {"found": len(found), "not_found": len(gone) - len(found), "in_participants": int(in_participants.sum())}
    return table[~in_participants], kept, counts


def _prepare_modalities(
    modalities: Mapping[str, TokenizedModality], targets: list[str], confounds: list[str]
) -> tuple[dict[str, TokenizedModality], list[dict]]:
    """Each modality under its cohort name without target/confound tokens, and a row per token removed."""
    protected = set(targets) | set(confounds)
    prepared: dict[str, TokenizedModality] = {}
    excluded = []
    for name, modality in modalities.items():
        prepared[str(name)], removed = _prepare_modality(str(name), modality, protected)
        role = {t: "target" for t in targets} | {c: "confound" for c in confounds}
        excluded += [{"modality": str(name), "token": t, "reason": f"is a {role[t]} column"} for t in removed]
    return prepared, excluded


def _match_modalities(
    prepared: dict[str, TokenizedModality], table: pd.DataFrame, thresholds: dict[str, float], file
) -> tuple[dict[str, dict], pd.DataFrame]:
    """Per modality, how its subjects match the participants (counts; refused below ``min_match``), and which
    participants have data in it (a bool column per modality, in the participants' order)."""
    in_participants = set(table.index)
    with_data = {name: set(m.subjects_with_data().astype(str)) for name, m in prepared.items()}
    modality_inputs = {}
    for name, m in prepared.items():
        ids = set(m.subject_ids.astype(str))
        modality_inputs[name] = {
            "subjects": int(m.n_subjects),
            "with_data": len(with_data[name]),
            "matched": len(ids & in_participants),
            "not_in_participants": len(ids - in_participants),
            "participants_without": len(in_participants - ids),
        }
        check_match(name, m, table.index, modality_inputs[name], thresholds[name], file)
    has = pd.DataFrame({name: table.index.isin(list(subjects)) for name, subjects in with_data.items()})
    return modality_inputs, has


def _subjects_to_keep(
    has: pd.DataFrame, join: str, modality_inputs: dict[str, dict], table: pd.DataFrame, id_column: str, file
) -> np.ndarray:
    """Which participants the join keeps (bool, in their order); refused when it keeps none."""
    keep = has.all(axis=1) if join == "inner" else has.any(axis=1)
    keep = keep.to_numpy()
    if not keep.any():
        counts = ", ".join(
            f"{name!r} {modality_inputs[name]['with_data']} with data ({int(has[name].sum())} of them in participants)"
            for name in modality_inputs
        )
        need = "all modalities" if join == "inner" else "any modality"
        raise AdapterError(
            f"no subject is both in participants ({len(table)} subjects) and in {need}: {counts}. Check that the"
            f" ID column {id_column!r} holds the same IDs everywhere (prefixes, leading zeros)",
            file=file,
        )
    return keep


def _dropped_counts(modality_inputs: dict[str, dict], has: pd.DataFrame, keep: np.ndarray, join: str) -> list[dict]:
    """The report's rows of subjects dropped, and why (counts only)."""
    dropped = []
    for name in modality_inputs:
        count = modality_inputs[name]["not_in_participants"]
        if count:
            dropped.append({"reason": f"in {name!r} but not in participants", "subjects": count})
    if join == "inner":
        for name in modality_inputs:
            lacking = int((~has[name]).sum())
            if lacking:
                dropped.append({"reason": f"in participants, no data in {name!r}", "subjects": lacking})
    if (~keep).any():
        why = "lacking at least one modality" if join == "inner" else "no data in any modality"
        dropped.append({"reason": f"participants dropped in total ({why})", "subjects": int((~keep).sum())})
    return dropped
