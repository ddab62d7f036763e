"""What mdrec-train does around each job: tags enforced for experiments, the config tree, a machine's own
settings (local/default.yaml), the model summary without FLOPs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.utilities.model_summary import summarize

from mdrec.models.dnn import DNNBackbone
from mdrec.train import extras as extras_module
from mdrec.train.extras import Extras
from mdrec.train.model_summary import ModelSummary
from mdrec.train.module import RankingModule
from tests.helpers import TrainCfg, toy_schema


def test_an_experiment_without_tags_fails_without_a_terminal_and_asks_with_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = Extras(print_config=False, enforce_tags=True)
    cfg = OmegaConf.create({"tags": []})
    quiet.apply(cfg, experiment=None, can_ask=False)  # no experiment: nothing to enforce
    with pytest.raises(ValueError, match=r"experiment=mine sets no tags .* \(experiment/mine.yaml\), pass tags="):
        quiet.apply(cfg, experiment="mine", can_ask=False)
    monkeypatch.setattr(extras_module.Prompt, "ask", lambda *args, **kw: " ablation, , seed0 ")
    quiet.apply(cfg, experiment="mine", can_ask=True)
    assert list(cfg.tags) == ["ablation", "seed0"]
    Extras(print_config=False, enforce_tags=False).apply(OmegaConf.create({"tags": []}), "mine", can_ask=False)
    assert capsys.readouterr().out == ""
    Extras(print_config=True, enforce_tags=True).apply(cfg, experiment="mine", can_ask=False)  # it has tags now
    assert "tags: " in capsys.readouterr().out


def test_a_local_config_is_loaded_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train_cfg: TrainCfg
) -> None:
    assert train_cfg([]).threads is None  # none there: not required
    (tmp_path / "mine" / "local").mkdir(parents=True)
    (tmp_path / "mine" / "local" / "default.yaml").write_text("# @package _global_\nthreads: 3\n")
    monkeypatch.setenv("MDREC_CONFIG_DIR", str(tmp_path / "mine"))
    assert train_cfg([]).threads == 3
    assert train_cfg(["threads=2"]).threads == 2  # the command line still wins


def test_the_model_summary_has_no_flops(caplog: pytest.LogCaptureFixture) -> None:
    schema = toy_schema()
    module = RankingModule(DNNBackbone(schema, layer_sizes=[8]), schema, optimizer=lambda p: None)
    module.net.mlp.requires_grad_(False)
    summary = summarize(module, max_depth=1)
    with caplog.at_level(logging.INFO, logger="mdrec.train.model_summary"):
        ModelSummary.summarize(
            summary._get_summary_data(),
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            total_flops=0,
        )
    (message,) = caplog.messages
    frozen = sum(p.numel() for p in module.net.mlp.parameters())
    total = sum(p.numel() for p in module.parameters())
    assert message.startswith(f"model: {total - frozen} trainable, {frozen} frozen, {total} parameters")
    assert "FLOPs" not in message and message.splitlines()[1].split() == ["name", "type", "mode", "params"]
    assert [line.split() for line in message.splitlines()[3:]] == [["net", "DNNBackbone", "train", str(total)]]
