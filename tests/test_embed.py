"""Per-subject embeddings to parquet (mot_neuro.embed) through the real pipeline on the demo cohort."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mot_neuro.data.datamodule import SPLIT_CODES, RowBatches
from mot_neuro.data.splits import Splits
from mot_neuro.embed import (
    EMBEDDING_TYPE,
    EmbeddingWriter,
    merge_parts,
    part_path,
    read_embeddings,
)
from mot_neuro.model import EncoderConfig, ModalitySpec, NeuroOmicsEncoder


# ---------------------------------------------------------------------------------------------- encoder layers
def _encoder(n_layers: int, norm_placement: str = "pre", seed: int = 0) -> NeuroOmicsEncoder:
    torch.manual_seed(seed)
    specs = [ModalitySpec("gene", n_tokens=5, n_features=2), ModalitySpec("brain", n_tokens=4, n_features=3)]
    cfg = EncoderConfig(modalities=specs, dim=16, n_layers=n_layers, n_heads=2, norm_placement=norm_placement)
    return NeuroOmicsEncoder(cfg).eval()


def _batch(batch: int = 5) -> dict:
    g = torch.Generator().manual_seed(3)
    values = {"gene": torch.randn(batch, 5, 2, generator=g), "brain": torch.randn(batch, 4, 3, generator=g)}
    present = {name: torch.rand(v.shape[:2], generator=g) > 0.25 for name, v in values.items()}
    return {"values": values, "present": present}


def test_encoder_layer_option():
    encoder, batch = _encoder(3), _batch()
    with torch.no_grad():
        final = encoder(batch)
        for same in (encoder(batch, layer=-1), encoder(batch, layer=2)):
            torch.testing.assert_close(same.pooled, final.pooled, rtol=0, atol=0)
            torch.testing.assert_close(same.hidden, final.hidden, rtol=0, atol=0)
        first = encoder(batch, layer=0)
        torch.testing.assert_close(encoder(batch, layer=-3).pooled, first.pooled, rtol=0, atol=0)
    assert not torch.allclose(first.pooled, final.pooled)
    assert set(first.per_modality) == {"gene", "brain"}
    assert all(not torch.allclose(first.per_modality[m], final.per_modality[m]) for m in first.per_modality)
    assert not encoder.backbone.blocks[0]._forward_hooks  # the hook is gone afterwards
    for bad in (3, -4, 1.0, True):
        with pytest.raises(ValueError, match="layer must be an integer"):
            encoder(batch, layer=bad)


def test_encoder_layer_equals_a_shallower_encoder():
    """Block k's output is what an encoder made of blocks 0..k computes (no final norm to tell them apart)."""
    deep, shallow = _encoder(3, "output"), _encoder(2, "output", seed=1)
    shallow.load_state_dict(deep.state_dict(), strict=False)  # blocks.2 is not in the shallow model
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(deep(batch, layer=1).hidden, shallow(batch).hidden, rtol=0, atol=0)
        torch.testing.assert_close(deep(batch, layer=-2).per_modality["brain"], shallow(batch).per_modality["brain"])


# ---------------------------------------------------------------------------------------------- pipeline fixture
@pytest.fixture
def demo(fitted_demo, monkeypatch):
    """The demo experiment fitted for one epoch (conftest.py's ``fitted_demo``, shared with test_probe.py and others);
    tests run from its folder, predicting every subject in batches of 32."""
    cli, workdir = fitted_demo.cli, fitted_demo.folder
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cli.datamodule.hparams.predict_split = "all"
    cli.datamodule.hparams.batch_size = 32
    yield cli, workdir
    cli.datamodule.hparams.predict_split = "all"  # as the other users of the shared fit expect it
    cli.datamodule.hparams.batch_size = fitted_demo.batch_size


def _predict(cli, *callbacks, **kwargs):
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, callbacks=list(callbacks), enable_progress_bar=False
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # whole-batch sampler
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        return trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False, **kwargs), trainer


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp")) + sorted(p.name for p in folder.glob(".*merge-*"))


@pytest.mark.slow  # the fitted demo experiment
def test_embeddings_one_row_per_subject(demo):
    cli, workdir = demo
    out = workdir / "emb" / "embeddings.parquet"
    result, trainer = _predict(cli, EmbeddingWriter(out, metadata={"experiment": "demo"}))
    assert result is None and trainer.predict_loop.predictions == []  # Lightning kept nothing

    table, meta = read_embeddings(out)
    dm = cli.datamodule
    fold = Splits.load(workdir / "outputs" / "demo_splits.json").fold(0)
    expected_split = {sid: part for part in ("train", "val", "test") for sid in fold[part]}
    rows = np.sort(np.concatenate([dm.rows[s] for s in ("train", "val", "test")]))
    assert len(table) == len(rows) == len(expected_split)
    assert list(table["eid"]) == sorted(dm.cohort.subject_ids[rows].tolist())  # exactly those IDs, sorted
    assert dict(zip(table["eid"], table["split"], strict=True)) == expected_split
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table["fold"] == 0).all()
    dim = cli.model.encoder_config.dim
    modalities = list(cli.model.encoder.cfg.modality_names)
    assert list(table.columns) == ["eid", "split", "fold", "embedding", *[f"embedding_{m}" for m in modalities]]
    for column in ["embedding", *[f"embedding_{m}" for m in modalities]]:
        assert {len(v) for v in table[column]} == {dim}
        assert np.stack(table[column]).dtype == np.float32
    assert pq.read_schema(out).field("embedding").type == EMBEDDING_TYPE

    assert meta["format"] == "mot-neuro-embeddings"
    assert meta["variant"] == "mot" and meta["layer"] is None and meta["n_layers"] == cli.model.encoder_config.n_layers
    assert meta["checkpoint"] == ""  # the model in memory, not loaded from a checkpoint
    assert meta["config_fingerprint"] == dm.model_inputs.fingerprint
    assert meta["splits_fingerprint"] == dm.splits.fingerprint()
    assert meta["modalities"] == modalities and meta["embedding_dim"] == dim
    assert meta["predict_split"] == "all" and meta["experiment"] == "demo"
    assert meta["mot_neuro_version"]
    assert _leftovers(workdir) == []
    assert not hasattr(cli.model, "embed_layer") or cli.model.embed_layer is None

    # the values are the encoder's, row by row (looked up by ID, not by position)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["split"].dtype == torch.int8
    cli.model.eval()
    with torch.no_grad():
        direct = cli.model.encoder(batch)
    by_id = table.set_index("eid")
    for i in (0, 5, len(batch["row"]) - 1):
        eid = dm.cohort.subject_ids[int(batch["row"][i])]
        torch.testing.assert_close(torch.from_numpy(by_id.loc[eid, "embedding"]), direct.pooled[i])
        torch.testing.assert_close(torch.from_numpy(by_id.loc[eid, "embedding_brain"]), direct.per_modality["brain"][i])
        code = int(batch["split"][i])
        assert by_id.loc[eid, "split"] == {v: k for k, v in SPLIT_CODES.items()}[code] == expected_split[eid]


@pytest.mark.slow  # the fitted demo experiment
def test_predict_split_and_layer(demo):
    cli, workdir = demo
    final, first = workdir / "final.parquet", workdir / "layer0.parquet"
    _predict(cli, EmbeddingWriter(final, include_per_modality=False))
    _predict(cli, EmbeddingWriter(first, layer=0, include_per_modality=False))
    a, meta_a = read_embeddings(final)
    b, meta_b = read_embeddings(first)
    assert list(a.columns) == list(b.columns) == ["eid", "split", "fold", "embedding"]
    assert list(a["eid"]) == list(b["eid"])
    assert meta_a["layer"] is None and meta_b["layer"] == 0
    assert not np.allclose(np.stack(a["embedding"]), np.stack(b["embedding"]))

    batch = next(iter(cli.datamodule.predict_dataloader()))
    cli.model.eval()
    with torch.no_grad():
        direct = cli.model.encoder(batch, layer=0).pooled
    eid = cli.datamodule.cohort.subject_ids[int(batch["row"][1])]
    torch.testing.assert_close(torch.from_numpy(b.set_index("eid").loc[eid, "embedding"]), direct[1])

    cli.datamodule.hparams.predict_split = "test"
    test_only = workdir / "test.parquet"
    _predict(cli, EmbeddingWriter(test_only))
    table, meta = read_embeddings(test_only)
    assert set(table["split"]) == {"test"} and meta["predict_split"] == "test"
    assert len(table) == len(cli.datamodule.rows["test"])
    cli.datamodule.hparams.predict_split = "everything"
    with pytest.raises(Exception, match="predict_split must be one of"):
        cli.datamodule.predict_dataloader()
    cli.datamodule.hparams.predict_split = "all"
    with pytest.raises(ValueError, match="layer=5 does not exist"):
        _predict(cli, EmbeddingWriter(workdir / "bad.parquet", layer=5))
    assert _leftovers(workdir) == []


class _FailOnBatch(Callback):
    def __init__(self, batch_idx: int):
        self.batch_idx = batch_idx

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch_idx:
            raise RuntimeError("simulated failure")


@pytest.mark.slow  # the fitted demo experiment
def test_failed_predict_leaves_old_output_and_no_parts(demo):
    cli, workdir = demo
    out = workdir / "failing" / "embeddings.parquet"
    out.parent.mkdir()
    out.write_bytes(b"an older embeddings file")
    # buffer of one row: the part file really has content when the failure comes
    writer = EmbeddingWriter(out, layer=0, buffer_rows=1)
    with pytest.raises(RuntimeError, match="simulated failure"):
        _predict(cli, writer, _FailOnBatch(1))
    assert writer.rows_written > 0
    assert out.read_bytes() == b"an older embeddings file"
    assert sorted(p.name for p in out.parent.iterdir()) == ["embeddings.parquet"]
    assert getattr(cli.model, "embed_layer", None) is None  # the layer option does not stick to the model


@pytest.mark.slow  # the fitted demo experiment
def test_return_predictions_must_be_false(demo):
    cli, workdir = demo
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[EmbeddingWriter(workdir / "x.parquet")])
    with pytest.raises(ValueError, match="return_predictions=False"):
        trainer.predict(cli.model, datamodule=cli.datamodule)
    assert not (workdir / "x.parquet").exists() and _leftovers(workdir) == []


class _WatchBuffer(Callback):
    def __init__(self, writer: EmbeddingWriter):
        self.writer, self.buffered, self.written = writer, [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.buffered.append(self.writer.buffered_rows)
        self.written.append(self.writer.rows_written)


@pytest.mark.slow  # the fitted demo experiment
def test_writer_memory_is_bounded(demo):
    cli, workdir = demo
    cli.datamodule.hparams.batch_size = 16
    writer = EmbeddingWriter(workdir / "bounded.parquet", buffer_rows=40)
    watch = _WatchBuffer(writer)
    _predict(cli, writer, watch)  # the writer's hook runs first, then the watcher's
    assert len(watch.buffered) >= 10
    assert max(watch.buffered) < 40  # never more than one buffer's worth of rows in memory
    assert watch.written[-1] > 0 and watch.written == sorted(watch.written)
    metadata = pq.read_metadata(workdir / "bounded.parquet")
    assert metadata.num_rows == len(read_embeddings(workdir / "bounded.parquet")[0])


# ---------------------------------------------------------------------------------------------- merging
def _part(path: Path, ids: list[str], values: list[float]) -> Path:
    def lists(scale: float):
        return pa.array([[v * scale, -v] for v in values], type=EMBEDDING_TYPE)

    table = pa.table(
        {
            "eid": pa.array(ids, type=pa.string()),
            "split": pa.array(["train"] * len(ids)),
            "fold": pa.array([0] * len(ids), type=pa.int32()),
            "embedding": lists(1.0),
            "embedding_gene": lists(10.0),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    return path


def test_merge_parts_by_subject_id(tmp_path):
    # two ranks with interleaved IDs; each subject's values encode its ID so a positional mix-up shows
    rank0 = _part(part_path(tmp_path / "e.parquet", 0), ["s05", "s01", "s09", "s03"], [5, 1, 9, 3])
    rank1 = _part(part_path(tmp_path / "e.parquet", 1), ["s02", "s08", "s04", "s06", "s07"], [2, 8, 4, 6, 7])
    for chunk_rows in (1000, 3, 1):  # one chunk in memory, and the scratch-file path
        out = tmp_path / f"merged-{chunk_rows}.parquet"
        assert (
            merge_parts([rank0, rank1], out, {"variant": "dense", "layer": -1, "note": "x"}, chunk_rows=chunk_rows) == 9
        )
        table, meta = read_embeddings(out)
        assert list(table["eid"]) == [f"s0{i}" for i in range(1, 10)]
        for eid, emb, gene in zip(table["eid"], table["embedding"], table["embedding_gene"], strict=True):
            v = float(eid[1:])
            np.testing.assert_array_equal(emb, np.array([v, -v], dtype=np.float32))
            np.testing.assert_array_equal(gene, np.array([10 * v, -v], dtype=np.float32))
        assert meta == {"variant": "dense", "layer": -1, "note": "x"}
    assert rank0.exists() and rank1.exists()  # the caller removes the parts
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left


def test_merge_refuses_repeated_ids(tmp_path):
    out = tmp_path / "e.parquet"
    out.write_bytes(b"previous")
    rank0 = _part(tmp_path / "a.parquet", ["p1", "p2", "p3"], [1, 2, 3])
    rank1 = _part(tmp_path / "b.parquet", ["p3", "p4", "p2", "p2"], [3, 4, 2, 2])
    with pytest.raises(ValueError, match=r"2 subject ID\(s\) occur more than once .*3 extra row") as err:
        merge_parts([rank0, rank1], out, {})
    assert "p2" not in str(err.value) and "p3" not in str(err.value)  # counts, never IDs
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet", "e.parquet"]


def test_padding_batches_under_ddp_are_recognised(monkeypatch):
    """RowBatches repeats a few batches so all ranks step equally; skipping those gives each row once."""
    rows = np.arange(0, 230, 3)
    for batch_size, world in ((10, 3), (7, 4), (16, 2), (100, 5)):
        seen = []
        for rank in range(world):
            sampler = RowBatches(rows, batch_size, shuffle=False)
            monkeypatch.setattr(sampler, "_shard", lambda rank=rank, world=world: (rank, world))
            for i, batch in enumerate(sampler):
                if not sampler.is_repeat(i, rank, world):
                    seen.extend(batch)
        assert sorted(seen) == rows.tolist(), (batch_size, world)


class _LeaveGlooTogether(Callback):
    """Barrier, then destroy the process group before the ranks exit (as in test_ddp.py): a rank exiting first
    made another abort in gloo's teardown ("terminate called without an active exception") after all was written."""

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.mark.slow  # three DDP processes on the fitted demo experiment
def test_ddp_ranks_merge_into_one_file(demo):
    """Three CPU processes (gloo): 10 batches over 3 ranks, so the sampler repeats 2; each subject once."""
    cli, workdir = demo
    single, ddp = workdir / "single.parquet", workdir / "ddp.parquet"
    _predict(cli, EmbeddingWriter(single))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=3,
        strategy="ddp_spawn",
        use_distributed_sampler=False,  # as configs/trainer/ddp.yaml: RowBatches shards by rank
        logger=False,
        callbacks=[EmbeddingWriter(ddp), _LeaveGlooTogether()],
        enable_progress_bar=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
        trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    a, meta_a = read_embeddings(single)
    b, meta_b = read_embeddings(ddp)
    assert len(b) == len(a) == len(set(b["eid"]))
    assert list(b["eid"]) == list(a["eid"]) and list(b["split"]) == list(a["split"])
    np.testing.assert_allclose(np.stack(b["embedding"]), np.stack(a["embedding"]), rtol=1e-6, atol=1e-6)
    assert meta_a == meta_b
    assert _leftovers(workdir) == []
