"""Withdrawn participants: a file of IDs removed from every modality, split and output before anything else.

UK Biobank sends withdrawals as plain files of one ID per line (``w<app>_<date>.csv``, no header). Read here:

* one ID per line; blank lines are skipped; a line whose first character is ``#`` is a comment;
* an ID in double or single quotes (``"1001"``, as a spreadsheet exports text) is read without them;
* the first ID line may be a header equal to the data's ID column name (``eid``), which is skipped;
* an ID is matched as the cohort matches IDs (:func:`mot_neuro.data.relatedness.normalize_id`: stripped,
  ``1001.0`` is ``1001``; leading zeros and prefixes are kept); an ID listed twice counts once;
* anything else on a line (a second field, a comma) or an ID in scientific notation is an error naming the file
  and line, and so is a file listing no ID: a withdrawal list read wrongly would leave withdrawn subjects in.

The IDs must be written as the cohort writes them (:meth:`Withdrawals.check_ids`): a file none of whose IDs is in
the cohort while written otherwise (``sub-1001``, ``01001``), or some of whose IDs are cohort subjects written
otherwise, is refused with the ID styles of both (never an ID). A low share found is no error: UK Biobank's files
list the withdrawals of the whole biobank, most of them in no given cohort. None found, written alike, is logged.

Where the IDs go: the cohort build leaves them out (:func:`mot_neuro.data.sources.build_cached_cohort`; the file
is an input of the cache key, so a cache built before it changed is not reused); a saved cohort folder
(``cohort_dir``) cannot be rewritten, so the DataModule leaves their rows out of the splits and of every loader;
a saved splits file holding them has them removed (:func:`mot_neuro.data.splits.load_or_make_splits`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_adapters.errors import AdapterError

from .relatedness import check_id_styles, file_sha256, is_scientific, normalize_id

log = logging.getLogger(__name__)
_SEPARATOR = re.compile(r"[\s,;]")


@dataclass(frozen=True)
class Withdrawals:
    """The withdrawn IDs of one file (normalized strings) and the file's fingerprint."""

    path: str
    ids: frozenset[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self, subject_ids) -> dict[str, int]:
        """How many withdrawn IDs are among ``subject_ids`` (``found``) and how many are not (``not_found``)."""
        found = len(self.ids & set(np.asarray(subject_ids).astype(str).tolist()))
        return {"found": found, "not_found": len(self.ids) - found}

    def check_ids(self, cohort_ids, *, found: int | None = None) -> None:
        """Refuse the file when its IDs are written otherwise than the cohort's ``cohort_ids`` (see the module
        docstring); ``found``: how many of the IDs were found, when they are no longer among ``cohort_ids``."""
        warning = check_id_styles(self.ids, cohort_ids, what="withdrawals", file=self.path, found=found)
        if warning:
            log.warning(warning)


def _unquoted(text: str) -> str:
    """``"1001"`` or ``'1001'`` -> ``1001``."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].strip()
    return text


def read_id_list(path: str | os.PathLike, *, id_column: str = "eid", what: str = "withdrawals file") -> set[str]:
    """The IDs of a file of one ID per line (no header or one naming the ID column, blank lines and ``#`` comments
    skipped), normalised as the cohort's; one-line errors naming ``what``, the file and the line."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise AdapterError(f"{what} not found", file=file)
    ids: set[str] = set()
    first = True
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                text = _unquoted(text)
                if not text:
                    continue  # "" alone: a blank line
                if _SEPARATOR.search(text):
                    raise AdapterError(
                        f"{what}: line {number} holds more than one field; give one ID per line", file=file
                    )
                if first and text.lower() == id_column.lower():
                    first = False
                    continue  # a header naming the ID column
                first = False
                if is_scientific(text):
                    raise AdapterError(
                        f"{what}: line {number} writes an ID in scientific notation (a spreadsheet rewrote"
                        " it and dropped digits); export the IDs as text",
                        file=file,
                    )
                ids.add(normalize_id(text))
    except UnicodeDecodeError as err:
        raise AdapterError(f"{what} is not text ({err.reason})", file=file) from None
    if not ids:
        raise AdapterError(f"{what} lists no ID (empty, or only a header, comments or blank lines)", file=file)
    return ids


def read_withdrawals(path: str | os.PathLike, *, id_column: str = "eid") -> Withdrawals:
    """The IDs of a withdrawal file (see the module docstring); one-line errors naming the file and line."""
    path = Path(path)
    file = str(path)
    try:
        ids = read_id_list(path, id_column=id_column, what="withdrawals file")
    except AdapterError as err:
        if "lists no ID" not in err.reason:
            raise
        advice = "give one withdrawn ID per line, or leave data.withdrawals unset"
        raise AdapterError(f"{err.reason}; {advice}", file=file) from None
    return Withdrawals(path=file, ids=frozenset(ids), fingerprint=file_sha256(path))
