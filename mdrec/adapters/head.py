"""The Wide&Deep per-domain head (docs/methods.md, Wide&Deep head): a deep arm on the shared representation and a
wide arm on features chosen per domain, added to the backbone's logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.adapters.base import FALLBACK_DOMAIN, Adapter, Route
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.domain import DomainLinear, DomainMLP
from mdrec.nn.parameter import DomainParameter


class WideTables(nn.Module):
    """Per-domain linear weights on raw ids: ``sum_f mask[d, f] * table_f[d, id_f]``, one ``[K, V_f, T]`` table
    per field (zeros at the start)."""

    def __init__(self, num_domains: int, vocab_sizes: Sequence[int], mask: Tensor, num_tasks: int) -> None:
        super().__init__()
        self.tables = nn.ParameterList(DomainParameter(torch.zeros(num_domains, v, num_tasks)) for v in vocab_sizes)
        self.register_buffer("mask", mask)  # [K, F_w] float

    def forward(self, ids: Tensor, domain: Tensor) -> Tensor:
        """``ids [B, F_w]``, ``domain [B]`` -> ``[B, T]``."""
        out = 0
        for f, table in enumerate(self.tables):
            k, v, t = table.shape
            w = table.view(k * v, t)[domain * v + ids[:, f]]  # [B, T]: one small row per sample
            out = out + self.mask[domain, f, None] * w
        return out


class WideDeepHead(Adapter):
    """Per-domain head: ``logits_d = backbone logits + deep_d(h) + wide_d(ids)``.

    The deep arm is a per-domain MLP on the representation h the backbone's head reads (``hidden_sizes`` empty:
    a per-domain linear layer); the wide arm a per-domain linear model on the raw ids of ``wide_fields`` (domain
    names in ``domain_wide_fields`` get their own list instead; the serving graph's fallback domain,
    :data:`~mdrec.adapters.base.FALLBACK_DOMAIN`, gets none). Both arms' output layers start at zero: the adapted
    model starts as the backbone.

    Args:
        schema: the data's schema.
        backbone: the backbone (the head adds to the output of its ``head``).
        hidden_sizes: hidden widths of the deep arm.
        wide_fields: sparse fields of the wide arm for every domain.
        domain_wide_fields: per domain name, its own wide fields (overrides ``wide_fields`` for that domain).
        dropout: dropout after each hidden activation of the deep arm.

    Example:
        >>> head = WideDeepHead(schema, backbone, hidden_sizes=[32], wide_fields=["user_id"])
        >>> head.sites
        {'output': 'output'}
    """

    def __init__(
        self,
        schema: Schema,
        backbone: Backbone,
        hidden_sizes: Sequence[int] = (),
        wide_fields: Sequence[str] = (),
        domain_wide_fields: dict[str, Sequence[str]] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(schema.num_domains)
        head = backbone.head
        domain_wide_fields = domain_wide_fields or {}
        unknown = sorted(set(domain_wide_fields) - set(schema.domains))
        if unknown:
            raise ValueError(f"domain_wide_fields names unknown domain(s) {unknown}; domains: {list(schema.domains)}")
        # the serving graph's slot for unknown domains gets no wide fields: it adds nothing to the backbone and does
        # not change the tables' layout (wide_fields may name fields that every trained domain overrides)
        per_domain = [
            [] if d == FALLBACK_DOMAIN else list(domain_wide_fields.get(d, wide_fields)) for d in schema.domains
        ]
        fields = {f for fs in per_domain for f in fs}
        bad = sorted(f for f in fields if f not in schema.sparse_names)
        if bad:
            raise ValueError(f"wide fields {bad} are not sparse fields of the schema: {list(schema.sparse_names)}")
        fields = [f for f in schema.sparse_names if f in fields]  # schema order
        self.wide_columns = [schema.sparse_index(f) for f in fields]
        mask = torch.tensor([[float(f in fs) for f in fields] for fs in per_domain]).reshape(self.num_domains, -1)
        self.wide = (
            WideTables(self.num_domains, [schema.vocab_sizes[c] for c in self.wide_columns], mask, head.out_features)
            if fields
            else None
        )
        self.mlp = DomainMLP(self.num_domains, head.in_features, list(hidden_sizes), dropout) if hidden_sizes else None
        self.deep = DomainLinear(
            self.num_domains, hidden_sizes[-1] if hidden_sizes else head.in_features, head.out_features
        )
        nn.init.zeros_(self.deep.weight)
        nn.init.zeros_(self.deep.bias)
        self.sites[backbone.head_site()] = "output"

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        groups = route.groups
        hidden = self.mlp.grouped(x, groups) if self.mlp is not None else x
        out = y + self.deep.grouped(hidden, groups)
        if self.wide is not None:
            out = out + self.wide(route.batch.sparse[:, self.wide_columns], groups.domain)
        return out
