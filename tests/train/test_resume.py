"""A training process killed mid-epoch resumes from its last checkpoint and ends exactly where an uninterrupted
run with the same seed ends."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from mdrec.data.batch import Batch
from mdrec.data.loader import BatchLoader
from mdrec.data.schema import Schema, SparseField
from mdrec.data.store import ColumnStore, write_store
from mdrec.train.checkpoint import AtomicCheckpointIO, resume_path
from mdrec.train.selection import DomainSelection

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
    "+trainer.enable_progress_bar=false",
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
    assert torch.load(last, weights_only=False)["epoch"] == 0, "the kill came after the second epoch's checkpoint"
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
    weights = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for d in (killed, reference_dir)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the final weights too


def test_a_missing_checkpoint_is_an_error_naming_its_path(tmp_path: Path) -> None:
    checkpointing = ModelCheckpoint(dirpath=tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoints" / "last.ckpt")):
        resume_path("last", checkpointing)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "other.ckpt")):
        resume_path(str(tmp_path / "other.ckpt"), checkpointing)
    with pytest.raises(ValueError, match="callbacks.model_checkpoint"):
        resume_path("last", None)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "epoch": 0}, tmp_path / "checkpoints" / "last.ckpt")
    assert resume_path("last", checkpointing) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resume_path(None, checkpointing) is None


class Tiny(pl.LightningModule):
    """A linear model on a batch's dense features; records the rows of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(2, 1)
        self.rows: list[list[int]] = []

    def training_step(self, batch: Batch, index: int) -> torch.Tensor:
        self.rows.append(batch.sparse[:, 0].tolist())
        return torch.nn.functional.mse_loss(self.layer(batch.dense), batch.labels)

    def validation_step(self, batch: Batch, index: int) -> None:
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch.dense), batch.labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.1)


def test_a_checkpoint_saved_inside_an_epoch_resumes_exactly(tmp_path: Path) -> None:
    """BatchLoader is resumable: from a checkpoint saved inside an epoch (every 3 steps, or by a validation in the
    middle of the epoch) the run trains the epoch's other batches, in the same order, and ends where an
    uninterrupted run ends."""
    n = 40
    schema = Schema("rows", (SparseField("row", n + 1),), ("x", "y"), "domain", ("a", "b"), ("click",))
    g = np.random.default_rng(0)
    columns = {"row": np.arange(1, n + 1), "x": g.normal(size=n), "y": g.normal(size=n)}
    write_store(tmp_path / "store", schema, {**columns, "domain": np.arange(n) % 2, "click": np.arange(n) % 2})
    store = ColumnStore(tmp_path / "store")

    def fit(ckpt_path: str | None = None, callbacks: list[pl.Callback] | None = None) -> Tiny:
        model = Tiny()
        train = BatchLoader(store, np.arange(n), batch_size=4, shuffle=True, seed=1)  # 10 steps an epoch
        val = BatchLoader(store, np.arange(n), batch_size=20, shuffle=False)
        trainer = pl.Trainer(
            max_epochs=2, val_check_interval=0.5, num_sanity_val_steps=0, callbacks=callbacks or [], logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path / "fits",
        )  # fmt: skip
        trainer.fit(model, train, val, ckpt_path=ckpt_path)
        return model

    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    validations = ModelCheckpoint(dirpath=tmp_path / "val", monitor="val_loss", save_top_k=-1, filename="{step}")
    reference = fit(callbacks=[steps, validations])
    weights = reference.state_dict()
    for path in ("steps/step=3.ckpt", "steps/step=12.ckpt", "val/step=5.ckpt", "val/step=10.ckpt"):
        resumed = fit(str(tmp_path / path))
        done = int(path.split("=")[1].split(".")[0])
        assert resumed.rows == reference.rows[done:], path  # the batches not yet trained, in the same order
        assert all(torch.equal(weights[k], v) for k, v in resumed.state_dict().items()), path


def test_per_domain_selection_survives_a_resume() -> None:
    selection = DomainSelection(["a", "b"], patience=3)
    selection.best, selection.best_epoch, selection.stale = {"a": 0.7, "b": 0.6}, {"a": 1, "b": -1}, 1
    selection.snapshots = {"a": {"adapter.w": torch.ones(3)}}
    buffer = io.BytesIO()
    torch.save(selection.state_dict(), buffer)
    buffer.seek(0)
    resumed = DomainSelection(["a", "b"], patience=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.best, resumed.best_epoch, resumed.stale) == (selection.best, selection.best_epoch, 1)
    assert torch.equal(resumed.snapshots["a"]["adapter.w"], torch.ones(3))
