"""LoRA and MLoRA: per-domain low-rank deltas on the backbone's linear layers (docs/methods.md, LoRA and MLoRA)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.adapters.base import Adapter, Route, select_modules, site_key
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.parameter import DomainParameter

Variant = Literal["lora", "mlora"]
VARIANTS = get_args(Variant)


class LowRankDelta(nn.Module):
    """Domain d's delta on one linear layer ``in -> out``: ``scale * (x A_d) B_d + b_d``, stacked over domains.

    Shapes: ``a [K, in, R]`` (init as ``nn.Linear`` weights), ``b [K, R, out]`` (zeros), ``bias [K, out]`` (zeros,
    MLoRA only; None for LoRA). Zero ``b`` and ``bias`` make the delta 0 at the start.
    """

    def __init__(self, num_domains: int, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.a = DomainParameter(torch.empty(num_domains, in_features, rank))
        nn.init.kaiming_uniform_(self.a.view(-1, rank).T, a=math.sqrt(5))  # N(0, ~1/in)-scaled like nn.Linear
        self.b = DomainParameter(torch.zeros(num_domains, rank, out_features))
        self.bias = DomainParameter(torch.zeros(num_domains, out_features)) if bias else None

    def delta(self, xs: Tensor, route: Route) -> Tensor:
        """``xs [B, in]`` in grouped order -> ``[B, out]`` (no scale), one low-rank product per present domain."""
        groups = route.groups
        d = groups.matmul(xs, groups.take(self.a), groups.take(self.b))
        return d if self.bias is None else d + self.bias[groups.domain]

    def weight(self, domain: int) -> Tensor:
        """``(A_d B_d)^T``: domain d's delta as an ``[out, in]`` weight."""
        return (self.a[domain] @ self.b[domain]).T


class LoRA(Adapter):
    """Per-domain low-rank deltas on the backbone's linear layers chosen by name.

    ``variant="lora"`` (Hu et al.): ``y = W0 x + b0 + (alpha / R) * (x A_d) B_d`` with a fixed rank R.
    ``variant="mlora"`` (Yang et al.): ``y = W0 x + b0 + (x A_d) B_d + b_d``, rank ``max(out // alpha, 1)`` per layer,
    no scale. With the backbone frozen this is MLoRA's second stage (its first stage is the backbone's
    pre-training).

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone the deltas attach to.
        targets: glob patterns of the ``nn.Linear`` modules to adapt (``"*"``: all, e.g. ``["mlp.*"]``); no match
            is an error that lists the linear layers.
        variant: ``"lora"`` or ``"mlora"``.
        rank: R for LoRA (MLoRA derives each layer's rank from ``alpha``).
        alpha: LoRA's scale numerator (scale alpha / R); MLoRA's rank divisor.

    Example:
        >>> adapter = LoRA(schema, backbone, targets=["mlp.*"], rank=8)
        >>> merged = adapter.merged(backbone, domain=2)  # a plain backbone for domain 2
        >>> type(merged).__name__
        'DNNBackbone'
    """

    def __init__(
        self,
        schema: Schema,
        backbone: Backbone,
        targets: Sequence[str] = ("*",),
        variant: Variant = "lora",
        rank: int = 8,
        alpha: float = 16.0,
    ) -> None:
        super().__init__(schema.num_domains)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
        if rank < 1 or alpha <= 0:
            raise ValueError(f"rank ({rank}) must be >= 1 and alpha ({alpha}) > 0")
        self.variant = variant
        self.deltas = nn.ModuleDict()
        self.scales: dict[str, float] = {}
        for name, linear in select_modules(backbone, targets, nn.Linear).items():
            r = rank if variant == "lora" else max(int(linear.out_features // alpha), 1)
            delta = LowRankDelta(self.num_domains, linear.in_features, linear.out_features, r, bias=variant == "mlora")
            self.deltas[site_key(name)] = delta
            self.scales[name] = alpha / r if variant == "lora" else 1.0
            self.sites[name] = "output"

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        return y + self.scales[name] * self.deltas[site_key(name)].delta(x, route)

    @torch.no_grad()
    def merged(self, backbone: Backbone, domain: int) -> nn.Module:
        """A copy of ``backbone`` with domain ``domain``'s deltas merged into its weights (a plain backbone)."""
        merged = copy.deepcopy(backbone)
        modules = dict(merged.named_modules())
        for name, scale in self.scales.items():
            delta = self.deltas[site_key(name)]
            modules[name].weight += scale * delta.weight(domain)
            if delta.bias is not None:
                if modules[name].bias is None:  # MLoRA's b_d on a layer without a bias (a low-rank cross factor)
                    modules[name].bias = nn.Parameter(torch.zeros_like(delta.bias[domain]))
                modules[name].bias += delta.bias[domain]
        return merged
