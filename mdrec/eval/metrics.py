"""Per-domain ranking metrics: AUC, logloss, GAUC (grouped by user), weighted AUC and mean AUC over domains.

All AUCs come from one vectorised rank computation grouped by an integer key (domain, user, ...), so a
thousand domains or a hundred thousand users cost one sort, not a Python loop.

The per-domain AUC and GAUC are also torchmetrics ``Metric``\\ s (``DomainAUC``, ``GAUC``) for use in any training
loop: their states are the epoch's rows, concatenated over ``update`` calls and, under DDP, gathered from every
process (``dist_reduce_fx="cat"``), and ``compute`` applies the functions below to them. (torchmetrics'
``RetrievalAUROC`` computes a GAUC too, but loops over the groups in Python.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchmetrics
from torch import Tensor


def grouped_auc(scores: Tensor, labels: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """ROC AUC of ``scores`` against binary ``labels`` within each group, ties counted half.

    Args:
        scores: float ``[n]``.
        labels: ``[n]`` in {0, 1}.
        groups: int64 ``[n]`` in 0..num_groups-1.
        num_groups: G.

    Returns:
        ``(auc [G], positives [G], negatives [G])``; auc is NaN where a group lacks either class.

    Example:
        >>> scores, labels = torch.tensor([0.1, 0.9, 0.8, 0.2]), torch.tensor([0, 1, 0, 1])
        >>> auc, _, _ = grouped_auc(scores, labels, torch.tensor([0, 0, 1, 1]), 2)
        >>> auc.tolist()
        [1.0, 0.0]
    """
    scores = scores.double()
    labels = labels.double()
    # sort by (group, score): stable sort by score, then stable sort by group
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    s, y, g = scores[order], labels[order], groups[order]
    n = s.numel()
    # runs of equal (group, score) share the mean of their ranks (1-based, within the group)
    new_run = torch.ones(n, dtype=torch.bool, device=s.device)
    new_run[1:] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
    run_id = torch.cumsum(new_run, 0) - 1
    run_start = torch.nonzero(new_run).squeeze(1)
    run_len = torch.bincount(run_id)
    group_start = torch.zeros(num_groups + 1, dtype=torch.long, device=s.device)
    group_start[1:] = torch.cumsum(torch.bincount(g, minlength=num_groups), 0)
    rank = (run_start + (run_len - 1) / 2.0)[run_id] - group_start[g] + 1.0  # [n] mid-rank within group
    pos = torch.zeros(num_groups, dtype=torch.float64, device=s.device).index_add_(0, g, y)
    cnt = torch.bincount(g, minlength=num_groups).double()
    neg = cnt - pos
    rank_sum = torch.zeros(num_groups, dtype=torch.float64, device=s.device).index_add_(0, g, rank * y)
    auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    auc = torch.where((pos > 0) & (neg > 0), auc, torch.full_like(auc, float("nan")))
    return auc, pos, neg


def grouped_logloss(probs: Tensor, labels: Tensor, groups: Tensor, num_groups: int, eps: float = 1e-7) -> Tensor:
    """Mean binary cross-entropy per group ``[G]`` (NaN for an empty group); probabilities clipped to [eps, 1-eps]."""
    p = probs.double().clamp(eps, 1 - eps)
    y = labels.double()
    loss = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    total = torch.zeros(num_groups, dtype=torch.float64, device=p.device).index_add_(0, groups, loss)
    return total / torch.bincount(groups, minlength=num_groups).double()


def gauc(probs: Tensor, labels: Tensor, users: Tensor, owner: Tensor | None = None, num_owners: int = 1) -> Tensor:
    """Group AUC: per-user AUC weighted by the user's rows, over users with both classes.

    Args:
        probs, labels: ``[n]``.
        users: int64 ``[n]`` user ids (non-negative).
        owner: optional int64 ``[n]`` (e.g. the domain): GAUC is computed separately per owner, users keyed
            within their owner.
        num_owners: number of owners.

    Returns:
        float64 ``[num_owners]`` (NaN for an owner with no user that has both classes).
    """
    owner = torch.zeros_like(users) if owner is None else owner
    stride = int(users.max()) + 1 if users.numel() else 1
    keys, inverse = torch.unique(owner * stride + users, return_inverse=True)
    auc, pos, neg = grouped_auc(probs, labels, inverse, len(keys))
    weight = torch.where(torch.isnan(auc), torch.zeros_like(pos), pos + neg)
    key_owner = keys // stride
    num = torch.zeros(num_owners, dtype=torch.float64).index_add_(0, key_owner, torch.nan_to_num(auc) * weight)
    den = torch.zeros(num_owners, dtype=torch.float64).index_add_(0, key_owner, weight)
    return num / den


def known_user_gauc(
    probs: Tensor, labels: Tensor, users: Tensor, owner: Tensor | None = None, num_owners: int = 1
) -> Tensor:
    """``gauc`` over the rows of known users: user id 0 is every unknown user at once, not one person, so its rows
    are left out. Arguments and result as ``gauc``.

    Example:
        >>> probs, labels = torch.tensor([0.9, 0.1, 0.2, 0.8, 0.3, 0.6]), torch.tensor([1, 0, 1, 0, 1, 0])
        >>> users = torch.tensor([1, 1, 2, 2, 0, 0])
        >>> known_user_gauc(probs, labels, users).tolist()  # user 1: AUC 1, user 2: AUC 0, 2 rows each
        [0.5]
    """
    known = users > 0
    return gauc(probs[known], labels[known], users[known], None if owner is None else owner[known], num_owners)


def domain_metrics(
    probs: Tensor, labels: Tensor, domain: Tensor, domain_names: Sequence[str], users: Tensor | None = None
) -> dict[str, float]:
    """Overall and per-domain metrics with flat keys.

    Keys: ``auc``, ``logloss``, ``wauc`` (per-domain AUC weighted by rows), ``mean_auc`` (unweighted mean over
    domains with both classes), ``gauc`` (if ``users`` is given), and per domain ``auc/<name>``,
    ``logloss/<name>``, ``gauc/<name>`` and ``rows/<name>``. GAUC weights each user's AUC by the user's rows and
    skips user id 0 (unknown users, who are not one person).

    Args:
        probs: predicted probabilities ``[n]``.
        labels: ``[n]`` in {0, 1}.
        domain: int64 ``[n]``.
        domain_names: the K domain names.
        users: optional int64 ``[n]`` user ids for GAUC (0 = unknown).
    """
    k = len(domain_names)
    zeros = torch.zeros_like(domain)
    out: dict[str, float] = {}
    out["auc"] = float(grouped_auc(probs, labels, zeros, 1)[0][0])
    out["logloss"] = float(grouped_logloss(probs, labels, zeros, 1)[0])
    auc, pos, neg = grouped_auc(probs, labels, domain, k)
    loss = grouped_logloss(probs, labels, domain, k)
    rows = pos + neg
    valid = ~torch.isnan(auc)
    out["wauc"] = float((auc[valid] * rows[valid]).sum() / rows[valid].sum()) if valid.any() else float("nan")
    out["mean_auc"] = float(auc[valid].mean()) if valid.any() else float("nan")
    if users is not None:
        out["gauc"] = float(known_user_gauc(probs, labels, users)[0])
        dom_gauc = known_user_gauc(probs, labels, users, domain, k)
    for d, name in enumerate(domain_names):
        out[f"auc/{name}"] = float(auc[d])
        out[f"logloss/{name}"] = float(loss[d])
        out[f"rows/{name}"] = float(rows[d])
        if users is not None:
            out[f"gauc/{name}"] = float(dom_gauc[d])
    return out


class GatheredRows(torchmetrics.Metric):
    """Per-row tensors accumulated over an epoch; ``compute`` concatenates them over the batches and, when several
    processes ran, over the processes in rank order (each process's rows are gathered, uneven counts included):
    the rows ``domain_metrics`` needs, an AUC over every process's rows rather than a mean of per-process AUCs.

    Args:
        names: the tensors' names, in ``update``'s argument order.
        kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``dist_sync_fn``, ...; others are refused).

    Example:
        >>> rows = GatheredRows(["prob", "domain"])
        >>> rows.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]))
        >>> rows.update(torch.tensor([0.4]), torch.tensor([1]))
        >>> rows.compute()["domain"].tolist()
        [0, 1, 1]
    """

    full_state_update = False

    def __init__(self, names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = list(names)
        for name in self.names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, *values: Tensor) -> None:
        """One tensor ``[B, ...]`` per name, in ``names`` order."""
        if len(values) != len(self.names):
            raise ValueError(f"GatheredRows({self.names}).update takes {len(self.names)} tensors, got {len(values)}")
        for name, value in zip(self.names, values, strict=True):
            getattr(self, name).append(value.detach())

    def compute(self) -> dict[str, Tensor]:
        """Per name, the epoch's rows ``[n, ...]``."""
        return {name: torchmetrics.utilities.dim_zero_cat(getattr(self, name)) for name in self.names}


class DomainAUC(GatheredRows):
    """ROC AUC per domain, ``[K]`` float64 (NaN for a domain whose rows lack a class), over every row ``update``
    saw (on every process): ``grouped_auc`` by domain.

    Args:
        num_domains: K.
        kwargs: torchmetrics ``Metric`` options.

    Example:
        >>> auc = DomainAUC(num_domains=2)
        >>> auc.update(torch.tensor([0.1, 0.9, 0.8]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> auc.update(torch.tensor([0.2]), torch.tensor([1]), torch.tensor([1]))
        >>> auc.compute().tolist()
        [1.0, 0.0]
    """

    def __init__(self, num_domains: int, **kwargs: Any) -> None:
        super().__init__(("preds", "target", "domain"), **kwargs)
        self.num_domains = num_domains

    def update(self, preds: Tensor, target: Tensor, domain: Tensor) -> None:
        """``preds`` ``[B]`` scores, ``target`` ``[B]`` in {0, 1}, ``domain`` int64 ``[B]`` in 0..K-1."""
        super().update(preds, target, domain)

    def compute(self) -> Tensor:
        rows = super().compute()
        return grouped_auc(rows["preds"], rows["target"], rows["domain"], self.num_domains)[0]


class GAUC(GatheredRows):
    """Group AUC over every row ``update`` saw (on every process): ``known_user_gauc``, each user's AUC weighted by
    the user's rows, over the users with both classes; user id 0 (unknown users) left out.

    Args:
        num_domains: None: one GAUC over all rows, a scalar; K: one per domain, ``[K]`` (users keyed within their
            domain; NaN for a domain without a user that has both classes), ``update`` then takes the domains.
        kwargs: torchmetrics ``Metric`` options.

    Example:
        >>> metric = GAUC()
        >>> metric.update(torch.tensor([0.9, 0.1, 0.2]), torch.tensor([1, 0, 1]), torch.tensor([1, 1, 2]))
        >>> metric.update(torch.tensor([0.8]), torch.tensor([0]), torch.tensor([2]))
        >>> float(metric.compute())  # user 1: AUC 1, user 2: AUC 0, 2 rows each
        0.5
    """

    def __init__(self, num_domains: int | None = None, **kwargs: Any) -> None:
        super().__init__(
            ("preds", "target", "users") if num_domains is None else ("preds", "target", "users", "domain"), **kwargs
        )
        self.num_domains = num_domains

    def update(self, preds: Tensor, target: Tensor, users: Tensor, domain: Tensor | None = None) -> None:
        """``preds`` ``[B]`` scores, ``target`` ``[B]`` in {0, 1}, ``users`` int64 ``[B]`` (0: unknown), and with
        ``num_domains`` the ``domain`` int64 ``[B]`` in 0..K-1."""
        if (domain is None) != (self.num_domains is None):
            raise ValueError(
                f"GAUC(num_domains={self.num_domains}).update takes the domain of each row "
                f"{'only with num_domains set' if domain is not None else 'when num_domains is set'}"
            )
        super().update(preds, target, users, *(() if domain is None else (domain,)))

    def compute(self) -> Tensor:
        rows = super().compute()
        if self.num_domains is None:
            return known_user_gauc(rows["preds"], rows["target"], rows["users"])[0]
        return known_user_gauc(rows["preds"], rows["target"], rows["users"], rows["domain"], self.num_domains)
