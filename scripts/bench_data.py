"""Batch-assembly throughput: mdrec's BatchLoader against a per-row Dataset + DataLoader, in the same run.

Prints rows/s for a full shuffled epoch of ``BatchLoader`` (memory-mapped and in-RAM columns) and for a
bounded number of batches of the reference, a ``torch.utils.data.Dataset`` whose ``__getitem__`` returns one
row as a dict of tensors, batched by a standard ``DataLoader`` with default collate. The reference reads
row-major copies of the same columns (one slice per tensor per row), the generous form of that design.

Targets (docs/architecture.md, Performance principles): BatchLoader >= 20x the reference and >= 2M rows/s.

Usage::

    python scripts/bench_data.py                       # 2M rows, B = 4096, 20 sparse + 5 dense fields
    python scripts/bench_data.py --rows 500000 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


def rows_per_s(batches: Callable[[], Iterable[object]], num_batches: int, rows: int, repeats: int) -> float:
    """Median rows/s over ``repeats`` timed passes of ``num_batches`` batches holding ``rows`` rows in all.

    One untimed pass of the same length comes first (page cache, allocator, worker-free DataLoader set-up).
    """
    rates = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        for _ in itertools.islice(batches(), num_batches):
            pass
        if r > 0:
            rates.append(rows / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per method (median reported)")
    parser.add_argument("--ref-batches", type=int, default=20, help="batches timed per pass of the reference")
    args = parser.parse_args()
    dm = bench_datamodule(args)
    b = args.batch_size
    default = "mmap" if should_mmap(dm.prepared_dir) else "in-RAM"  # what MultiDomainDataModule picks here
    stores = {
        "mmap": ColumnStore(dm.prepared_dir, validate=False),
        "in-RAM": ColumnStore(dm.prepared_dir, mmap=False, validate=False),
    }
    rows = np.arange(args.rows, dtype=np.int64)
    results: dict[str, float] = {}
    for name, store in stores.items():
        loader = BatchLoader(store, rows, batch_size=b, shuffle=True, seed=0)
        rate = rows_per_s(lambda ld=loader: ld, len(loader), len(rows), args.repeats)
        results[f"BatchLoader ({name}, full epoch)"] = rate
    reference = DataLoader(RowDataset(stores["in-RAM"]), batch_size=b, shuffle=True)
    ref_batches = min(args.ref_batches, len(reference))
    ref_name = f"per-row Dataset + DataLoader ({ref_batches} batches)"
    ref_rows = min(ref_batches * b, len(rows))
    results[ref_name] = rows_per_s(lambda: reference, ref_batches, ref_rows, args.repeats)

    print(
        f"\n{args.rows:,} rows, B = {b}, {args.fields} sparse + {args.dense} dense fields, "
        f"median of {args.repeats} passes\n"
    )
    print(f"{'method':<48} {'rows/s':>14} {'vs reference':>13}")
    for name, rate in results.items():
        print(f"{name:<48} {rate:>14,.0f} {rate / results[ref_name]:>12.1f}x")
    framework = results[f"BatchLoader ({default}, full epoch)"]
    ratio = framework / results[ref_name]
    mmap_share = results["BatchLoader (mmap, full epoch)"] / results["BatchLoader (in-RAM, full epoch)"]
    print(f"\nmmap / in-RAM: {mmap_share:.2f}; the data module's default here: {default} (judged below)")
    verdict = {True: "PASS", False: "FAIL"}
    print(f"target >= {TARGET_RATIO:.0f}x the reference: {verdict[ratio >= TARGET_RATIO]} ({ratio:.1f}x)")
    fast = framework >= TARGET_ROWS_PER_S
    print(f"target >= {TARGET_ROWS_PER_S:,.0f} rows/s: {verdict[fast]} ({framework:,.0f})")


if __name__ == "__main__":
    main()
