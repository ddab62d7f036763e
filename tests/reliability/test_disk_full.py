"""A disk that fills up while a checkpoint is written leaves the previous checkpoint intact and no temporary file
(on a real 1 MiB tmpfs, where the test may mount one)."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mdrec.train.checkpoint import AtomicCheckpointIO


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted under ``tmp_path`` (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def checkpoint(values: int, epoch: int) -> dict:
    return {"state_dict": {"w": torch.arange(values, dtype=torch.float32)}, "epoch": epoch}


def test_a_full_disk_keeps_the_previous_checkpoint(small_disk: Path) -> None:
    path = small_disk / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(100_000, 0), path)  # 400 kB
    with pytest.raises(OSError) as error:
        AtomicCheckpointIO().save_checkpoint(checkpoint(200_000, 1), path)  # 800 kB more: the disk is full
    assert error.value.errno == errno.ENOSPC and f"writing {path}" in str(error.value)
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["epoch"] == 0 and torch.equal(loaded["state_dict"]["w"], checkpoint(100_000, 0)["state_dict"]["w"])
    assert not [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]  # the partial write is gone
    AtomicCheckpointIO().save_checkpoint(checkpoint(100_000, 2), path)  # space is back: writing works again
    assert AtomicCheckpointIO().load_checkpoint(path)["epoch"] == 2
