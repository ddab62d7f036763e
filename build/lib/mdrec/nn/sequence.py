"""Sequence pooling: a padded ``[B, L, D]`` history -> one ``[B, D]`` vector per row.

Both poolings take ``(target, items, lengths)`` so the input layer can swap them: mean pooling ignores the target,
DIN's target attention (Zhou et al. 2018) weighs each history item by its relevance to the target item.
Positions at or past a row's length are padding and never contribute; a row of length 0 pools to zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.nn.mlp import MLP


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``lengths`` int64 ``[B]`` -> bool ``[B, max_len]``, True at the positions ``< length``. (``arange`` into
    ``new_empty``: a traced serving graph then builds it on its inputs' device, not on the example's.)"""
    return torch.arange(max_len, out=lengths.new_empty(max_len)) < lengths[:, None]


class MeanPooling(nn.Module):
    """The mean of each row's first ``length`` items; the target plays no part.

    Args:
        None: mean pooling has no parameters.

    Example:
        >>> pool = MeanPooling()
        >>> items = torch.arange(6.0).reshape(1, 3, 2)      # [B=1, L=3, D=2]
        >>> pool(torch.zeros(1, 2), items, torch.tensor([2]))
        tensor([[1., 2.]])
    """

    def forward(self, target: Tensor, items: Tensor, lengths: Tensor) -> Tensor:
        """``target [B, D]`` (unused), ``items [B, L, D]``, ``lengths [B]`` -> ``[B, D]``."""
        mask = length_mask(lengths, items.shape[1])  # [B, L]
        return (items * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(items.dtype)


class TargetAttentionPooling(nn.Module):
    """DIN's local activation unit: a weighted sum of the history, weights from an MLP on ``[q, k, q-k, q*k]``.

    The score of item ``k`` for target ``q`` is ``MLP([q, k, q - k, q * k]) -> Linear -> 1``. DIN keeps the raw
    scores as weights (no normalisation, so the pooled vector's size carries the strength of the user's interest);
    ``softmax=True`` normalises them over each row's valid positions instead. Padding gets weight 0 either way.

    Args:
        embedding_dim: D, the width of target and items.
        layer_sizes: hidden widths of the attention MLP (ReLU, no batch norm: padding would enter its statistics).
        softmax: normalise the scores with a softmax over the valid positions.

    Example:
        >>> pool = TargetAttentionPooling(embedding_dim=4, layer_sizes=[8])
        >>> items, target = torch.randn(2, 5, 4), torch.randn(2, 4)    # [B, L, D], [B, D]
        >>> pool(target, items, torch.tensor([3, 0])).shape
        torch.Size([2, 4])
    """

    def __init__(self, embedding_dim: int, layer_sizes: Sequence[int] = (80, 40), softmax: bool = False) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.softmax = softmax
        self.mlp = MLP(4 * embedding_dim, list(layer_sizes))
        self.score = nn.Linear(self.mlp.out_features, 1)

    def weights(self, target: Tensor, items: Tensor, lengths: Tensor) -> Tensor:
        """The attention weight of every position: ``[B, L]``, 0 at padding."""
        query = target[:, None, :].expand_as(items)  # [B, D] -> [B, L, D]
        pairs = torch.cat([query, items, query - items, query * items], dim=-1)  # [B, L, 4D]
        scores = self.score(self.mlp(pairs)).squeeze(-1)  # [B, L, 1] -> [B, L]
        mask = length_mask(lengths, items.shape[1])  # [B, L]
        if self.softmax:
            # a finite fill keeps an empty row finite (uniform); the mask below then zeroes it
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=1)
        return scores * mask

    def forward(self, target: Tensor, items: Tensor, lengths: Tensor) -> Tensor:
        """``target [B, D]``, ``items [B, L, D]``, ``lengths [B]`` -> ``[B, D]``."""
        return torch.einsum("bl,bld->bd", self.weights(target, items, lengths), items)
