"""BatchLoader and splits: every row once per epoch, reproducible order, correct shares."""

from __future__ import annotations

from pathlib import Path

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


def resident_kib(array: np.ndarray) -> int:
    """This process's resident KiB of the mapping that holds ``array``'s data (``/proc/self/smaps``)."""
    address, inside = array.ctypes.data, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and not head[0].endswith(":"):  # a mapping's header: "start-end perms offset dev inode path"
            start, end = (int(x, 16) for x in head[0].split("-"))
            inside = start <= address < end
        elif inside and head[0] == "Rss:":
            return int(head[1])
    raise AssertionError(f"no mapping holds address {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_release_pages_drops_mapped_pages_and_keeps_batches(small_store: ColumnStore) -> None:
    kept = ColumnStore(small_store.directory)
    released = ColumnStore(small_store.directory, release_pages=True)
    assert released.releases_pages
    assert not ColumnStore(small_store.directory, mmap=False, release_pages=True).releases_pages  # nothing mapped
    # validation on open read every page: mapped still without release, dropped after each chunk with it
    assert resident_kib(kept.column("cat_1")) > 0 and resident_kib(released.column("cat_1")) == 0
    index = np.sort(np.random.default_rng(0).choice(len(kept), 777, replace=False))
    kept.take(index), released.take(index)
    for name in [*kept.schema.sparse_names, *kept.schema.dense, kept.schema.domain_field]:
        assert resident_kib(kept.column(name)) > 0 and resident_kib(released.column(name)) == 0, name
    released.columns["cat_1"][:10].sum()  # a read outside take maps pages again, release_pages drops them
    assert resident_kib(released.column("cat_1")) > 0
    released.release_pages()
    assert resident_kib(released.column("cat_1")) == 0
    # a whole epoch: the same batches with and without releasing
    idx = np.arange(len(kept))
    loaders = [BatchLoader(store, idx, batch_size=1000, shuffle=True, seed=1) for store in (kept, released)]
    for x, y in zip(*loaders, strict=True):
        for name in ("sparse", "dense", "domain", "labels"):
            assert bool((getattr(x, name) == getattr(y, name)).all()), name
