"""The MLP and its dropout: nn.Dropout's numbers (identity in evaluation, kept elements scaled by 1 / (1 - p) in
training) with a cheaper CPU mask."""

from __future__ import annotations

import pytest
import torch

from mdrec.nn.mlp import MLP, Dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_keeps_each_element_with_probability_one_minus_p_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(512, 1000)
    out = drop(x)
    kept = out != 0
    n = x.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5  # within 4 standard errors
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (1 - p)), rtol=1e-4, atol=0)
    assert abs(out.mean().item() - 1.0) < 4 * (p / (1 - p) / n) ** 0.5
    # no position is favoured: each column's (and row's) share kept varies as independent draws would
    for share, size in ((kept.float().mean(0), 512), (kept.float().mean(1), 1000)):
        assert abs(share.std().item() - (p * (1 - p) / size) ** 0.5) < 0.15 * (p * (1 - p) / size) ** 0.5


def test_dropout_gradient_is_the_scaled_mask_and_evaluation_is_the_identity() -> None:
    drop = Dropout(0.25)
    x = torch.randn(37, 5, requires_grad=True)  # an odd count: the last 64-bit draw is used in part
    out = drop(x)
    out.sum().backward()
    mask = (out != 0).float() * 4 / 3
    torch.testing.assert_close(out, x.detach() * mask)
    torch.testing.assert_close(x.grad, mask)
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0)(x) is x


def test_dropout_masks_follow_the_seed() -> None:
    drop = Dropout(0.3)
    torch.manual_seed(3)
    a = drop(torch.ones(64, 8))
    torch.manual_seed(3)
    assert torch.equal(drop(torch.ones(64, 8)), a) and not torch.equal(drop(torch.ones(64, 8)), a)


def test_mlp_uses_it_after_each_activation() -> None:
    mlp = MLP(4, [8, 2], dropout=0.2, batch_norm=True)
    assert [type(m).__name__ for m in mlp.layers][:4] == ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    assert isinstance(mlp.layers[3], Dropout)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)
