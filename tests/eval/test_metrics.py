"""Per-domain metrics against torchmetrics and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from mdrec.eval.metrics import GatheredRows, domain_metrics, gauc, grouped_auc, grouped_logloss


def test_grouped_auc_matches_torchmetrics_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    n = 5000
    probs = torch.rand(n, generator=g).round(decimals=1)  # many ties
    labels = (torch.rand(n, generator=g) < probs).float()
    groups = torch.randint(0, 4, (n,), generator=g)
    auc, pos, neg = grouped_auc(probs, labels, groups, 5)
    for k in range(4):
        m = groups == k
        assert float(auc[k]) == pytest.approx(float(binary_auroc(probs[m], labels[m].long())), abs=1e-6)
        assert pos[k] + neg[k] == m.sum()
    assert math.isnan(float(auc[4]))  # an empty group has no AUC


def test_gauc_by_hand() -> None:
    probs = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.5, 0.4, 0.3])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    users = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    # user 0: AUC 1 (2 rows); user 1: AUC 0 (2 rows); user 2: AUC 1 (3 rows) -> (2*1 + 2*0 + 3*1) / 7
    assert float(gauc(probs, labels, users)[0]) == pytest.approx(5 / 7)
    per_owner = gauc(probs, labels, users, torch.tensor([0, 0, 0, 0, 1, 1, 1]), 2)
    assert per_owner.tolist() == pytest.approx([0.5, 1.0])


def test_domain_metrics_keys_and_weighting() -> None:
    probs = torch.tensor([0.2, 0.8, 0.6, 0.4, 0.7, 0.3])
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    domain = torch.tensor([0, 0, 1, 1, 1, 1])
    m = domain_metrics(probs, labels, domain, ["a", "b"], users=torch.tensor([1, 1, 2, 2, 3, 3]))
    assert m["auc/a"] == 1.0 and m["auc/b"] == pytest.approx(0.25)
    assert m["wauc"] == pytest.approx((2 * 1.0 + 4 * 0.25) / 6)
    assert m["mean_auc"] == pytest.approx(0.625)
    assert m["rows/b"] == 4
    assert m["logloss/a"] == pytest.approx(-math.log(0.8), rel=1e-6)
    assert m["gauc"] == pytest.approx((2 * 1 + 2 * 1 + 2 * 0) / 6)
    assert float(grouped_logloss(probs, labels, torch.zeros(6, dtype=torch.long), 1)[0]) == pytest.approx(m["logloss"])


def test_gathered_rows_accumulate_batches() -> None:
    rows = GatheredRows(["prob", "domain"])
    probs, domain = torch.rand(1000, 2), torch.randint(0, 2, (1000,))
    for i in range(0, 1000, 300):
        rows.update(probs[i : i + 300], domain[i : i + 300])
    gathered = rows.compute()
    assert torch.equal(gathered["prob"], probs) and torch.equal(gathered["domain"], domain)
    with pytest.raises(ValueError, match="takes 2 tensors, got 1"):
        rows.update(probs)


def test_gauc_skips_unknown_users() -> None:
    probs = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.7])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    # user 5 has AUC 1; the id-0 rows (several unknown users) would score 0 if taken as one user
    m = domain_metrics(probs, labels, torch.zeros(6, dtype=torch.long), ["a"], users=torch.tensor([5, 5, 0, 0, 0, 0]))
    assert m["gauc"] == 1.0 and m["gauc/a"] == 1.0
