"""The stages through the one entry point: pretrain saves a backbone, adapt finds or builds it, loads it strictly,
trains only the adapter and never ends worse than the pre-trained model on a domain's validation data."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf

from mdrec.models.dnn import DNNBackbone
from mdrec.rundir import load_state_strict
from mdrec.train.pretrained import pretrain_key
from mdrec.train.run import train
from mdrec.train.stages import Adapt, Onboard, Pretrain, Train, pretrain_config
from tests.helpers import SCHEMA, TrainCfg, embedded, stored_backbones

DOMAINS = ("d0", "d1", "d2", "d3")


def test_adapt_builds_the_backbone_once_and_keeps_step_0_per_domain(train_cfg: TrainCfg, tmp_path: Path) -> None:
    metrics = train(train_cfg(["stage=adapt", "adapter=iak", "trainer.max_epochs=2"]))
    stored = stored_backbones(tmp_path / "pretrained")
    assert len(stored) == 1 and (stored[0] / "backbone.pt").exists() and (stored[0] / "backbone.yaml").exists()
    pretrain_metrics = json.loads((stored[0] / "metrics.json").read_text())
    run = tmp_path / "run"
    assert (run / "adapter.pt").exists()
    # zero-shot is the pre-trained backbone itself: its test AUC is the pretrain run's
    assert metrics["zeroshot/test/auc"] == pytest.approx(pretrain_metrics["test/auc"], abs=1e-6)
    for d in DOMAINS:  # per-domain selection: step 0 is a candidate, so no domain is worse on validation
        assert metrics[f"val/auc/{d}"] >= metrics[f"zeroshot/val/auc/{d}"] - 1e-6
        assert metrics[f"selection/epoch/{d}"] in (-1.0, 0.0, 1.0)
    pre, kept = torch.load(stored[0] / "backbone.pt"), torch.load(run / "backbone.pt")
    for key, value in pre.items():  # the frozen backbone, batch-norm statistics included, is untouched by adapting
        assert torch.equal(kept[key], value), key
    added = torch.load(run / "adapter.pt")
    assert metrics["params/trainable"] == sum(v.numel() for v in added.values())
    assert metrics["params/added_per_domain"] == metrics["params/trainable"] / len(DOMAINS)
    assert metrics["params/total"] > metrics["params/trainable"]

    # a second adapt run of the same config with another adapter reuses the stored backbone
    lora = train(train_cfg(["stage=adapt", "adapter=lora", "adapter.rank=2", "trainer.max_epochs=2"]))
    assert stored_backbones(tmp_path / "pretrained") == stored
    assert lora["zeroshot/test/auc"] == metrics["zeroshot/test/auc"]


def test_adapt_from_a_pretrain_run_directory(train_cfg: TrainCfg, tmp_path: Path) -> None:
    pre = train_cfg(["stage=pretrain", "input=embedded", "trainer.max_epochs=1"])  # a domain-agnostic backbone
    pre.paths.output_dir = str(tmp_path / "pre")
    train(pre)
    adapt = ["stage=adapt", "adapter=head", f"stage.pretrained={tmp_path / 'pre'}", "trainer.max_epochs=1"]
    # the backbone is compared by its resolved values: stage=adapt's input embeds the domain, the saved one does not
    with pytest.raises(ValueError, match=r"backbone.input: .*'domain_as_feature': True.* here, .*False.* there"):
        train(train_cfg(adapt))
    assert not (tmp_path / "run" / "config.yaml").exists()
    metrics = train(train_cfg([*adapt, "input=embedded"]))
    assert not (tmp_path / "pretrained").exists()  # nothing pre-trained: the named run was used
    assert metrics["test/auc"] > 0.6
    # config.yaml records the backbone adapted, the one of backbone.yaml
    recorded = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert recorded.backbone == OmegaConf.load(tmp_path / "pre" / "backbone.yaml")
    assert recorded.backbone.input.domain_as_feature is False


def test_full_fine_tune_has_no_adapter_and_selects_overall(train_cfg: TrainCfg) -> None:
    cfg = train_cfg(["stage=adapt", "adapter=none", "stage.freeze=[]", "stage.select_per_domain=false"])
    metrics = train(cfg)
    assert metrics["params/trainable"] == metrics["params/total"] and metrics["params/added_per_domain"] == 0
    assert not any(k.startswith("selection/") for k in metrics)


def test_top_layer_fine_tune_runs_as_documented(train_cfg: TrainCfg) -> None:
    # adapter=none with the lower layers frozen: shared trainable weights, so selection is overall by default
    metrics = train(train_cfg(["stage=adapt", "adapter=none", "stage.freeze=[input,mlp]", "trainer.max_epochs=1"]))
    assert metrics["params/trainable"] == 128 + 1  # the output layer of the default DNN (h of 128 -> 1 logit)
    assert not any(k.startswith("selection/") for k in metrics)


def test_stage_errors(train_cfg: TrainCfg, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stage=pretrain trains a backbone, but model.net is mdrec.models.mmoe.MMoE"):
        train(train_cfg(["stage=pretrain", "model=mmoe"]))
    with pytest.raises(FileNotFoundError, match="holds no pre-trained backbone"):
        train(train_cfg(["stage=adapt", f"stage.pretrained={tmp_path}"]))
    with pytest.raises(ValueError, match=r"per-domain selection needs every trainable parameter .* shared"):
        train(
            train_cfg(["stage=adapt", "stage.freeze=[input]", "stage.select_per_domain=true", "trainer.max_epochs=1"])
        )


def test_every_stage_is_a_class_and_a_misspelt_key_fails_naming_it(train_cfg: TrainCfg) -> None:
    stages = {"train": Train, "pretrain": Pretrain, "adapt": Adapt, "onboard": Onboard}
    for name, kind in stages.items():
        extra = ["stage.adapted=x"] if name == "onboard" else []
        assert type(hydra.utils.instantiate(train_cfg([f"stage={name}", *extra]).stage)) is kind
    with pytest.raises(ConfigCompositionException, match="patiance"):
        train_cfg(["stage=adapt", "stage.patiance=3"])
    with pytest.raises(InstantiationException, match="unexpected keyword argument 'patiance'"):
        train(train_cfg(["stage=adapt", "+stage.patiance=3"]))


def test_adapt_refuses_a_multi_domain_model(train_cfg: TrainCfg, tmp_path: Path) -> None:
    for pretrained in ([], [f"stage.pretrained={tmp_path / 'pre'}"]):  # pre-training it or loading it
        with pytest.raises(ValueError, match=r"stage=adapt adapts a pre-trained backbone .* model.net is .*MMoE"):
            train(train_cfg(["stage=adapt", "model=mmoe", *pretrained]))
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before recording a config it would not run


def test_adapt_refuses_a_backbone_other_than_the_pretrained_one(train_cfg: TrainCfg, tmp_path: Path) -> None:
    saved = tmp_path / "pre"  # a pretrain run's backbone.yaml: a pooled DNN with layer_sizes [32]
    pre = train_cfg(["backbone.layer_sizes=[32]", "model=pooled"])
    saved.mkdir()
    (saved / "backbone.yaml").write_text(OmegaConf.to_yaml(pre.backbone, resolve=True))
    (saved / "backbone.pt").write_bytes(b"")  # never read: the check comes first
    adapt = ["stage=adapt", f"stage.pretrained={saved}", "model=pooled"]

    with pytest.raises(ValueError, match=r"backbone._target_: 'mdrec.models.wide_deep.WideDeepBackbone' here, 'mdrec"):
        train(train_cfg([*adapt, "backbone=wide_deep"]))
    with pytest.raises(ValueError, match=r"backbone.layer_sizes: \[8\] here, \[32\] there"):
        train(train_cfg([*adapt, "backbone.layer_sizes=[8]"]))
    # a value set in an experiment file or a default is compared too, not only the command line's overrides
    with pytest.raises(ValueError, match=r"backbone.layer_sizes: \[256, 128\] here, \[32\] there"):
        train(train_cfg(adapt))
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before recording a config it would not run


def test_strict_load_lists_missing_unexpected_and_shapes() -> None:
    saved = DNNBackbone(SCHEMA, embedded(8), [16]).state_dict()
    saved["extra.weight"] = torch.zeros(1)
    del saved["output.bias"]
    with pytest.raises(ValueError) as err:
        load_state_strict(DNNBackbone(SCHEMA, embedded(8), [32]), saved, "run/backbone.pt")
    message = str(err.value)
    assert "missing keys ['output.bias']" in message and "unexpected keys ['extra.weight']" in message
    assert "'mlp.layers.0.weight': ((16, 17), (32, 17))" in message


def test_pretrain_key_ignores_where_a_run_writes(train_cfg: TrainCfg, tmp_path: Path) -> None:
    # every job of a sweep has its own output directory (and trainer.default_root_dir with it): one backbone
    base = train_cfg(["stage=adapt"])
    moved = train_cfg(["stage=adapt", f"paths.output_dir={tmp_path / 'sweep' / '3'}", "adapter=lora"])
    assert moved.trainer.default_root_dir != base.trainer.default_root_dir
    assert pretrain_key(moved) == pretrain_key(base)
    assert pretrain_key(train_cfg(["stage=adapt", "seed=1"])) != pretrain_key(base)
    assert pretrain_key(train_cfg(["stage=adapt", "backbone.layer_sizes=[8]"])) != pretrain_key(base)


def test_adapt_validates_as_often_as_its_stage_says(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["stage=adapt", "adapter=head", "trainer.max_epochs=1", "stage.val_check_interval=0.5"]))
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    final = [r for r in rows if r.get("time/fit_seconds")]  # the run's final figures, logged once at the end
    validations = [r for r in rows if r.get("val/auc") and r not in final]
    assert len(final) == 1 and len(validations) == 1 + 2 + 1  # zero-shot, two during the epoch, the selected model


def test_a_baseline_is_the_end_to_end_run_it_names(train_cfg: TrainCfg, tmp_path: Path) -> None:
    """``baseline=ple`` trains PLE exactly as ``model=ple`` does (same data, trainer, seed, optimiser and input
    layer, without the domain id), in <run>/baseline, and its test figures join the run's metrics."""
    small = ["trainer.max_epochs=1", "data.source.num_rows=8000", "input.embedding_dim=8", "model.optimizer.lr=0.003"]
    sizes = ["net.expert_sizes=[16]", "net.tower_sizes=[8]"]
    metrics = train(
        train_cfg(["stage=adapt", "adapter.rank=2", "baseline=ple", *small, *[f"baseline.{s}" for s in sizes]])
    )
    ple = train(
        train_cfg(["model=ple", *small, *[f"model.{s}" for s in sizes], f"paths.output_dir={tmp_path / 'ple'}"])
    )
    tested = [k for k in ple if k.startswith("test/")]
    assert "test/auc/d3" in tested and all(
        metrics[f"baseline/{k}"] == pytest.approx(ple[k], abs=1e-6, nan_ok=True) for k in tested
    )
    assert metrics["baseline/params/total"] == ple["params/total"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["baseline/test/auc"] == metrics["baseline/test/auc"] and saved["test/auc"] == metrics["test/auc"]
    (stored,) = stored_backbones(tmp_path / "pretrained")  # pre-trained without a baseline of its own
    assert not (stored / "baseline").exists() and "baseline/test/auc" not in json.loads(
        (stored / "metrics.json").read_text()
    )
    baseline_cfg = OmegaConf.load(tmp_path / "run" / "baseline" / "config.yaml")
    assert baseline_cfg.model.net._target_.endswith("PLE") and baseline_cfg.stage._target_.endswith("Train")
    assert baseline_cfg.tags == ["baseline"] and baseline_cfg.input.domain_as_feature is False
    with pytest.raises(ValueError, match="baseline= compares test figures, but test=false"):
        train(train_cfg(["baseline=ple", "test=false"]))
    with pytest.raises(ValueError, match="this run's stage is Pretrain: drop baseline="):
        train(train_cfg(["stage=pretrain", "baseline=ple"]))


def test_adapt_with_wandb_pretrains_and_adapts_in_runs_of_their_own(
    train_cfg: TrainCfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    metrics = train(train_cfg(["stage=adapt", "adapter=head", "logger=wandb", "debug=limit", "trainer.max_epochs=1"]))
    assert "test/auc" in metrics and (tmp_path / "run" / "metrics.json").exists()
    (stored,) = stored_backbones(tmp_path / "pretrained")
    pretrain_runs = list((stored / "wandb").glob("offline-run-*"))
    adapt_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(pretrain_runs) == len(adapt_runs) == 1
    run_id = lambda path: path.name.rsplit("-", 1)[1]  # noqa: E731
    assert run_id(pretrain_runs[0]) != run_id(adapt_runs[0])  # two W&B runs, not the adapt run taken over


def test_the_pretraining_an_adapt_run_implies(train_cfg: TrainCfg, tmp_path: Path) -> None:
    cfg = train_cfg(["stage=adapt", "ckpt_path=last"])
    sub = pretrain_config(cfg, None, None)  # the schema is read only with source_domains
    assert sub.ckpt_path is None  # a resumed adapt run does not resume its pre-training from its own checkpoint
    assert type(hydra.utils.instantiate(sub.stage)) is Pretrain
    with pytest.raises(ValueError, match=r"stage.source_domains=\['d0'\] .* stage.pretrained=.* drop one"):
        train(train_cfg(["stage=adapt", f"stage.pretrained={tmp_path}", "stage.source_domains=[d0]"]))
    with pytest.raises(ValueError, match=r"vectors would never train.*add input=embedded"):  # pooled: d1's untrained
        pretrain_config(train_cfg(["stage=adapt", "stage.source_domains=[a]"]), SCHEMA, ["a"])
    agnostic = pretrain_config(train_cfg(["stage=adapt", "input=embedded"]), SCHEMA, ["a"])
    assert agnostic.data.domain_fractions == {"b": 0.0, "c": 0.0}


def test_the_store_key_follows_what_selects_the_backbone(train_cfg: TrainCfg) -> None:
    base = pretrain_key(train_cfg(["stage=adapt"]))
    assert pretrain_key(train_cfg(["stage=adapt", "callbacks.model_checkpoint.mode=min"])) != base
    assert pretrain_key(train_cfg(["stage=adapt", "trainer.enable_progress_bar=true"])) == base
    assert pretrain_key(train_cfg(["stage=adapt", "trainer.log_every_n_steps=5"])) == base


def test_onboarding_refuses_an_adapted_run_without_its_encoding_before_training(
    train_cfg: TrainCfg, tmp_path: Path
) -> None:
    (tmp_path / "adapted").mkdir()
    cfg = train_cfg(["stage=onboard", f"stage.adapted={tmp_path / 'adapted'}", "stage.domains=[d3]"])
    data = SimpleNamespace(schema=SimpleNamespace(domains=DOMAINS))
    with pytest.raises(FileNotFoundError, match=r"encoding.json is missing: .* not the directory of a finished"):
        hydra.utils.instantiate(cfg.stage).prepare(cfg, data, train)
