"""The embeddings file of ``mot-neuro embed``: its columns, its metadata, how it is written and read.

One parquet file, one row per subject, sorted by subject ID:

* ``eid`` (string), ``split`` (``train``/``val``/``test``), ``fold`` (int32);
* ``embedding`` (list<float32>): the pooled subject vector;
* ``embedding_<modality>`` (list<float32>), one per modality the model has tokens for (optional): the mean over
  the modality's present tokens.

The parquet key-value metadata holds :data:`RESERVED_METADATA` (written by ``EmbeddingWriter``; the keys of
:data:`JSON_METADATA` as JSON, every other value as a plain string) and any extra string entries.

Writing: each rank appends row groups to its part file (:func:`part_path`), then :func:`merge_parts` merges the
parts by subject ID and renames the finished file into place. Reading: :func:`read_embeddings` (a pandas table
and the metadata) and :func:`read_embedding_matrices` (float32 matrices, for probes, without a Python loop over
rows). Neither torch nor Lightning is imported here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT = "mot-neuro-embeddings"
FORMAT_VERSION = 1
MERGE_CHUNK_ROWS = 65536
"""Rows the merge holds in memory at once."""

EMBEDDING_TYPE = pa.list_(pa.float32())
REQUIRED_COLUMNS = ("eid", "split", "fold", "embedding")
MODALITY_PREFIX = "embedding_"
"""``embedding_<modality>``: the per-modality columns."""
RESERVED_METADATA = (
    "format",
    "format_version",
    "variant",
    "layer",
    "n_layers",
    "checkpoint",
    "config_fingerprint",
    "splits_fingerprint",
    "predict_split",
    "modalities",
    "embedding_dim",
    "mot_neuro_version",
)
JSON_METADATA = ("format_version", "layer", "n_layers", "modalities", "embedding_dim")
"""Stored as JSON (numbers, null, lists) and decoded on reading; every other value is a plain string."""


def schema(modalities: Sequence[str] = ()) -> pa.Schema:
    """The columns of a file with per-modality columns for ``modalities`` (in that order)."""
    fields = [
        pa.field("eid", pa.string()),
        pa.field("split", pa.string()),
        pa.field("fold", pa.int32()),
        pa.field("embedding", EMBEDDING_TYPE),
    ]
    fields += [pa.field(f"{MODALITY_PREFIX}{name}", EMBEDDING_TYPE) for name in modalities]
    return pa.schema(fields)


def part_path(output: str | os.PathLike, rank: int) -> Path:
    """The part file rank ``rank`` writes while predicting into ``output``."""
    return Path(f"{output}.part-rank{rank}.parquet.tmp")


def stale_parts(output: str | os.PathLike) -> Iterable[Path]:
    """Part files of ``output`` of any rank (left by a run killed before it could clean up)."""
    output = Path(output)
    return output.parent.glob(f"{output.name}.part-rank*.parquet.tmp")


def encode_metadata(metadata: Mapping[str, object]) -> dict[bytes, bytes]:
    encoded = {}
    for key, value in metadata.items():
        text = json.dumps(value) if key in JSON_METADATA else str(value)
        encoded[str(key).encode()] = text.encode()
    return encoded


def decode_metadata(raw: Mapping[bytes, bytes] | None, *, lenient: bool = False) -> dict:
    """The file's metadata without pyarrow's and pandas' own entries, :data:`JSON_METADATA` decoded.

    ``lenient``: a JSON key whose value is not JSON is kept as its text instead of raising ``ValueError``."""
    decoded = {}
    for key, value in (raw or {}).items():
        name, text = key.decode(), value.decode()
        if name.startswith("ARROW:") or name == "pandas":  # pyarrow's and pandas' own bookkeeping
            continue
        decoded[name] = _decode_value(name, text, lenient)
    return decoded


def _decode_value(key: str, text: str, lenient: bool):
    if key not in JSON_METADATA:
        return text  # plain strings (variant, checkpoint, ...) are stored as they are
    try:
        return json.loads(text)
    except ValueError:
        if not lenient:
            raise
        return text


def list_column(values: np.ndarray) -> pa.ListArray:
    """``[n, d]`` float32 -> list<float32> without a Python loop."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    n, d = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)), type=EMBEDDING_TYPE)


def list_matrix(column: pa.ChunkedArray, name: str, path: Path) -> np.ndarray:
    """A list<float> column as a ``[rows, dim]`` float32 matrix, without a Python loop over rows."""
    array = column.combine_chunks()
    if array.null_count:
        raise ValueError(f"{path.name}: column {name!r} has {array.null_count} empty row(s)")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"{path.name}: column {name!r} holds vectors of different lengths {sorted(set(lengths))[:5]}")
    dim = int(lengths[0]) if len(lengths) else 0
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array), dim)


def merge_parts(
    parts: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    metadata: Mapping[str, object],
    *,
    chunk_rows: int = MERGE_CHUNK_ROWS,
) -> int:
    """Merge part files by subject ID into ``output`` (sorted by ``eid``, written atomically); returns its rows.

    Raises ``ValueError`` when an ID occurs more than once (saying how many, never which) or the parts disagree
    on their columns; ``output`` is then left as it was. The parts are not removed. Memory holds the IDs and
    about ``chunk_rows`` rows: the rows go through scratch files, one per ``chunk_rows`` of the sorted order.
    """
    parts = [Path(p) for p in parts]
    output = Path(output)
    if not parts:
        raise ValueError("no part files to merge")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    files = [pq.ParquetFile(p) for p in parts]
    try:
        schema = files[0].schema_arrow.remove_metadata()
        for path, f in zip(parts[1:], files[1:], strict=True):
            if not f.schema_arrow.remove_metadata().equals(schema):
                raise ValueError(
                    f"part {path.name} has columns {f.schema_arrow.names}, but {parts[0].name} has {schema.names}"
                )
        if "eid" not in schema.names:
            raise ValueError(f"the parts have no 'eid' column (columns: {schema.names})")
        ids = pa.concat_arrays([f.read(columns=["eid"]).column("eid").combine_chunks() for f in files])
        if ids.null_count:
            raise ValueError(f"{ids.null_count} row(s) of the parts have no subject ID")
        order = np.asarray(pc.sort_indices(ids), dtype=np.int64)
        n = len(ids)
        sorted_ids = ids.take(pa.array(order))
        if n > 1:
            repeats = sorted_ids.slice(1).filter(pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, n - 1)))
            if len(repeats):
                raise ValueError(
                    f"{len(pc.unique(repeats))} subject ID(s) occur more than once in the embeddings "
                    f"({len(repeats)} extra row(s)); each subject must be embedded exactly once"
                )
        position = np.empty(n, dtype=np.int64)  # row (in part order) -> its place in the sorted output
        position[order] = np.arange(n)
        out_schema = schema.with_metadata(encode_metadata(metadata))
        output.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        os.close(handle)
        tmp = Path(tmp_name)
        try:
            with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.merge-") as scratch:
                _write_sorted(files, position, chunk_rows, out_schema, tmp, Path(scratch))
            with open(tmp, "rb") as fh:  # on disk before the rename makes it visible
                os.fsync(fh.fileno())
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        for f in files:
            f.close()
    return n


def _write_sorted(
    files: list[pq.ParquetFile],
    position: np.ndarray,
    chunk_rows: int,
    schema: pa.Schema,
    output: Path,
    scratch: Path,
) -> None:
    """Scatter rows into one Arrow file per ``chunk_rows`` of the output order, then sort each and append it."""
    n_chunks = -(-len(position) // chunk_rows)
    field = "__position"
    scratch_schema = schema.remove_metadata().append(pa.field(field, pa.int64()))
    sinks: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    try:
        start = 0
        for f in files:
            for batch in f.iter_batches(batch_size=chunk_rows):
                pos = position[start : start + batch.num_rows]
                start += batch.num_rows
                batch = pa.RecordBatch.from_arrays([*batch.columns, pa.array(pos)], schema=scratch_schema)
                chunk = pos // chunk_rows
                for c in np.unique(chunk).tolist():
                    if c not in sinks:
                        sinks[c] = pa.ipc.new_file(scratch / f"{c}.arrow", scratch_schema)
                    sinks[c].write_batch(batch.filter(pa.array(chunk == c)))
    finally:
        for sink in sinks.values():
            sink.close()
    with pq.ParquetWriter(output, schema) as writer:
        if n_chunks == 0:  # no rows at all: still a valid file with the columns and metadata
            writer.write_table(schema.empty_table())
        for c in range(n_chunks):
            with pa.memory_map(str(scratch / f"{c}.arrow")) as source:
                table = pa.ipc.open_file(source).read_all()
                table = table.take(pa.array(np.argsort(table.column(field).to_numpy())))
                writer.write_table(table.drop_columns([field]))


def read_embeddings(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The embeddings table (list columns as arrays of float32) and its metadata, decoded.

    ``np.stack(table["embedding"])`` gives the ``[subjects, dim]`` matrix.
    """
    table = pq.read_table(path)
    metadata = decode_metadata(table.schema.metadata)
    return table.replace_schema_metadata(None).to_pandas(), metadata


def read_embedding_matrices(path) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray], dict]:
    """(eid/split/fold table, pooled matrix, modality -> matrix in modality order, metadata) of one file.

    Faster than :func:`read_embeddings` for large cohorts: the list columns become matrices at once, not per-row
    arrays. Subject IDs are strings; a file without the required columns, or with a subject ID twice, is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    table = pq.read_table(path)
    metadata = decode_metadata(table.schema.metadata, lenient=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path.name} is not an embeddings file: no column(s) {missing} (has {table.column_names})")
    info = pd.DataFrame(
        {
            "eid": np.asarray([str(v) for v in table.column("eid").to_pylist()], dtype=object),
            "split": [str(s) for s in table.column("split").to_pylist()],
            "fold": table.column("fold").to_numpy(),
        }
    )
    if not info["eid"].is_unique:
        raise ValueError(f"{path.name}: {int(info['eid'].duplicated().sum())} subject ID(s) occur more than once")
    pooled = list_matrix(table.column("embedding"), "embedding", path)
    present = [c[len(MODALITY_PREFIX) :] for c in table.column_names if c.startswith(MODALITY_PREFIX)]
    listed = metadata.get("modalities")
    listed = [str(m) for m in listed] if isinstance(listed, list) else []
    order = [m for m in listed if m in present] + [m for m in present if m not in listed]
    per_modality = {m: list_matrix(table.column(f"{MODALITY_PREFIX}{m}"), f"{MODALITY_PREFIX}{m}", path) for m in order}
    return info, pooled, per_modality, metadata


__all__ = [
    "EMBEDDING_TYPE",
    "FORMAT",
    "FORMAT_VERSION",
    "JSON_METADATA",
    "RESERVED_METADATA",
    "decode_metadata",
    "encode_metadata",
    "list_column",
    "list_matrix",
    "merge_parts",
    "part_path",
    "read_embedding_matrices",
    "read_embeddings",
    "schema",
]
