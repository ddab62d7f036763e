"""Batch-assembly throughput: mdrec's BatchLoader against two DataLoader designs over the same columns, in one run.

Prints rows/s for a full shuffled epoch of ``BatchLoader`` (memory-mapped and in-RAM columns) and of two
``torch.utils.data.DataLoader`` references reading row-major copies of the same columns:

- the strong reference, batched fetch: a ``BatchSampler`` hands the dataset a batch's row indices and
  ``__getitem__`` slices each array once (no per-row work, no collate); the fair baseline for any columnar loader;
- the per-row reference (bounded to ``--ref-batches`` batches per pass): ``__getitem__`` returns one row as a dict of
  tensors, batched by the default collate, the design most recommender libraries ship.

Timing goes through ``torch.utils.benchmark.Timer`` with ``--threads`` torch threads (default 1: on a 2-core machine
that other processes load, two threads made BatchLoader's int32 -> int64 conversion of the sparse ids ~8x slower):
one untimed pass of each method, then ``--repeats`` rounds in which the methods take turns (so a slow phase of a
shared machine hits them alike); the median pass is reported.

Targets (docs/architecture.md, Performance principles): BatchLoader >= 20x the per-row reference and >= 2M rows/s.

Usage::

    python scripts/bench_data.py                       # 2M rows, B = 4096, 20 sparse + 5 dense fields
    python scripts/bench_data.py --rows 500000 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.benchmark import Measurement, Timer
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from mdrec.data.datamodule import MultiDomainDataModule, should_mmap
from mdrec.data.loader import BatchLoader
from mdrec.data.splits import RandomSplit
from mdrec.data.store import ColumnStore
from mdrec.data.synthetic import SyntheticSource

TARGET_RATIO = 20.0
TARGET_ROWS_PER_S = 2e6


def vocab_sizes(num_fields: int) -> list[int]:
    """Vocabulary sizes of ``num_fields`` fields, halving from 100k (the first, the user) down to 2."""
    return [max(2, 100_000 >> i) for i in range(num_fields)]


def bench_source(args: argparse.Namespace) -> SyntheticSource:
    """The benchmark's synthetic data set: ``--rows`` rows of ``--fields`` sparse and ``--dense`` dense fields."""
    return SyntheticSource(num_rows=args.rows, vocab_sizes=vocab_sizes(args.fields), num_dense=args.dense)


def bench_datamodule(args: argparse.Namespace, **options: object) -> MultiDomainDataModule:
    """The benchmark's data set, prepared once under ``args.data_dir`` (cached by its settings); ``options`` go to
    the MultiDomainDataModule (``mmap``, ``release_pages``, ...)."""
    dm = MultiDomainDataModule(
        bench_source(args), RandomSplit(), data_dir=str(args.data_dir), batch_size=args.batch_size, **options
    )
    start = time.perf_counter()
    dm.prepare_data()
    print(f"data: {dm.prepared_dir} ({time.perf_counter() - start:.1f}s to prepare or find)")
    return dm


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The data-set flags shared by the benchmark scripts."""
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of the synthetic data set")
    parser.add_argument("--batch-size", type=int, default=4096, help="B")
    parser.add_argument("--fields", type=int, default=20, help="sparse fields")
    parser.add_argument("--dense", type=int, default=5, help="dense fields")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MDREC_DATA_DIR", Path(__file__).resolve().parents[1] / "data")),
        help="root of prepared data (default: $MDREC_DATA_DIR or the repository's data/)",
    )


class RowDataset(Dataset):
    """The per-row reference: row-major copies of the columns, one row per ``__getitem__``."""

    def __init__(self, store: ColumnStore) -> None:
        s = store.schema
        self.sparse = np.stack([np.asarray(store.columns[n], dtype=np.int64) for n in s.sparse_names], axis=1)
        self.dense = np.stack([np.asarray(store.columns[n]) for n in s.dense], axis=1)
        self.labels = np.stack([np.asarray(store.columns[n]) for n in s.labels], axis=1)
        self.domain = np.asarray(store.columns[s.domain_field], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.domain)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "sparse": torch.from_numpy(self.sparse[i]),
            "dense": torch.from_numpy(self.dense[i]),
            "domain": torch.tensor(self.domain[i]),
            "labels": torch.from_numpy(self.labels[i]),
        }


class BatchedDataset(RowDataset):
    """The strong reference: ``__getitem__`` takes a batch's row indices (from a ``BatchSampler``) and slices each
    row-major array once."""

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        index = np.asarray(rows)
        return {
            "sparse": torch.from_numpy(self.sparse[index]),
            "dense": torch.from_numpy(self.dense[index]),
            "domain": torch.from_numpy(self.domain[index]),
            "labels": torch.from_numpy(self.labels[index]),
        }


def batched_loader(dataset: BatchedDataset, batch_size: int) -> DataLoader:
    """A DataLoader that fetches whole batches: the sampler yields index lists, ``batch_size=None`` turns off
    per-row collation."""
    sampler = BatchSampler(RandomSampler(dataset), batch_size=batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, threads: int, warmup: int = 1
) -> dict[str, Measurement]:
    """Seconds per call of each function, through ``torch.utils.benchmark.Timer`` (``threads`` torch threads while
    timing): ``warmup`` untimed calls each, then ``repeats`` rounds in which the functions take turns, one timed call
    each, in reverse order every other round (so a slow phase of a shared machine hits them alike)."""
    timers = {name: Timer("fn()", globals={"fn": fn}, label=name, num_threads=threads) for name, fn in calls.items()}
    for timer in timers.values():
        for _ in range(warmup):
            timer.timeit(1)
    runs: dict[str, list[Measurement]] = {name: [] for name in calls}
    for r in range(repeats):
        for name in list(timers)[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(timers[name].timeit(1))
    return {name: Measurement.merge(measurements)[0] for name, measurements in runs.items()}


def passes(batches: Iterable[object], num_batches: int) -> Callable[[], None]:
    """A function that draws ``num_batches`` batches from ``batches`` (a loader: a new epoch each call)."""

    def run() -> None:
        for _ in itertools.islice(batches, num_batches):
            pass

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per method (median reported)")
    parser.add_argument("--ref-batches", type=int, default=20, help="batches timed per pass of the per-row reference")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads while timing (1 avoids oversubscription on a shared box)"
    )
    args = parser.parse_args()
    dm = bench_datamodule(args)
    b = args.batch_size
    default = "mmap" if should_mmap(dm.prepared_dir) else "in-RAM"  # what MultiDomainDataModule picks here
    stores = {
        "mmap": ColumnStore(dm.prepared_dir, validate=False),
        "in-RAM": ColumnStore(dm.prepared_dir, mmap=False, validate=False),
    }
    rows = np.arange(args.rows, dtype=np.int64)
    calls: dict[str, Callable[[], None]] = {}
    for name, store in stores.items():
        loader = BatchLoader(store, rows, batch_size=b, shuffle=True, seed=0)
        calls[f"BatchLoader ({name}, full epoch)"] = passes(loader, len(loader))
    batched = batched_loader(BatchedDataset(stores["in-RAM"]), b)
    strong = "BatchSampler + DataLoader (full epoch)"
    calls[strong] = passes(batched, len(batched))
    rows_per_call = dict.fromkeys(calls, len(rows))
    per_row = DataLoader(RowDataset(stores["in-RAM"]), batch_size=b, shuffle=True)
    ref_batches = min(args.ref_batches, len(per_row))
    weak = f"per-row Dataset + DataLoader ({ref_batches} batches)"
    calls[weak] = passes(per_row, ref_batches)
    rows_per_call[weak] = min(ref_batches * b, len(rows))
    seconds = interleaved(calls, args.repeats, args.threads)
    results = {name: rows_per_call[name] / m.median for name, m in seconds.items()}

    print(
        f"\n{args.rows:,} rows, B = {b}, {args.fields} sparse + {args.dense} dense fields, "
        f"median of {args.repeats} passes (torch.utils.benchmark), {args.threads} torch thread(s)\n"
    )
    print(f"{'method':<48} {'rows/s':>14} {'vs per-row':>11} {'vs batched':>11} {'IQR/median':>11}")
    for name, rate in results.items():
        spread = seconds[name].iqr / seconds[name].median
        print(
            f"{name:<48} {rate:>14,.0f} {rate / results[weak]:>10.1f}x {rate / results[strong]:>10.2f}x {spread:>10.0%}"
        )
    framework = results[f"BatchLoader ({default}, full epoch)"]
    ratio = framework / results[weak]
    mmap_share = results["BatchLoader (mmap, full epoch)"] / results["BatchLoader (in-RAM, full epoch)"]
    print(f"\nmmap / in-RAM: {mmap_share:.2f}; the data module's default here: {default} (judged below)")
    print(f"BatchLoader ({default}) / BatchSampler + DataLoader: {framework / results[strong]:.2f}x")
    verdict = {True: "PASS", False: "FAIL"}
    print(f"target >= {TARGET_RATIO:.0f}x the per-row reference: {verdict[ratio >= TARGET_RATIO]} ({ratio:.1f}x)")
    fast = framework >= TARGET_ROWS_PER_S
    print(f"target >= {TARGET_ROWS_PER_S:,.0f} rows/s: {verdict[fast]} ({framework:,.0f})")


if __name__ == "__main__":
    main()
