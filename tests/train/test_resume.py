"""Resuming: where a resume starts, a checkpoint saved inside an epoch, per-domain selection's state (a run killed
and resumed end to end: tests/reliability/test_kill_and_resume.py)."""

from __future__ import annotations

import io
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
