"""Every binary file mdrec writes for later loading (Lightning checkpoints, ``backbone.pt``, ``adapter.pt``,
``serving.pt``, ``predictions.npz``) carries its sha256 beside it (``<file>.sha256``), checked when it is loaded: a
corrupted file (flipped bytes, cut short, emptied, overwritten) is refused with an error naming it and saying what to
do, never a bare ``EOFError`` or ``failed finding central directory``; a file without a checksum (an older mdrec)
loads with a warning."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.lora import LoRA
from mdrec.models.dnn import DNNBackbone
from mdrec.rundir import RunDir, UncheckedFileWarning
from mdrec.serve.export import export, load_serving
from mdrec.serve.parallel import ParallelModel
from mdrec.train.checkpoint import AtomicCheckpointIO, load_checkpoint, resume_path
from tests.helpers import SCHEMA, embedded, make_batch, perturb


class Wide(pl.LightningModule):
    """A 128 x 128 linear map fitted to random targets: its checkpoints are mostly tensor bytes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(128, 128)

    def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def flip(path: Path, at: int, count: int = 4) -> None:
    """Invert ``count`` bytes of the file from offset ``at``."""
    data = bytearray(path.read_bytes())
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.write_bytes(bytes(data))


def tensors(value: object) -> list[torch.Tensor]:
    """Every tensor in a checkpoint (weights, optimiser state), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in tensors(item)]
    return []


def test_a_checkpoint_with_flipped_bytes_is_refused_naming_it(tmp_path: Path) -> None:
    checkpointing = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="train_loss", save_last=True)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", plugins=[AtomicCheckpointIO()], callbacks=[checkpointing], logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    data = TensorDataset(torch.randn(64, 128), torch.randn(64, 128))
    trainer.fit(Wide(), DataLoader(data, batch_size=16))
    best, last = Path(checkpointing.best_model_path), tmp_path / "checkpoints" / "last.ckpt"
    # each checkpoint has its checksum; those of the best checkpoints pushed out (epochs 0, 1) went with them
    assert best.name == "epoch=2-step=12.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(
        [best.name, f"{best.name}.sha256", "last.ckpt", "last.ckpt.sha256"]
    )
    assert (
        last.parent / "last.ckpt.sha256"
    ).read_text() == f"{hashlib.sha256(last.read_bytes()).hexdigest()}  last.ckpt\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncheckedFileWarning)  # checked, so no warning
        assert resume_path("last", checkpointing) == str(last)
        intact = tensors(load_checkpoint(last))

    flip(last, last.stat().st_size // 2)
    expected = re.escape(f"{last} is corrupted: its sha256 is ") + ".*resume from an earlier checkpoint"
    with pytest.raises(ValueError, match=expected):
        resume_path("last", checkpointing)
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(last)
    # without its checksum, torch reads the flipped bytes as weights, without a word
    (last.parent / "last.ckpt.sha256").unlink()
    with pytest.warns(UncheckedFileWarning, match=re.escape(f"{last} has no checksum (last.ckpt.sha256)")):
        flipped = tensors(load_checkpoint(last))
    assert len(flipped) == len(intact) and not all(torch.equal(a, b) for a, b in zip(flipped, intact, strict=True))


def write_checkpoint(run: RunDir) -> tuple[Path, Callable[[], object]]:
    path = run.file(RunDir.CHECKPOINTS) / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.arange(10_000.0)}, "epoch": 3}, path)
    return path, lambda: resume_path(str(path), None)


def write_backbone(run: RunDir) -> tuple[Path, Callable[[], object]]:
    torch.manual_seed(0)
    input_cfg = {"_target_": "mdrec.models.inputs.EmbeddedInput", "_partial_": True, "embedding_dim": 8}
    cfg = {"_target_": "mdrec.models.dnn.DNNBackbone", "_partial_": True, "input": input_cfg, "layer_sizes": [16]}
    run.save_backbone(DNNBackbone(SCHEMA, embedded(8), [16]), OmegaConf.create(cfg))
    return run.file(RunDir.BACKBONE), lambda: run.load_backbone(SCHEMA)


def write_adapter(run: RunDir) -> tuple[Path, Callable[[], object]]:
    write_backbone(run)
    run.save_adapter(LoRA(SCHEMA, run.load_backbone(SCHEMA), rank=2))
    run.write_config(OmegaConf.create({"adapter": {"_target_": "mdrec.adapters.lora.LoRA", "rank": 2}}))
    return run.file(RunDir.ADAPTER), lambda: run.load_adapted(SCHEMA)


def write_serving(run: RunDir) -> tuple[Path, Callable[[], object]]:
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedded(8), [16]).eval()
    net = perturb(AdaptedNet(SCHEMA, backbone, LoRA(SCHEMA, backbone, rank=2))).eval()
    path = run.file(RunDir.SERVING)
    export(ParallelModel(net, SCHEMA, lambda s, b: LoRA(s, b, rank=2)), make_batch(16), path)
    return path, lambda: load_serving(path)


def write_predictions(run: RunDir) -> tuple[Path, Callable[[], object]]:
    g = np.random.default_rng(0)
    run.write_predictions({"prob": g.random((500, 1)), "label": g.integers(0, 2, (500, 1)), "domains": np.array(["a"])})
    return run.file(RunDir.PREDICTIONS), run.read_predictions


# each file, what writes it, and the end of the error: what to do
FILES = {
    "checkpoint": (write_checkpoint, "resume from an earlier checkpoint"),
    "backbone": (write_backbone, "re-run the job that wrote"),
    "adapter": (write_adapter, "re-run the job that wrote"),
    "serving": (write_serving, "export it again"),
    "predictions": (write_predictions, "re-run the job that wrote"),
}


@pytest.mark.parametrize("kind", list(FILES))
def test_a_corrupted_file_is_refused_naming_it_and_one_without_checksum_loads_with_a_warning(
    kind: str, tmp_path: Path
) -> None:
    write, remedy = FILES[kind]
    path, load = write(RunDir(tmp_path / "run"))
    record = path.with_name(path.name + ".sha256")
    good = path.read_bytes()
    assert record.read_text() == f"{hashlib.sha256(good).hexdigest()}  {path.name}\n"  # sha256sum's format
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncheckedFileWarning)
        load()  # checked: no warning
    middle = bytearray(good)
    middle[len(good) // 2] ^= 0xFF
    corrupted = {
        "flipped": bytes(middle),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": b"this is not what mdrec wrote\n" * 50,
    }
    for data in corrupted.values():
        path.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(f"{path} is corrupted: its sha256") + f".*{remedy}"):
            load()
    # a file from an mdrec that wrote no checksums: corrupted, it is refused all the same, naming it
    record.unlink()
    for name, data in corrupted.items():
        if name == "flipped":
            continue  # without a checksum, bytes flipped inside a tensor go unseen (the test above)
        path.write_bytes(data)
        with pytest.warns(UncheckedFileWarning, match="has no checksum"):
            with pytest.raises(ValueError, match=re.escape(f"{path} does not load as") + f".*{remedy}"):
                load()
    path.write_bytes(good)  # intact: it loads, with a warning
    with pytest.warns(UncheckedFileWarning, match=re.escape(f"{path} has no checksum ({record.name})")):
        load()
    record.write_text("not a checksum\n")
    with pytest.raises(ValueError, match=re.escape(f"{record} does not hold a sha256") + f".*{remedy}"):
        load()


def test_a_linked_checkpoint_is_checked_against_its_target(tmp_path: Path) -> None:
    from mdrec.rundir import save_checked
    from mdrec.train.checkpoint import load_checkpoint

    target, link = tmp_path / "epoch_003.ckpt", tmp_path / "last.ckpt"
    save_checked(target, lambda f: torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 3}, f))
    link.symlink_to(target.name)  # what save_last=link makes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no checksum" warning: the target's record is used
        assert load_checkpoint(link)["epoch"] == 3
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        load_checkpoint(link)
