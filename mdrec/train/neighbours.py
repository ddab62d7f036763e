"""Neighbour rows of stage=adapt (docs/methods.md, Neighbour rows): each domain's adapter trains on its own rows and
on the rows of related domains, each such row's loss weighted by a similarity measured from the data.

The similarity ``s(d, d')`` of two domains is the cosine of their mean training-loss gradients with respect to the
pre-trained backbone's head (its weight and bias), clipped to ``[0, 1]``: domains whose rows pull the shared model
the same way are related. The gradients are measured once, before adapting, in closed form (the head maps ``h`` to
the logits, so a row's gradient is ``r ⊗ [h, 1]`` with ``r = (sigmoid(logits) - labels) / T``): one forward pass
of the backbone over each domain's training rows, no backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.models.backbone import Backbone
from mdrec.train.onboarding import batches

# what data each domain's adapter sees: its own rows, or its rows plus related domains' rows weighted by similarity
Neighbours = Literal["none", "similarity"]
NEIGHBOURS = get_args(Neighbours)
# a neighbour row's weight: the similarity itself ("row"), or the similarity scaled down by how much larger the
# neighbour domain is than the domain it is routed to ("size": a domain brings at most s(d, d') * n_d rows' worth)
Weighting = Literal["row", "size"]
WEIGHTINGS = get_args(Weighting)


@torch.no_grad()
def head_gradient_sums(backbone: Backbone, batch: Batch, num_domains: int) -> tuple[Tensor, Tensor]:
    """Per domain, the sum over ``batch``'s rows of the gradient of the row's loss (BCE averaged over the T predicted
    labels, as :meth:`~mdrec.train.module.RankingModule.loss`) with respect to ``backbone.head``'s weight and bias, at
    ``backbone`` as it is (call it in eval mode).

    Returns ``(sums [K, T * (H + 1)], rows [K])``: per domain the summed gradient, flattened as ``[T, H + 1]`` (the
    weight's row t, then the bias of t), and the number of rows summed.
    """
    out = backbone(batch)
    if out.h is None:
        raise ValueError(f"{type(backbone).__name__} returns no h: the head gradients of stage.neighbours need it")
    t = out.logits.shape[1]
    residual = (torch.sigmoid(out.logits) - batch.labels[:, :t]) / t  # [B, T]: d loss / d logits
    inputs = torch.cat([out.h, out.h.new_ones(out.h.shape[0], 1)], dim=1)  # [B, H + 1]
    per_row = (residual[:, :, None] * inputs[:, None, :]).flatten(1)  # [B, T * (H + 1)]
    sums = per_row.new_zeros(num_domains, per_row.shape[1]).index_add_(0, batch.domain, per_row)
    rows = per_row.new_zeros(num_domains).index_add_(0, batch.domain, per_row.new_ones(batch.size))
    return sums, rows


def sample_rows(rows: np.ndarray, domain: np.ndarray, num_domains: int, limit: int | None, seed: int) -> np.ndarray:
    """Up to ``limit`` of ``rows`` per domain (``domain``: each row's domain id), drawn at random with ``seed``,
    sorted; None: all of them.

    Example:
        >>> sample_rows(np.arange(6), np.array([0, 0, 0, 1, 1, 2]), 3, limit=2, seed=0).shape
        (5,)
    """
    if limit is None:
        return np.sort(rows)
    order = np.random.default_rng(seed).permutation(len(rows))
    order = order[np.argsort(domain[order], kind="stable")]  # by domain, random within each
    d = domain[order]
    rank = np.arange(len(order)) - np.searchsorted(d, np.arange(num_domains))[d]  # position within its domain
    return np.sort(rows[order[rank < limit]])


def domain_gradients(backbone: Backbone, data: MultiDomainDataModule, rows: np.ndarray) -> Tensor:
    """``[K, T * (H + 1)]``: per domain, the mean head gradient (:func:`head_gradient_sums`) over its rows among
    ``rows`` (store row numbers, sorted), the backbone in eval mode (its mode is restored); a domain without rows: 0."""
    k = data.schema.num_domains
    training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    total: Tensor | None = None
    count = torch.zeros(k, device=device)
    try:
        for batch in batches(data, rows, device):
            sums, n = head_gradient_sums(backbone, batch, k)
            total = sums if total is None else total + sums
            count += n
    finally:
        backbone.train(training)
    if total is None:
        raise ValueError("stage.neighbours=similarity: no training rows to measure the domains' gradients on")
    return total / count.clamp(min=1)[:, None]


def gradient_similarity(gradients: Tensor) -> Tensor:
    """``[K, K]``: the cosine similarity of the domains' gradients ``[K, G]``, negatives clipped to 0; a domain with a
    zero gradient (no rows) is similar to no other; every domain is similar to itself (1).

    Example:
        >>> gradient_similarity(torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])).tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    unit = torch.nn.functional.normalize(gradients.double(), dim=1)  # a zero row stays 0
    s = (unit @ unit.T).clamp(0.0, 1.0)
    s.fill_diagonal_(1.0)
    return s.float()


def neighbour_weights(similarity: Tensor, top_k: int | None, power: float, scale: float) -> Tensor:
    """``[K, K]``: ``weights[d, d']``, the loss weight of a training row of domain d' in domain d's adapter:
    ``scale * s(d, d') ** power`` for the ``top_k`` other domains most similar to d (None: every other domain), 0 for
    the rest, 1 on the diagonal (a domain's own rows).

    Example:
        >>> s = torch.tensor([[1.0, 0.5, 0.25], [0.5, 1.0, 0.0], [0.25, 0.0, 1.0]])
        >>> neighbour_weights(s, top_k=1, power=2.0, scale=1.0).tolist()
        [[1.0, 0.25, 0.0], [0.25, 1.0, 0.0], [0.0625, 0.0, 1.0]]
    """
    k = similarity.shape[0]
    eye = torch.eye(k, dtype=torch.bool, device=similarity.device)
    others = similarity.masked_fill(eye, 0.0) ** power
    if top_k is not None and top_k < k - 1:
        kept = torch.zeros_like(eye).scatter_(1, others.topk(top_k, dim=1).indices, True)
        others = others * kept
    return (scale * others).masked_fill(eye, 1.0)


def size_capped(weights: Tensor, rows: Sequence[int]) -> Tensor:
    """``weights [K, K]`` with every off-diagonal ``weights[d, d']`` times ``min(1, n_d / n_d')`` (``rows``: the
    training rows n per domain): the rows of domain d' then weigh at most ``weights[d, d'] * n_d`` together in d's
    loss, so a large neighbour cannot outweigh a small domain's own rows.

    Example:
        >>> size_capped(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), [100, 25]).tolist()
        [[1.0, 0.5], [0.125, 1.0]]
    """
    n = torch.as_tensor(rows, dtype=torch.float64)
    ratio = (n[:, None] / n[None, :].clamp(min=1)).clamp(max=1.0)  # [K, K]: min(1, n_d / n_d')
    ratio.fill_diagonal_(1.0)
    return (weights.double() * ratio).to(weights.dtype)


def row_factor(weights: Tensor, rows: Sequence[int]) -> float:
    """How many training rows an epoch trains on with ``weights``, as a multiple of the rows alone: each row of
    domain d' counts once, plus once more for every other domain d with ``weights[d, d'] > 0`` (``rows``: the
    training rows per domain)."""
    n = torch.as_tensor(rows, dtype=torch.float64)
    copies = (weights > 0).double().sum(0)  # [K] per source domain: its own domain and the others it is routed to
    return float((n * copies).sum() / n.sum().clamp(min=1))


class NeighbourRows:
    """A training batch with every row also routed to the other domains whose adapters see it: a row of domain d'
    is repeated with domain id d and loss weight ``weights[d, d'] * w`` (its own weight ``w``, 1 without
    ``Batch.weight``) for each d != d' with ``weights[d, d'] > 0``; the batch's own rows come first, unchanged.

    Args:
        weights: ``[K, K]`` (:func:`neighbour_weights`).

    Example:
        >>> rows = NeighbourRows(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
        >>> b = Batch(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), torch.tensor([0, 1]), torch.ones(2, 1))
        >>> out = rows(b)
        >>> out.domain.tolist(), out.weight.tolist()
        ([0, 1, 0], [1.0, 1.0, 0.5])
    """

    def __init__(self, weights: Tensor) -> None:
        self.weights = weights.float()

    def __call__(self, batch: Batch) -> Batch:
        weights = self.weights.to(batch.domain.device)
        w = weights[:, batch.domain].T.clone()  # [B, K]: row i's weight in domain d's adapter
        own = torch.arange(batch.size, device=w.device)
        w[own, batch.domain] = 0.0  # the row itself stays as it is
        row, domain = w.nonzero(as_tuple=True)
        if row.numel() == 0:
            return batch
        base = batch.weight if batch.weight is not None else w.new_ones(batch.size)
        out = batch.rows(torch.cat([own, row]))
        weight = torch.cat([base, base[row] * w[row, domain]])
        return replace(out, domain=torch.cat([batch.domain, domain]), weight=weight)


def similarity_table(matrix: Tensor, domains: Sequence[str]) -> str:
    """``matrix [K, K]`` as a text table, a row per domain d, a column per domain d'."""
    width = max(6, *(len(d) for d in domains))
    head = " " * width + "".join(f" {d:>{width}}" for d in domains)
    rows = zip(domains, matrix.tolist(), strict=True)
    lines = [f"{d:<{width}}" + "".join(f" {v:>{width}.3f}" for v in row) for d, row in rows]
    return "\n".join([head, *lines])


def matrix_metrics(prefix: str, matrix: Tensor, domains: Sequence[str]) -> dict[str, float]:
    """``matrix [K, K]`` as metrics ``<prefix>/<d>/<d'>`` (row d, column d')."""
    rows = zip(domains, matrix.tolist(), strict=True)
    return {f"{prefix}/{d}/{e}": float(v) for d, row in rows for e, v in zip(domains, row, strict=True)}
