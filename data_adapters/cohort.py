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
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .core import DEFAULT_ID_COLUMN, AdapterError, TokenizedModality, normalize_ids
from .tables import read_table, require_id_column, require_rows

JOINS = ("inner", "outer")
DEFAULT_MIN_MATCH = 0.5
"""Default ``min_match``: the fraction of a modality's subjects found among the participants, and of the
participants found in the modality, below which the IDs are taken not to match (see the module docstring)."""


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
        no row in it), ``m/with_data`` (cohort subjects with at least one present token)."""
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


def _check_columns(
    df: pd.DataFrame, targets: list[str], confounds: list[str], modalities: Mapping, id_column: str, file
) -> None:
    both = sorted(set(targets) & set(confounds))
    if both:
        raise AdapterError(f"column(s) {both} are listed both as target and as confound; choose one role", file=file)
    for role, names in (("target", targets), ("confound", confounds)):
        for column in names:
            if column == id_column:
                raise AdapterError(f"the subject ID column cannot be a {role}", file=file, column=column)
            if column in df.columns:
                continue
            holders = [m for m, mod in modalities.items() if column in getattr(mod, "token_names", [])]
            hint = (
                f"; it is a token of modality {holders[0]!r}: targets and confounds must be participants columns,"
                " add it to the participants table"
                if holders
                else ""
            )
            shown = list(df.columns)[:20]
            raise AdapterError(f"{role} column not in participants (columns: {shown}){hint}", file=file, column=column)


def _check_values(series: pd.Series, *, role: str, column: str, file) -> None:
    """Values a target or confound column may hold, among the cohort's subjects.

    Missing (empty, NaN) is allowed in both. Infinite values are errors. Targets must be numbers (class
    labels as integers); a confound may be all numbers or all labels (site, sex), but numbers mixed with
    text is a data error (``"n/a "``, ``"12,5"``) that would otherwise turn the column into categories.
    """
    observed = series.notna().to_numpy()
    numbers = series if pd.api.types.is_numeric_dtype(series) else pd.to_numeric(series, errors="coerce")
    if pd.api.types.is_bool_dtype(numbers):
        return
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    text = observed & np.isnan(numbers)
    infinite = np.isinf(numbers)
    ids = series.index
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise AdapterError(
            f"{role} column holds an infinite value in {int(infinite.sum())} row(s); leave a missing value empty",
            file=file,
            column=column,
            subject=str(ids[row]),
        )
    if not text.any() or (role == "confound" and text[observed].all()):
        return
    row = int(np.flatnonzero(text)[0])
    first = str(series.iloc[row])
    if role == "target":
        problem = (
            f"target column holds text ({int(text.sum())} of {int(observed.sum())} entries, first: {first!r});"
            f" targets must be numbers: fix those entries, or encode classes as integers 0..K-1 and declare"
            f" target_kinds={{{column!r}: 'multiclass'}} (or 'binary' for 0/1)"
        )
    else:
        problem = (
            f"confound column mixes numbers and text ({int(text.sum())} of {int(observed.sum())} entries are"
            f" text, first: {first!r}); fix those entries (leave a missing value empty), or make every entry a"
            " label if the column holds categories"
        )
    raise AdapterError(problem, file=file, column=column, subject=str(ids[row]))


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


# ---------------------------------------------------------------------- do the IDs of two files match?
_SCIENTIFIC = re.compile(r"[+-]?\d+(\.\d+)?[eE][+-]?\d+")
_DIGIT_RUN = re.compile(r"\d+")
_LEADING_TEXT = re.compile(r"^\D*")
_TRAILING_TEXT = re.compile(r"\D*$")
_APPENDED = re.compile(r"(.+?)([-_.][^-_.]+)")


def id_style(subject_id: str) -> str:
    """The shape of an ID with its digits masked (``"sub-0042"`` -> ``"sub-00##"``): shows how a file writes
    IDs without showing one. Leading zeros of a number stay visible, since they are what often differs."""

    def mask(run: re.Match) -> str:
        digits = run.group()
        zeros = len(digits) - len(digits.lstrip("0"))
        zeros = min(zeros, len(digits) - 1)  # "0" alone is a digit, not a leading zero
        return "0" * zeros + "#" * (len(digits) - zeros)

    return _DIGIT_RUN.sub(mask, str(subject_id))


def _typical_style(ids: Iterable[str]) -> str:
    styles = pd.Series([id_style(i) for i in ids])
    return str(styles.value_counts().index[0]) if len(styles) else "(none)"


def _matches(a: set[str], b: set[str], canonical) -> int:
    return len({canonical(x) for x in a} & {canonical(x) for x in b})


def _common_text(ids: list[str], pattern: re.Pattern) -> str | None:
    """The non-digit prefix (or suffix) most IDs of one file share, or None when they share none."""
    texts = pd.Series([pattern.search(i).group() for i in ids])
    top = texts.value_counts()
    return str(top.index[0]) if len(top) and top.iloc[0] >= 0.9 * len(ids) else None


def diagnose_id_mismatch(participant_ids: Iterable[str], modality_ids: Iterable[str], modality: str) -> str:
    """Why two files' IDs may not match, in one sentence, from the styles it recognises."""
    p_ids, m_ids = [str(i) for i in participant_ids], [str(i) for i in modality_ids]
    sides = {"participants": p_ids, f"{modality!r}": m_ids}
    for side, ids in sides.items():
        scientific = sum(bool(_SCIENTIFIC.fullmatch(i)) for i in ids)
        if scientific:
            return (
                f"{scientific} of the {side} IDs are in scientific notation (like '1.00012E+06'): a spreadsheet"
                " rewrote them and lost digits; export the IDs as text"
            )
    p_set, m_set = set(p_ids), set(m_ids)
    plain = len(p_set & m_set)

    def no_zeros(i: str) -> str:
        return _DIGIT_RUN.sub(lambda run: run.group().lstrip("0") or "0", i)

    if _matches(p_set, m_set, no_zeros) > plain:
        zero_p = sum(bool(re.search(r"(^|\D)0\d", i)) for i in p_ids) / max(len(p_ids), 1)
        zero_m = sum(bool(re.search(r"(^|\D)0\d", i)) for i in m_ids) / max(len(m_ids), 1)
        if zero_p >= zero_m:
            return f"participants IDs have leading zeros that the {modality!r} IDs lack"
        return f"the {modality!r} IDs have leading zeros that the participants IDs lack"
    if _matches(p_set, m_set, str.lower) > plain:
        return "the IDs differ in upper/lower case"
    (side_p, ids_p), (side_m, ids_m) = sides.items()
    for (side_a, ids_a), (side_b, set_b) in (((side_m, ids_m), (side_p, p_set)), ((side_p, ids_p), (side_m, m_set))):
        # "1001_2" against "1001": an instance, visit or session number appended
        heads = [_APPENDED.fullmatch(i) for i in ids_a]
        appended = [h for h in heads if h and h.group(1) in set_b]
        if len(appended) >= 0.5 * len(ids_a):
            tail = appended[0].group(2)
            visit = " (a visit, instance or session number?)" if any(c.isdigit() for c in tail) else ""
            return (
                f"the {side_a} IDs are the {side_b} IDs with {id_style(tail)!r} appended{visit}: write the plain"
                " subject ID in both files"
            )
    for what, pattern in (("prefix", _LEADING_TEXT), ("suffix", _TRAILING_TEXT)):
        text_p, text_m = _common_text(ids_p, pattern), _common_text(ids_m, pattern)
        if text_p is None or text_m is None or text_p == text_m:
            continue
        if not text_p:
            return f"the {side_m} IDs carry the {what} {text_m!r} that the participants IDs lack"
        if not text_m:
            return f"the participants IDs carry the {what} {text_p!r} that the {side_m} IDs lack"
        return f"the participants IDs carry the {what} {text_p!r}, the {side_m} IDs {text_m!r}"
    if _matches(p_set, m_set, lambda i: no_zeros("".join(_DIGIT_RUN.findall(i)))) > plain:
        return "the IDs hold the same numbers written differently (prefixes, separators or leading zeros)"
    return (
        "no common writing found: check that both files hold the same kind of ID (not a row number, not another"
        " study's IDs) and that id_column names the ID column in each"
    )


def _resolve_min_match(min_match, names: list[str]) -> dict[str, float]:
    """``min_match`` (a fraction, or modality -> fraction with DEFAULT_MIN_MATCH for the others) per modality."""
    if isinstance(min_match, Mapping):
        unknown = sorted(set(map(str, min_match)) - set(names))
        if unknown:
            raise AdapterError(f"min_match names unknown modality(ies) {unknown}; the modalities are {names}")
        wanted = {name: min_match.get(name, DEFAULT_MIN_MATCH) for name in names}
    else:
        wanted = dict.fromkeys(names, min_match)
    for name, value in wanted.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise AdapterError(f"min_match for {name!r} must be a fraction between 0 and 1, got {value!r}")
    return {name: float(value) for name, value in wanted.items()}


def _modality_file(modality: TokenizedModality) -> str | None:
    """The file that holds the modality's subject IDs, from what its adapter recorded."""
    source = modality.source or {}
    files = [f for f in source.get("files") or [] if isinstance(f, str)]
    for candidate in (source.get("ids_file"), *[f for f in files if f.endswith(".fam")], source.get("file")):
        if isinstance(candidate, str) and candidate != "ids":
            return candidate
    if isinstance(source.get("manifest"), str):
        return source["manifest"]
    return files[0] if files else None


def _check_match(
    name: str, modality: TokenizedModality, participant_ids: pd.Index, counts: dict, threshold: float, file
) -> None:
    """Refuse a modality whose IDs match too few participants (see the module docstring)."""
    n_mod, n_part, matched = counts["subjects"], len(participant_ids), counts["matched"]
    of_modality, of_participants = matched / max(n_mod, 1), matched / max(n_part, 1)
    if of_modality >= threshold and of_participants >= threshold:
        return
    modality_ids = modality.subject_ids.astype(str)
    in_modality, in_participants = set(modality_ids), set(participant_ids)
    # the styles of the IDs that failed to match tell more than those of the few that matched
    unmatched_p = [i for i in participant_ids if i not in in_modality] or list(participant_ids)
    unmatched_m = [i for i in modality_ids if i not in in_participants] or list(modality_ids)
    lower = min(of_modality, of_participants)
    suggest = np.floor(lower * 20) / 20 if lower >= 0.05 else np.floor(lower * 100) / 100  # rounded down
    modality_file = _modality_file(modality)
    if of_modality >= threshold:  # its IDs are participants' IDs: the modality has rows for few of them
        why = (
            f"the IDs are written alike, but {name!r} has rows for only {matched} of the {n_part} participants"
            " (a truncated file, a filtered export, or a modality measured on a subset)"
        )
    else:
        why = diagnose_id_mismatch(unmatched_p, unmatched_m, name)
    accept = (
        f"If {name!r} really covers only part of the cohort, accept it with the data option"
        f" min_match: {{{name}: {suggest:g}}}"
        if matched
        else "Write the IDs the same way in both files: as they are, the modality would add nothing"
    )
    raise AdapterError(
        f"modality {name!r} matches few participants: {matched} of its {n_mod} subjects"
        f" ({of_modality:.0%}) are in the participants table{f' {file}' if file else ''}, covering"
        f" {of_participants:.0%} of its {n_part} rows (below min_match {threshold:g}). IDs look like"
        f" {_typical_style(unmatched_p)!r} in participants, {_typical_style(unmatched_m)!r} in {name!r}"
        f" (# = a digit): {why}. {accept}",
        file=modality_file,
    )


def build_cohort(
    participants: str | os.PathLike | pd.DataFrame,
    modalities: Mapping[str, TokenizedModality],
    *,
    targets: Iterable[str] | str,
    confounds: Iterable[str] | str = (),
    join: str = "inner",
    id_column: str = DEFAULT_ID_COLUMN,
    min_match: float | Mapping[str, float] = DEFAULT_MIN_MATCH,
) -> Cohort:
    """Align ``modalities`` (name -> modality) with a participants table (CSV/TSV/parquet or DataFrame).

    See the module docstring for the join semantics, the ID matching (``min_match``: a fraction, or
    modality -> fraction), which tokens are removed and what is an error.
    ``targets`` may be empty (masked-modelling pretraining needs none).
    """
    if join not in JOINS:
        raise AdapterError(f"join must be one of {JOINS}, got {join!r}")
    targets = _column_list(targets)
    confounds = _column_list(confounds)
    if not modalities:
        raise AdapterError("no modalities given; pass a dict of name -> TokenizedModality")
    thresholds = _resolve_min_match(min_match, [str(name) for name in modalities])
    table, file = _participants_frame(participants, id_column)
    _check_columns(table, targets, confounds, modalities, id_column, file)

    protected = set(targets) | set(confounds)
    prepared: dict[str, TokenizedModality] = {}
    excluded = []
    for name, modality in modalities.items():
        prepared[str(name)], removed = _prepare_modality(str(name), modality, protected)
        role = {t: "target" for t in targets} | {c: "confound" for c in confounds}
        excluded += [{"modality": str(name), "token": t, "reason": f"is a {role[t]} column"} for t in removed]

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
        _check_match(name, m, table.index, modality_inputs[name], thresholds[name], file)
    has = pd.DataFrame({name: table.index.isin(list(subjects)) for name, subjects in with_data.items()})
    keep = has.all(axis=1) if join == "inner" else has.any(axis=1)
    keep = keep.to_numpy()
    if not keep.any():
        counts = ", ".join(
            f"{name!r} {modality_inputs[name]['with_data']} with data ({int(has[name].sum())} of them in participants)"
            for name in prepared
        )
        need = "all modalities" if join == "inner" else "any modality"
        raise AdapterError(
            f"no subject is both in participants ({len(table)} subjects) and in {need}: {counts}. Check that the"
            f" ID column {id_column!r} holds the same IDs everywhere (prefixes, leading zeros)",
            file=file,
        )

    dropped = []
    for name in prepared:
        count = modality_inputs[name]["not_in_participants"]
        if count:
            dropped.append({"reason": f"in {name!r} but not in participants", "subjects": count})
    if join == "inner":
        for name in prepared:
            lacking = int((~has[name]).sum())
            if lacking:
                dropped.append({"reason": f"in participants, no data in {name!r}", "subjects": lacking})
    if (~keep).any():
        why = "lacking at least one modality" if join == "inner" else "no data in any modality"
        dropped.append({"reason": f"participants dropped in total ({why})", "subjects": int((~keep).sum())})

    full_table, table = table, table[keep]
    subject_ids = table.index.to_numpy().astype(str)
    for role, names in (("target", targets), ("confound", confounds)):
        for column in names:
            if not full_table[column].notna().any():
                problem = f"is entirely missing in participants ({len(full_table)} rows)"
            elif not table[column].notna().any():
                problem = f"has no observed value among the {len(table)} subjects shared with the modalities"
            else:
                continue
            raise AdapterError(
                f"{role} column {problem}; choose another {role} or fill it in", file=file, column=column
            )

    for role, names in (("target", targets), ("confound", confounds)):
        for column in names:
            _check_values(table[column], role=role, column=column, file=file)

    aligned = {name: m.reindex(subject_ids) for name, m in prepared.items()}
    return Cohort(
        participants=table,
        modalities=aligned,
        targets=targets,
        confounds=confounds,
        id_column=id_column,
        join=join,
        build_info={
            "n_participants": len(in_participants),
            "modality_inputs": modality_inputs,
            "dropped": dropped,
            "excluded_tokens": excluded,
        },
    )
