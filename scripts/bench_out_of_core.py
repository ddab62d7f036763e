"""Out-of-core training: a synthetic set of 20M rows, memory-mapped, trained with peak RSS well below its size.

The data set is bench_data's (20 sparse + 5 dense fields, about 2.6 GB of columns at 20M rows), prepared once
under the data directory (``SyntheticSource.prepare`` writes it chunk by chunk through ``StoreWriter``). Then the
DNN backbone trains through ``Trainer.fit`` (``RankingModule`` + ``MultiDomainDataModule`` with ``mmap=True``, the
trainer of bench_train.py: validation and checkpointing off) for one epoch or ``--steps`` steps, once with the data
module's ``release_pages`` off and once on (alternating, ``--repeats`` times each). Preparation and every training
run happen in a fresh child process, so no run inherits another's memory.

A thread in each child reads ``/proc/self/status`` every 50 ms for the peaks of its resident memory:
RssAnon (the process's own memory: indices, batches, model, allocator), RssFile (mapped file pages: the columns
and the loaded libraries) and their sum; VmHWM, kept by the kernel, is the exact peak of the sum. The columns'
pages count in RssFile as soon as a read touches them, and a shuffled epoch touches all of them: without
``release_pages`` the process's RSS grows to the data's size, although those pages are clean page cache that the
kernel can reclaim under pressure. ``release_pages`` drops each column's pages from the mapping once a batch has
read it; they stay in the page cache (reading them again is a minor fault, no disk read, as long as the page cache
holds them). Its cost is also measured on batch assembly alone, interleaved in one process: steadier than
whole training runs on a shared machine.

Criteria (issue 7): preparation and training with ``release_pages`` keep peak total RSS (VmHWM) <= 0.5 x the
data's size on disk; without it, the memory the process cannot give back (peak RssAnon) stays <= 0.5 x.

Usage::

    python scripts/bench_out_of_core.py                         # 20M rows, one epoch per setting
    python scripts/bench_out_of_core.py --rows 2000000 --steps 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_data import add_data_args, bench_datamodule, bench_source, interleaved, passes
from bench_train import StepTimer, build_net, framework_trainer, optimizer_factory

from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.loader import BatchLoader
from mdrec.data.schema import SCHEMA_FILE
from mdrec.data.splits import RandomSplit
from mdrec.data.store import COLUMNS_DIR, ColumnStore
from mdrec.train.module import RankingModule

MIB = 1 << 20
ASSEMBLY_BLOCK = 20  # batches timed at a time in the batch-assembly comparison
ASSEMBLY_ROUNDS = 12
TARGET_SHARE = 0.5
FIELDS = ("RssAnon", "RssFile", "VmRSS", "VmHWM")


def read_status() -> dict[str, int]:
    """This process's RssAnon, RssFile, VmRSS and VmHWM in bytes (``/proc/self/status``)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) * 1024
    return values


class RssSampler(threading.Thread):
    """Keeps the peaks of RssAnon, RssFile and VmRSS, sampled every ``interval`` seconds, and the final VmHWM."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks = dict.fromkeys(FIELDS, 0)
        self.done = threading.Event()

    def sample(self) -> None:
        for key, value in read_status().items():
            self.peaks[key] = max(self.peaks[key], value)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, int]:
        self.done.set()
        self.join()
        self.sample()
        return self.peaks


class RowTimer(StepTimer):
    """bench_train's StepTimer, also counting the rows of the timed batches (a last, partial batch included)."""

    def __init__(self, warmup: int) -> None:
        super().__init__(warmup)
        self.rows = self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Batch, batch_idx: int) -> None:  # noqa: ANN001
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if batch_idx >= self.warmup:
            self.rows += batch.size
            self.steps += 1


def child_prepare(args: argparse.Namespace) -> dict:
    """Prepare the data set (``--reprepare``: again) or find it prepared; the time and this process's peaks."""
    sampler = RssSampler()
    sampler.start()
    dm = MultiDomainDataModule(bench_source(args), RandomSplit(), data_dir=str(args.data_dir))
    found = (dm.prepared_dir / SCHEMA_FILE).exists()
    if found and args.reprepare:
        shutil.rmtree(dm.prepared_dir)
        found = False
    start = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - start
    return {"prepared": not found, "seconds": seconds, "peaks": sampler.stop(), "prepared_dir": str(dm.prepared_dir)}


def child_train(args: argparse.Namespace) -> dict:
    """``Trainer.fit`` for one epoch (or ``--steps`` after ``--warmup``) with ``release_pages`` as asked."""
    sampler = RssSampler()
    sampler.start()
    torch.set_num_threads(args.threads)
    dm = bench_datamodule(args, mmap=True, release_pages=args.release == "on")
    dm.setup()
    epoch = len(dm.train_dataloader())
    steps = epoch - args.warmup if args.steps is None else args.steps
    module = RankingModule(build_net(dm.schema, args.seed), dm.schema, optimizer_factory())
    timer = RowTimer(args.warmup)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = framework_trainer(args.warmup, steps, timer, out_dir)
        trainer.fit(module, datamodule=dm)
    return {
        "rows_per_s": timer.rows / (timer.end - timer.start),
        "steps": timer.steps + args.warmup,
        "epoch_steps": epoch,
        "train_rows": len(dm.splits["train"]),
        "last_loss": timer.last_loss,
        "peaks": sampler.stop(),
    }


def child_assemble(args: argparse.Namespace) -> dict:
    """Batch assembly alone (``BatchLoader`` over every row, no training): ms per batch with ``release_pages`` off
    and on, in blocks of ``ASSEMBLY_BLOCK`` batches interleaved ``ASSEMBLY_ROUNDS`` times (median of the blocks):
    steadier than whole training runs on a shared machine."""
    dm = bench_datamodule(args, mmap=True)  # prepared already: only its directory is used
    loaders = {}
    for release in ("off", "on"):
        store = ColumnStore(dm.prepared_dir, validate=False, release_pages=release == "on")
        loader = BatchLoader(store, np.arange(len(store)), args.batch_size, shuffle=True, seed=0)
        loaders[release] = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
        next(loaders[release])  # untimed: the first batch maps the columns
    calls = {release: passes(loader, ASSEMBLY_BLOCK) for release, loader in loaders.items()}
    seconds = interleaved(calls, ASSEMBLY_ROUNDS, args.threads, warmup=0)
    return {release: 1e3 * m.median / ASSEMBLY_BLOCK for release, m in seconds.items()}


def run_child(argv: list[str], what: str) -> dict:
    """Run this script as a child doing ``what``; its result (the last line of its output, JSON)."""
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--child", what], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {what} child failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(value: float) -> str:
    return f"{value / MIB:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.set_defaults(rows=20_000_000)
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per run (default: one epoch)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of every run")
    parser.add_argument("--repeats", type=int, default=1, help="training runs of each setting (alternating)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (1: steadiest on a shared machine)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reprepare", action="store_true", help="delete the prepared data first, to time it")
    parser.add_argument("--release", choices=("off", "on"), default="off", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("prepare", "train", "assemble"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*is not a DataLoader.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
        children = {"prepare": child_prepare, "train": child_train, "assemble": child_assemble}
        result = children[args.child](args)
        print(json.dumps(result))
        return

    prep = run_child(sys.argv[1:], "prepare")
    argv = [a for a in sys.argv[1:] if a != "--reprepare"]
    files = sorted((Path(prep["prepared_dir"]) / COLUMNS_DIR).glob("*.npy"))
    data_bytes = sum(f.stat().st_size for f in files)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for r in range(args.repeats):
        for release in ("off", "on")[:: 1 if r % 2 == 0 else -1]:
            runs[release].append(run_child([*argv, "--release", release], "train"))
    assembly = run_child(argv, "assemble")

    first = runs["off"][0]
    print(
        f"\ndata: {args.rows:,} rows ({first['train_rows']:,} train), {args.fields} sparse + {args.dense} dense "
        f"fields, {len(files)} column files, {data_bytes / 1e9:.2f} GB ({mib(data_bytes)} MiB) on disk\n"
        f"      {prep['prepared_dir']}"
    )
    peaks = prep["peaks"]
    if prep["prepared"]:
        print(
            f"preparation: {prep['seconds']:.1f} s, peak RSS {mib(peaks['VmHWM'])} MiB = "
            f"{peaks['VmHWM'] / data_bytes:.2f} x data (peak RssAnon {mib(peaks['RssAnon'])}, "
            f"RssFile {mib(peaks['RssFile'])} MiB)"
        )
    else:
        print("preparation: found prepared (run with --reprepare to time it and measure its memory)")
    what = "one epoch" if args.steps is None else f"{args.steps} steps"
    print(
        f"\ntraining: DNN backbone, Trainer.fit (RankingModule + MultiDomainDataModule, mmap=True), B = "
        f"{args.batch_size}, {what} after {args.warmup} untimed steps ({first['steps']:,} of the epoch's "
        f"{first['epoch_steps']:,} steps), torch threads = {args.threads}, {args.repeats} run(s) per setting, each "
        "in a fresh process; memory: peaks over the whole process (imports, setup, fit) in MiB\n"
    )
    print(
        f"{'release_pages':<14} {'rows/s':>10} {'ms/step':>8} {'runs (rows/s)':>22} {'RssAnon':>9} {'RssFile':>9} "
        f"{'total':>9} {'VmHWM':>9} {'VmHWM/data':>11} {'last loss':>10}"
    )
    best = {}
    for release, results in runs.items():
        best[release] = max(r["rows_per_s"] for r in results)
        worst = {key: max(r["peaks"][key] for r in results) for key in FIELDS}
        each = " ".join(f"{r['rows_per_s']:,.0f}" for r in results)
        print(
            f"{release:<14} {best[release]:>10,.0f} {1e3 * args.batch_size / best[release]:>8.1f} {each:>22} "
            f"{mib(worst['RssAnon']):>9} "
            f"{mib(worst['RssFile']):>9} {mib(worst['VmRSS']):>9} {mib(worst['VmHWM']):>9} "
            f"{worst['VmHWM'] / data_bytes:>10.2f}x {results[-1]['last_loss']:>10.5f}"
        )
    median = {release: statistics.median(r["rows_per_s"] for r in results) for release, results in runs.items()}
    print(
        f"\nrelease_pages on / off: {best['on'] / best['off']:.3f} of the training throughput on the best run of "
        f"each ({median['on'] / median['off']:.3f} on the medians)"
    )
    extra = assembly["on"] - assembly["off"]
    step = 1e3 * args.batch_size / median["off"]
    print(
        f"batch assembly alone (BatchLoader, no training; blocks of {ASSEMBLY_BLOCK} batches interleaved "
        f"{ASSEMBLY_ROUNDS} times, median): off {assembly['off']:.1f} ms/batch, on {assembly['on']:.1f} ms/batch: "
        f"release_pages adds {extra:.1f} ms per batch, {extra / step:.0%} of a training step without it "
        f"({step:.0f} ms, median run)\n"
    )

    verdict = {True: "PASS", False: "FAIL"}
    limit = TARGET_SHARE * data_bytes
    checks = [(f"training, release_pages on: peak total RSS (VmHWM) <= {TARGET_SHARE} x data", "on", "VmHWM")]
    checks.append((f"training, release_pages off: peak RssAnon <= {TARGET_SHARE} x data", "off", "RssAnon"))
    if prep["prepared"]:
        share = peaks["VmHWM"] / data_bytes
        print(
            f"preparation: peak total RSS (VmHWM) <= {TARGET_SHARE} x data: {verdict[share <= TARGET_SHARE]} "
            f"({share:.2f}x)"
        )
    for label, release, key in checks:
        peak = max(r["peaks"][key] for r in runs[release])
        print(f"{label}: {verdict[peak <= limit]} ({peak / data_bytes:.2f}x)")
    off_total = max(r["peaks"]["VmHWM"] for r in runs["off"])
    print(
        f"(release_pages off: peak total RSS {off_total / data_bytes:.2f}x data, the rest of it mapped column pages: "
        "clean page cache the kernel reclaims under memory pressure)"
    )


if __name__ == "__main__":
    main()
