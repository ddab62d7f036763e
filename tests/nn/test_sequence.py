"""Sequence pooling: DIN's target attention and mean pooling over a row's true history length."""

from __future__ import annotations

import pytest
import torch

from mdrec.nn.sequence import MeanPooling, TargetAttentionPooling


@pytest.mark.parametrize("softmax", [False, True])
def test_din_attention_ignores_padding_and_pools_empty_rows_to_zero(softmax: bool) -> None:
    torch.manual_seed(0)
    pool = TargetAttentionPooling(embedding_dim=4, layer_sizes=[8], softmax=softmax)
    target, items, lengths = torch.randn(3, 4), torch.randn(3, 5, 4), torch.tensor([2, 5, 0])
    weights = pool.weights(target, items, lengths)
    assert torch.equal(weights[0, 2:], torch.zeros(3)) and torch.equal(weights[2], torch.zeros(5))
    if softmax:
        torch.testing.assert_close(weights[:2].sum(1), torch.ones(2))
    pooled = pool(target, items, lengths)
    changed = items.clone()
    changed[0, 2:], changed[2] = 100.0, -7.0  # padding only
    assert torch.equal(pool(target, changed, lengths), pooled)
    assert torch.equal(pooled[2], torch.zeros(4)) and torch.isfinite(pooled).all()
    pooled.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in pool.parameters())


def test_mean_pooling_ignores_the_target() -> None:
    items, lengths = torch.randn(2, 3, 4), torch.tensor([3, 1])
    pooled = MeanPooling()(torch.randn(2, 4), items, lengths)
    torch.testing.assert_close(pooled, torch.stack([items[0].mean(0), items[1, 0]]))
