"""Checkpoints a crash cannot corrupt, the random state a resumed run continues from, where a resume starts, and the
network a finished run selected."""

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
from torch import nn

from mdrec.data.schema import Schema
from mdrec.rundir import RunDir, checksum_file, load_state_strict, load_weights, save_checked


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


def load_selected(run_dir: RunDir, schema: Schema) -> nn.Module:
    """The network the run selected (and tested), rebuilt for ``schema`` and loaded strictly: an adapted network
    (``adapter.pt``: adapt and onboard runs), else the backbone (``backbone.pt``: pretrain runs, adapt runs without
    an adapter), else the network (``network.pt``: specialise runs), else ``model.net`` with the weights of the
    best validation checkpoint (train runs; the last one when no checkpoint was selected on a metric).

    Raises:
        FileNotFoundError: the run kept no weights (a ``debug=fdr`` run keeps no checkpoint).
        ValueError: a file is corrupted or was not written by mdrec, or the weights do not fit ``schema``.
    """
    if run_dir.exists(RunDir.ADAPTER):
        return run_dir.load_adapted(schema)
    if run_dir.has_backbone():
        return run_dir.load_backbone(schema)
    if run_dir.exists(RunDir.NETWORK):
        return run_dir.load_network(schema)
    checkpoint = selected_checkpoint(run_dir)
    net = run_dir.build_network(schema)
    state = load_checkpoint(checkpoint)["state_dict"]
    if any(key.startswith("net.net.") for key in state):  # a SharedFrozen network: stage=specialise writes network.pt
        raise FileNotFoundError(
            f"{run_dir.path} is a stage=specialise run that did not finish: it has no {RunDir.NETWORK} (its "
            "checkpoints hold one epoch, not each domain's selected slices); run it again"
        )
    load_state_strict(net, {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}, str(checkpoint))
    return net


def holds_weights(run_dir: RunDir) -> bool:
    """Whether :func:`load_selected` finds weights in ``run_dir``."""
    kept = (RunDir.ADAPTER, RunDir.BACKBONE, RunDir.NETWORK, f"{RunDir.CHECKPOINTS}/last.ckpt")
    return any(run_dir.exists(name) for name in kept)


def selected_checkpoint(run_dir: RunDir) -> Path:
    """The checkpoint a train run tested: the best one its ModelCheckpoint recorded in ``checkpoints/last.ckpt``
    (found in this directory, wherever the run was written), else ``last.ckpt`` itself."""
    last = run_dir.file(RunDir.CHECKPOINTS) / "last.ckpt"
    if not last.exists():
        raise FileNotFoundError(
            f"{run_dir.path} holds no weights (no adapter.pt, backbone.pt, network.pt or "
            f"{RunDir.CHECKPOINTS}/last.ckpt): the run kept none (debug=fdr keeps no checkpoint) or did not finish; "
            "give a finished run without debug=fdr"
        )
    states = load_checkpoint(last).get("callbacks", {})
    best = [s.get("best_model_path") for k, s in states.items() if k.startswith("ModelCheckpoint")]
    return last.with_name(Path(best[0]).name) if best and best[0] else last
