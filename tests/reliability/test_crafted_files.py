"""Files mdrec reads back (checkpoints, a run's config.yaml, a pre-trained backbone.yaml) never run code: a crafted
one is refused with an error naming the file, and its payload does not run."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mdrec.rundir import RunDir, check_targets, is_safe_target
from mdrec.serve.cli import load_run
from mdrec.train.checkpoint import load_checkpoint
from mdrec.train.run import train
from tests.helpers import SCHEMA, TrainCfg


class Payload:
    """Unpickling this writes ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def opens(marker: Path) -> dict:
    """A config node whose instantiation creates ``marker`` (``open(marker, "w")``)."""
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


def test_a_crafted_checkpoint_is_refused_naming_it_and_does_not_run(train_cfg: TrainCfg, tmp_path: Path) -> None:
    marker, ckpt = tmp_path / "marker", tmp_path / "last.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": {}, "epoch": Payload(marker)}))
    with pytest.raises(ValueError, match=rf"{ckpt} does not load as plain tensors"):
        load_checkpoint(ckpt)
    with pytest.raises(ValueError, match=rf"{ckpt} does not load as plain tensors"):
        train(train_cfg([f"ckpt_path={ckpt}", "trainer.max_epochs=1"]))
    assert not marker.exists()


def test_a_crafted_config_yaml_is_refused_naming_file_key_and_target(tmp_path: Path) -> None:
    marker, run = tmp_path / "marker", tmp_path / "run"
    run.mkdir()
    data = {"_target_": "mdrec.data.datamodule.MultiDomainDataModule", "source": {"nested": [opens(marker)]}}
    (run / RunDir.CONFIG).write_text(
        OmegaConf.to_yaml({"data": data, "adapter": {"_target_": "mdrec.adapters.lora.LoRA"}})
    )
    (run / RunDir.ADAPTER).write_bytes(b"")
    with pytest.raises(ValueError, match=r"config.yaml: data.source.nested\[0\]._target_ is 'builtins.open'"):
        load_run(run, "mdrec-export")
    # an interpolation that resolves to a forbidden target is caught too
    crafted = {"bad": "torch.load", "adapter": {"_target_": "${bad}"}}
    (run / RunDir.CONFIG).write_text(OmegaConf.to_yaml(crafted))
    with pytest.raises(ValueError, match=r"adapter._target_ is 'torch.load'"):
        RunDir(run).adapter_factory()
    assert not marker.exists()


def test_a_crafted_backbone_yaml_is_refused(train_cfg: TrainCfg, tmp_path: Path) -> None:
    marker, pre = tmp_path / "marker", tmp_path / "pre"
    pre.mkdir()
    backbone = OmegaConf.to_container(train_cfg([]).backbone, resolve=True)
    backbone["input"] = opens(marker)
    (pre / RunDir.BACKBONE_CONFIG).write_text(OmegaConf.to_yaml(backbone))
    (pre / RunDir.BACKBONE).write_bytes(b"")
    with pytest.raises(ValueError, match=r"backbone.yaml: input._target_ is 'builtins.open'"):
        RunDir(pre).load_backbone(SCHEMA)  # refused before anything is built
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    ["mdrec.rundir.torch.load", "mdrec.rundir.np.load", "mdrec.train.run.train", "mdrec.rundir", "builtins.eval"],
)
def test_attribute_paths_through_mdrec_modules_and_functions_are_refused(tmp_path: Path, target: str) -> None:
    with pytest.raises(ValueError, match=rf"x._target_ is '{target}'"):
        check_targets({"x": {"_target_": target}}, tmp_path / "config.yaml", "")


def test_a_users_own_class_loads_once_its_module_is_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mybackbones.py").write_text(
        "from mdrec.models.dnn import DNNBackbone\n\nclass MyDNN(DNNBackbone):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    value = {"_target_": "mybackbones.MyDNN"}
    with pytest.raises(ValueError, match=r"add its module to \$MDREC_TRUSTED_MODULES"):
        check_targets(value, tmp_path / "backbone.yaml", "")
    monkeypatch.setenv("MDREC_TRUSTED_MODULES", "other, mybackbones")
    check_targets(value, tmp_path / "backbone.yaml", "")
    assert not is_safe_target("mybackbones.DNNBackbone")  # imported there, defined elsewhere: not by that name
