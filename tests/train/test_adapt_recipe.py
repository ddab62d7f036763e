"""The adaptation recipe's levers. stage.embeddings: per-domain embedding deltas beside the adapter (recorded as one
stacked adapter the run directory rebuilds), or the shared table fine-tuned at its own learning rate; model=pooled:
a domain-aware backbone to adapt."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from mdrec.train.evaluate import evaluate_run
from mdrec.train.pretrained import pretrain_key
from mdrec.train.run import train
from mdrec.train.stages import Adapt, pretrain_config, with_embedding_delta, with_group_lr
from tests.helpers import SCHEMA, TrainCfg

DOMAINS = ("d0", "d1", "d2", "d3")
N_IDS = 2000 + 500 + 200 + 100 + 50 + 20 + 10 + 5 + 8  # the synthetic default's ids, id 0 of each field included


@pytest.mark.slow
def test_lowrank_embeddings_beside_lora_train_select_per_domain_and_reload(train_cfg: TrainCfg, tmp_path: Path) -> None:
    options = ["stage=adapt", "input=embedded", "adapter=lora", "adapter.rank=2", "trainer.max_epochs=1"]
    metrics = train(train_cfg([*options, "stage.embeddings=lowrank", "stage.embedding_rank=1"]))
    recorded = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert recorded.adapter._target_ == "mdrec.adapters.base.Stacked"
    assert recorded.adapter.parts.embeddings.kind == "lowrank" and recorded.adapter.parts.adapter.rank == 2
    # LoRA rank 2 on the DNN's first layer 132 -> 256 (8 fields of 16 and 4 dense features in)
    lora_per_domain = 132 * 2 + 2 * 256
    assert metrics["params/added_per_domain"] == N_IDS * 1 + 1 * 16 + lora_per_domain
    assert all(f"selection/epoch/{d}" in metrics for d in DOMAINS)  # every trainable parameter is per domain
    for d in DOMAINS:
        assert metrics[f"val/auc/{d}"] >= metrics[f"zeroshot/val/auc/{d}"] - 1e-6

    # the run directory alone rebuilds the stacked adapter: its test AUC again
    again = evaluate_run(tmp_path / "run", [f"output_dir={tmp_path / 'eval'}"]).metrics
    assert again["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-6)


def test_the_recorded_adapter_stacks_the_delta_and_the_adapter(train_cfg: TrainCfg) -> None:
    cfg = train_cfg(["stage=adapt", "adapter=lora"])
    stacked = with_embedding_delta(cfg, "bias", 3)
    assert stacked.adapter.parts.embeddings == {
        "_target_": "mdrec.adapters.embedding.EmbeddingDelta",
        "_partial_": True,
        "kind": "bias",
        "rank": 3,
    }
    assert stacked.adapter.parts.adapter == cfg.adapter and cfg.adapter._target_ == "mdrec.adapters.lora.LoRA"
    with pytest.raises(ValueError, match="stage.embeddings=frozen with that adapter"):
        with_embedding_delta(stacked, "bias", 3)
    alone = with_embedding_delta(train_cfg(["stage=adapt", "adapter=none"]), "lowrank", 1)
    assert list(alone.adapter.parts) == ["embeddings"]


def test_a_parameter_group_of_its_own_learning_rate() -> None:
    linear, table = torch.nn.Linear(2, 2), torch.nn.Embedding(3, 2)
    factory = hydra.utils.instantiate({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01})
    opt = with_group_lr(factory, list(table.parameters()), 0.001)([*linear.parameters(), *table.parameters()])
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.001]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1]


@pytest.mark.slow
def test_finetune_trains_the_shared_table_and_selects_overall(train_cfg: TrainCfg) -> None:

    metrics = train(
        train_cfg(
            ["stage=adapt", "input=embedded", "adapter=lora", "adapter.rank=2", "stage.embeddings=finetune"]
            + ["trainer.max_epochs=1"]
        )
    )
    assert not any(k.startswith("selection/") for k in metrics)  # shared weights: selected overall
    assert metrics["params/trainable"] - metrics["params/added_per_domain"] * len(DOMAINS) == N_IDS * 16


def test_stage_embedding_options_are_checked() -> None:
    opt = hydra.utils.instantiate({"_target_": "torch.optim.Adam", "_partial_": True})
    with pytest.raises(ValueError, match=r"stage.embeddings='table' must be one of"):
        Adapt(opt, embeddings="table")
    with pytest.raises(ValueError, match=r"stage.embedding_rank \(0\) must be >= 1"):
        Adapt(opt, embeddings="lowrank", embedding_rank=0)


def test_a_pooled_backbone_with_the_domain_id_is_pre_trained_for_adapting(train_cfg: TrainCfg) -> None:
    plain = train_cfg(["stage=adapt", "input=embedded"])
    pooled = train_cfg(["stage=adapt"])  # stage=adapt's default: input=pooled
    sub = pretrain_config(pooled, SCHEMA, None)
    assert sub.stage._target_ == "mdrec.train.stages.Pretrain" and sub.model.net.input.domain_as_feature is True
    assert sub.model.net.input.domain_dropout == 0.1 and pooled.adapter._target_ == "mdrec.adapters.lora.LoRA"
    assert train_cfg(["stage=adapt", "model=pooled"]).input == pooled.input  # model=pooled adds nothing to it
    # a store of its own: an adapt run on model=pooled never finds the domain-agnostic backbone
    assert pretrain_key(sub) != pretrain_key(pretrain_config(plain, SCHEMA, None))
