"""Training step time of the multi-domain networks as the number of domains K grows, beside peer references.

For STAR, MMoE, PLE, shared-bottom and the zoo of docs/models.md (PEPNet, EPNet, PPNet, M2M, AdaSparse, APG,
HAMUR, SAR-Net, M3oE, HMoE, AdaptDHM: the networks and sizes of ``mdrec/conf/model/<name>.yaml``; shared-bottom
and HAMUR on the ``mdrec/conf/backbone/dnn.yaml`` DNN) and K = 1, 10, 100, one training step (forward, BCE,
backward, Adam step of the configured optimiser) on a synthetic batch of B rows with uniform domain ids is timed with
``torch.utils.benchmark.Timer``: the median over ``--repeats`` steps after ``--warmup`` untimed ones, in ms, the
values of K taking turns step by step. The same networks, with the same weights, are timed with their per-domain
layers run the two ways peer libraries run them, in the same process:

- ``loop``: a Python loop over the present domains in every per-domain layer, each selecting its rows with a
  boolean mask (``nonzero``) and writing its output back with ``index_put`` (no grouping shared by the layers);
- ``mask-all``: every domain's layer on the whole batch, the row's own output kept with a mask (K times the
  compute; timed with ``--mask-all-repeats`` steps, as it is slow at K = 100).

mdrec's way (``grouped``, :mod:`mdrec.nn.domain`) sorts the rows by domain once per forward and runs one matmul
per present domain on its contiguous block. Target (issue 3): STAR at K = 100 costs at most 3x STAR at K = 1; every
zoo model too (issue 21), except M3oE's balance, whose every domain's experts learn from every row by the method's
definition (docs/models.md, M3oE; ``model.net.balance=false`` is cost-flat). Networks that compute per row
(PEPNet, AdaSparse, APG with a per-row condition) have no per-domain layer to loop over: their loop and mask-all
columns time the same computation.

With ``--ml1m`` it measures training throughput on MovieLens-1M instead (the ``data=ml1m`` data set, 3 age domains
by default, B = 4096): samples/s of each model over the shuffled training batches of mdrec's ``BatchLoader``
(batch assembly included), beside a peer-style reference measured in the same run with the same weights, the two
taking turns step by step: the per-row ``Dataset`` and default-collate ``DataLoader`` that peer libraries ship
(``bench_data.RowDataset``) feeding the same network with its per-domain layers run the ``loop`` way. Next to it,
Scenario-Wise-Rec's own samples/s on this machine for the models it was measured with (issue 21, HAMUR protocol).
Each model runs at Scenario-Wise-Rec's MovieLens sizes where mdrec has them (``experiment=ml1m_<model>_swr``; the
model's default sizes otherwise, or with ``--ml1m-sizes default``), so that it is the same network as the figure's.
Target (issue 21): each zoo model >= 5x Scenario-Wise-Rec's figure where there is one, else >= 5x the reference.
ML-1M is read through ``mdrec.data.sources.movielens`` (downloaded on first use, cached under ``--data-dir``).

Usage::

    python scripts/bench_domains.py --models star          # B = 4096, 1 thread, about 1 min on 2 CPU cores
    python scripts/bench_domains.py                        # every model: about 15 min
    python scripts/bench_domains.py --domains 1 10 --repeats 30 --threads 2
    python scripts/bench_domains.py --ml1m                 # every model on ML-1M: about 10 min
    python scripts/bench_domains.py --ml1m --ml1m-domains occupation --models hmoe m3oe
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

import mdrec.models.adaptdhm
import mdrec.models.adasparse
import mdrec.models.apg
import mdrec.models.hamur
import mdrec.models.hmoe
import mdrec.models.m2m
import mdrec.models.m3oe
import mdrec.models.mmoe
import mdrec.models.pepnet
import mdrec.models.ple
import mdrec.models.sarnet
import mdrec.models.shared_bottom
import mdrec.models.star
from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema, SparseField
from mdrec.nn.domain import DomainGroups
from mdrec.train.stages import Train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import RowDataset, interleaved  # noqa: E402 (the sibling benchmark's per-row Dataset, Timer rounds)

CONF = Path(__file__).resolve().parents[1] / "mdrec" / "conf"
MODELS = {
    "star": mdrec.models.star,
    "mmoe": mdrec.models.mmoe,
    "ple": mdrec.models.ple,
    "shared_bottom": mdrec.models.shared_bottom,
    "pepnet": mdrec.models.pepnet,
    "epnet": mdrec.models.pepnet,
    "ppnet": mdrec.models.pepnet,
    "m2m": mdrec.models.m2m,
    "adasparse": mdrec.models.adasparse,
    "apg": mdrec.models.apg,
    "hamur": mdrec.models.hamur,
    "sarnet": mdrec.models.sarnet,
    "m3oe": mdrec.models.m3oe,
    "hmoe": mdrec.models.hmoe,
    "adaptdhm": mdrec.models.adaptdhm,
}
TARGET_RATIO = 3.0
# Scenario-Wise-Rec's training samples/s on ML-1M (HAMUR protocol, B = 4096) with its own code on this machine (issue
# 21); M2M: 13 s per batch of 4096
SWR_SAMPLES_PER_S = {
    "shared_bottom": 7100.0,
    "mmoe": 6200.0,
    "ple": 6300.0,
    "star": 5800.0,
    "hamur": 1500.0,
    "m2m": 4096 / 13,
}
ML1M_TARGET = 5.0


class LoopGroups(DomainGroups):
    """Peer reference: rows stay in batch order; every layer loops over the present domains with a mask."""

    def __init__(self, domain: Tensor, num_domains: int) -> None:
        super().__init__(domain, num_domains)
        self.batch_domain = domain
        self.domain = domain  # per-row ids in batch order (partitioned normalisation reads them)

    def group(self, x: Tensor) -> Tensor:
        return x

    def ungroup(self, y: Tensor) -> Tensor:
        return y

    def map(self, fn: Callable[..., Tensor], xs: Tensor, *params: Tensor) -> Tensor:
        out: Tensor | None = None
        for i, d in enumerate(self.present.tolist()):
            rows = torch.nonzero(self.batch_domain == d).squeeze(1)  # [n_d], a host sync per domain and layer
            y = fn(xs[rows], *(p[i] for p in params))
            out = y.new_zeros(xs.shape[0], *y.shape[1:]) if out is None else out
            out = out.index_put((rows,), y)
        assert out is not None
        return out


class MaskAllGroups(LoopGroups):
    """Peer reference: every domain's layer on the whole batch, each row keeping its own domain's output."""

    def map(self, fn: Callable[..., Tensor], xs: Tensor, *params: Tensor) -> Tensor:
        out: Tensor | None = None
        for i, d in enumerate(self.present.tolist()):
            y = fn(xs, *(p[i] for p in params))  # [B, ...] all rows through domain d's layer
            mask = (self.batch_domain == d).view(-1, *([1] * (y.dim() - 1)))  # [B, 1, ...]
            out = torch.where(mask, y, 0.0 if out is None else out)
        assert out is not None
        return out


@contextlib.contextmanager
def strategy(name: str) -> Iterator[None]:
    """Run the models' per-domain layers the ``grouped`` (mdrec), ``loop`` or ``mask-all`` way."""
    groups = {"grouped": DomainGroups, "loop": LoopGroups, "mask-all": MaskAllGroups}[name]
    with contextlib.ExitStack() as stack:
        for module in {m for m in MODELS.values() if hasattr(m, "DomainGroups")}:  # per-row networks have none
            stack.enter_context(mock.patch.object(module, "DomainGroups", groups))
        yield


def make_schema(num_domains: int, num_sparse: int, vocab_size: int, num_dense: int) -> Schema:
    return Schema(
        "bench_domains",
        tuple(SparseField(f"f{i}", vocab_size) for i in range(num_sparse)),
        tuple(f"x{i}" for i in range(num_dense)),
        "domain",
        tuple(f"d{k}" for k in range(num_domains)),
        ("click",),
    )


def make_batch(schema: Schema, batch_size: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        sparse=torch.randint(0, schema.vocab_sizes[0], (batch_size, len(schema.sparse)), generator=g),
        dense=torch.rand(batch_size, len(schema.dense), generator=g),
        domain=torch.randint(0, schema.num_domains, (batch_size,), generator=g),  # uniform shares
        labels=torch.randint(0, 2, (batch_size, 1), generator=g).float(),
    )


def build(
    model: str, schema: Schema, seed: int, experiment: str | None = None
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The network and optimiser of ``model=<model>`` in ``mdrec/conf/train.yaml`` (shared-bottom on the DNN
    backbone), with ``experiment=<experiment>``'s settings if given."""
    overrides = [f"model={model}"] + ([f"experiment={experiment}"] if experiment is not None else [])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(seed)
    module = Train().build(cfg, schema)
    return module.net, module.configure_optimizers()


def training_step(net: nn.Module, opt: torch.optim.Optimizer, batch: Batch) -> Callable[[], None]:
    """One training step of ``net`` on ``batch``: forward, BCE, backward, optimiser step."""

    def run() -> None:
        loss = F.binary_cross_entropy_with_logits(net(batch).logits, batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def step_ms(
    model: str, cases: list[tuple[Schema, Batch]], how: str, warmup: int, repeats: int, threads: int
) -> list[float]:
    """Median ms of a training step of ``model`` per case, per-domain layers run ``how``, with ``threads`` torch
    threads (``torch.utils.benchmark``).

    The cases' steps alternate (K = 1, 10, 100, 100, 10, 1, ...) so that drift on a shared machine hits them alike.
    """
    calls = {}
    for i, (schema, batch) in enumerate(cases):
        net, opt = build(model, schema, seed=0)
        calls[str(i)] = training_step(net.train(), opt, batch)
    with strategy(how):
        seconds = interleaved(calls, repeats, threads, warmup)
    return [seconds[str(i)].median * 1e3 for i in range(len(cases))]


def ml1m_datamodule(data_dir: Path, domain_by: str, batch_size: int) -> MultiDomainDataModule:
    """The ``data=ml1m`` data module (``domain_by`` as its source option), prepared under ``data_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "data=ml1m",
                f"data.source.domain_by={domain_by}",
                f"data.batch_size={batch_size}",
                f"paths.data_dir={data_dir}",
            ],
        )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def endless(epochs: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
    """Batches of ``epochs()`` (a new epoch, reshuffled, whenever one ends)."""
    return itertools.chain.from_iterable(epochs() for _ in itertools.count())


def row_batches(dataset: Dataset, batch_size: int) -> Iterator[Batch]:
    """The peer-style reference's batches: one row per ``__getitem__``, shuffled, the default collate."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    return (Batch(**fields) for fields in loader)


def fed_step(net: nn.Module, opt: torch.optim.Optimizer, batches: Iterator[Batch], how: str) -> Callable[[], None]:
    """One training step of ``net`` on the next of ``batches`` (drawing the batch included), per-domain layers run
    ``how``."""

    def run() -> None:
        batch = next(batches)
        with strategy(how):
            training_step(net, opt, batch)()

    return run


def swr_experiment(model: str) -> str | None:
    """``ml1m_<model>_swr`` if that experiment config (Scenario-Wise-Rec's MovieLens sizes) exists, else None."""
    name = f"ml1m_{model}_swr"
    return name if (CONF / "experiment" / f"{name}.yaml").is_file() else None


def ml1m_throughput(args: argparse.Namespace) -> None:
    """Training samples/s on ML-1M of every model in ``args.models``, beside the peer-style reference (module
    docstring), with PASS/FAIL against ``ML1M_TARGET``."""
    dm = ml1m_datamodule(args.data_dir, args.ml1m_domains, args.batch_size)
    schema = dm.schema
    train_rows = dm.splits["train"]
    rows = Subset(RowDataset(dm.store), train_rows.tolist())  # the training rows, one per __getitem__
    print(
        f"ML-1M ({args.ml1m_domains}: K = {schema.num_domains}, {len(train_rows):,} training rows, "
        f"{len(schema.sparse)} sparse + {len(schema.dense)} dense fields), B = {args.batch_size}, {args.threads} "
        f"thread(s); samples/s of a training step (batch drawn, forward, backward, Adam), median of {args.repeats} "
        f"after {args.warmup} warm-up, mdrec and the reference taking turns"
    )
    header = f"{'model':<14}{'sizes':>8}{'mdrec':>10}{'reference':>11}{'ratio':>8}{'SWR':>8}{'ratio':>8}  verdict"
    print(header)
    print("-" * len(header))
    verdicts = []
    for model in args.models:
        experiment = swr_experiment(model) if args.ml1m_sizes == "swr" else None
        net, opt = build(model, schema, 0, experiment)
        ref_net, ref_opt = build(model, schema, 0, experiment)  # the same weights
        ours_batches = endless(lambda: dm.loader("train"))
        ref_batches = endless(lambda: row_batches(rows, args.batch_size))
        calls = {
            "mdrec": fed_step(net.train(), opt, ours_batches, "grouped"),
            "reference": fed_step(ref_net.train(), ref_opt, ref_batches, "loop"),
        }
        seconds = interleaved(calls, args.repeats, args.threads, args.warmup)
        ours, ref = (args.batch_size / seconds[name].median for name in ("mdrec", "reference"))
        swr = SWR_SAMPLES_PER_S.get(model)
        against, base = ("Scenario-Wise-Rec", swr) if swr is not None else ("the reference", ref)
        verdict = "PASS" if ours >= ML1M_TARGET * base else "FAIL"
        row = f"{model:<14}{'swr' if experiment else 'default':>8}{ours:>10,.0f}{ref:>11,.0f}{ours / ref:>7.1f}x"
        row += f"{swr:>8,.0f}{ours / swr:>7.1f}x" if swr is not None else f"{'':>8}{'':>8}"
        print(f"{row}  {verdict}", flush=True)
        verdicts.append(f"{verdict}: {model} {ours:,.0f} samples/s = {ours / base:.1f}x {against} (target >= 5x)")
    print()
    print("\n".join(verdicts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--domains", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--mask-all-repeats", type=int, default=2, help="0 skips the mask-all reference")
    p.add_argument("--sparse-fields", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--dense-fields", type=int, default=4)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared 2-core box)"
    )
    p.add_argument("--ml1m", action="store_true", help="training throughput on ML-1M instead of K-scaling")
    p.add_argument(
        "--ml1m-domains", default="age3", choices=["age3", "age7", "gender", "occupation"], help="ML-1M's domains"
    )
    p.add_argument(
        "--ml1m-sizes",
        default="swr",
        choices=["swr", "default"],
        help="swr: Scenario-Wise-Rec's MovieLens sizes (experiment=ml1m_<model>_swr) where mdrec has them, else the "
        "model's defaults; default: the model configs' general-purpose sizes",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("MDREC_DATA_DIR", Path(__file__).resolve().parents[1] / "data")),
        help="root of prepared data (default: $MDREC_DATA_DIR or the repository's data/)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.ml1m:
        ml1m_throughput(args)
        return
    print(
        f"B = {args.batch_size}, {args.sparse_fields} sparse fields (vocab {args.vocab_size}) + {args.dense_fields} "
        f"dense, uniform domain shares, {args.threads} thread(s); ms per training step (forward + backward + Adam), "
        f"median of {args.repeats} after {args.warmup} warm-up ({args.mask_all_repeats} for mask-all)"
    )
    header = (
        f"{'model':<14}{'K':>5}{'grouped':>10}{'vs K=1':>8}{'loop':>10}{'loop/grp':>10}{'mask-all':>10}{'mask/grp':>10}"
    )
    print(header)
    print("-" * len(header))
    grouped: dict[tuple[str, int], float] = {}
    for model in args.models:
        cases = []
        for k in args.domains:
            schema = make_schema(k, args.sparse_fields, args.vocab_size, args.dense_fields)
            cases.append((schema, make_batch(schema, args.batch_size, seed=k)))
        ours = step_ms(model, cases, "grouped", args.warmup, args.repeats, args.threads)
        loop = step_ms(model, cases, "loop", args.warmup, args.repeats, args.threads)
        mask_all = (
            step_ms(model, cases, "mask-all", 1, args.mask_all_repeats, args.threads)
            if args.mask_all_repeats > 0
            else []
        )
        for i, k in enumerate(args.domains):
            grouped[model, k] = ours[i]
            row = f"{model:<14}{k:>5}{ours[i]:>10.1f}{ours[i] / ours[0]:>7.2f}x"
            row += f"{loop[i]:>10.1f}{loop[i] / ours[i]:>9.2f}x"
            if mask_all:
                row += f"{mask_all[i]:>10.1f}{mask_all[i] / ours[i]:>9.2f}x"
            print(row, flush=True)
    print()
    for model in args.models:
        if (model, 1) in grouped and (model, 100) in grouped:
            ratio = grouped[model, 100] / grouped[model, 1]
            verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
            print(f"{verdict}: {model} step time at K = 100 is {ratio:.2f}x K = 1 (target <= {TARGET_RATIO:.0f}x)")


if __name__ == "__main__":
    main()
