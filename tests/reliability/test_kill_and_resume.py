"""A training process killed mid-epoch (SIGKILL) resumes from its last checkpoint and ends exactly where an
uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mdrec.train.checkpoint import load_checkpoint

# ~310 steps of a small network per epoch (about a second, so the kill lands inside the second epoch); at this
# learning rate validation improves every epoch, so the selected model is one trained after the resume
OVERRIDES = [
    "seed=5",
    "model.optimizer.lr=1e-4",
    "data.source.num_rows=100000",
    "data.batch_size=256",
    "backbone.layer_sizes=[32]",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "+logger.csv.flush_logs_every_n_steps=1",  # metrics.csv shows each step: the test sees the second epoch start
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
]


def start(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """``python -m mdrec.train`` writing to ``run_dir``, with the shared data directory under ``tmp_path``."""
    args = [f"hydra.run.dir={run_dir}", f"paths.data_dir={tmp_path / 'data'}", *OVERRIDES, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp_path / f"{run_dir.name}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mdrec.train", *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def finish(tmp_path: Path, process: subprocess.Popen, run_dir: Path) -> dict[str, float]:
    """Wait for ``process``; return its metrics.json without the wall times."""
    assert process.wait(timeout=120) == 0, (tmp_path / f"{run_dir.name}.log").read_text()[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def training_epoch(run_dir: Path) -> int:
    """The epoch of the last training step in the run's metrics.csv (-1 before the first one)."""
    path = run_dir / "csv" / "version_0" / "metrics.csv"
    lines = path.read_text().splitlines() if path.exists() else []
    return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else -1


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """The test's training processes; any still running at the end (a failed test) is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(
    tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    killed, reference_dir = tmp_path / "killed", tmp_path / "reference"
    processes.append(start(tmp_path, killed))
    deadline = time.monotonic() + 90
    while training_epoch(killed) < 1:  # the first epoch checkpointed, the second one under way
        assert processes[0].poll() is None and time.monotonic() < deadline, "the run ended before its second epoch"
        time.sleep(0.02)
    os.kill(processes[0].pid, signal.SIGKILL)
    assert processes[0].wait() == -signal.SIGKILL
    last = killed / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["epoch"] == 0, "the kill came after the second epoch's checkpoint"
    assert not (killed / "metrics.json").exists()

    # the resumed run and the uninterrupted reference side by side (the data is prepared)
    processes.extend([start(tmp_path, killed, "ckpt_path=last"), start(tmp_path, reference_dir)])
    resumed, reference = (finish(tmp_path, p, d) for p, d in zip(processes[1:], (killed, reference_dir), strict=True))

    for key in ["test/auc", "train/epochs", "val/auc_best", *(f"test/auc/d{d}" for d in range(4))]:
        assert resumed[key] == reference[key], key
    assert json.dumps(resumed, sort_keys=True) == json.dumps(reference, sort_keys=True)  # every figure, bit for bit
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == sorted(
        p.name for p in (reference_dir / "checkpoints").iterdir()
    )  # no temporary file left, and the same best checkpoint kept
    weights = [load_checkpoint(d / "checkpoints" / "last.ckpt")["state_dict"] for d in (killed, reference_dir)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the final weights too
