"""stage.neighbours: each domain's adapter also trains on related domains' rows, each weighted by the domains'
measured similarity (the cosine of their mean loss gradients w.r.t. the pre-trained backbone's head)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mdrec.data.batch import Batch
from mdrec.train.module import RankingModule
from mdrec.train.neighbours import (
    NeighbourRows,
    gradient_similarity,
    head_gradient_sums,
    neighbour_weights,
    row_factor,
    sample_rows,
    size_capped,
)
from mdrec.train.run import train
from mdrec.train.stages import Adapt
from mdrec.train.typecheck import check_types
from tests.helpers import BACKBONES, SCHEMA, K, TrainCfg, adapted, make_batch, perturb, pretrained, rows_of

DOMAINS = ("d0", "d1", "d2", "d3")


def bce(net: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """``[B]``: each row's loss as the module computes it (BCE averaged over the tasks)."""
    logits = net(batch).logits
    return F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").mean(1)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_head_gradients_are_each_domains_mean_loss_gradient(backbone: str) -> None:
    net = pretrained(backbone)
    batch = make_batch(64, seed=3)
    sums, rows = head_gradient_sums(net, batch, K)
    assert rows.tolist() == torch.bincount(batch.domain, minlength=K).tolist()
    for d in range(K):
        loss = bce(net, rows_of(batch, batch.domain == d)).mean()
        weight, bias = torch.autograd.grad(loss, [net.head.weight, net.head.bias])
        expected = torch.cat([weight, bias[:, None]], dim=1).flatten()  # [T * (H + 1)]
        torch.testing.assert_close(sums[d] / rows[d], expected, rtol=1e-5, atol=1e-7)


def test_identical_domains_are_similar_opposite_ones_not() -> None:
    net = pretrained("dnn")
    half = make_batch(32, seed=5)
    domain = torch.cat([torch.zeros(32, dtype=torch.long), torch.ones(32, dtype=torch.long)])  # d1: d0's rows again
    batch = Batch(*(torch.cat([t, t]) for t in (half.sparse, half.dense)), domain, torch.cat([half.labels] * 2))
    sums, rows = head_gradient_sums(net, batch, K)
    s = gradient_similarity(sums / rows.clamp(min=1)[:, None])
    assert s[0, 1].item() == pytest.approx(1.0, abs=1e-6) and s[1, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert s[2].tolist() == [0.0, 0.0, 1.0]  # no rows of domain 2: similar to itself only

    g = torch.tensor([[0.5, -1.0, 2.0], [1.0, -2.0, 4.0], [-0.5, 1.0, -2.0], [2.0, 1.0, 0.0]])
    s = gradient_similarity(g)
    assert s[0, 1].item() == pytest.approx(1.0) and s[0, 2].item() == 0.0  # opposite: cosine -1, clipped to 0
    assert s[0, 3].item() == 0.0  # orthogonal
    assert torch.equal(s, s.T) and s.diagonal().tolist() == [1.0] * 4


def test_weights_keep_the_top_k_most_similar_others_to_a_power() -> None:
    s = torch.tensor([[1.0, 0.8, 0.4, 0.2], [0.8, 1.0, 0.0, 0.5], [0.4, 0.0, 1.0, 0.6], [0.2, 0.5, 0.6, 1.0]])
    w = neighbour_weights(s, top_k=2, power=2.0, scale=1.0)
    expected = [[1.0, 0.64, 0.16, 0.0], [0.64, 1.0, 0.0, 0.25], [0.16, 0.0, 1.0, 0.36], [0.0, 0.25, 0.36, 1.0]]
    torch.testing.assert_close(w, torch.tensor(expected))
    torch.testing.assert_close(neighbour_weights(s, top_k=None, power=1.0, scale=1.0), s)
    scaled = neighbour_weights(s, top_k=None, power=1.0, scale=0.1)
    torch.testing.assert_close(scaled, 0.1 * s + 0.9 * torch.eye(4))  # the diagonal stays 1
    # 10 rows of d0, 30 of d1: d0's rows go to d1 and d2 (3 copies), d1's to d0 and d3 (3 copies)
    assert row_factor(w, [10, 30, 0, 0]) == pytest.approx(3.0)
    # size: times min(1, n_d / n_d'); d0's rows weigh 0.64 in d1 (more rows), d1's 0.64 * 10 / 30 in d0
    capped = size_capped(w, [10, 30, 20, 40])
    ratio = [[1.0, 1 / 3, 0.5, 0.25], [1.0, 1.0, 1.0, 0.75], [1.0, 2 / 3, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]]
    torch.testing.assert_close(capped, w * torch.tensor(ratio))


def test_rows_per_domain_are_capped() -> None:
    rows = np.arange(100, 110)
    domain = np.array([0, 0, 0, 0, 1, 1, 2, 0, 1, 0])
    kept = sample_rows(rows, domain, 3, limit=2, seed=0)
    assert np.all(np.diff(kept) > 0) and np.bincount(domain[kept - 100], minlength=3).tolist() == [2, 2, 1]
    assert sample_rows(rows, domain, 3, limit=None, seed=0).tolist() == rows.tolist()


def test_a_row_is_repeated_for_every_neighbour_with_its_weight() -> None:
    batch = make_batch(6, seed=1)
    batch = Batch(batch.sparse, batch.dense, torch.tensor([0, 1, 2, 0, 1, 2]), batch.labels, weight=torch.ones(6) * 2)
    w = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.25, 0.75, 1.0]])
    out = NeighbourRows(w)(batch)
    assert out.domain[:6].tolist() == batch.domain.tolist() and out.weight[:6].tolist() == [2.0] * 6
    # row i of domain d' once more for each d != d' with w[d, d'] > 0: d0's rows to d2 (0.25), d1's to d0 (0.5) and
    # d2 (0.75), d2's nowhere
    copies = sorted(zip(out.sparse[6:, 0].tolist(), out.domain[6:].tolist(), out.weight[6:].tolist(), strict=True))
    ids = batch.sparse[:, 0].tolist()
    assert copies == sorted(
        [(ids[0], 2, 0.5), (ids[3], 2, 0.5), (ids[1], 0, 1.0), (ids[4], 0, 1.0), (ids[1], 2, 1.5), (ids[4], 2, 1.5)]
    )
    assert NeighbourRows(torch.eye(3))(batch) is batch  # nothing to add: the batch itself


def neighbour_module(weights: torch.Tensor | None) -> RankingModule:
    torch.manual_seed(0)
    net = perturb(adapted("dnn", "lora"))  # adapter slices away from the identity: every slice has a gradient
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    return RankingModule(net, SCHEMA, adam, train_rows=NeighbourRows(weights) if weights is not None else None)


def test_a_neighbour_row_enters_the_domains_adapter_gradient_with_its_similarity() -> None:
    s = 0.3
    module = neighbour_module(torch.tensor([[1.0, s, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    full = make_batch(16, seed=2)
    mine, theirs = (int((full.domain == d).nonzero()[0]) for d in (0, 1))
    batch = full.rows(torch.tensor([mine, theirs]))  # one row of d0, one of d1
    params = [p for p in module.net.adapter.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        loss = module.training_step(batch, 0)
    grads = torch.autograd.grad(loss, params)

    def grad(rows: list[int], domain: int) -> list[torch.Tensor]:
        b = batch.rows(torch.tensor(rows))
        b = Batch(b.sparse, b.dense, torch.full_like(b.domain, domain), b.labels)
        return torch.autograd.grad(bce(module.net, b).sum(), params)

    own, neighbour, other = grad([0], 0), grad([1], 0), grad([1], 1)
    total = 1.0 + s + 1.0  # the batch's row weights: the loss is their weighted mean
    for g, a, b, c in zip(grads, own, neighbour, other, strict=True):
        torch.testing.assert_close(g, (a + s * b + c) / total, rtol=1e-5, atol=1e-8)
    # domain 0's slices: its own row and the d1 row at weight s; domain 1's: its own row only; domain 2's: nothing
    for g, a, b, c in zip(grads, own, neighbour, other, strict=True):
        torch.testing.assert_close(g[0], (a[0] + s * b[0]) / total, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(g[1], c[1] / total, rtol=1e-5, atol=1e-8)
        assert not g[2].any()


def test_validation_sees_each_domains_own_rows_only() -> None:
    module = neighbour_module(torch.full((K, K), 1.0))
    plain = neighbour_module(None)
    batch = make_batch(24, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        for m in (module, plain):
            m.eval()
            m.validation_step(batch, 0)
    rows, expected = module.val_rows.compute(), plain.val_rows.compute()
    assert rows["domain"].tolist() == batch.domain.tolist()
    torch.testing.assert_close(rows["prob"], expected["prob"])


def test_neighbours_default_to_none_and_are_type_checked(train_cfg: TrainCfg) -> None:
    adam = functools.partial(torch.optim.Adam)
    assert Adapt(adam).neighbours == "none"
    cfg = train_cfg(["stage=adapt", "adapter=lora"])
    assert cfg.stage.neighbours == "none"
    with pytest.raises(TypeError, match=r"stage.neighbours='knn' is not"):
        check_types(train_cfg(["stage=adapt", "adapter=lora", "stage.neighbours=knn"]))
    with pytest.raises(ValueError, match=r"stage.neighbour_top_k \(0\) must be null or >= 1"):
        Adapt(adam, neighbours="similarity", neighbour_top_k=0)
    with pytest.raises(TypeError, match=r"stage.neighbour_weighting='rows' is not"):
        check_types(train_cfg(["stage=adapt", "adapter=lora", "stage.neighbour_weighting=rows"]))
    with pytest.raises(ValueError, match=r"stage.neighbour_weighting='rows' must be one of \['row', 'size'\]"):
        Adapt(adam, neighbour_weighting="rows")


@pytest.mark.slow
def test_a_run_with_neighbours_records_them_and_validates_as_none(train_cfg: TrainCfg, tmp_path: Path) -> None:
    options = ["stage=adapt", "adapter=lora", "adapter.rank=2", "trainer.max_epochs=1"]
    none = train(train_cfg([*options, "paths.output_dir=" + str(tmp_path / "none")]))
    assert not any(k.startswith("neighbours/") for k in none)
    metrics = train(train_cfg([*options, "stage.neighbours=similarity", "stage.neighbour_rows=2000"]))
    s = [[metrics[f"neighbours/similarity/{d}/{e}"] for e in DOMAINS] for d in DOMAINS]
    w = [[metrics[f"neighbours/weight/{d}/{e}"] for e in DOMAINS] for d in DOMAINS]
    assert all(s[i][i] == 1.0 == w[i][i] for i in range(4))
    assert all(0.0 <= v <= 1.0 for row in s for v in row) and w == s  # no top_k, power 1: the weights are s
    assert metrics["neighbours/row_factor"] > 1.0
    # the same backbone, the same validation rows: zero-shot identical, every domain's rows its own
    for d in DOMAINS:
        assert metrics[f"zeroshot/val/auc/{d}"] == none[f"zeroshot/val/auc/{d}"]
        assert metrics[f"val/rows/{d}"] == none[f"val/rows/{d}"]
        assert metrics[f"val/auc/{d}"] >= metrics[f"zeroshot/val/auc/{d}"] - 1e-6  # per-domain selection
