"""Per-domain metrics against torchmetrics and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from mdrec.eval.metrics import (
    GAUC,
    DomainAUC,
    GatheredRows,
    domain_metrics,
    gauc,
    grouped_auc,
    grouped_logloss,
    known_user_gauc,
)


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


def _rows(n: int, users: int, domains: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, generator=g).round(decimals=2)  # ties
    labels = (torch.rand(n, generator=g) < probs).long()
    return probs, labels, torch.randint(0, users, (n,), generator=g), torch.randint(0, domains, (n,), generator=g)


def test_metric_classes_equal_the_functions_over_batches() -> None:
    probs, labels, users, domain = _rows(3000, 200, 4, seed=1)
    auc, overall, per_domain = DomainAUC(num_domains=4), GAUC(), GAUC(num_domains=4)
    for part in torch.arange(3000).split(700):  # uneven batches
        auc.update(probs[part], labels[part], domain[part])
        overall.update(probs[part], labels[part], users[part])
        per_domain.update(probs[part], labels[part], users[part], domain[part])
    expected = domain_metrics(probs, labels, domain, ["a", "b", "c", "d"], users)
    assert auc.compute().tolist() == pytest.approx([expected[f"auc/{d}"] for d in "abcd"], abs=1e-12)
    assert float(overall.compute()) == pytest.approx(expected["gauc"], abs=1e-12)
    assert per_domain.compute().tolist() == pytest.approx([expected[f"gauc/{d}"] for d in "abcd"], abs=1e-12)
    assert float(overall.compute()) == pytest.approx(float(gauc(*(t[users > 0] for t in (probs, labels, users)))[0]))


def test_metric_classes_by_hand() -> None:
    # domain 0: users 1 and 2; domain 1: user 3 and the unknown user 0
    probs = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.6, 0.7, 0.3, 0.4, 0.5])
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 1])
    users = torch.tensor([1, 1, 2, 2, 2, 3, 3, 0, 0])
    domain = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    auc = DomainAUC(num_domains=3)
    auc.update(probs, labels, domain)
    # domain 0: positives 0.9, 0.2, 0.6 against negatives 0.1, 0.8: 4 of 6 pairs ordered; domain 1: positives 0.3,
    # 0.5 against negatives 0.7, 0.4: 1 of 4; domain 2 has no rows
    assert auc.compute()[:2].tolist() == pytest.approx([4 / 6, 1 / 4]) and math.isnan(float(auc.compute()[2]))
    metric = GAUC(num_domains=2)
    metric.update(probs, labels, users, domain)
    # user 1: AUC 1 (2 rows); user 2: positives 0.2, 0.6 against 0.8: AUC 0 (3 rows); user 3: AUC 0 (2 rows); user 0
    # left out -> domain 0: (2 * 1 + 3 * 0) / 5, domain 1: 0
    assert metric.compute().tolist() == pytest.approx([2 / 5, 0.0])
    with pytest.raises(ValueError, match=r"GAUC\(num_domains=2\)\.update takes the domain of each row when"):
        metric.update(probs, labels, users)


def test_metric_states_are_gathered_from_every_process() -> None:
    """Under DDP, ``compute`` gathers each state from every process (``dist_reduce_fx="cat"``): simulated with a
    gather that returns this process's rows and a second process's, whose scores are inverted."""
    probs, labels, users, domain = _rows(400, 30, 2, seed=2)

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, 1 - tensor if tensor.is_floating_point() else tensor]

    options = {"dist_sync_fn": gather, "distributed_available_fn": lambda: True}
    auc, metric = DomainAUC(num_domains=2, **options), GAUC(num_domains=2, **options)
    auc.update(probs, labels, domain)
    metric.update(probs, labels, users, domain)
    both = [torch.cat([t, 1 - t if t.is_floating_point() else t]) for t in (probs, labels, users, domain)]
    assert auc.compute().tolist() == pytest.approx(grouped_auc(both[0], both[1], both[3], 2)[0].tolist())
    assert metric.compute().tolist() == pytest.approx(known_user_gauc(both[0], both[1], both[2], both[3], 2).tolist())
    assert auc.compute().tolist() != pytest.approx(grouped_auc(probs, labels, domain, 2)[0].tolist())
    with pytest.raises(ValueError, match="Unexpected keyword arguments: `sync_on_comput`"):
        GAUC(sync_on_comput=False)  # a misspelt option is refused, not swallowed
