"""Atomic checkpoint writes and the random states a checkpoint carries."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch

from mdrec.train.checkpoint import AtomicCheckpointIO, load_checkpoint, rng_states, set_rng_states
from tests.helpers import TrainCfg

CHECKPOINT = {"state_dict": {"w": torch.arange(100_000, dtype=torch.float32)}, "epoch": 0}


def half_then(error: BaseException) -> Callable[..., None]:
    """A ``torch.save`` that writes half of the file, then raises ``error``."""
    real_save = torch.save

    def save(obj: object, f: io.BufferedWriter) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise error

    return save


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT, path)
    monkeypatch.setattr(torch, "save", half_then(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({**CHECKPOINT, "epoch": 1}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 0  # and it still matches its checksum
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    script = f"""
import io, os, signal, torch
from mdrec.train.checkpoint import AtomicCheckpointIO
checkpoint = {{"state_dict": {{"w": torch.arange(100_000, dtype=torch.float32)}}, "epoch": 0}}
AtomicCheckpointIO().save_checkpoint(checkpoint, {str(path)!r})
real_save = torch.save
def save(obj, f):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
AtomicCheckpointIO().save_checkpoint({{**checkpoint, "epoch": 1}}, {str(path)!r})
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == -9, process.stderr
    loaded = load_checkpoint(path)  # it still matches its checksum
    assert loaded["epoch"] == 0 and torch.equal(loaded["state_dict"]["w"], CHECKPOINT["state_dict"]["w"])
    (partial,) = (p for p in tmp_path.iterdir() if p.name not in ("last.ckpt", "last.ckpt.sha256"))  # the kill's
    assert partial.name.startswith(".last.ckpt.tmp-")


def test_every_run_writes_checkpoints_atomically(train_cfg: TrainCfg) -> None:
    for trainer_cfg in ("cpu", "gpu"):
        cfg = train_cfg([f"trainer={trainer_cfg}", "trainer.accelerator=cpu"])
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_random_states_round_trip_through_a_weights_only_checkpoint() -> None:
    buffer = io.BytesIO()
    torch.save({"rng_states": rng_states()}, buffer)
    draws = (random.random(), np.random.rand(), torch.rand(3))
    buffer.seek(0)
    set_rng_states(torch.load(buffer, weights_only=True)["rng_states"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])
