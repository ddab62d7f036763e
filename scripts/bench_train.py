"""Training throughput: the real Lightning path against a bare PyTorch loop and a per-row loader, in the same run.

Every method trains the DNN backbone of ``mdrec/conf/backbone/dnn.yaml`` with the Adam of
``mdrec/conf/model/base/ranking.yaml`` from the same seed on the same batches (epoch 0 of the DataModule's training
BatchLoader), for the same steps:

- the framework: ``Trainer.fit`` of ``RankingModule`` with the ``MultiDomainDataModule`` and the trainer, CSV logger
  and progress bar of ``mdrec/conf/train.yaml`` (validation, checkpointing and early stopping off), as configured;
- the framework with one lever changed: ``model.compile=true`` (the network through ``torch.compile``, compiled in
  the untimed warm-up steps), sparse embedding updates (``model.embedding_optimizer``: SparseAdam for the tables,
  Adam for the rest), Adam's single-tensor update (``foreach=false``, torch's CPU default) instead of the fused one,
  and ``nn.Dropout`` (a Bernoulli mask) instead of ``mdrec.nn.mlp.Dropout``;
- the bare loop: forward, BCE, backward, step over the same batches;
- the per-row reference (torch-rechub's design): the bare loop as a library on plain torch runs it (``nn.Dropout``,
  Adam's single-tensor update: torch's CPU defaults) fed by a ``DataLoader`` over a ``Dataset`` whose
  ``__getitem__`` returns one row as a dict of tensors, batched by the default collate, taking the same rows in the
  same batches (the epoch's order, one batch sampler). The framework's ratio to it is the loader's gain and the
  step's levers together; the lever rows above say how much each lever gives.

Runs alternate (in turns, the order reversed every other round) to cancel drift; the first ``--warmup`` steps of every
run are not timed. Ratios are taken on the best run of each (the least disturbed by other processes on a shared
machine), the medians beside them. Each run ends with the validation AUC of what it trained (the validation split in
eval mode): with ``--steps`` near an epoch it shows whether a lever changes results. Peak memory is the process's peak
RSS during each run (reset between runs through ``/proc/self/clear_refs`` where Linux allows).

Targets (docs/architecture.md, Performance principles): framework samples/s >= 0.9 x the bare loop and >= 2.5 x the
per-row reference.

Usage::

    python scripts/bench_train.py                      # 2M rows, B = 4096, 40 timed steps, 5 runs each
    python scripts/bench_train.py --rows 400000 --steps 70 --repeats 3 --threads 1   # one epoch of 320k rows
    python scripts/bench_train.py --methods framework bare per-row
    python scripts/bench_train.py --rows 400000 --steps 10 --threads 1 --profile   # where the bare loop's step goes
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bench_data import RowDataset, add_data_args, bench_datamodule
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc

from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.nn.embedding import sparse_gradients
from mdrec.nn.mlp import Dropout
from mdrec.train.module import OptimizerFactory, RankingModule
from mdrec.train.optim import JointOptimizer
from mdrec.train.run import instantiate_group

CONF = Path(__file__).resolve().parents[1] / "mdrec" / "conf"
TARGET_RATIO = 0.9
TARGET_PER_ROW = 2.5
SINGLE_TENSOR = {"fused": None, "foreach": False}  # Adam's update as torch runs it on the CPU by default


@dataclass
class RunResult:
    """One measured run: timed samples/s, peak RSS in MiB, the loss of the last step and the validation AUC."""

    samples_per_s: float
    peak_rss_mib: float
    last_loss: float
    val_auc: float


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


def build_net(schema: Schema, seed: int, bernoulli_dropout: bool = False) -> nn.Module:
    """The DNN backbone of ``mdrec/conf/backbone/dnn.yaml`` (with the default input layer), initialised from
    ``seed``; with ``bernoulli_dropout`` its dropout layers are ``nn.Dropout``."""
    torch.manual_seed(seed)
    net = hydra.utils.instantiate(default_config().backbone)(schema)
    if bernoulli_dropout:
        for module in net.modules():
            for name, child in module.named_children():
                if isinstance(child, Dropout):
                    setattr(module, name, nn.Dropout(child.p))
    return net


def optimizer_factory(**options: Any) -> OptimizerFactory:
    """The partial optimiser of ``mdrec/conf/model/base/ranking.yaml``, ``options`` set over it."""
    return functools.partial(hydra.utils.instantiate(default_config().model.optimizer), **options)


def validation_auc(net: nn.Module, dm: MultiDomainDataModule) -> float:
    """AUC of the click over the validation split, ``net`` in eval mode."""
    net.eval()
    with torch.no_grad():
        pairs = [(net(b).logits[:, 0], b.labels[:, 0]) for b in dm.val_dataloader()]
    net.train()
    return float(binary_auroc(torch.cat([p for p, _ in pairs]), torch.cat([y for _, y in pairs]).long()))


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


def run_framework(
    dm: MultiDomainDataModule,
    seed: int,
    warmup: int,
    steps: int,
    compile: bool = False,
    sparse: bool = False,
    adam: dict[str, Any] | None = None,
    bernoulli_dropout: bool = False,
) -> RunResult:
    """``Trainer.fit`` of a RankingModule for ``warmup + steps`` batches; the last ``steps`` are timed. ``compile``:
    the network through ``torch.compile`` (compiled within the untimed steps); ``sparse``: SparseAdam (the same
    learning rate) for the embedding tables; ``adam``: options set over the configured Adam's."""
    net = build_net(dm.schema, seed, bernoulli_dropout)
    optimizer = optimizer_factory(**(adam or {}))
    lr = default_config().model.optimizer.lr
    tables = functools.partial(torch.optim.SparseAdam, lr=lr) if sparse else None
    module = RankingModule(net, dm.schema, optimizer, compile=compile, embedding_optimizer=tables)
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = framework_trainer(warmup, steps, timer, out_dir)
        reset_peak_rss()
        trainer.fit(module, datamodule=dm)
    peak = peak_rss_mib()
    rate = steps * dm.batch_size / (timer.end - timer.start)
    return RunResult(rate, peak, timer.last_loss, validation_auc(net, dm))


def bare_loop(
    dm: MultiDomainDataModule,
    seed: int,
    warmup: int,
    steps: int,
    batches: Iterable[Batch],
    torch_defaults: bool = False,
) -> RunResult:
    """Forward, BCE, backward, Adam step over ``batches``; the last ``steps`` are timed. ``torch_defaults``: the
    network with ``nn.Dropout`` and Adam's single-tensor update, as a library on plain torch runs them."""
    net = build_net(dm.schema, seed, bernoulli_dropout=torch_defaults).train()
    optimizer = optimizer_factory(**(SINGLE_TENSOR if torch_defaults else {}))(net.parameters())
    reset_peak_rss()
    start = time.perf_counter()
    for i, batch in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            start = time.perf_counter()
        out = net(batch)
        loss = F.binary_cross_entropy_with_logits(out.logits, batch.labels[:, : out.logits.shape[1]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    peak = peak_rss_mib()
    return RunResult(steps * dm.batch_size / elapsed, peak, float(loss.detach()), validation_auc(net, dm))


def run_bare(dm: MultiDomainDataModule, seed: int, warmup: int, steps: int) -> RunResult:
    """The bare loop over the DataModule's training batches."""
    return bare_loop(dm, seed, warmup, steps, dm.train_dataloader())


def epoch_batches(dm: MultiDomainDataModule) -> list[list[int]]:
    """The store rows of each batch of the training loader's epoch 0, as the BatchLoader takes them."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    order = loader.sampler.order()
    return [np.sort(order[a:b]).tolist() for a, b in zip(*loader.bounds(), strict=True)]


def row_batches(dataset: RowDataset, batches: list[list[int]]) -> Iterable[Batch]:
    """The per-row reference's batches: a DataLoader calling ``__getitem__`` per row of each of ``batches`` and the
    default collate, each collated dict turned into a Batch. The loader draws its seed from a generator of its own:
    the global one's draws (the dropout masks) stay the bare loop's."""
    for rows in DataLoader(dataset, batch_sampler=batches, generator=torch.Generator()):
        yield Batch(rows["sparse"], rows["dense"], rows["domain"], rows["labels"])


def run_per_row(
    dm: MultiDomainDataModule, seed: int, warmup: int, steps: int, dataset: RowDataset, batches: list[list[int]]
) -> RunResult:
    """torch-rechub's design: the bare loop with torch's defaults (``nn.Dropout``, Adam's single-tensor update) fed
    by the per-row DataLoader over the same rows in the same batches."""
    return bare_loop(dm, seed, warmup, steps, row_batches(dataset, batches), torch_defaults=True)


# the profile's parts of a step: torch operators by name (self time); the optimiser's update is its step's total
PARTS = {
    "matrix products": ("aten::mm", "aten::addmm"),
    "dropout masks": ("aten::bernoulli_", "aten::random_", "aten::ge"),
    "dense embedding backward": ("aten::embedding_dense_backward",),
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
}
STEPS = {  # name: (nn.Dropout, Adam's options over the configured ones, SparseAdam for the tables)
    "torch's defaults (single-tensor Adam, nn.Dropout)": (True, SINGLE_TENSOR, False),
    "fused Adam, nn.Dropout": (True, {}, False),
    "fused Adam, mdrec.nn.mlp.Dropout (the default)": (False, {}, False),
    "the default + SparseAdam tables": (False, {}, True),
}


def profile_steps(dm: MultiDomainDataModule, seed: int, warmup: int, steps: int) -> None:
    """Print where the bare loop's step goes (``torch.profiler``, ``steps`` steps after ``warmup``) for each of
    STEPS: milliseconds per step and share of the step's CPU time of each of PARTS and of the optimiser's update."""
    batches = list(itertools.islice(dm.train_dataloader(), warmup + steps))
    for name, (bernoulli, adam, sparse) in STEPS.items():
        net = build_net(dm.schema, seed, bernoulli).train()
        tables = sparse_gradients(net) if sparse else []
        dense = [p for p in net.parameters() if all(p is not t for t in tables)]
        optimizer = optimizer_factory(**adam)(dense)
        if sparse:
            lr = default_config().model.optimizer.lr
            optimizer = JointOptimizer(optimizer, torch.optim.SparseAdam(tables, lr=lr))
        for i, batch in enumerate(batches):
            if i == warmup:
                prof = profile(activities=[ProfilerActivity.CPU])
                prof.start()
            loss = F.binary_cross_entropy_with_logits(net(batch).logits, batch.labels[:, :1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        prof.stop()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        parts = {part: sum(e.self_cpu_time_total for e in events if e.key in ops) for part, ops in PARTS.items()}
        # the outermost optimiser step (a JointOptimizer's holds its two parts' steps)
        parts["optimiser update"] = max(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step#"))
        shares = ", ".join(f"{part} {v / steps / 1e3:.0f} ms ({100 * v / total:.0f} %)" for part, v in parts.items())
        print(f"{name}: {total / steps / 1e3:.0f} ms per step; {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(parser)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of every run")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each method (best and median shown)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    args_methods = ["framework", "compile", "sparse", "single-tensor", "bernoulli", "bare", "per-row"]
    parser.add_argument("--methods", nargs="+", choices=args_methods, default=args_methods, help="methods to run")
    parser.add_argument("--profile", action="store_true", help="print where the bare loop's step goes, then stop")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is not a DataLoader.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    dm = bench_datamodule(args)
    dm.setup()
    if args.profile:
        profile_steps(dm, args.seed, args.warmup, args.steps)
        return
    labels: dict[str, tuple[str, Callable[..., RunResult]]] = {
        "framework": ("Lightning (RankingModule + DataModule)", run_framework),
        "compile": ("Lightning, model.compile=true", functools.partial(run_framework, compile=True)),
        "sparse": ("Lightning, SparseAdam tables", functools.partial(run_framework, sparse=True)),
        "single-tensor": (
            "Lightning, Adam foreach=false",
            functools.partial(run_framework, adam=SINGLE_TENSOR),
        ),
        "bernoulli": ("Lightning, nn.Dropout", functools.partial(run_framework, bernoulli_dropout=True)),
        "bare": ("bare PyTorch loop", run_bare),
    }
    if "per-row" in args.methods:
        dataset = RowDataset(dm.store)
        labels["per-row"] = (
            "per-row DataLoader, bare loop, torch",
            functools.partial(run_per_row, dataset=dataset, batches=epoch_batches(dm)),
        )
    methods = {labels[m][0]: labels[m][1] for m in args_methods if m in args.methods}
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
        f"{'peak RSS MiB':>13} {'last loss':>10} {'val AUC':>8}"
    )
    best = {name: max(r.samples_per_s for r in runs) for name, runs in results.items()}
    median = {name: statistics.median(r.samples_per_s for r in runs) for name, runs in results.items()}
    for name, runs in results.items():
        each = " ".join(f"{r.samples_per_s:,.0f}" for r in runs)
        peak = max(r.peak_rss_mib for r in runs)
        print(
            f"{name:<40} {best[name]:>8,.0f} {median[name]:>9,.0f} {1e3 * dm.batch_size / best[name]:>8.1f} "
            f"{each:>24} {peak:>13,.0f} {runs[-1].last_loss:>10.5f} {runs[-1].val_auc:>8.4f}"
        )

    def ratio(a: str, b: str) -> float:
        return best[labels[a][0]] / best[labels[b][0]]

    def line(a: str, b: str, what: str) -> str:
        medians = median[labels[a][0]] / median[labels[b][0]]
        return f"{what}: {ratio(a, b):.3f} on the best run of each ({medians:.3f} on the medians)"

    print()
    verdict = {True: "PASS", False: "FAIL"}
    if {"framework", "bare"} <= set(args.methods):
        for m in ("framework", "compile", "sparse", "single-tensor", "bernoulli"):
            if m in args.methods:
                print(line(m, "bare", f"{labels[m][0]} / bare"))
        print(f"target framework / bare >= {TARGET_RATIO}: {verdict[ratio('framework', 'bare') >= TARGET_RATIO]}")
    if "per-row" in args.methods:
        for m in ("framework", "compile", "sparse", "bare"):
            if m in args.methods:
                print(line(m, "per-row", f"{labels[m][0]} / per-row reference"))
        if "framework" in args.methods:
            passed = ratio("framework", "per-row") >= TARGET_PER_ROW
            print(f"target framework / per-row reference >= {TARGET_PER_ROW}: {verdict[passed]}")
    if not reset_peak_rss():
        print("(peak RSS could not be reset between runs: it is the process's peak so far)")


if __name__ == "__main__":
    main()
