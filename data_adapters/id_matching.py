"""Do a modality's subject IDs match the participants table's? The ``min_match`` check of
:func:`~data_adapters.cohort.build_cohort` (see that module's docstring) and, when it fails, a diagnosis of how
the two files write their IDs differently (counts and ID styles only, never an ID).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from .core import AdapterError, TokenizedModality

DEFAULT_MIN_MATCH = 0.5
"""Default ``min_match``: the fraction of a modality's subjects found among the participants, and of the
participants found in the modality, below which the IDs are taken not to match (see :mod:`data_adapters.cohort`)."""

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


def resolve_min_match(min_match, names: list[str]) -> dict[str, float]:
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


def check_match(
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
