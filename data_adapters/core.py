"""The common currency of the adapters: a tokenized modality, and errors that say what to fix.

No torch here: adapters are usable on their own (numpy, pandas, nibabel, format readers).

A :class:`TokenizedModality` holds, for N subjects and T tokens of one modality:

* ``values``  float32 ``[N, T, F]``: the raw features of each token. Tokens of one modality may carry
  different numbers of features (a region with 3 FreeSurfer measures next to one with 1): ``F`` is
  the largest, unused slots hold 0 and are marked False in ``feature_mask`` ``[T, F]``. A missing
  raw value (a NaN in the source) stays NaN: it is marked, never imputed here (imputation is
  fitted on training folds later).
* ``present`` bool ``[N, T]``: the token was observed for the subject (False when the subject lacks
  the modality, or when every feature of the token is missing).
* ``token_names`` (T), ``feature_names`` (F, optional), ``subject_ids`` (N, strings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import AdapterError
from .io import (  # noqa: F401  (re-exported: the older import path of these helpers)
    STORAGE_FULL,
    STORAGE_READ_ONLY,
    atomic_write_bytes,
    nearly_full,
    storage_problem,
)

DEFAULT_ID_COLUMN = "eid"
IDS_FILENAME = "ids.npy"
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest float32: values are stored and batched as float32, where anything larger is infinite."""
# "1.00012E+06": how a spreadsheet shows, then saves, a long numeric ID; its lost digits cannot be recovered
_SCIENTIFIC_ID = re.compile(r"[+-]?\d\.\d+[eE][+-]?\d+")


def normalize_ids(
    ids: Iterable, *, file: str | os.PathLike | None = None, column: str = DEFAULT_ID_COLUMN
) -> np.ndarray:
    """Subject IDs as strings, the same whichever file they come from (``1001``, ``1001.0``, ``" 1001"``).

    Raises on missing or duplicated IDs, and on IDs in scientific notation (``1.00012E+06``, a spreadsheet's
    rewrite that lost digits), naming the file and the first offenders.
    """
    series = pd.Series(list(ids) if not isinstance(ids, pd.Series) else ids, dtype=object)
    if series.isna().any():
        rows = np.flatnonzero(series.isna().to_numpy())[:5].tolist()
        raise AdapterError(f"missing subject ID in row(s) {rows}", file=file, column=column)

    def one(value) -> str:
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        if isinstance(value, (int, np.integer)):
            return str(int(value))
        text = str(value).strip()
        if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
            text = text[:-2]
        return text

    out = np.array([one(v) for v in series], dtype=object)
    scientific = [i for i, text in enumerate(out) if _SCIENTIFIC_ID.fullmatch(text)]
    if scientific:
        raise AdapterError(
            f"ID written in scientific notation ({len(scientific)} of {len(out)} IDs are): a spreadsheet rewrote"
            " them and dropped digits; export the ID column as text",
            file=file,
            column=column,
            subject=str(out[scientific[0]]),
        )
    empty = np.flatnonzero(out == "")
    if len(empty):
        raise AdapterError(f"empty subject ID in row(s) {empty[:5].tolist()}", file=file, column=column)
    uniq, counts = np.unique(out.astype(str), return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        shown = ", ".join(dup[:5].tolist()) + (" ..." if len(dup) > 5 else "")
        raise AdapterError(f"{len(dup)} duplicated subject ID(s): {shown}", file=file, column=column)
    return out


def beyond_float32(values) -> np.ndarray:
    """Where ``values`` would be infinite as float32 (bool, same shape): +-inf, and finite values beyond
    :data:`FLOAT32_MAX` in magnitude. NaN is not (it is a missing value)."""
    return np.abs(values) > FLOAT32_MAX


def check_finite_or_missing(
    values: np.ndarray, *, file=None, token_names: Sequence[str] | None = None, subject_ids=None
) -> None:
    """NaN means missing and is allowed; +-inf is an error naming the subject and token.

    Checked in blocks of subjects so a memory-mapped array is never copied whole.
    """
    block = 4096
    for start in range(0, max(len(values), 1), block):
        bad = np.isinf(values[start : start + block])
        if bad.any():
            idx = np.argwhere(bad)[0]
            subject = None if subject_ids is None else str(subject_ids[start + idx[0]])
            token = "" if token_names is None or values.ndim < 2 else f" (first in token {token_names[idx[1]]!r})"
            raise AdapterError(f"infinite value(s){token}", file=file, subject=subject)


@dataclass
class TokenizedModality:
    """One modality of a cohort as tokens (see module docstring for the array contract)."""

    name: str
    values: np.ndarray
    present: np.ndarray
    token_names: list[str]
    subject_ids: np.ndarray
    feature_mask: np.ndarray | None = None
    feature_names: list[str] | None = None
    categories: dict[str, list[str]] = field(default_factory=dict)
    """For categorical tokens: token name -> category labels; values hold the category index."""
    source: dict = field(default_factory=dict)
    """What it was built from (files, settings): goes into cache fingerprints and run metadata."""

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values)
        if self.values.dtype != np.float32:
            self.values = self.values.astype(np.float32)
        self.present = np.asarray(self.present, dtype=bool)
        self.token_names = [str(t) for t in self.token_names]
        self.subject_ids = np.asarray(self.subject_ids, dtype=object)
        if self.feature_mask is None:
            self.feature_mask = np.ones(self.values.shape[1:], dtype=bool) if self.values.ndim == 3 else None
        self.validate()

    # ------------------------------------------------------------------ shape and checks
    @property
    def n_subjects(self) -> int:
        return self.values.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.values.shape[1]

    @property
    def n_features(self) -> int:
        return self.values.shape[2]

    def validate(self) -> None:
        where = f"modality {self.name!r}"
        if self.values.ndim != 3:
            raise AdapterError(f"{where}: values must be [subjects, tokens, features], got shape {self.values.shape}")
        n, t, f = self.values.shape
        if t == 0:
            raise AdapterError(f"{where}: no tokens (empty modality)")
        if f == 0:
            raise AdapterError(f"{where}: tokens have no features")
        if self.present.shape != (n, t):
            raise AdapterError(f"{where}: present mask {self.present.shape} does not match values {(n, t)}")
        if len(self.token_names) != t:
            raise AdapterError(f"{where}: {len(self.token_names)} token names for {t} tokens")
        if len(set(self.token_names)) != t:
            dup = sorted({x for x in self.token_names if self.token_names.count(x) > 1})
            raise AdapterError(f"{where}: duplicated token names {dup[:5]}")
        if len(self.subject_ids) != n:
            raise AdapterError(f"{where}: {len(self.subject_ids)} subject IDs for {n} subjects")
        if self.feature_mask.shape != (t, f):
            raise AdapterError(f"{where}: feature mask {self.feature_mask.shape} does not match {(t, f)}")
        if self.feature_names is not None and len(self.feature_names) != f:
            raise AdapterError(f"{where}: {len(self.feature_names)} feature names for {f} features")
        check_finite_or_missing(self.values, file=None, token_names=self.token_names, subject_ids=self.subject_ids)

    # ------------------------------------------------------------------ alignment
    def reindex(self, subject_ids: Sequence[str]) -> TokenizedModality:
        """Rows for ``subject_ids`` in that order; subjects without this modality get
        ``present=False`` and zero values (what an outer join needs)."""
        subject_ids = np.asarray(subject_ids, dtype=object)
        position = {sid: i for i, sid in enumerate(self.subject_ids)}
        rows = np.array([position.get(s, -1) for s in subject_ids], dtype=np.int64)
        have = rows >= 0
        values = np.zeros((len(subject_ids), self.n_tokens, self.n_features), dtype=np.float32)
        present = np.zeros((len(subject_ids), self.n_tokens), dtype=bool)
        values[have] = self.values[rows[have]]
        present[have] = self.present[rows[have]]
        return TokenizedModality(
            name=self.name,
            values=values,
            present=present,
            token_names=list(self.token_names),
            subject_ids=subject_ids,
            feature_mask=self.feature_mask.copy(),
            feature_names=None if self.feature_names is None else list(self.feature_names),
            categories={k: list(v) for k, v in self.categories.items()},
            source=dict(self.source),
        )

    def subjects_with_data(self) -> np.ndarray:
        """IDs of subjects with at least one present token."""
        return self.subject_ids[self.present.any(axis=1)]


def load_npy(path: Path, what: str) -> np.ndarray:
    """A numeric or string ``.npy`` array; pickled arrays are refused (loading them can run code)."""
    if not path.is_file():
        raise AdapterError(f"{what} not found", file=path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise AdapterError(
                f"{what} holds Python objects (pickled); save it as a numeric or string array,"
                " e.g. np.save(path, np.asarray(ids, dtype=str))",
                file=path,
            ) from err
        raise AdapterError(f"cannot read {what}: {err}", file=path) from err
    except OSError as err:
        raise AdapterError(f"cannot read {what}: {err}", file=path) from err


def read_subject_ids(ids, array_path: Path) -> tuple[np.ndarray, str]:
    """Subject IDs of a ``.npy`` array: ``ids`` (a .npy or one-ID-per-line file, or a sequence), else ``ids.npy``
    beside the array. Returns the normalised IDs and where they came from."""
    if ids is None:
        ids = array_path.with_name(IDS_FILENAME)
    if isinstance(ids, (str, os.PathLike)):
        ids_path = Path(ids)
        if ids_path.suffix.lower() == ".npy":
            raw = load_npy(ids_path, "subject ID file")
            if raw.ndim != 1:
                raise AdapterError(f"subject IDs must be a 1-D array, got shape {raw.shape}", file=ids_path)
        else:
            if not ids_path.is_file():
                raise AdapterError("subject ID file not found", file=ids_path)
            # one ID per line, no header: the plainest format a script can write
            raw = [line.strip() for line in ids_path.read_text().splitlines() if line.strip()]
        return normalize_ids(raw, file=ids_path, column="ids"), str(ids_path)
    return normalize_ids(ids, column="ids"), "ids"


def check_choice(value, choices: Sequence[str], argument: str) -> None:
    """Refuse an argument that is not one of ``choices``, naming them."""
    if value not in choices:
        raise AdapterError(f"{argument}={value!r}: choose one of {', '.join(map(repr, choices))}")
