"""The samples of a BGEN file: its Oxford ``.sample`` file, and the sample IDs a BGEN may store itself, which
must then be the ``.sample``'s (row by row), else every subject would silently get another's genotypes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .core import AdapterError, normalize_ids

if TYPE_CHECKING:
    from .bgen import _Header


@dataclass(frozen=True)
class _SampleFile:
    id_1: np.ndarray
    id_2: np.ndarray
    line: np.ndarray  # the line of the file each sample is on (1-based)

    def __len__(self) -> int:
        return len(self.id_2)


def _subject_ids(path: Path, sample, header: _Header, reader, id_format: str) -> tuple[np.ndarray, str, str | None]:
    """Subject IDs, where they came from (the .sample path, or "bgen") and, when the BGEN stores sample IDs and
    a .sample is used, the .sample column they equal."""
    if sample is None:
        beside = path.with_suffix(".sample")
        if beside.is_file():
            sample = beside
        elif header.has_sample_ids and id_format == "iid":
            stored = _stored_sample_ids(reader, path)
            return normalize_ids(stored, file=path, column="sample identifiers"), "bgen", None
        else:
            stored = "stores no sample IDs" if not header.has_sample_ids else "stores only one ID per sample"
            raise AdapterError(
                f"no .sample file: this BGEN {stored}; put its Oxford .sample file beside it as {beside.name} or"
                " pass sample=",
                file=beside,
            )
    sample = Path(sample)
    table = _read_sample_file(sample)
    if len(table) != header.n_samples:
        raise AdapterError(
            f"{len(table)} samples, but the header of {path.name} declares {header.n_samples}: the .sample belongs"
            " to another BGEN (UK Biobank ships one .sample per application; check the file name)",
            file=sample,
        )
    used = {"ID_2": table.id_2} if id_format == "iid" else {"ID_1": table.id_1, "ID_2": table.id_2}
    for column, values in used.items():
        missing = np.flatnonzero(values == "NA")
        if len(missing):
            raise AdapterError(
                f"line {table.line[missing[0]]}: {column} is 'NA', a missing-value code, not a sample ID"
                f" ({len(missing)} such line(s)); every sample needs its ID",
                file=sample,
            )
    matched = _check_stored_ids(reader, path, table, sample) if header.has_sample_ids else None
    if id_format == "iid":
        return normalize_ids(table.id_2, file=sample, column="ID_2"), str(sample), matched
    combined = table.id_1 + "_" + table.id_2
    return normalize_ids(combined, file=sample, column="ID_1_ID_2"), str(sample), matched


def _stored_sample_ids(reader, path: Path) -> np.ndarray:
    try:
        return np.array([s.decode().strip() for s in reader.read_samples()], dtype=object)
    except (RuntimeError, UnicodeDecodeError) as err:
        raise AdapterError(f"cbgen could not read the stored sample identifiers: {err}", file=path) from err


def _check_stored_ids(reader, path: Path, table: _SampleFile, sample: Path) -> str:
    """The .sample column the BGEN's stored sample IDs equal row by row (QCTOOL stores ID_1, plink2 the IID,
    ID_2, or FID_IID); refused, naming the first differing row, when none does."""
    stored = _stored_sample_ids(reader, path)
    columns = {"ID_2": table.id_2, "ID_1": table.id_1, "ID_1_ID_2": table.id_1 + "_" + table.id_2}
    for column, values in columns.items():
        if np.array_equal(stored, values):
            return column
    first = {column: int(np.argmax(stored != columns[column])) for column in ("ID_2", "ID_1")}
    column = max(first, key=first.get)  # the column that agrees longest; ID_2 on a tie
    row = first[column]
    same = set(stored.tolist()) == set(columns[column].tolist())
    raise AdapterError(
        f"line {table.line[row]} (sample {row + 1}): {column} is {columns[column][row]!r}, but {path.name} stores"
        f" {stored[row]!r} as sample {row + 1}: the .sample lists "
        + ("the same samples in another order" if same else "other samples")
        + " than the BGEN (genotypes would go to the wrong subjects); use the .sample made with this BGEN",
        file=sample,
    )


def _read_sample_file(path: Path) -> _SampleFile:
    """ID_1 and ID_2 of an Oxford .sample file (v2: a header line, a column-type line, one line per sample),
    whitespace-separated, blank lines skipped; IDs kept as written (``NA`` too: refused by the caller)."""
    if not path.is_file():
        raise AdapterError("sample file not found", file=path)
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of "ID_1"
            lines = fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise AdapterError(f"not a text .sample file (not UTF-8: {err})", file=path) from err
    first = lines[0].split() if lines else []
    second = lines[1].split() if len(lines) > 1 else []
    if [f.upper() for f in first[:2]] != ["ID_1", "ID_2"]:
        raise AdapterError(
            f"not an Oxford .sample file: the first line must start 'ID_1 ID_2', found {' '.join(first[:4])!r}",
            file=path,
        )
    if second[:2] != ["0", "0"]:
        raise AdapterError(
            f"line 2 must be the column-type row starting '0 0' (e.g. '0 0 0 D'), found {' '.join(second[:4])!r}",
            file=path,
        )
    id_1, id_2, numbers = [], [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise AdapterError(f"line {number}: a sample line needs ID_1 and ID_2", file=path)
        id_1.append(fields[0])
        id_2.append(fields[1])
        numbers.append(number)
    return _SampleFile(np.array(id_1, dtype=object), np.array(id_2, dtype=object), np.array(numbers, dtype=np.int64))


# ---------------------------------------------------------------------------------------------- variants
