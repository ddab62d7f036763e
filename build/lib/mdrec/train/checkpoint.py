"""Checkpoints a crash cannot corrupt, the random state a resumed run continues from, and where a resume starts."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from mdrec.rundir import checksum_file, load_weights, save_checked


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each local checkpoint to a temporary file beside its target, flushed and fsynced, then renames it
    onto the target (``os.replace``, atomic on POSIX): a crash while writing leaves the previous file as it was.
    Its sha256 goes beside it (``<file>.ckpt.sha256``, :func:`mdrec.rundir.save_checked`), for
    :func:`load_checkpoint` to check.

    Lightning's own writer stages the file in the system temp directory and moves it without fsync, which
    turns into a plain copy when that directory is on another file system. Every checkpoint the trainer writes
    goes through here, ``last.ckpt`` included (``save_last: true`` saves it anew; ``link`` would point it at a
    checkpoint written here).
    Remote paths keep Lightning's writer.

    Example:
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_checked(path, lambda f: torch.save(checkpoint, f))

    def remove_checkpoint(self, path: str | Path) -> None:
        """Remove the checkpoint (a top-k checkpoint pushed out, the previous ``last.ckpt``) and its checksum."""
        super().remove_checkpoint(path)
        if isinstance(get_filesystem(path), LocalFileSystem):
            checksum_file(Path(path)).unlink(missing_ok=True)


def rng_states() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and CUDA) in types ``torch.load(weights_only=True)``
    reads back."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": (version, list(state), gauss),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, checked against the sha256 recorded when it was written (a checkpoint without one,
    from an mdrec older than checksums, loads with a warning), then read with ``torch.load(weights_only=True)``:
    tensors and plain containers only, so a crafted file cannot run code.

    Raises:
        ValueError: the file is corrupted (its checksum differs: truncated, flipped bytes), does not load as plain
            values (garbage, crafted, from another program), or is not a Lightning checkpoint; the error names the
            file and says what to do.
    """
    remedy = (
        "Delete it (and its .sha256) and resume from an earlier checkpoint (ckpt_path=<another file of its "
        "checkpoints/ folder>), or re-run without ckpt_path to start afresh"
    )
    checkpoint = load_weights(path, remedy)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"checkpoint {path} is not a Lightning checkpoint (no state_dict); give a .ckpt an mdrec run wrote"
        )
    return checkpoint


def resume_path(ckpt_path: str | None, checkpointing: ModelCheckpoint | None) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from: ``ckpt_path`` itself, or for ``last`` the ModelCheckpoint's
    ``<dirpath>/last.ckpt`` (``<output_dir>/checkpoints/last.ckpt``); None starts fresh.

    Raises:
        FileNotFoundError: the checkpoint is not there (Lightning would warn and train from scratch).
        ValueError: the file is corrupted or does not load as plain tensors and values (:func:`load_checkpoint`).
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        if checkpointing is None or checkpointing.dirpath is None:
            raise ValueError(
                "ckpt_path=last resumes from the last.ckpt of the ModelCheckpoint callback's dirpath, but this run "
                "has no ModelCheckpoint with a dirpath (callbacks.model_checkpoint); give ckpt_path=<file>.ckpt"
            )
        ckpt_path = str(Path(checkpointing.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt")
    if not get_filesystem(ckpt_path).isfile(ckpt_path):
        raise FileNotFoundError(
            f"ckpt_path: no checkpoint at {ckpt_path}; resume a run in its own directory with "
            "hydra.run.dir=<run dir> ckpt_path=last, or give the path of an existing .ckpt file"
        )
    load_checkpoint(ckpt_path)  # refused here, naming the file, before Lightning reads it
    return ckpt_path
