"""The saved splits: subject IDs of train/val/test per fold (:class:`Splits`), their fingerprint, and the JSON
file that keeps them (written atomically; checked on load, with an error that says what is wrong).

The file records the scheme, the settings and a fingerprint; IDs are stored as strings, sorted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_adapters.errors import AdapterError
from data_adapters.io import atomic_write_bytes

SPLITS_FORMAT = "mot-neuro-splits"
SPLITS_VERSION = 1
SCHEMES = ("kfold", "holdout")
PARTS = ("train", "val", "test")


@dataclass
class Splits:
    """Subject IDs of train/val/test for each fold (the schemes: see :mod:`mot_neuro.data.splits`)."""

    scheme: str
    folds: list[dict[str, list[str]]]
    settings: dict

    def n_folds(self) -> int:
        return len(self.folds)

    def fold(self, k: int) -> dict[str, np.ndarray]:
        """``{"train", "val", "test"}`` -> subject IDs (str arrays) of fold ``k``."""
        n = self.n_folds()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n:
            raise AdapterError(f"fold {k!r} does not exist: these {self.scheme} splits have {n} fold(s), 0..{n - 1}")
        return {part: np.asarray(self.folds[k][part], dtype=str) for part in PARTS}

    def subject_ids(self) -> set[str]:
        return {sid for fold in self.folds for part in PARTS for sid in fold[part]}

    def fingerprint(self) -> str:
        """A hash of scheme, folds and settings: equal fingerprints, equal splits."""
        text = json.dumps(
            {"scheme": self.scheme, "folds": self.folds, "settings": self.settings},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the splits as JSON, atomically (a temporary file beside ``path``, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": SPLITS_FORMAT,
            "version": SPLITS_VERSION,
            "fingerprint": self.fingerprint(),
            "scheme": self.scheme,
            "settings": self.settings,
            "folds": self.folds,
        }
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Splits:
        """Splits saved by :meth:`save`; an :class:`AdapterError` says what is wrong with a bad file."""
        path = Path(path)
        fix = "delete it to make new splits, or point to another splits file"
        if not path.is_file():
            raise AdapterError("splits file not found; make one with make_splits or load_or_make_splits", file=path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AdapterError(f"splits file is not valid JSON ({err}); it may be truncated: {fix}", file=path) from err
        except (OSError, UnicodeDecodeError) as err:
            raise AdapterError(f"cannot read splits file ({err})", file=path) from err
        if not isinstance(data, dict) or data.get("format") != SPLITS_FORMAT:
            raise AdapterError(f"not a mot-neuro splits file (no 'format': {SPLITS_FORMAT!r}); {fix}", file=path)
        if data.get("version") != SPLITS_VERSION:
            raise AdapterError(
                f"splits file version {data.get('version')!r}; this code reads version {SPLITS_VERSION}: {fix}",
                file=path,
            )
        splits = cls(scheme=data.get("scheme"), folds=data.get("folds"), settings=data.get("settings"))
        problem = _structure_problem(splits)
        if problem:
            raise AdapterError(f"invalid splits file: {problem}; {fix}", file=path)
        recorded = data.get("fingerprint")
        if recorded is not None and recorded != splits.fingerprint():
            raise AdapterError(
                "splits file content does not match its recorded fingerprint (edited or corrupt);"
                f" {fix} (remove the 'fingerprint' field if the edit was intended)",
                file=path,
            )
        return splits


def _structure_problem(splits: Splits) -> str | None:
    """What is wrong with loaded splits, or None. Never names a subject: only fold numbers and counts."""
    if splits.scheme not in SCHEMES:
        return f"scheme {splits.scheme!r} is not one of {SCHEMES}"
    if not isinstance(splits.settings, dict):
        return "'settings' is not an object"
    if not isinstance(splits.folds, list) or not splits.folds:
        return "'folds' is not a non-empty list"
    everyone = None
    for k, fold in enumerate(splits.folds):
        if not isinstance(fold, dict) or set(fold) != set(PARTS):
            return f"fold {k} does not have exactly the parts {PARTS}"
        for part in PARTS:
            ids = fold[part]
            if not isinstance(ids, list) or not all(isinstance(s, str) for s in ids):
                return f"fold {k} {part} is not a list of ID strings"
            fold[part] = sorted(ids)
        sizes = sum(len(fold[part]) for part in PARTS)
        members = set().union(*(fold[part] for part in PARTS))
        if len(members) != sizes:
            return f"fold {k}: {sizes - len(members)} ID(s) appear twice (in one part or in two parts)"
        if everyone is None:
            everyone = members
        elif members != everyone:
            return f"fold {k} holds other subjects than fold 0"
    if splits.scheme == "kfold":
        tests = [set(fold["test"]) for fold in splits.folds]
        if sum(map(len, tests)) != len(everyone) or set().union(*tests) != everyone:
            return "the test sets of the folds do not partition the subjects"
    return None
