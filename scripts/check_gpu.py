"""The GPU path in one run: the tests marked ``gpu``, training from the CLI, a DCNv2 training step's throughput and
serving on the device, each printed with its figures.

Steps (each prints its lines; a failing step is reported and the next one runs):

1. ``pytest -m gpu``: the tests that need a CUDA device (skipped elsewhere).
2. Training through the CLI on the embedded synthetic data, ``trainer.precision`` as ``--precision``: the DNN backbone
   (the default job), ``model=star``, and ``stage=adapt adapter=iak`` (its pre-training included); test AUC and
   training samples/s (training rows x epochs / fit time) of each run.
3. A bare DCNv2 training step (Adam, autocast to bf16 on CUDA) on random batches of ``--batch-size`` rows: samples/s
   against the goal of 1M samples/s at batch 8192 on one H100-class GPU.
4. Serving on the device: the parallel IAK model at K = 100 (random kernels, as ``bench_serve.py``) traced to
   TorchScript and exported with AOTInductor on the device, each checked against the eager model (max difference)
   and timed against the backbone in the same format at B = 512 and 8192 (p50 ms).

Usage::

    python scripts/check_gpu.py    # a machine with a CUDA GPU: about 5 minutes

A dry run of the same steps on CPU, small: ``--device cpu --precision 32 --epochs 1 --rows 20000 --steps 3
--batch-size 512 --skip-tests``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.iak import IAK
from mdrec.models.dcnv2 import DCNv2Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.serve.export import export, export_aoti, serving_inputs
from mdrec.serve.parallel import NetworkModel, ParallelModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domains import make_batch, make_schema  # noqa: E402 (the sibling benchmark's synthetic schema and batches)

GOAL = 1_000_000  # DCNv2 training samples/s at batch 8192 on one H100-class GPU
RUNS = {"dnn": [], "star": ["model=star"], "adapt-iak": ["stage=adapt", "adapter=iak"]}
SPLITS = re.compile(r"splits \{'train': (\d+)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """p50 seconds of ``fn`` over ``repeats`` calls after 3 warm-up calls, the device synchronised around each."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tests() -> None:
    code = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"])
    print(f"pytest -m gpu: exit status {code} (5: no test collected)")


def training(device: torch.device, precision: str, epochs: int, rows: int | None, out: Path) -> None:
    trainer = "trainer=gpu" if device.type == "cuda" else "trainer=cpu threads=1"
    for name, overrides in RUNS.items():
        run = out / name
        command = [sys.executable, "-m", "mdrec.train", *trainer.split(), f"trainer.precision={precision}"]
        command += [f"trainer.max_epochs={epochs}", f"hydra.run.dir={run}", *overrides]
        command += [] if rows is None else [f"data.source.num_rows={rows}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: FAILED ({' '.join(command[1:])})\n{done.stderr[-3000:]}")
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        rows = int(SPLITS.search((run / "cli.log").read_text()).group(1))
        speed = rows * metrics["train/epochs"] / metrics["time/fit_seconds"]
        print(f"{name}: test AUC {metrics['test/auc']:.4f}, {speed:,.0f} training samples/s ({precision})")


def dcnv2_throughput(device: torch.device, batch_size: int, steps: int) -> None:
    schema = make_schema(4, 20, 100_000, 5)
    torch.manual_seed(0)
    net = DCNv2Backbone(schema, EmbeddedInput).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=device.type == "cuda")
    batches = [make_batch(schema, batch_size, seed=i).to(device) for i in range(4)]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step(batch=batches[0]) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = F.binary_cross_entropy_with_logits(net(batch).logits.float(), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    speed = batch_size / timed(step, device, steps)
    verdict = "PASS" if speed >= GOAL else "FAIL"
    print(f"DCNv2 training step, batch {batch_size}: {speed:,.0f} samples/s (goal {GOAL:,} at batch 8192: {verdict})")


def serving(device: torch.device, repeats: int, out: Path) -> None:
    torch.manual_seed(0)
    schema = make_schema(100, 20, 10_000, 5)
    backbone = DNNBackbone(schema, EmbeddedInput, [256, 128], dropout=0.2).eval()
    net = AdaptedNet(schema, backbone, IAK(schema, backbone)).eval()
    with torch.no_grad():
        for p in net.adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from the identity start
    models = {"parallel": ParallelModel(net, schema, IAK), "backbone": NetworkModel(backbone, schema)}
    models = {name: model.to(device) for name, model in models.items()}
    example = make_batch(schema, 64, seed=1).to(device)
    for fmt, write, suffix in (("torchscript", export, ".pt"), ("aoti", export_aoti, ".pt2")):
        served = {name: write(model, example, out / f"{name}{suffix}") for name, model in models.items()}
        for b in (512, 8192):
            inputs = serving_inputs(make_batch(schema, b, seed=b).to(device))
            with torch.inference_mode():
                gap = float((served["parallel"](*inputs) - models["parallel"](*inputs)).abs().max())
                p50 = {name: timed(lambda f=fn, x=inputs: f(*x), device, repeats) for name, fn in served.items()}
            ratio = p50["parallel"] / p50["backbone"]
            print(
                f"serving {fmt}, K = 100, B = {b}: parallel {p50['parallel'] * 1e3:.3f} ms vs backbone "
                f"{p50['backbone'] * 1e3:.3f} ms ({ratio:.2f}x), {b / p50['parallel']:,.0f} rows/s, max difference "
                f"from eager {gap:.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    parser.add_argument("--precision", default="bf16-mixed", help="the CLI runs' trainer.precision")
    parser.add_argument("--epochs", type=int, default=3, help="the CLI runs' trainer.max_epochs")
    parser.add_argument("--rows", type=int, help="the synthetic data's rows (default: the config's, 300,000)")
    parser.add_argument("--batch-size", type=int, default=8192, help="the DCNv2 step's batch")
    parser.add_argument("--steps", type=int, default=50, help="timed DCNv2 steps and serving calls")
    parser.add_argument("--skip-tests", action="store_true", help="leave out pytest -m gpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --device cpu for a dry run")
    if device.type == "cpu":
        torch.set_num_threads(1)  # a dry run: one thread, so a busy machine does not oversubscribe its cores
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {device} ({name})")
    steps: list[Callable[[Path], None]] = [
        lambda out: training(device, args.precision, args.epochs, args.rows, out),
        lambda out: dcnv2_throughput(device, args.batch_size, args.steps),
        lambda out: serving(device, args.steps, out),
    ]
    if not args.skip_tests:
        steps.insert(0, lambda out: tests())
    with tempfile.TemporaryDirectory() as tmp:
        for i, step in enumerate(steps):
            try:
                step(Path(tmp) / str(i))
            except Exception as error:  # a failing step is reported; the others still run
                print(f"step {i + 1} failed: {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
