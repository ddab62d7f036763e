"""A run directory: its files written and read back, strict loading, the Backbone and DomainParameter contracts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.lora import LoRA
from mdrec.models.backbone import Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.nn.parameter import DomainParameter, per_domain_parameters
from mdrec.rundir import RunDir
from tests.helpers import BACKBONES, SCHEMA, embedded, make_batch


def backbone_cfg(layer_sizes: list[int]) -> object:
    input_cfg = {"_target_": "mdrec.models.inputs.EmbeddedInput", "_partial_": True, "embedding_dim": 8}
    return OmegaConf.create(
        {"_target_": "mdrec.models.dnn.DNNBackbone", "_partial_": True, "input": input_cfg, "layer_sizes": layer_sizes}
    )


def test_backbone_and_adapter_round_trip_and_load_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedded(8), [16]).eval()
    adapter = LoRA(SCHEMA, backbone, rank=2)
    with torch.no_grad():
        for _, param in per_domain_parameters(adapter):
            param.normal_()  # not the identity: the loaded adapter must be this one
    run = RunDir(tmp_path)
    run.save_backbone(backbone, backbone_cfg([16]))
    run.save_adapter(adapter)
    adapter_cfg = {"_target_": "mdrec.adapters.lora.LoRA", "rank": 2}
    run.write_config(OmegaConf.create({"adapter": adapter_cfg}))
    loaded = run.load_adapted(SCHEMA).eval()
    batch = make_batch()
    expected = AdaptedNet(SCHEMA, backbone, adapter).eval()(batch).logits
    assert torch.equal(loaded(batch).logits, expected)
    assert not any(p.requires_grad for p in loaded.backbone.parameters())  # the backbone frozen

    run.save_backbone(backbone, backbone_cfg([32]))  # a config that does not fit the weights
    with pytest.raises(ValueError, match=r"shape differences .*'mlp.layers.0.weight': \(\(16, 17\), \(32, 17\)\)"):
        run.load_backbone(SCHEMA)


def test_missing_files_are_named(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no pre-trained backbone"):
        run.load_backbone(SCHEMA)
    with pytest.raises(FileNotFoundError, match=r"predictions.npz is missing"):
        run.read_predictions()
    (tmp_path / RunDir.CONFIG).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.yaml holds a ListConfig"):
        run.read_config()


def test_metrics_predictions_and_failure(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "new")  # made on first write
    run.write_failure(RuntimeError("boom"))
    assert run.read_json(RunDir.FAILURE)["error"] == "RuntimeError: boom"
    run.write_metrics({"test/auc": 0.75})
    assert run.read_metrics() == {"test/auc": 0.75} and not run.exists(RunDir.FAILURE)  # finished: no failure
    run.write_predictions({"prob": np.ones((3, 1), np.float32), "domains": np.asarray(["a", "b"])})
    read = run.read_predictions()
    assert read["prob"].shape == (3, 1) and list(read["domains"]) == ["a", "b"]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_keeps_the_contract(name: str) -> None:
    net = BACKBONES[name]().eval()
    out = net(make_batch())
    assert isinstance(net, Backbone) and isinstance(net.head, nn.Linear)
    assert dict(net.named_modules())[net.head_site()] is net.head
    assert out.h.shape[1] == net.hidden_size == net.head.in_features
    assert net.head.out_features == net.num_tasks == out.logits.shape[1]


def test_per_domain_parameters_are_found_by_type() -> None:
    net = nn.Module()
    net.stacked = DomainParameter(torch.zeros(3, 4))
    net.shared = nn.Parameter(torch.zeros(3, 4))  # K rows by coincidence: not per-domain
    net.inner = nn.ParameterList([DomainParameter(torch.zeros(3))])
    assert [name for name, _ in per_domain_parameters(net)] == ["stacked", "inner.0"]
    net.double().float()
    assert isinstance(net.stacked, DomainParameter)  # survives dtype conversions
