"""ESMM and the loss options of the RankingModule, against hand computations."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SparseField
from mdrec.models.dnn import DNNBackbone
from mdrec.models.esmm import ESMM, product_logit
from mdrec.models.output import ModelOutput
from mdrec.train.module import RankingModule
from mdrec.train.run import train
from tests.helpers import TrainCfg

SCHEMA = Schema("toy", (SparseField("user", 9),), ("x",), "domain", ("a", "b"), ("click", "conversion"))


def batch_of(domain: list[int], labels: list[list[float]]) -> Batch:
    n = len(domain)
    return Batch(
        torch.arange(1, n + 1)[:, None],
        torch.zeros(n, 1),
        torch.tensor(domain),
        torch.tensor(labels, dtype=torch.float32),
    )


def module(**options: object) -> RankingModule:
    return RankingModule(DNNBackbone(SCHEMA, layer_sizes=[4]), SCHEMA, torch.optim.Adam, **options)


def test_loss_normalisation_by_batch_and_by_domain() -> None:
    # domain a: 3 rows, domain b: 1 row; logits 0 -> every row's BCE is log 2, except the row given logit 2
    batch = batch_of([0, 0, 0, 1], [[1, 0], [0, 0], [1, 0], [1, 0]])
    logits = torch.tensor([[0.0], [0.0], [0.0], [2.0]])
    out = ModelOutput(logits, torch.zeros(()))
    l2, lb = math.log(2), math.log1p(math.exp(-2.0))  # BCE(logit 2, label 1)
    assert float(module().loss(out, batch)) == pytest.approx((3 * l2 + lb) / 4)
    assert float(module(loss_normalization="domain").loss(out, batch)) == pytest.approx((l2 + lb) / 2)
    weighted = module(loss_normalization="domain", domain_weights={"b": 3.0})
    assert float(weighted.loss(out, batch)) == pytest.approx((l2 + 3 * lb) / 4)
    assert float(module(domain_weights={"b": 3.0}).loss(out, batch)) == pytest.approx((3 * l2 + 3 * lb) / 6)
    # a batch without domain b: the domain mean covers the present domains only
    only_a = batch_of([0, 0], [[1, 0], [0, 0]])
    assert float(weighted.loss(ModelOutput(torch.zeros(2, 1), torch.zeros(())), only_a)) == pytest.approx(l2)


def test_loss_option_errors() -> None:
    with pytest.raises(ValueError, match="loss_normalization 'rows' is not one of"):
        module(loss_normalization="rows")
    with pytest.raises(ValueError, match=r"unknown domain\(s\) \['c'\]"):
        module(domain_weights={"c": 1.0})


def test_esmm_predicts_the_product_and_trains_cvr_through_ctcvr_only() -> None:
    torch.manual_seed(0)
    net = ESMM(SCHEMA, functools.partial(DNNBackbone, layer_sizes=[8]), tower_sizes=[4]).eval()
    batch = batch_of([0, 1, 0], [[1, 1], [1, 0], [0, 0]])
    out = net(batch)
    ctr = net.ctr_tower(net.backbone(batch).h)
    cvr = net.cvr_tower(net.backbone(batch).h)
    torch.testing.assert_close(torch.sigmoid(out.logits[:, 1:]), torch.sigmoid(ctr) * torch.sigmoid(cvr))
    # the click loss alone gives the CVR tower no gradient: pCVR is learnt from the CTCVR loss only
    F = torch.nn.functional
    F.binary_cross_entropy_with_logits(out.logits[:, 0], batch.labels[:, 0]).backward()
    assert all(p.grad is None or not p.grad.any() for p in net.cvr_tower.parameters())
    assert any(p.grad is not None and p.grad.any() for p in net.ctr_tower.parameters())
    assert torch.sigmoid(product_logit(torch.tensor([30.0]), torch.tensor([30.0]))) > 0.999  # no overflow
    with pytest.raises(ValueError, match="ESMM needs a click and a conversion label"):
        one = Schema("one", (SparseField("user", 9),), ("x",), "domain", ("a",), ("click",))
        ESMM(one, DNNBackbone)


def test_esmm_trains_end_to_end_with_ctcvr_metrics(train_cfg: TrainCfg) -> None:
    metrics = train(train_cfg(["model=esmm", "debug=limit"]))
    for key in ("test/auc", "test/conversion_auc", "test/conversion_auc/d0", "oracle/conversion_auc/d0"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0, key
