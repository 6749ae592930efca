"""Batches served from preprocessed rows kept in memory equal batches read and preprocessed one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from helpers import Case

from mot_neuro.data.batches import CohortBatches
from mot_neuro.data.datamodule import NeuroOmicsDataModule


def _assert_same(a, b, where: str = "batch") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
        return
    assert a.dtype == b.dtype and a.shape == b.shape, where
    assert torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, equal_nan=True, rtol=0, atol=0)), where


@pytest.fixture
def datamodule(case: Case) -> NeuroOmicsDataModule:
    config = yaml.safe_load(case.data_config().read_text())
    module = NeuroOmicsDataModule(**{k: v for k, v in config.items() if k != "generate_demo"})
    module.setup("fit")
    return module


def _dataset(module: NeuroOmicsDataModule, rows, **kwargs) -> CohortBatches:
    return CohortBatches(
        module.cohort_dir,
        module.preprocessor.state_dict(),
        module.kept,
        module.split_of_row,
        preload_rows=rows,
        **kwargs,
    )


def test_preloaded_batches_equal_batches_read_one_at_a_time(datamodule):
    rows = np.sort(np.concatenate([datamodule.rows["train"], datamodule.rows["val"]]))
    preloaded = _dataset(datamodule, rows)
    per_batch = _dataset(datamodule, None)
    rng = np.random.default_rng(0)
    for size in (1, 7, 32, len(rows)):
        chosen = rng.choice(rows, size=size, replace=False)
        _assert_same(preloaded[chosen.tolist()], per_batch[chosen.tolist()])
    assert preloaded._preloaded is not False and per_batch._preloaded is False
    # the demo cohort has missing values and absent tokens: the comparison covered them
    batch = preloaded[rows.tolist()]
    assert any(bool(m.any()) for m in batch["missing"].values())
    assert any(not bool(p.all()) for p in batch["present"].values())


def test_rows_outside_the_preloaded_ones_are_read(datamodule):
    train, test = datamodule.rows["train"], datamodule.rows["test"]
    preloaded = _dataset(datamodule, train)
    mixed = [int(train[0]), int(test[0])]
    _assert_same(preloaded[mixed], _dataset(datamodule, None)[mixed])


def test_rows_that_do_not_fit_are_read_per_batch(datamodule):
    rows = datamodule.rows["train"]
    too_small = _dataset(datamodule, rows, preload_bytes=1)
    chosen = rows[:5].tolist()
    _assert_same(too_small[chosen], _dataset(datamodule, rows)[chosen])
    assert too_small._preloaded is False


def test_the_datamodule_loaders_preload_their_own_rows(datamodule):
    for stage, loader in (("train", datamodule.train_dataloader()), ("test", datamodule.test_dataloader())):
        np.testing.assert_array_equal(loader.dataset.preload_rows, datamodule.rows[stage])
