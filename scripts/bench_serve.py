"""Serving latency of parallel domain-activated inference against its alternatives, in every export format,
measured in one run.

For K domains and a batch of B rows with uniform domain ids, inference (``torch.inference_mode``) of:

- ``parallel``: :class:`mdrec.serve.parallel.ParallelModel`, the backbone and all K domains' IAK kernels in one
  graph (rows sorted by domain once, the kernels folded for serving, each per-domain product one
  ``embedding_bag`` over the stacked weights), eager;
- ``parallel-ts``, ``parallel-aoti``, ``parallel-onnx``: the same model exported (:mod:`mdrec.serve.export`) to
  TorchScript, to a ``torch.export`` program compiled by AOTInductor, and to ONNX run by onnxruntime (one thread per
  ``--threads``), each loaded back from its file;
- ``dispatch``: one model per domain (the backbone and that domain's kernel in its serving form, the backbone's
  weights shared), the batch's rows routed to their domain's model in Python and put back in order;
- ``backbone``, ``backbone-ts``, ``backbone-aoti``, ``backbone-onnx``: the references, the backbone alone as a serving
  model (:class:`mdrec.serve.parallel.NetworkModel`: the same input checks and id masking, probabilities out), eager
  and exported in each format the same way.

The backbone is the ``mdrec/conf/backbone/dnn.yaml`` DNN (embedding 16, MLP [256, 128]) on ``--sparse`` fields with
``--vocab`` ids each and ``--dense`` dense features, domain-agnostic (``--input embedded``, the default) or with the
domain id as a field and an "any domain" id (``--input pooled``, stage=adapt's default); the adapters are
``--adapter iak`` (the default: ``mdrec/conf/adapter/iak.yaml``'s kernels, k = 50, hidden 64, on h before the head)
or ``--adapter lora`` (``mdrec/conf/adapter/lora.yaml``'s rank-8 deltas on the first hidden layer, stage=adapt's
default; ``--lora-targets`` chooses the layers, ``'*'`` every linear layer), with random weights.
``--adapter lora --input pooled`` is the default adaptation recipe's serving model.

Each call takes the next of 8 batches (other rows, same domain shares), as a server's calls read other embedding
rows. Each method is timed against its reference in a rotation of its own, the two taking turns call by call (so a
slow phase of a noisy machine hits both alike): parallel against backbone in the same format, dispatch against the
eager backbone. One rotation of all methods would favour some by what ran just before them (an exported model,
loaded from its file, has copies of its tensors that another method had just pushed out of cache; scripts/README.md
has the figures). ``--repeats`` calls per method (fewer for slow rotations, about 20 s each, at least 10) after
``--warmup`` calls; p50 and p99 latency in ms, rows/s from the mean, and p50 over the reference's p50 in the same
rotation (a backbone row: the ratio of its parallel rotation's, 1.00). The load average at start and end is printed:
other processes on the machine slow both sides of a rotation alike, not always equally; ``--clock cpu`` times each
call by the calling thread's CPU time instead (one thread: the onnxruntime session and the AOTInductor kernels run
in the calling thread), which leaves out the time the process waits while preempted.

Goal (issue 23): at K = 100, B = 512, the best export format's parallel model p50 at most 1.2x the backbone's in the
same format. The AOTInductor formats compile C++ once per K (about a minute each on a loaded 2-core machine).

Usage::

    python scripts/bench_serve.py                                   # 1 thread, about 10 min on 2 CPU cores
    python scripts/bench_serve.py --domains 100 --batch-sizes 512 --repeats 200
    python scripts/bench_serve.py --formats torchscript             # TorchScript only: about 1.5 min
    python scripts/bench_serve.py --domains 100 --batch-sizes 512 --no-dispatch --floor   # the goal cell and its floors
    python scripts/bench_serve.py --domains 100 --batch-sizes 512 --no-dispatch --adapter lora --input pooled
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.benchmark import Timer

from mdrec.adapters.base import AdaptedNet, AdapterFactory
from mdrec.adapters.iak import IAK, ServingIAK
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.nn import domain
from mdrec.serve.export import (
    FORMATS,
    SUFFIXES,
    load_onnx,
    onnx_available,
    onnxruntime_available,
    serving_inputs,
    write,
)
from mdrec.serve.parallel import NetworkModel, ParallelModel, ServingModel
from mdrec.serve.timing import percentile, time_calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domains import make_batch, make_schema  # noqa: E402 (the sibling benchmark's synthetic schema and batches)

TARGET = (100, 512, 1.2)  # K, B, largest parallel / backbone p50 ratio (the best format's)
BATCHES = 8  # each call takes the next of this many batches (other rows, same shares)
ADAPTERS: dict[str, AdapterFactory] = {"iak": IAK, "lora": LoRA}  # their constructors' defaults are the configs'
INPUTS = {
    "embedded": EmbeddedInput,
    "pooled": functools.partial(EmbeddedInput, domain_as_feature=True, domain_dropout=0.1),
}
FLOORS = ("dense-", "routing-")  # the --floor methods' names: <floor><short>
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
SHORT = {"eager": "", "torchscript": "-ts", "aoti": "-aoti", "onnx": "-onnx"}  # a method's name: parallel<short>


class Dispatch(nn.Module):
    """One model per domain (shared backbone, that domain's adapter); rows routed to their domain's model."""

    def __init__(self, net: AdaptedNet, schema: Schema, make_adapter: AdapterFactory) -> None:
        super().__init__()
        single = Schema(schema.dataset_id, schema.sparse, schema.dense, schema.domain_field, ("d",), schema.labels)
        state = net.adapter.state_dict()
        self.models = nn.ModuleList()
        for d in range(schema.num_domains):
            adapter = make_adapter(single, net.backbone)
            adapter.load_state_dict({key: value[d : d + 1] for key, value in state.items()})
            self.models.append(AdaptedNet(single, net.backbone, adapter.for_serving(net.backbone)).eval())

    def forward(self, batch: Batch) -> Tensor:
        order = torch.argsort(batch.domain, stable=True)
        counts = torch.bincount(batch.domain, minlength=len(self.models))
        out = torch.empty(batch.size, 1)
        start = 0
        for d, n in enumerate(counts.tolist()):
            if n:
                rows = order[start : start + n]
                part = batch.rows(rows)
                out[rows] = torch.sigmoid(
                    self.models[d](Batch(part.sparse, part.dense, part.domain * 0, part.labels)).logits
                )
                start += n
        return out


@contextmanager
def floor(kind: str) -> Iterator[None]:
    """While a graph is traced or exported, the parallel model's adapter as one of the floors of ``--floor``:
    ``dense``: every per-row product on domain 0's matrix (one dense matmul, the cost a grouped kernel that reads each
    domain's weights once per call could approach; wrong outputs, timing only); ``routing``: the kernels left out (the
    sort, the gathers and the fallback slot only)."""
    saved = domain.rows_matmul, ServingIAK.apply
    if kind == "dense":
        domain.rows_matmul = lambda x, weight, _: x @ weight[0]
    else:
        ServingIAK.apply = lambda self, name, x, y, route: x if y is None else y
    try:
        yield
    finally:
        domain.rows_matmul, ServingIAK.apply = saved


def print_weight_read(model: ParallelModel, k: int, threads: int) -> None:
    """Print how long one pass over the parallel model's per-domain weights takes (``torch.sum`` of each of its
    serving adapter's tensors, all stacked over the K + 1 slots; warm, ``threads`` threads): the memory traffic any
    exact per-domain kernel pays when every domain has rows in the batch (the goal cell's floor below the kernels'
    arithmetic; scripts/README.md)."""
    adapter = model.net.adapter
    stacked = [*adapter.parameters(), *adapter.buffers()]
    mebibytes = sum(t.numel() * t.element_size() for t in stacked) / 2**20
    timer = Timer("[t.sum() for t in stacked]", globals={"stacked": stacked}, num_threads=threads)
    with torch.inference_mode():
        read = timer.blocked_autorange(min_run_time=2)
    print(f"K = {k}: one read of the {mebibytes:.1f} MiB of per-domain weights (torch.sum): {read.median * 1e3:.3f} ms")


def calls(fn: Callable[..., object], inputs: list[tuple[object, ...]]) -> Callable[[], object]:
    """A function that calls ``fn`` on the next of ``inputs`` each time (round robin): each call reads other rows,
    as a server's calls do, not the embedding rows the previous call left in cache."""
    turn = itertools.cycle(inputs)
    return lambda: fn(*next(turn))


def exported(fmt: str, model: ServingModel, example: Batch, directory: Path, threads: int) -> Callable[..., Tensor]:
    """``model`` in format ``fmt`` (``eager``: itself), written to ``directory`` and loaded back."""
    if fmt == "eager":
        return model
    path = directory / f"{type(model).__name__}{SUFFIXES[fmt]}"
    served = write(fmt, model, example, path)
    return load_onnx(path, threads) if fmt == "onnx" else served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512, 4096])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, help="export formats (default: all available)")
    parser.add_argument("--no-dispatch", action="store_true", help="leave out the one-model-per-domain method")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sparse", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--dense", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--adapter", choices=ADAPTERS, default="iak", help="the per-domain adapter served")
    parser.add_argument(
        "--lora-targets",
        nargs="+",
        help="with --adapter lora: its targets (glob patterns of linear layers; default: the first hidden layer)",
    )
    parser.add_argument("--input", choices=INPUTS, default="embedded", help="pooled: the domain id as a field")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time, in each export format, the parallel model with dense products in place of the per-row "
        "ones and with the kernels left out, and one read of its per-domain weights (the floors of the goal cell: "
        "scripts/README.md)",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall: elapsed time; cpu: the calling thread's CPU time (one thread: a loaded machine's preemption left "
        "out)",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts the calling thread only: use it with --threads 1")
    if args.floor and args.adapter != "iak":
        parser.error("--floor replaces IAK's kernels: use it with --adapter iak")
    if args.lora_targets and args.adapter != "lora":
        parser.error("--lora-targets needs --adapter lora")
    make_adapter = ADAPTERS[args.adapter]
    if args.lora_targets:
        make_adapter = functools.partial(make_adapter, targets=args.lora_targets)
    torch.set_num_threads(args.threads)
    onnx = onnx_available() and onnxruntime_available()
    formats = ["eager", *(args.formats or [f for f in FORMATS if f != "onnx" or onnx])]
    if "onnx" in formats and not onnx:
        parser.error("--formats onnx needs onnx, onnxscript and onnxruntime: pip install 'mdrec[export]'")
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPU(s), load average {load:.2f} at "
        f"start; p50 / p99 latency in ms ({args.clock} clock), rows/s from the mean"
    )
    print(f"{'K':>5} {'B':>5} {'method':>14} {'p50':>9} {'p99':>9} {'rows/s':>11} {'p50 / backbone':>15}")
    verdicts: dict[str, float] = {}
    for k in args.domains:
        torch.manual_seed(0)
        schema = make_schema(k, args.sparse, args.vocab, args.dense)
        backbone = DNNBackbone(schema, INPUTS[args.input], [256, 128], dropout=0.2).eval()
        net = AdaptedNet(schema, backbone, make_adapter(schema, backbone)).eval()
        with torch.no_grad():
            for p in net.adapter.parameters():
                p.add_(0.1 * torch.randn_like(p))  # away from the identity start
        example = make_batch(schema, 64, seed=1)
        fns_of: dict[str, Callable[..., object]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in formats:
                for name, model in (
                    ("parallel", ParallelModel(net, schema, make_adapter)),
                    ("backbone", NetworkModel(backbone, schema)),
                ):
                    fns_of[name + SHORT[fmt]] = exported(fmt, model, example, Path(tmp), args.threads)
                for kind in ("dense", "routing") if args.floor and fmt != "eager" else ():
                    model = ParallelModel(
                        net, schema, make_adapter
                    )  # built as served: its fallback check runs the kernels
                    with floor(kind):
                        fns_of[kind + SHORT[fmt]] = exported(fmt, model, example, Path(tmp) / kind, args.threads)
        if args.floor:
            print_weight_read(ParallelModel(net, schema, make_adapter), k, args.threads)
        dispatch = None if args.no_dispatch else Dispatch(net, schema, make_adapter)
        rotations = [(f"parallel{SHORT[f]}", f"backbone{SHORT[f]}") for f in formats]
        rotations += [(name, "backbone" + name[name.index("-") :]) for name in fns_of if name.startswith(FLOORS)]
        rotations += [] if dispatch is None else [("dispatch", "backbone")]
        for b in args.batch_sizes:
            batches = [make_batch(schema, b, seed=b * BATCHES + i) for i in range(BATCHES)]
            inputs = [serving_inputs(batch)[:3] for batch in batches]  # sparse, dense, domain
            fns = {name: calls(fn, inputs) for name, fn in fns_of.items()}
            if dispatch is not None:
                fns["dispatch"] = calls(dispatch, [(batch,) for batch in batches])
            results: dict[str, tuple[list[float], list[float]]] = {}  # method -> (its times, its reference's)
            for name, reference in rotations:
                pair = {name: fns[name], reference: fns[reference]}
                with torch.inference_mode():
                    start = time.perf_counter()
                    for fn in pair.values():
                        fn()
                    repeats = max(10, min(args.repeats, int(20 / (time.perf_counter() - start))))  # about 20 s
                    times = time_calls(pair, repeats, args.warmup, CLOCKS[args.clock])
                results[name] = times[name], times[reference]
                results.setdefault(reference, (times[reference], times[reference]))
            for name, _ in sorted(results.items(), key=lambda item: list(fns).index(item[0])):
                values, reference_values = results[name]
                p50 = percentile(values, 0.5)
                ratio = p50 / percentile(reference_values, 0.5)
                rows = b / statistics.fmean(values)
                print(
                    f"{k:>5} {b:>5} {name:>14} {p50 * 1e3:>9.3f} {percentile(values, 0.99) * 1e3:>9.3f} "
                    f"{rows:>11,.0f} {ratio:>14.2f}x",
                    flush=True,
                )
                if (k, b) == TARGET[:2] and name.startswith("parallel"):
                    verdicts[name] = ratio
    print(f"load average {os.getloadavg()[0]:.2f} at end ({load:.2f} at start)")
    if verdicts:
        best = min((v, n) for n, v in verdicts.items() if n != "parallel")
        status = "PASS" if best[0] <= TARGET[2] else "FAIL"
        ratios = ", ".join(f"{n} {v:.2f}x" for n, v in verdicts.items())
        print(f"goal: K = {TARGET[0]}, B = {TARGET[1]}: {ratios} (each against the backbone in its own format)")
        print(f"      the best export format, {best[1]}: {best[0]:.2f}x (<= {TARGET[2]}x): {status}")


if __name__ == "__main__":
    main()
