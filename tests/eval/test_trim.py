"""Per-domain feature trimming: permutation importance within domains, and a plan that drops a field for the
domain where it is noise while the other domain keeps it."""

from __future__ import annotations

import pytest
import torch

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SparseField
from mdrec.eval.trim import (
    permutation_importance,
    permuted_within_domains,
    plan_trimming,
    trim_table,
)
from mdrec.models.dnn import DNNBackbone
from tests.helpers import embedded

SCHEMA = Schema(
    "trim", tuple(SparseField(f, 21) for f in ("signal", "local", "noise")), ("x",), "domain", ("a", "b"), ("click",)
)


def world(rows: int, seed: int) -> Batch:
    """``signal`` drives the click in both domains, ``local`` in domain a only (noise in b), ``noise`` and ``x``
    in neither."""
    g = torch.Generator().manual_seed(seed)
    effect = torch.randn(2, 21, generator=torch.Generator().manual_seed(99)) * 1.5  # per id of signal / local
    sparse = torch.randint(1, 21, (rows, 3), generator=g)
    domain = torch.randint(0, 2, (rows,), generator=g)
    logit = effect[0, sparse[:, 0]] + (domain == 0) * effect[1, sparse[:, 1]]
    labels = (torch.rand(rows, generator=g) < torch.sigmoid(logit)).float()[:, None]
    return Batch(sparse, torch.rand(rows, 1, generator=g), domain, labels)


def trained() -> DNNBackbone:
    torch.manual_seed(0)
    net = DNNBackbone(SCHEMA, embedded(8, domain_as_feature=True), [32])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    data = world(20_000, seed=0)
    for step in range(300):
        rows = torch.arange(step * 512, (step + 1) * 512) % data.size
        batch = data.rows(rows)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_permutation_stays_within_domains() -> None:
    column, domain = torch.arange(10), torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    out = permuted_within_domains(column, domain, torch.Generator().manual_seed(0))
    for d in (0, 1):
        assert sorted(out[domain == d].tolist()) == column[domain == d].tolist()
    assert not torch.equal(out, column)


def test_noise_field_of_one_domain_is_trimmed_there_only() -> None:
    net = trained()
    predict = lambda b: torch.sigmoid(net(b).logits[:, 0])  # noqa: E731
    val = world(20_000, seed=1)
    importance = permutation_importance(predict, val, SCHEMA)  # [F, K]: signal, local, noise, x
    assert importance[0].min() > 0.05  # signal matters in both
    assert importance[1, 0] > 0.05 and importance[1, 1] < 0.005  # local matters in a only
    plan = plan_trimming(predict, val, SCHEMA, budget=0.002, importance=importance)
    assert set(plan.dropped("a")) == {"noise", "x"}
    assert set(plan.dropped("b")) == {"local", "noise", "x"}
    assert (plan.auc_before - plan.auc_after).max() <= 0.002
    # the plan's AUC is the AUC with its features blanked
    blank = val.blanked(plan.drop)
    assert (blank.sparse[val.domain == 1, 1] == 0).all() and (blank.sparse[val.domain == 0, 1] > 0).all()
    assert "| b | 1 / 4 |" in trim_table(plan)
    small = plan_trimming(predict, val, SCHEMA, budget=0.002, importance=importance, min_rows=15_000)
    assert not small.drop.any()  # about 10,000 rows per domain: too few for this guard, every feature kept
    with pytest.raises(ValueError, match="budget"):
        plan_trimming(predict, val, SCHEMA, budget=-1.0, importance=importance)
