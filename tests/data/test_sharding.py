"""The data side of several processes (DDP): each process trains on its own rows, the processes step together,
evaluation covers every row once, and processes started together prepare the data once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.loader import BatchLoader
from mdrec.data.splits import RandomSplit
from mdrec.data.store import ColumnStore
from mdrec.data.synthetic import SyntheticSource


def shard_rows(store: ColumnStore, indices: np.ndarray, batch_size: int, shuffle: bool, world_size: int) -> list:
    """Per rank, the row indices of each of its batches this epoch (``[rank][batch] -> int64 [b]``)."""
    shards = []
    for rank in range(world_size):
        loader = BatchLoader(store, indices, batch_size, shuffle, seed=5, rank=rank, world_size=world_size)
        order = loader.sampler.order()
        shards.append([order[start:stop] for start, stop in zip(*loader.bounds(), strict=True)])
    return shards


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_shards_are_disjoint_and_step_together(small_store: ColumnStore, world_size: int) -> None:
    idx = np.arange(0, len(small_store), 3)  # 6,667 rows: the last global batch has a remainder for 2 and 3 ranks
    shards = shard_rows(small_store, idx, 100, True, world_size)
    assert len({len(batches) for batches in shards}) == 1  # the same number of steps on every process
    steps = [np.concatenate(parts) for parts in zip(*shards, strict=True)]  # [step] all processes' rows
    (whole,) = shard_rows(small_store, idx, 100 * world_size, True, 1)
    for step, batch in zip(steps, whole, strict=True):
        assert np.array_equal(step, batch[: len(step)])  # = one process's batch of world_size x 100 rows
    served = np.concatenate(steps)
    assert len(np.unique(served)) == len(served)  # no row twice
    assert len(idx) - world_size < len(served) <= len(idx)  # fewer than world_size rows sit the epoch out


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_shards_hold_every_row_once_in_order(small_store: ColumnStore, world_size: int) -> None:
    idx = np.arange(5, 2006)  # 2,001 rows
    shards = shard_rows(small_store, idx, 300, False, world_size)
    assert np.array_equal(np.concatenate([np.concatenate(batches) for batches in shards]), idx)  # rank order
    with pytest.raises(ValueError, match="2 rows, fewer than the 3 processes"):
        BatchLoader(small_store, idx[:2], 300, shuffle=False, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank must be in 0..world_size-1, got rank=2, world_size=2"):
        BatchLoader(small_store, idx, 300, shuffle=True, rank=2, world_size=2)


def test_processes_started_together_prepare_the_data_once(tmp_path: Path) -> None:
    calls: list[Path] = []

    class SlowSource(SyntheticSource):  # a preparation long enough for the other process to arrive meanwhile
        def prepare(self, directory: Path, raw_dir: Path) -> None:
            calls.append(directory)
            time.sleep(0.3)
            super().prepare(directory, raw_dir)

    modules = [MultiDomainDataModule(SlowSource(num_rows=1000), RandomSplit(), str(tmp_path)) for _ in range(2)]
    threads = [threading.Thread(target=m.prepare_data) for m in modules]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    for m in modules:
        m.setup()
        assert len(m.store) == 1000
