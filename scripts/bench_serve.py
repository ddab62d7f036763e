"""Serving latency of parallel domain-activated inference against its alternatives, measured in one run.

For K domains and a batch of B rows with uniform domain ids, inference (``torch.inference_mode``) of:

- ``parallel``: :class:`mdrec.serve.parallel.ParallelModel`, the backbone and all K domains' IAK kernels in one
  graph (rows sorted by domain once, the kernels folded for serving, each per-domain product one
  ``embedding_bag`` over the stacked weights), eager;
- ``parallel-ts``: the same model exported to TorchScript (:func:`mdrec.serve.export.export`), loaded back;
- ``dispatch``: one model per domain (the backbone and that domain's kernel in its serving form, the backbone's
  weights shared), the batch's rows routed to their domain's model in Python and put back in order;
- ``backbone``: the backbone alone, no adaptation, probabilities out (the reference), eager;
- ``backbone-ts``: the same traced to TorchScript (the reference for ``parallel-ts``).

The backbone is the ``mdrec/conf/backbone/dnn.yaml`` DNN (embedding 16, MLP [256, 128]) on ``--sparse`` fields with
``--vocab`` ids each and ``--dense`` dense features; the kernels are ``mdrec/conf/adapter/iak.yaml``'s (k = 50, hidden
64, on h before the head) with random weights.

Each call takes the next of 8 batches (other rows, same domain shares), as a server's calls read other embedding
rows. Each method is timed against its reference in a rotation of its own, the two taking turns call by call (so a
slow phase of a noisy machine hits both alike): parallel against backbone, parallel-ts against backbone-ts, dispatch
against backbone. One rotation of all five would favour some by what ran just before them: the traced backbone
shares its tensors with the eager one and found them in cache, while the exported model, loaded from its file, has
copies of its own that the eager parallel model had just pushed out (K = 100, B = 512: parallel-ts 1.31-1.37x in
one rotation of five, 1.20-1.24x in a rotation of the two, 1.28-1.29x from the medians of 6-8 processes that each
ran one model alone; scripts/README.md has the figures). ``--repeats`` calls per method (fewer for slow
rotations, about 20 s each, at least 10) after ``--warmup`` calls; p50 and p99 latency in ms, rows/s from the
mean, and p50 over the reference's p50 in the same rotation (the backbone row shows the parallel rotation's).

Goal (issue 5): at K = 100, B = 512, the parallel model's p50 at most 1.3x the backbone's, judged on the form that
serves, the exported model against the traced backbone; the eager ratio is printed beside it (the eager model pays
about 0.1 ms more per call in Python than the backbone does: hooks, grouping, more and smaller ops).

Usage::

    python scripts/bench_serve.py                                   # 1 thread, about 1.5 min on 2 CPU cores
    python scripts/bench_serve.py --domains 100 --batch-sizes 512 --repeats 200
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.iak import IAK
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.serve.export import export, serving_inputs
from mdrec.serve.parallel import ParallelModel
from mdrec.serve.timing import percentile, time_calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domains import make_batch, make_schema  # noqa: E402 (the sibling benchmark's synthetic schema and batches)

TARGET = (100, 512, 1.3)  # K, B, largest parallel / backbone p50 ratio
BATCHES = 8  # each call takes the next of this many batches (other rows, same shares)
ROTATIONS = (("parallel", "backbone"), ("parallel-ts", "backbone-ts"), ("dispatch", "backbone"))  # method, reference


class Dispatch(nn.Module):
    """One model per domain (shared backbone, that domain's kernel); rows routed to their domain's model."""

    def __init__(self, net: AdaptedNet, schema: Schema) -> None:
        super().__init__()
        single = Schema(schema.dataset_id, schema.sparse, schema.dense, schema.domain_field, ("d",), schema.labels)
        state = net.adapter.state_dict()
        self.models = nn.ModuleList()
        for d in range(schema.num_domains):
            adapter = IAK(single, net.backbone)
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


class Plain(nn.Module):
    """The backbone alone as a serving module: ``forward(sparse, dense, domain)`` -> probabilities ``[B, T]``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, sparse: Tensor, dense: Tensor, domain: Tensor) -> Tensor:
        return torch.sigmoid(self.backbone(Batch.unlabelled(sparse, dense, domain)).logits)


def calls(fn: Callable[..., object], inputs: list[tuple[object, ...]]) -> Callable[[], object]:
    """A function that calls ``fn`` on the next of ``inputs`` each time (round robin): each call reads other rows,
    as a server's calls do, not the embedding rows the previous call left in cache."""
    turn = itertools.cycle(inputs)
    return lambda: fn(*next(turn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512, 4096])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sparse", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--dense", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); p50 / p99 latency in ms, rows/s from the mean")
    print(f"{'K':>5} {'B':>5} {'method':>12} {'p50':>9} {'p99':>9} {'rows/s':>11} {'p50 / backbone':>15}")
    verdicts: dict[str, float] = {}
    for k in args.domains:
        torch.manual_seed(0)
        schema = make_schema(k, args.sparse, args.vocab, args.dense)
        backbone = DNNBackbone(schema, EmbeddedInput, [256, 128], dropout=0.2).eval()
        net = AdaptedNet(schema, backbone, IAK(schema, backbone)).eval()
        with torch.no_grad():
            for p in net.adapter.parameters():
                p.add_(0.1 * torch.randn_like(p))  # away from the identity start
        model = ParallelModel(net, schema, IAK)
        with tempfile.TemporaryDirectory() as tmp:
            scripted = export(model, make_batch(schema, 64, seed=1), Path(tmp) / "serving.pt")
        dispatch = Dispatch(net, schema)
        plain = Plain(backbone).eval()
        with torch.no_grad():
            plain_ts = torch.jit.trace(plain, serving_inputs(make_batch(schema, 64, seed=1))[:3], check_trace=False)
        for b in args.batch_sizes:
            batches = [make_batch(schema, b, seed=b * BATCHES + i) for i in range(BATCHES)]
            inputs = [serving_inputs(batch)[:3] for batch in batches]  # sparse, dense, domain
            fns = {
                "parallel": calls(model, inputs),
                "parallel-ts": calls(scripted, inputs),
                "dispatch": calls(dispatch, [(batch,) for batch in batches]),
                "backbone": calls(plain, inputs),
                "backbone-ts": calls(plain_ts, inputs),
            }
            results: dict[str, tuple[list[float], list[float]]] = {}  # method -> (its times, its reference's)
            for name, reference in ROTATIONS:
                pair = {name: fns[name], reference: fns[reference]}
                with torch.inference_mode():
                    start = time.perf_counter()
                    for fn in pair.values():
                        fn()
                    repeats = max(10, min(args.repeats, int(20 / (time.perf_counter() - start))))  # about 20 s
                    times = time_calls(pair, repeats, args.warmup)
                results[name] = times[name], times[reference]
                results.setdefault(reference, (times[reference], times[reference]))
            for name in fns:
                values, reference_values = results[name]
                p50 = percentile(values, 0.5)
                ratio = p50 / percentile(reference_values, 0.5)
                rows = b / statistics.fmean(values)
                print(
                    f"{k:>5} {b:>5} {name:>12} {p50 * 1e3:>9.3f} {percentile(values, 0.99) * 1e3:>9.3f} "
                    f"{rows:>11,.0f} {ratio:>14.2f}x"
                )
                if (k, b) == TARGET[:2] and name.startswith("parallel"):
                    verdicts[name] = ratio
    if verdicts:
        ratio = verdicts["parallel-ts"]
        status = "PASS" if ratio <= TARGET[2] else "FAIL"
        print(
            f"goal: K = {TARGET[0]}, B = {TARGET[1]}: the served (exported) parallel model's p50 = {ratio:.2f}x "
            f"backbone-ts (<= {TARGET[2]}x): {status}"
        )
        print(f"      for information, eager against eager (Python dispatch included): {verdicts['parallel']:.2f}x")


if __name__ == "__main__":
    main()
