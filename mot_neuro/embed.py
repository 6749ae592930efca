"""Per-subject embeddings to parquet: the engine behind ``mot-neuro embed``.

::

    writer = EmbeddingWriter("outputs/embeddings.parquet", layer=None, metadata={"experiment": "demo"})
    trainer = lightning.pytorch.Trainer(callbacks=[writer], logger=False)
    trainer.predict(model, datamodule=datamodule, return_predictions=False)  # False is required
    table, metadata = read_embeddings("outputs/embeddings.parquet")

The file has one row per subject of the DataModule's ``predict_split`` (default: train + val + test of the
fold), sorted by subject ID, with the columns ``eid`` (string), ``split`` (``train``/``val``/``test``),
``fold`` (int32), ``embedding`` (list<float32>, the pooled subject vector) and, unless
``include_per_modality=False``, ``embedding_<modality>`` (list<float32>, mean over the modality's present
tokens) for each modality the model has tokens for (one left out with ``drop_modalities`` has no column). The
parquet key-value metadata records the variant (``mot``/``dense``), the layer, the checkpoint, the data and
splits fingerprints, the model's modality order, the embedding size and the mot-neuro version
(:func:`read_embeddings` decodes it).

Memory stays flat in the number of subjects: batches go to a per-rank part file
(``<output>.part-rank<r>.parquet.tmp``) whenever ``buffer_rows`` rows are pending, and Lightning must not keep
the predictions (``return_predictions=False``, checked). At the end rank 0 merges the parts by subject ID (not
by position; under DDP the sampler's padding repeats are skipped at write time), refuses an ID seen twice, and
renames the finished file into place: a reader sees the previous file or the complete new one. A failed
predict leaves neither a new output nor part files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter

from mot_neuro.data.datamodule import SPLIT_CODES, RowBatches

FORMAT = "mot-neuro-embeddings"
FORMAT_VERSION = 1
BUFFER_ROWS = 4096
"""Rows a writer holds before appending them to its part file as one row group."""
MERGE_CHUNK_ROWS = 65536
"""Rows the merge holds in memory at once."""

SPLIT_NAMES = np.array(sorted(SPLIT_CODES, key=SPLIT_CODES.get))  # code -> name
EMBEDDING_TYPE = pa.list_(pa.float32())
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
# stored as JSON (numbers, null, lists) and decoded by read_embeddings; every other value is a plain string
_JSON_METADATA = ("format_version", "layer", "n_layers", "modalities", "embedding_dim")


def part_path(output: str | os.PathLike, rank: int) -> Path:
    """The part file rank ``rank`` writes while predicting into ``output``."""
    return Path(f"{output}.part-rank{rank}.parquet.tmp")


def _version() -> str:
    try:
        return importlib.metadata.version("mot-neuro")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _encode_metadata(metadata: Mapping[str, object]) -> dict[bytes, bytes]:
    encoded = {}
    for key, value in metadata.items():
        text = json.dumps(value) if key in _JSON_METADATA else str(value)
        encoded[str(key).encode()] = text.encode()
    return encoded


def _decode_metadata(raw: Mapping[bytes, bytes] | None) -> dict:
    decoded = {}
    for key, value in (raw or {}).items():
        name, text = key.decode(), value.decode()
        if name.startswith("ARROW:") or name == "pandas":  # pyarrow's and pandas' own bookkeeping
            continue
        decoded[name] = json.loads(text) if name in _JSON_METADATA else text
    return decoded


def _list_column(values: np.ndarray) -> pa.ListArray:
    """``[n, d]`` float32 -> list<float32> without a Python loop."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    n, d = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)), type=EMBEDDING_TYPE)


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
        out_schema = schema.with_metadata(_encode_metadata(metadata))
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


class EmbeddingWriter(BasePredictionWriter):
    """Writes every predict batch's subject embeddings to ``output`` (parquet); see the module docstring.

    Args:
        output: the parquet file to write (replaced atomically at the end of predict).
        layer: encoder layer the embeddings come from: ``None`` = the final output; ``k`` = block ``k``
            (0-based; negative counts from the end). Sets the module's ``embed_layer`` during predict.
        metadata: extra string entries for the file's metadata (e.g. the experiment or config file).
        include_per_modality: also write one ``embedding_<modality>`` column per modality.
        buffer_rows: rows held before they are appended to the part file as one row group.
    """

    def __init__(
        self,
        output: str | Path,
        *,
        layer: int | None = None,
        metadata: Mapping[str, str] | None = None,
        include_per_modality: bool = True,
        buffer_rows: int = BUFFER_ROWS,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.layer = layer
        self.metadata = {str(k): str(v) for k, v in dict(metadata or {}).items()}
        clash = sorted(set(self.metadata) & set(RESERVED_METADATA))
        if clash:
            raise ValueError(f"metadata keys {clash} are written by EmbeddingWriter itself; rename them")
        if isinstance(layer, bool) or not (layer is None or isinstance(layer, int)):
            raise ValueError(f"layer must be None (final output) or an integer, got {layer!r}")
        self.include_per_modality = include_per_modality
        if buffer_rows < 1:
            raise ValueError(f"buffer_rows must be >= 1, got {buffer_rows}")
        self.buffer_rows = int(buffer_rows)
        self._reset()

    def _reset(self) -> None:
        self._writer: pq.ParquetWriter | None = None
        self._part: Path | None = None
        self._buffer: list[pa.RecordBatch] = []
        self.buffered_rows = 0  # rows waiting in memory
        self.rows_written = 0  # rows this rank appended to its part file
        self._subject_ids: np.ndarray | None = None
        self._file_metadata: dict = {}
        self._previous_layer = None
        self._module: pl.LightningModule | None = None

    # ------------------------------------------------------------------ Lightning hooks
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        if trainer.predict_loop.return_predictions:
            raise ValueError(
                "EmbeddingWriter needs trainer.predict(..., return_predictions=False): otherwise Lightning keeps"
                " every batch's outputs in memory"
            )
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "cohort"):
            raise ValueError(
                "EmbeddingWriter takes subject IDs from the cohort of a NeuroOmicsDataModule: call"
                " trainer.predict(model, datamodule=..., return_predictions=False)"
            )
        n_layers = pl_module.encoder.cfg.n_layers
        if self.layer is not None and not -n_layers <= self.layer < n_layers:
            raise ValueError(f"layer={self.layer} does not exist: the model has {n_layers} layers (0..{n_layers - 1})")
        self._subject_ids = datamodule.cohort.subject_ids  # built once: the property makes a new array per call
        self._fold = int(datamodule.hparams.fold)
        self._dim = int(pl_module.encoder.cfg.dim)
        self._modalities = list(pl_module.active) if self.include_per_modality else []
        fields = [
            pa.field("eid", pa.string()),
            pa.field("split", pa.string()),
            pa.field("fold", pa.int32()),
            pa.field("embedding", EMBEDDING_TYPE),
        ]
        fields += [pa.field(f"embedding_{name}", EMBEDDING_TYPE) for name in self._modalities]
        self._schema = pa.schema(fields)
        model_inputs = getattr(datamodule, "model_inputs", None) or {}
        splits = getattr(datamodule, "splits", None)
        self._file_metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "variant": "dense" if not pl_module.hparams.untie else "mot",
            "layer": self.layer,
            "n_layers": n_layers,
            "checkpoint": trainer.ckpt_path or "",
            "config_fingerprint": model_inputs.get("fingerprint") or "",
            "splits_fingerprint": splits.fingerprint() if splits is not None else "",
            "predict_split": getattr(datamodule.hparams, "predict_split", ""),
            "modalities": list(pl_module.encoder.cfg.modality_names),
            "embedding_dim": self._dim,
            "mot_neuro_version": _version(),
            **self.metadata,
        }
        # the layer reaches predict_step through the module, restored when predict ends
        self._module = pl_module
        self._previous_layer = getattr(pl_module, "embed_layer", None)
        pl_module.embed_layer = self.layer
        self._part = part_path(self.output, trainer.global_rank)
        self._part.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._part, self._schema)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if self._writer is None:
            raise RuntimeError("EmbeddingWriter: on_predict_start did not run before the first batch")
        if self._is_padding(trainer, batch_idx, dataloader_idx):
            return
        if "split" not in batch:
            raise ValueError("the predict batches carry no 'split' (use NeuroOmicsDataModule's predict_dataloader)")
        rows = batch["row"].cpu().numpy()
        codes = batch["split"].cpu().numpy().astype(np.int64)
        if (codes < 0).any():
            raise ValueError(f"{int((codes < 0).sum())} predicted row(s) belong to no split of the fold")
        pooled = prediction["pooled"].detach().float().cpu().numpy()
        if pooled.shape != (len(rows), self._dim):
            raise ValueError(f"pooled embeddings have shape {pooled.shape}, expected ({len(rows)}, {self._dim})")
        columns = [
            pa.array(self._subject_ids[rows], type=pa.string()),
            pa.array(SPLIT_NAMES[codes], type=pa.string()),
            pa.array(np.full(len(rows), self._fold, dtype=np.int32)),
            _list_column(pooled),
        ]
        for name in self._modalities:
            columns.append(_list_column(prediction["per_modality"][name].detach().float().cpu().numpy()))
        self._buffer.append(pa.RecordBatch.from_arrays(columns, schema=self._schema))
        self.buffered_rows += len(rows)
        if self.buffered_rows >= self.buffer_rows:
            self._flush()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        self._writer.close()
        self._writer = None
        trainer.strategy.barrier("embedding_parts_written")
        error = None
        if trainer.is_global_zero:
            parts = [part_path(self.output, rank) for rank in range(trainer.world_size)]
            try:
                merge_parts(parts, self.output, self._file_metadata)
            except Exception as exc:  # every rank must hear of it, or the others would wait forever
                error = exc
            else:
                for part in parts:
                    part.unlink(missing_ok=True)
                # parts of an earlier run killed before it could clean up (e.g. more ranks than now)
                for stale in self.output.parent.glob(f"{self.output.name}.part-rank*.parquet.tmp"):
                    stale.unlink(missing_ok=True)
        message = trainer.strategy.broadcast(None if error is None else f"{type(error).__name__}: {error}", src=0)
        self._restore_layer()
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(f"merging the embedding parts failed on rank 0: {message}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # a failed predict leaves no part behind; the output is only ever replaced by a finished merge
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # the original exception is the one to report
                pass
            self._writer = None
        if self._part is not None:
            self._part.unlink(missing_ok=True)
        self._buffer.clear()
        self.buffered_rows = 0
        self._restore_layer()

    # ------------------------------------------------------------------ helpers
    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self._schema))
            self.rows_written += self.buffered_rows
        self._buffer.clear()
        self.buffered_rows = 0

    def _restore_layer(self) -> None:
        if self._module is not None:
            self._module.embed_layer = self._previous_layer
            self._module = None

    @staticmethod
    def _is_padding(trainer: pl.Trainer, batch_idx: int, dataloader_idx: int) -> bool:
        if trainer.world_size == 1:
            return False
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, RowBatches):
            return False  # other samplers: a repeated subject is caught by the merge
        return sampler.is_repeat(batch_idx, trainer.global_rank, trainer.world_size)


def read_embeddings(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The embeddings table (list columns as arrays of float32) and its metadata, decoded.

    ``np.stack(table["embedding"])`` gives the ``[subjects, dim]`` matrix.
    """
    table = pq.read_table(path)
    metadata = _decode_metadata(table.schema.metadata)
    return table.replace_schema_metadata(None).to_pandas(), metadata


__all__ = [
    "EmbeddingWriter",
    "merge_parts",
    "part_path",
    "read_embeddings",
]
