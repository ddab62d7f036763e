"""Parallel domain-activated inference: one graph for all domains, unknown domains fall back to the backbone, and
the exported TorchScript file equals the model as trained, for every adapter on every backbone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.iak import IAK
from mdrec.data.batch import Batch
from mdrec.models.dnn import DNNBackbone
from mdrec.nn.domain import DomainGroups, DomainLinear
from mdrec.serve.cli import main as export_main
from mdrec.serve.cli import trim as trim_main
from mdrec.serve.export import export, max_difference
from mdrec.serve.parallel import ParallelModel
from mdrec.train.run import train
from tests.test_adapters import ADAPTERS, CASES, adapted, perturb
from tests.test_baselines import SCHEMA, K, make_batch

TrainCfg = Callable[[list[str]], DictConfig]


def with_domains(batch: Batch, domain: list[int] | torch.Tensor) -> Batch:
    return Batch(batch.sparse, batch.dense, torch.as_tensor(domain), batch.labels)


def test_static_grouping_equals_the_per_domain_loop() -> None:
    torch.manual_seed(0)
    layer = DomainLinear(5, 4, 3)
    x, domain = torch.randn(9, 4), torch.tensor([4, 0, 4, 2, 0, 4, 4, 2, 0])  # domains 1 and 3 absent
    expected = torch.bmm(x[:, None], layer.weight[domain].mT).squeeze(1) + layer.bias[domain]
    for static in (False, True):
        g = DomainGroups(domain, 5, static=static)
        torch.testing.assert_close(g.ungroup(layer.grouped(g.group(x), g)), expected)
    g = DomainGroups(domain, 5, static=True)
    a, b, c = torch.randn(5, 4, 2), torch.randn(5, 2, 3), torch.randn(5, 3, 1)  # c: a one-column product
    torch.testing.assert_close(
        g.ungroup(g.matmul(g.group(x), a, b, c)), (x[:, None] @ a[domain] @ b[domain] @ c[domain]).squeeze(1)
    )
    assert DomainGroups(domain[:0], 5, static=True).matmul(x[:0], a, b).shape == (0, 3)  # an empty batch
    with pytest.raises(ValueError, match="static grouping"):
        g.map(torch.matmul, x, a)


@pytest.mark.parametrize(
    ("variant", "widths", "place"),
    [
        ({}, [(8, 6), (6, 6), (6, 1)], "output"),  # enc1, enc2's mean half o dec1, dec2 o head
        ({"encoder_only": True}, [(8, 6), (6, 1)], "output"),
        ({"residual": False}, [(8, 6), (6, 6), (6, 8)], "input"),  # not folded into the head
        ({"placement": "layers", "prior": "learned"}, None, None),
    ],
)
def test_iak_serving_form_equals_iak(
    variant: dict[str, object], widths: list[tuple[int, int]] | None, place: str | None
) -> None:
    """The folded kernels compute what IAK computes in eval, with narrower per-domain products."""
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedding_dim=4, layer_sizes=[16, 8]).eval()
    net = perturb(AdaptedNet(SCHEMA, backbone, IAK(SCHEMA, backbone, bottleneck=5, hidden=6, **variant))).eval()
    serving = AdaptedNet(SCHEMA, backbone, net.adapter.for_serving(backbone)).eval()
    batch = make_batch(64, seed=1)
    for static in (False, True):
        torch.testing.assert_close(serving(batch, static=static).logits, net(batch).logits, rtol=1e-5, atol=1e-6)
    if widths is not None:
        layers = serving.adapter.kernels["output"].layers
        assert [(layer.in_features, layer.out_features) for layer in layers] == widths
        assert serving.adapter.sites == {"output": place}


@pytest.mark.parametrize(("backbone", "adapter"), CASES)
def test_parallel_model_and_its_export_equal_the_trained_model(backbone: str, adapter: str, tmp_path: Path) -> None:
    net = perturb(adapted(backbone, adapter)).eval()
    model = ParallelModel(net, SCHEMA, ADAPTERS[adapter])
    mixed = make_batch(64, seed=1)
    unknown = with_domains(
        mixed, torch.where(torch.arange(64) % 5 == 0, torch.tensor([-1, K, 99])[torch.arange(64) % 3], mixed.domain)
    )
    assert max_difference(model, net, unknown) < 1e-5
    served = export(model, make_batch(32, seed=2), tmp_path / "serving.pt")
    for batch in (
        unknown,
        make_batch(257, seed=3),
        with_domains(make_batch(1, seed=4), [2]),
        with_domains(mixed, [1] * 64),
    ):
        assert max_difference(served, net, batch) < 1e-5
    assert int(served.unknown_rows) == 13  # only the first batch had unknown ids: rows 0, 5, ..., 60
    # the adapters do act: each domain's rows differ from the backbone's
    plain = torch.sigmoid(net.backbone(mixed).logits)
    assert (served(mixed.sparse, mixed.dense, mixed.domain) - plain).abs().max() > 1e-3


def test_export_cli_on_an_adapt_run(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["stage=adapt", "adapter=iak", "trainer.max_epochs=1"]))
    assert export_main([str(tmp_path / "run"), "--batches", "2"]) == 0
    report = json.loads((tmp_path / "run" / "serving.json").read_text())
    assert report["max_abs_difference"] < 1e-5
    # every 10th row of each checked batch (batches of 1,000 rows here); rows_checked counts each batch twice
    assert report["unknown_rows_checked"] == report["rows_checked"] // 20 == 200
    assert int(torch.jit.load(str(tmp_path / "run" / "serving.pt")).unknown_rows) == 0  # the file starts clean
    with pytest.raises(SystemExit, match="lacks"):
        export_main([str(tmp_path)])


def test_trimmed_parallel_model_blanks_each_domains_dropped_features(tmp_path: Path) -> None:
    net = perturb(adapted("dnn", "lora")).eval()
    drop = torch.tensor([[True, False, False], [False, True, True], [False, False, False]])  # [K, row item age]
    model = ParallelModel(net, SCHEMA, ADAPTERS["lora"], drop)
    batch = make_batch(64, seed=5)
    served = export(model, batch, tmp_path / "trimmed.pt")
    expected = torch.sigmoid(net(batch.blanked(drop)).logits)
    torch.testing.assert_close(served(batch.sparse, batch.dense, batch.domain), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="drop must be bool"):
        ParallelModel(net, SCHEMA, ADAPTERS["lora"], drop[:, :2])


def test_trim_cli_on_an_adapt_run(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["stage=adapt", "adapter=lora", "trainer.max_epochs=1"]))
    args = [str(tmp_path / "run"), "--budget", "0.002", "--latency-rows", "64", "--min-rows", "100"]
    assert trim_main([*args, "--tradeoff", "0.01", "0"]) == 0
    report = json.loads((tmp_path / "run" / "trim.json").read_text())
    tradeoff = json.loads((tmp_path / "run" / "trim_tradeoff.json").read_text())
    assert tradeoff["budgets"] == [0.0, 0.002, 0.01]
    kept = np.array(tradeoff["kept"])  # [budgets, K]: a larger budget never keeps more features
    assert (np.diff(kept, axis=0) <= 0).all()
    total = len(report["features"])
    assert kept[1].tolist() == [total - len(report["dropped"][d]) for d in tradeoff["domains"]]
    assert (tmp_path / "run" / "trim_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    for d, before in report["val_auc_before"].items():
        assert before - report["val_auc_after"][d] <= 0.002 + 1e-9
    assert any(report["dropped"].values())  # the synthetic default has fields that do not matter to some domains
    assert (tmp_path / "run" / "serving_trimmed.pt").exists()
    assert "| feature |" in (tmp_path / "run" / "trim.md").read_text()


def test_parallel_model_refuses_a_backbone_that_embeds_the_domain() -> None:
    backbone = DNNBackbone(SCHEMA, 8, [16], domain_as_feature=True)
    net = AdaptedNet(SCHEMA, backbone, ADAPTERS["lora"](SCHEMA, backbone))
    with pytest.raises(ValueError, match="embeds the domain id"):
        ParallelModel(net, SCHEMA, ADAPTERS["lora"])
