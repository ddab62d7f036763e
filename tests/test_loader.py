"""BatchLoader and splits: every row once per epoch, reproducible order, correct shares."""

from __future__ import annotations

import numpy as np
import pytest

from mdrec.data.loader import BatchLoader
from mdrec.data.schema import Schema, SparseField
from mdrec.data.splits import PredefinedSplit, RandomSplit, StratifiedSplit, TemporalSplit
from mdrec.data.store import ColumnStore, write_store


@pytest.fixture(scope="module")
def id_store(tmp_path_factory: pytest.TempPathFactory) -> ColumnStore:
    """10,007 rows whose only sparse field is the row id + 1, so a batch tells which rows it holds."""
    n = 10_007
    schema = Schema("ids", (SparseField("row", n + 1),), ("x",), "domain", ("a", "b"), ("click",))
    cols = {
        "row": np.arange(1, n + 1),
        "x": np.zeros(n),
        "domain": np.arange(n) % 2,
        "click": np.arange(n) % 2,
    }
    directory = tmp_path_factory.mktemp("ids") / "store"
    write_store(directory, schema, cols)
    return ColumnStore(directory)


def epoch_rows(loader: BatchLoader) -> np.ndarray:
    """Row indices served in one epoch, in order."""
    return np.concatenate([batch.sparse[:, 0].numpy() - 1 for batch in loader])


def test_every_row_exactly_once_per_epoch(id_store: ColumnStore) -> None:
    idx = np.arange(0, len(id_store), 3)  # an arbitrary split
    loader = BatchLoader(id_store, idx, batch_size=1000, shuffle=True, seed=7)
    assert len(loader) == -(-len(idx) // 1000)
    sizes = [b.size for b in loader]
    assert sum(sizes) == len(idx) and sizes[-1] == len(idx) % 1000
    served = epoch_rows(loader)
    assert np.array_equal(np.sort(served), idx)


def test_same_seed_same_order_new_epoch_new_order(small_store: ColumnStore) -> None:
    idx = np.arange(len(small_store))
    a = BatchLoader(small_store, idx, batch_size=4096, shuffle=True, seed=3)
    b = BatchLoader(small_store, idx, batch_size=4096, shuffle=True, seed=3)
    first_a = [x.labels.sum().item() for x in a]
    assert first_a == [x.labels.sum().item() for x in b]
    assert np.array_equal(a.sampler.order(), b.sampler.order())
    epoch0 = a.sampler.order().copy()
    a.sampler.set_epoch(1)
    assert not np.array_equal(epoch0, a.sampler.order())
    a.sampler.set_epoch(0)  # a resumed run sees the same order again
    assert np.array_equal(epoch0, a.sampler.order())
    c = BatchLoader(small_store, idx, batch_size=4096, shuffle=True, seed=4)
    assert not np.array_equal(epoch0, c.sampler.order())


def test_eval_loader_keeps_order_and_drop_last(id_store: ColumnStore) -> None:
    idx = np.arange(100, 1100)
    loader = BatchLoader(id_store, idx, batch_size=300, shuffle=False)
    assert np.array_equal(epoch_rows(loader), idx)
    assert len(BatchLoader(id_store, idx, batch_size=300, shuffle=True, drop_last=True)) == 3
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        BatchLoader(id_store, idx, batch_size=0, shuffle=False)


def _check_partition(splits: dict[str, np.ndarray], n: int) -> None:
    assert set(splits) == {"train", "val", "test"}
    allrows = np.concatenate(list(splits.values()))
    assert np.array_equal(np.sort(allrows), np.arange(n))  # a partition: nothing lost, nothing twice


def test_random_split(small_store: ColumnStore) -> None:
    splits = RandomSplit((0.8, 0.1, 0.1), seed=0)(small_store)
    _check_partition(splits, len(small_store))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [16000, 2000, 2000]
    assert np.array_equal(splits["val"], RandomSplit((0.8, 0.1, 0.1), seed=0)(small_store)["val"])


def test_stratified_split_keeps_shares_per_domain(small_store: ColumnStore) -> None:
    splits = StratifiedSplit((0.6, 0.2, 0.2), seed=1)(small_store)
    _check_partition(splits, len(small_store))
    domain = np.asarray(small_store.column("domain"))
    total = np.bincount(domain)
    for name, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        per_domain = np.bincount(domain[splits[name]], minlength=len(total))
        assert np.all(np.abs(per_domain - share * total) <= 1)


def test_temporal_split_has_no_look_ahead(small_store: ColumnStore) -> None:
    splits = TemporalSplit((0.7, 0.15, 0.15))(small_store)
    _check_partition(splits, len(small_store))
    t = np.asarray(small_store.column("time"))
    assert t[splits["train"]].max() < t[splits["val"]].min() <= t[splits["val"]].max() < t[splits["test"]].min()


def test_split_errors(small_store: ColumnStore) -> None:
    with pytest.raises(ValueError, match=r"fractions \[0.8, 0.3, 0.1\] must be three non-negative"):
        RandomSplit((0.8, 0.3, 0.1))(small_store)
    with pytest.raises(ValueError, match=r"left split\(s\) \['val'\] empty"):
        RandomSplit((0.9, 0.0, 0.1))(small_store)
    with pytest.raises(ValueError, match="came without its own split"):
        PredefinedSplit()(small_store)


def test_in_ram_and_memory_mapped_batches_are_identical(small_store: ColumnStore) -> None:
    in_ram = ColumnStore(small_store.directory, mmap=False)
    index = np.sort(np.random.default_rng(0).choice(len(small_store), 777, replace=False))
    a, b = small_store.take(index), in_ram.take(index)
    for name in ("sparse", "dense", "domain", "labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and bool((x == y).all()), name
