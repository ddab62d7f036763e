"""Training throughput: the real Lightning path against a bare PyTorch loop, in the same run.

Both train the DNN backbone of ``mdrec/conf/backbone/dnn.yaml`` with the Adam of ``mdrec/conf/model/base/ranking.yaml``
from the same seed on the same batches (epoch 0 of the DataModule's training BatchLoader), for the same steps. The
framework
side is ``Trainer.fit`` of ``RankingModule`` with the ``MultiDomainDataModule`` and the trainer, CSV logger and
progress bar of ``mdrec/conf/train.yaml`` (validation, checkpointing and early stopping off); the bare side is forward,
BCE, backward, step; a third method is the framework with ``model.compile=true`` (the network through
``torch.compile``, compiled in the untimed warm-up steps). Runs alternate (in turns, the order reversed every other
round) to cancel drift; the first ``--warmup`` steps of every run are
not timed. The ratio is taken on the best run of each (the least disturbed by other processes on a shared machine),
the medians beside it. Peak memory is the process's peak RSS during each run (reset between runs through
``/proc/self/clear_refs`` where Linux allows).

Target (docs/architecture.md, Performance principles): framework samples/s >= 0.9 x the bare loop.

Usage::

    python scripts/bench_train.py                      # 2M rows, B = 4096, 40 timed steps, 5 runs each
    python scripts/bench_train.py --steps 200 --threads 1
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import resource
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_data import add_data_args, bench_datamodule
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.train.module import OptimizerFactory, RankingModule
from mdrec.train.run import instantiate_group

CONF = Path(__file__).resolve().parents[1] / "mdrec" / "conf"
TARGET_RATIO = 0.9


@dataclass
class RunResult:
    """One measured run: timed samples/s, peak RSS in MiB, and the loss of the last step."""

    samples_per_s: float
    peak_rss_mib: float
    last_loss: float


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs``); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak RSS since the last reset (``VmHWM``), else since the process started (``getrusage``)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_config() -> DictConfig:
    """``mdrec/conf/train.yaml`` as composed with no overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train")


def build_net(schema: Schema, seed: int) -> nn.Module:
    """The DNN backbone of ``mdrec/conf/backbone/dnn.yaml`` (with the default input layer), initialised from
    ``seed``."""
    torch.manual_seed(seed)
    return hydra.utils.instantiate(default_config().backbone)(schema)


def optimizer_factory() -> OptimizerFactory:
    """The partial optimiser of ``mdrec/conf/model/base/ranking.yaml``."""
    return hydra.utils.instantiate(default_config().model.optimizer)


class StepTimer(pl.Callback):
    """Times training batches ``warmup`` .. the last, and keeps the last step's loss."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.last_loss = float("nan")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: dict[str, Tensor],
        batch: Batch,
        batch_idx: int,
    ) -> None:
        self.end = time.perf_counter()
        self.last_loss = float(outputs["loss"])


def framework_trainer(warmup: int, steps: int, timer: StepTimer, out_dir: str) -> pl.Trainer:
    """The Trainer of ``mdrec/conf/train.yaml`` (trainer, CSV logger, progress bar) for ``warmup + steps`` batches.

    Validation and the callbacks that need it (checkpointing, early stopping) are off: only training is timed.
    """
    overrides = [
        f"paths.output_dir={out_dir}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={warmup + steps}",
        "trainer.limit_val_batches=0",
        "~callbacks.model_checkpoint",
        "~callbacks.early_stopping",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    callbacks = [*instantiate_group(cfg.callbacks), timer]
    loggers = instantiate_group(cfg.logger)
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, enable_checkpointing=False)


def run_framework(dm: MultiDomainDataModule, seed: int, warmup: int, steps: int, compile: bool = False) -> RunResult:
    """``Trainer.fit`` of a RankingModule for ``warmup + steps`` batches; the last ``steps`` are timed (with
    ``compile``: the network through ``torch.compile``, compiled within the untimed steps)."""
    module = RankingModule(build_net(dm.schema, seed), dm.schema, optimizer_factory(), compile=compile)
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = framework_trainer(warmup, steps, timer, out_dir)
        reset_peak_rss()
        trainer.fit(module, datamodule=dm)
    return RunResult(steps * dm.batch_size / (timer.end - timer.start), peak_rss_mib(), timer.last_loss)


def run_bare(dm: MultiDomainDataModule, seed: int, warmup: int, steps: int) -> RunResult:
    """Forward, BCE, backward, Adam step over the same batches; the last ``steps`` are timed."""
    net = build_net(dm.schema, seed).train()
    optimizer = optimizer_factory()(net.parameters())
    reset_peak_rss()
    start = time.perf_counter()
    for i, batch in enumerate(itertools.islice(dm.train_dataloader(), warmup + steps)):
        if i == warmup:
            start = time.perf_counter()
        out = net(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.labels[:, : out.logits.shape[1]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    return RunResult(steps * dm.batch_size / elapsed, peak_rss_mib(), float(loss.detach()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of every run")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each method (best and median shown)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is not a DataLoader.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    dm = bench_datamodule(args)
    dm.setup()
    methods = {
        "Lightning (RankingModule + DataModule)": run_framework,
        "Lightning, model.compile=true": functools.partial(run_framework, compile=True),
        "bare PyTorch loop": run_bare,
    }
    results: dict[str, list[RunResult]] = {name: [] for name in methods}
    for r in range(args.repeats):
        for name in list(methods)[:: 1 if r % 2 == 0 else -1]:
            results[name].append(methods[name](dm, args.seed, args.warmup, args.steps))

    print(
        f"\n{args.rows:,} rows ({len(dm.splits['train']):,} train), B = {dm.batch_size}, "
        f"{args.fields} sparse + {args.dense} dense fields, {args.steps} timed steps after {args.warmup}, "
        f"{args.threads} threads, {args.repeats} runs each\n"
    )
    print(
        f"{'method':<40} {'best/s':>8} {'median/s':>9} {'ms/step':>8} {'runs (samples/s)':>24} "
        f"{'peak RSS MiB':>13} {'last loss':>10}"
    )
    best = {name: max(r.samples_per_s for r in runs) for name, runs in results.items()}
    median = {name: statistics.median(r.samples_per_s for r in runs) for name, runs in results.items()}
    for name, runs in results.items():
        each = " ".join(f"{r.samples_per_s:,.0f}" for r in runs)
        peak = max(r.peak_rss_mib for r in runs)
        print(
            f"{name:<40} {best[name]:>8,.0f} {median[name]:>9,.0f} {1e3 * dm.batch_size / best[name]:>8.1f} "
            f"{each:>24} {peak:>13,.0f} {runs[-1].last_loss:>10.5f}"
        )
    eager, compiled, bare = list(methods)
    ratio, median_ratio = best[eager] / best[bare], median[eager] / median[bare]
    print(f"\nframework / bare: {ratio:.3f} on the best run of each ({median_ratio:.3f} on the medians)")
    print(
        f"compiled framework / bare: {best[compiled] / best[bare]:.3f} on the best run of each "
        f"({median[compiled] / median[bare]:.3f} on the medians)"
    )
    print(f"target >= {TARGET_RATIO}: {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")
    if not reset_peak_rss():
        print("(peak RSS could not be reset between runs: it is the process's peak so far)")


if __name__ == "__main__":
    main()
