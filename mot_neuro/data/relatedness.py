"""Relatives kept together: a relatedness file read into pairs, and the groups (families) the splits keep whole.

Two layouts are read, whitespace separated, with a header line naming the columns (any order, case ignored, a
leading ``#`` and a UTF-8 byte order mark dropped):

* a kinship table: UK Biobank's ``ukb_rel.dat`` (``ID1 ID2 HetHet IBS0 Kinship``), KING's ``.kin0``/``.kin``
  output (``FID1 ID1 FID2 ID2 ... Kinship``) or PLINK 2's ``--make-king-table`` output (``#FID1 IID1 FID2 IID2
  NSNP HETHET IBS0 KINSHIP``; ``IID1``/``IID2`` are the ID columns): the pairs whose kinship coefficient (the
  column ``Kinship``, any case) is at least ``threshold`` are related;
* a pairs table with the columns ``ID1 ID2`` (and optionally ``FID1 FID2``) and nothing else: every listed pair
  is related (the threshold does not apply and is recorded as none; one given explicitly is refused).

A header with other columns but no ``Kinship`` column is refused: a kinship column under another name, or KING's
``--ibdseg`` output (``PropIBD``, ``InfType``), would otherwise be read as a pairs table relating every pair.

Threshold convention: KING's inference table gives third degree as kinship in [0.0442, 0.0884), second degree
[0.0884, 0.177), first degree [0.177, 0.354), duplicates/MZ twins >= 0.354, each interval closed at its lower
bound; so a pair is related when ``Kinship >= threshold``, and the default 0.0442 keeps third-degree relatives
and closer together. The threshold must lie in [0, 0.5] (0.5 is the kinship of a subject with itself).

IDs are matched as the cohort matches them (:func:`data_adapters.core.normalize_ids`): text, stripped, a
trailing ``.0`` of a whole number dropped (``1001.0`` is ``1001``); leading zeros and prefixes are kept, so the
file must write IDs as the participants table does. A pair of a subject with itself and a pair listed twice
(either order) count once or not at all; IDs not in the cohort are ignored and counted. A file none of whose IDs
is a cohort subject, or whose IDs not in the cohort are cohort subjects written otherwise (a ``sub-`` prefix,
leading zeros, another case), is refused with the ID styles of both (:func:`check_id_styles`): it would relate
nobody. Nothing here names a subject: errors give the file and line, reports give counts.

:func:`related_groups` joins these pairs with any other grouping (site, family column): a subject's group is its
connected component in the graph whose edges are "same group value" or "related pair".
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_adapters.errors import AdapterError
from data_adapters.id_matching import _typical_style, diagnose_id_mismatch

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.0442
"""KING's lower bound of third-degree relatedness (kinship coefficient)."""
MAX_THRESHOLD = 0.5
_SCIENTIFIC = re.compile(r"[+-]?\d+(\.\d+)?[eE][+-]?\d+")
_OPTIONS = ("path", "threshold")
_ID_COLUMNS = (("id1", "iid1"), ("id2", "iid2"))
"""The ID columns: KING's and UK Biobank's ``ID1``/``ID2``, PLINK 2's ``IID1``/``IID2`` (case ignored)."""
_PAIRS_COLUMNS = {"id1", "id2", "iid1", "iid2", "fid1", "fid2"}
"""The columns a pairs table (no kinship) may have."""
_KINSHIP = "kinship"
_LOOSE = re.compile(r"(\D*?)0*(\d+)")


def normalize_id(text: str) -> str:
    """One ID as the cohort writes it (see :func:`data_adapters.core.normalize_ids`): stripped, ``1001.0`` ->
    ``1001``. The caller refuses scientific notation (:func:`is_scientific`)."""
    text = text.strip()
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        text = text[:-2]
    return text


def is_scientific(text: str) -> bool:
    return _SCIENTIFIC.fullmatch(text) is not None


def _loose(subject_id: str) -> tuple[str, str]:
    """``(key, prefix)``: an ID written as text then a number (``sub-0042``) gives the number without leading
    zeros and the text in lower case (``("42", "sub-")``); any other ID itself in lower case and no prefix."""
    match = _LOOSE.fullmatch(subject_id)
    if match is None:
        return subject_id.lower(), ""
    return match.group(2), match.group(1).lower()


def _written_otherwise(listed: list[str], cohort_ids: set[str]) -> list[str]:
    """The ``listed`` IDs (none of them in ``cohort_ids``) that are a cohort subject written otherwise: the same
    number with or without leading zeros or a text prefix (``sub-``), or the same ID in another case."""
    if not listed:
        return []
    prefixes: dict[str, set[str]] = {}
    for subject_id in cohort_ids:
        key, prefix = _loose(subject_id)
        prefixes.setdefault(key, set()).add(prefix)
    out = []
    for subject_id in listed:
        key, prefix = _loose(subject_id)
        known = prefixes.get(key)
        # "C12" is not "A12" written otherwise: a prefix must be the same, or missing on one side
        if known is not None and (prefix == "" or "" in known or prefix in known):
            out.append(subject_id)
    return out


def check_id_styles(listed, cohort_ids, *, what: str, file: str, found: int | None = None) -> str | None:
    """Refuse a file of subject IDs (``what``: ``"relatedness"``, ``"withdrawals"``) whose IDs are written
    otherwise than the cohort's, as ``min_match`` does for a modality (counts and ID styles, never an ID).

    Refused: none of the ``listed`` IDs is in ``cohort_ids`` (``found``, when given, counts the listed IDs found,
    e.g. before they were removed from the cohort) and the file writes its IDs in another style (or, whatever
    the style, ``what`` is a relatedness file: one relating nobody of the cohort is another cohort's); or some
    listed IDs not in the cohort are cohort subjects written otherwise (:func:`_written_otherwise`), whatever the
    share found: a UK Biobank withdrawal file lists the whole biobank's withdrawals, most of them legitimately in
    no given cohort. Returns a warning (none found, IDs written alike, not refused), else None."""
    listed = sorted({str(s) for s in listed})
    if not listed:
        return None
    cohort = {str(s) for s in np.asarray(cohort_ids).tolist()}
    if found is None:
        found = sum(s in cohort for s in listed)
    unmatched = [s for s in listed if s not in cohort]
    otherwise = _written_otherwise(unmatched, cohort)
    cohort_style = _typical_style(cohort)
    if found == 0:
        file_style = _typical_style(listed)
        if not otherwise and file_style == cohort_style and what != "relatedness":
            return (
                f"{what}: none of the {len(listed)} ID(s) of {file} is a subject of the cohort ({len(cohort)}"
                f" subjects), though they are written alike ({cohort_style!r}, # = a digit): nothing to leave out"
            )
        same = "written alike" if file_style == cohort_style else "written otherwise"
        why = (
            f"they are {same}: another cohort's or application's file?"
            if file_style == cohort_style and not otherwise
            else diagnose_id_mismatch(cohort, otherwise or listed, f"{what} file")
        )
        raise AdapterError(
            f"{what} file: none of its {len(listed)} ID(s) is a subject of the cohort ({len(cohort)} subjects), so"
            f" it would {'relate' if what == 'relatedness' else 'withdraw'} nobody. IDs look like {cohort_style!r}"
            f" in the cohort, {file_style!r} in the file (# = a digit): {why}. Write the IDs as the participants"
            " table does",
            file=file,
        )
    if otherwise:
        why = diagnose_id_mismatch(cohort, otherwise, f"{what} file")
        raise AdapterError(
            f"{what} file: {len(otherwise)} of its {len(listed)} ID(s) are cohort subjects written otherwise"
            f" ({found} found as written), so they would be {'left unrelated' if what == 'relatedness' else 'kept'}."
            f" IDs look like {cohort_style!r} in the cohort, {_typical_style(otherwise)!r} in the file for those"
            f" (# = a digit): {why}. Write the IDs as the participants table does",
            file=file,
        )
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_threshold(threshold, *, what: str = "relatedness threshold") -> float:
    """The threshold as a float in [0, 0.5]; a ValueError-like :class:`AdapterError` otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise AdapterError(f"{what} must be a number in [0, {MAX_THRESHOLD}], got {threshold!r}")
    value = float(threshold)
    if not 0.0 <= value <= MAX_THRESHOLD:
        raise AdapterError(
            f"{what} must lie in [0, {MAX_THRESHOLD}] (a kinship coefficient; {DEFAULT_THRESHOLD} = third degree),"
            f" got {threshold!r}"
        )
    return value


@dataclass(frozen=True)
class Relatedness:
    """Related pairs of a file (normalized ID strings, each pair once, no self pairs) and how they were chosen."""

    path: str
    threshold: float | None
    """None for a pairs table (every listed pair is related)."""
    fingerprint: str
    """sha256 (16 hex digits) of the file's bytes: another file, or an edited one, is another relatedness."""
    id1: np.ndarray = field(repr=False)
    id2: np.ndarray = field(repr=False)
    counts: dict = field(default_factory=dict)
    """From reading: ``lines`` (data lines), ``below_threshold``, ``self_pairs``, ``duplicate_pairs``, ``pairs``."""
    listed: frozenset = field(default=frozenset(), repr=False, compare=False)
    """Every ID of the file's data lines (normalized), related or not: how the file writes IDs."""

    @property
    def n_pairs(self) -> int:
        return len(self.id1)

    def check_ids(self, ids) -> None:
        """Refuse the file when its IDs are not the cohort's ``ids`` written alike (:func:`check_id_styles`)."""
        check_id_styles(self.listed, ids, what="relatedness", file=self.path)

    def settings(self) -> dict:
        """What the saved splits record and compare: the threshold and the file's fingerprint (not its path:
        a moved file is the same relatedness)."""
        return {"threshold": self.threshold, "fingerprint": self.fingerprint}

    def pairs_in(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """Positions in ``ids`` of the pairs with both subjects there, and counts of what was left out."""
        position = {sid: i for i, sid in enumerate(np.asarray(ids).tolist())}
        first = np.fromiter((position.get(s, -1) for s in self.id1.tolist()), dtype=np.int64, count=self.n_pairs)
        second = np.fromiter((position.get(s, -1) for s in self.id2.tolist()), dtype=np.int64, count=self.n_pairs)
        inside = (first >= 0) & (second >= 0)
        listed = set(self.id1.tolist()) | set(self.id2.tolist())
        counts = {
            "pairs_in_cohort": int(inside.sum()),
            "pairs_outside_cohort": int((~inside).sum()),
            "ids_not_in_cohort": len(listed - set(position)),
        }
        return first[inside], second[inside], counts


def as_relatedness(value) -> Relatedness | None:
    """``None``, a :class:`Relatedness`, a path (default threshold), or ``{path, threshold}`` -> Relatedness."""
    if value is None or isinstance(value, Relatedness):
        return value
    if isinstance(value, (str, os.PathLike)):
        return read_relatedness(value)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_OPTIONS))
        if unknown or "path" not in value:
            raise AdapterError(
                f"relatedness takes {{path: <file>, threshold: <kinship, default {DEFAULT_THRESHOLD}>}};"
                f" got keys {sorted(value)}"
            )
        check_relatedness_option(value)
        return read_relatedness(value["path"], threshold=value.get("threshold"))
    raise AdapterError(
        f"relatedness must be a file path or {{path: ..., threshold: ...}}, got a {type(value).__name__}"
    )


def check_relatedness_option(value, *, prefix: str = "") -> None:
    """The option's shape and threshold, before any file is read (a DataModule checks it at construction)."""
    if value is None or isinstance(value, (str, os.PathLike, Relatedness)):
        return
    if not isinstance(value, Mapping):
        raise AdapterError(f"{prefix}relatedness must be a file path or {{path: ..., threshold: ...}}, got {value!r}")
    unknown = sorted(set(value) - set(_OPTIONS))
    if unknown or "path" not in value:
        raise AdapterError(
            f"{prefix}relatedness takes {{path: <file>, threshold: <kinship, default {DEFAULT_THRESHOLD}>}};"
            f" got keys {sorted(value)}"
        )
    if not isinstance(value["path"], (str, os.PathLike)):
        raise AdapterError(f"{prefix}relatedness.path must be a file path, got {value['path']!r}")
    check_threshold(value.get("threshold", DEFAULT_THRESHOLD), what=f"{prefix}relatedness.threshold")


def _header(fields: list[str], file: str) -> tuple[int, int, int | None]:
    """Positions of the two ID columns and of the kinship column (None for a pairs table)."""
    names = [f.lower() for f in fields]
    if names and names[0].startswith("#"):  # PLINK 2's "#FID1"
        names[0] = names[0][1:]
    positions = []
    for accepted in _ID_COLUMNS:
        found = [names.index(name) for name in accepted if name in names]
        positions.append(found[0] if found else None)
    missing = [accepted[0].upper() for accepted, at in zip(_ID_COLUMNS, positions, strict=True) if at is None]
    if missing:
        raise AdapterError(
            f"relatedness file: line 1 must be a header naming the columns ID1 and ID2 (or PLINK 2's IID1 and IID2;"
            f" and Kinship for KING/PLINK 2/UK Biobank kinship tables); missing {missing}",
            file=file,
        )
    if _KINSHIP in names:
        return positions[0], positions[1], names.index(_KINSHIP)
    others = [field for field, name in zip(fields, names, strict=True) if name not in _PAIRS_COLUMNS]
    if others:
        ibdseg = " (KING --ibdseg output is no kinship table: use king --kinship or plink2 --make-king-table)"
        raise AdapterError(
            f"relatedness file: the header has the column(s) {others[:6]} but no kinship column: a kinship table"
            f" needs one named Kinship (any case: KING's and UK Biobank's Kinship, PLINK 2's KINSHIP); a pairs"
            f" table (every listed pair related) has only ID1 ID2 (and FID1 FID2)"
            f"{ibdseg if {'propibd', 'inftype'} & set(names) else ''}",
            file=file,
        )
    return positions[0], positions[1], None


def read_relatedness(path: str | os.PathLike, threshold=None) -> Relatedness:
    """The related pairs of ``path`` (see the module docstring); one-line errors naming the file and line.

    ``threshold``: the kinship at and above which a pair is related; None (not given) is
    :data:`DEFAULT_THRESHOLD` for a kinship table. A pairs table (no Kinship column) takes none: one given is
    refused, since it could not apply."""
    path = Path(path)
    explicit = threshold is not None
    threshold = check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
    if not path.is_file():
        raise AdapterError("relatedness file not found", file=str(path))
    file = str(path)
    fingerprint = file_sha256(path)
    seen: set[tuple[str, str]] = set()
    listed: set[str] = set()
    id1: list[str] = []
    id2: list[str] = []
    counts = {"lines": 0, "below_threshold": 0, "self_pairs": 0, "duplicate_pairs": 0}
    columns = None
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte order mark is dropped
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields:
                    continue
                if columns is None:
                    columns = _header(fields, file)
                    width = len(fields)
                    if explicit and columns[2] is None:
                        raise AdapterError(
                            f"relatedness file has no Kinship column (a pairs table: every listed pair is related),"
                            f" so the threshold {threshold:g} given cannot apply; drop relatedness.threshold, or give"
                            " a kinship table (KING, PLINK 2 --make-king-table, UK Biobank's ukb_rel.dat)",
                            file=file,
                        )
                    continue
                if len(fields) != width:
                    raise AdapterError(
                        f"relatedness file: line {number} has {len(fields)} fields, the header {width}", file=file
                    )
                counts["lines"] += 1
                a, b = fields[columns[0]], fields[columns[1]]
                for text in (a, b):
                    if is_scientific(text.strip()):
                        raise AdapterError(
                            f"relatedness file: line {number} writes an ID in scientific notation (a spreadsheet"
                            " rewrote it and dropped digits); export the IDs as text",
                            file=file,
                        )
                a, b = normalize_id(a), normalize_id(b)
                listed.add(a)
                listed.add(b)
                if columns[2] is not None:
                    try:
                        kinship = float(fields[columns[2]])
                    except ValueError:
                        raise AdapterError(
                            f"relatedness file: line {number}: Kinship {fields[columns[2]]!r} is not a number",
                            file=file,
                        ) from None
                    if not np.isfinite(kinship):
                        raise AdapterError(
                            f"relatedness file: line {number}: Kinship {fields[columns[2]]!r} is not finite", file=file
                        )
                    if kinship < threshold:
                        counts["below_threshold"] += 1
                        continue
                if a == b:
                    counts["self_pairs"] += 1
                    continue
                key = (a, b) if a < b else (b, a)
                if key in seen:
                    counts["duplicate_pairs"] += 1
                    continue
                seen.add(key)
                id1.append(key[0])
                id2.append(key[1])
    except UnicodeDecodeError as err:
        raise AdapterError(f"relatedness file is not text ({err.reason})", file=file) from None
    if columns is None:
        raise AdapterError("relatedness file is empty (no header line)", file=file)
    counts["pairs"] = len(id1)
    return Relatedness(
        path=file,
        threshold=threshold if columns[2] is not None else None,
        fingerprint=fingerprint,
        id1=np.asarray(id1, dtype=object),
        id2=np.asarray(id2, dtype=object),
        counts=counts,
        listed=frozenset(listed),
    )


def _components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _size_counts(labels: np.ndarray) -> dict:
    """Groups of two or more subjects: how many, the largest, and the subjects they hold."""
    sizes = np.bincount(labels)
    several = sizes[sizes >= 2]
    return {
        "groups": int(len(several)),
        "largest": int(several.max()) if len(several) else 1,
        "subjects": int(several.sum()),
    }


def related_groups(ids, relatedness: Relatedness, group_codes: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """A group code per subject of ``ids``: connected components of "related pair" plus "same group code"
    edges, and counts (never IDs): ``related_groups``/``largest_related_group``/``subjects_in_related_groups``
    for the families of the relatedness alone, ``groups``/``largest_group`` for the final grouping, and the
    counts of :meth:`Relatedness.pairs_in` and of reading."""
    ids = np.asarray(ids)
    n = len(ids)
    relatedness.check_ids(ids)  # a file of other IDs (or written otherwise) would relate nobody
    first, second, counts = relatedness.pairs_in(ids)
    families = _size_counts(_components(n, first, second))
    if group_codes is not None:
        codes = np.asarray(group_codes, dtype=np.int64)
        # each subject joined to the first subject of its group value: a star per group
        leader = np.full(codes.max() + 1, -1, dtype=np.int64)
        leader[codes[::-1]] = np.arange(n)[::-1]
        first = np.concatenate([first, np.arange(n)])
        second = np.concatenate([second, leader[codes]])
    labels = _components(n, first, second)
    summary = {
        "related_groups": families["groups"],
        "largest_related_group": families["largest"],
        "subjects_in_related_groups": families["subjects"],
        "groups": int(labels.max()) + 1 if n else 0,
        "largest_group": int(np.bincount(labels).max()) if n else 0,
        **counts,
        **{k: v for k, v in relatedness.counts.items() if k != "lines"},
    }
    return labels, summary


def related_pairs_crossing(folds: list[dict], ids, relatedness: Relatedness) -> list[tuple[int, int]]:
    """``(fold, number of related pairs)`` for each fold where a related pair (both in ``ids``) is split over
    train/val/test; empty when no pair crosses."""
    ids = np.asarray(ids)
    first, second, _ = relatedness.pairs_in(ids)
    crossing = []
    for k, fold in enumerate(folds):
        part = {}
        for code, name in enumerate(("train", "val", "test")):
            for sid in fold[name]:
                part[sid] = code
        where = np.array([part.get(sid, -1) for sid in ids.tolist()], dtype=np.int64)
        count = int((where[first] != where[second]).sum())
        if count:
            crossing.append((k, count))
    return crossing
