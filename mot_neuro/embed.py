"""Per-subject embeddings to parquet: ``mot-neuro embed`` (:func:`embed_main`) and its engine.

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
(:func:`read_embeddings` decodes it). The file format (columns, metadata keys, writing and reading) is defined
in :mod:`mot_neuro.embeddings_format`; its names are re-exported here.

Memory stays flat in the number of subjects: batches go to a per-rank part file
(``<output>.part-rank<r>.parquet.tmp``) whenever ``buffer_rows`` rows are pending, and Lightning must not keep
the predictions (``return_predictions=False``, checked). At the end rank 0 merges the parts by subject ID (not
by position; under DDP the sampler's padding repeats are skipped at write time), refuses an ID seen twice, and
renames the finished file into place: a reader sees the previous file or the complete new one. A failed
predict leaves neither a new output nor part files.

The layer is chosen through the module's ``embed_layer`` attribute, read by its ``predict_step``; making it an
argument of the backbone belongs to the model package and is left for its restructuring.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import warnings
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter

from mot_neuro.data.datamodule import SPLIT_CODES, RowBatches
from mot_neuro.embeddings_format import (
    EMBEDDING_TYPE,
    FORMAT,
    FORMAT_VERSION,
    MERGE_CHUNK_ROWS,
    RESERVED_METADATA,
    list_column,
    merge_parts,
    part_path,
    read_embeddings,
    schema,
    stale_parts,
)
from mot_neuro.experiment import EXPERIMENT_HELP, experiment_overrides, lightning_cli, set_overrides
from mot_neuro.experiment_cli import checkpoint_model_settings

BUFFER_ROWS = 4096
"""Rows a writer holds before appending them to its part file as one row group."""

SPLIT_NAMES = np.array(sorted(SPLIT_CODES, key=SPLIT_CODES.get))  # code -> name


def _version() -> str:
    try:
        return importlib.metadata.version("mot-neuro")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
        self._schema = schema(self._modalities)
        model_inputs = getattr(datamodule, "model_inputs", None)
        splits = getattr(datamodule, "splits", None)
        self._file_metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "variant": _variant(pl_module.encoder_config.untie),
            "layer": self.layer,
            "n_layers": n_layers,
            "checkpoint": trainer.ckpt_path or "",
            "config_fingerprint": model_inputs.fingerprint if model_inputs is not None else "",
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
            list_column(pooled),
        ]
        for name in self._modalities:
            columns.append(list_column(prediction["per_modality"][name].detach().float().cpu().numpy()))
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
                for stale in stale_parts(self.output):
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


def _variant(untie) -> str:
    return "mot" if untie else "dense"


def _state_dict_mismatch(checkpoint: str, settings: dict, model, err: RuntimeError) -> ValueError:
    """One line for weights that do not fit the model built from the config (a checkpoint without settings)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    cfg = model.encoder_config
    built = f"{_variant(cfg.untie)} (untie {list(cfg.untie)}, dim {cfg.dim})"
    saved_encoder = settings.get("encoder") or {}
    saved = (
        f"{_variant(saved_encoder.get('untie'))} (untie {list(saved_encoder.get('untie') or [])},"
        f" dim {saved_encoder.get('dim')})"
        if settings
        else "unknown (it saves no hyper_parameters)"
    )
    return ValueError(
        f"{checkpoint}: its weights do not fit the model of the config: checkpoint's model {saved}, config's model"
        f" {built} ({first[:120]}); pass --model with the config the checkpoint was trained with"
    )


def embed_main(argv: list[str]) -> int:
    """``mot-neuro embed``: per-subject embeddings of a checkpoint to parquet (see ``mot_neuro.embed``)."""
    parser = argparse.ArgumentParser(
        prog="mot-neuro embed",
        description="Write one parquet row per subject: eid, split, fold, the pooled embedding and one per modality."
        " The model's settings (dense or MoT, sizes) come from the checkpoint; the data from the experiment.",
        epilog=EXPERIMENT_HELP,
        allow_abbrev=False,  # an abbreviation must not swallow an experiment override such as --data
    )
    parser.add_argument("--config", required=True, help="the experiment config the checkpoint was trained with")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to embed with")
    parser.add_argument("--output", default="outputs/embeddings.parquet")
    parser.add_argument("--layer", type=int, default=None, help="encoder block (0-based, -1 = last); default: output")
    parser.add_argument("--split", choices=["all", "train", "val", "test"], default="all", help="subjects to embed")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    args, unparsed = parser.parse_known_args(argv)
    overrides = experiment_overrides("embed", unparsed)
    if not Path(args.ckpt_path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.ckpt_path}")
    settings = checkpoint_model_settings(args.ckpt_path)
    # every subject of the split, always: a smoke trainer (fast_dev_run, limit_predict_batches) would write a
    # partial file that probes and analyses then take for the cohort
    whole = ["--trainer.fast_dev_run", "false", "--trainer.limit_predict_batches", "1.0"]
    overrides = [*overrides, *set_overrides(args.set), "--data.predict_split", args.split, "--trainer.logger", "false"]
    overrides += whole
    cli = lightning_cli(["--config", args.config, *overrides], run=False, model_checkpoint=args.ckpt_path)
    writer = EmbeddingWriter(args.output, layer=args.layer, metadata={"config": args.config})
    cli.trainer.callbacks.append(writer)
    with warnings.catch_warnings():
        # whole batches come from the dataset (batch_size=None), so Lightning cannot list indices: not needed
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        try:
            cli.trainer.predict(
                cli.model,
                datamodule=cli.datamodule,
                ckpt_path=args.ckpt_path,
                return_predictions=False,
                weights_only=True,
            )
        except RuntimeError as err:
            if "state_dict" not in str(err):
                raise
            raise _state_dict_mismatch(args.ckpt_path, settings, cli.model, err) from err
    if cli.trainer.global_rank == 0:
        print(
            f"embeddings of {writer.rows_written} subjects (rank 0) written to {args.output}"
            f" ({_variant(cli.model.encoder_config.untie)} model of the checkpoint)"
        )
    return 0


__all__ = [
    "EMBEDDING_TYPE",
    "FORMAT",
    "FORMAT_VERSION",
    "MERGE_CHUNK_ROWS",
    "EmbeddingWriter",
    "embed_main",
    "merge_parts",
    "part_path",
    "read_embeddings",
]
