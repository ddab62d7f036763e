"""LoRA and MLoRA: per-domain low-rank deltas on the backbone's linear layers (docs/methods.md, LoRA and MLoRA)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.adapters.base import Adapter, Route, select_modules, site_key
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.parameter import DomainParameter

Variant = Literal["lora", "mlora"]
VARIANTS = get_args(Variant)
# where the delta joins the shared path: the linear layer's output (before the norm, activation and dropout that
# follow it), or the activation's input (after the shared path's norm and dropout): MLoRA's equation
Placement = Literal["linear", "activation"]
PLACEMENTS = get_args(Placement)
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Join:
    """Where a linear layer's delta joins at the activation that follows it in its ``nn.Sequential``: the
    activation's name, the names of the norms between them (the shared path; ``merged`` folds the delta through
    their eval statistics) and the dropouts right after the activation (moved onto the shared path, before the
    sum)."""

    activation: str
    norms: tuple[str, ...]
    dropouts: tuple[tuple[str, nn.Dropout], ...]


def find_join(root: nn.Module, name: str) -> Join | None:
    """The :class:`Join` of linear layer ``name``: the first module after it in its parent ``nn.Sequential``, before
    the next ``nn.Linear``, that is neither a norm nor a dropout is its activation. None when the layer is not in a
    ``nn.Sequential`` or no activation follows it (an output layer, a cross layer's factor): its delta joins at its
    output, which is then the sum's input itself."""
    parent_name, _, index = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if not isinstance(parent, nn.Sequential) or not index.isdigit():
        return None
    prefix = f"{parent_name}." if parent_name else ""
    norms: list[str] = []
    activation: str | None = None
    dropouts: list[tuple[str, nn.Dropout]] = []
    for i in range(int(index) + 1, len(parent)):
        module = parent[i]
        if isinstance(module, nn.Linear):
            break
        if activation is None and isinstance(module, NORMS):
            norms.append(f"{prefix}{i}")
        elif activation is None and not isinstance(module, nn.Dropout):
            activation = f"{prefix}{i}"
        elif activation is not None and isinstance(module, nn.Dropout):
            dropouts.append((f"{prefix}{i}", module))
        elif activation is not None:
            break
    return Join(activation, tuple(norms), tuple(dropouts)) if activation is not None else None


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
    ``variant="mlora"`` (Yang et al., RecSys 2024): ``a = act(Dropout(W0 x + b0) + (x A_d) B_d + b_d)``, rank
    ``max(out // alpha, 1)`` per layer, no scale, dropout on the shared path only. With the backbone frozen this is
    MLoRA's second stage (its first stage is the backbone's pre-training).

    ``placement`` says where the delta joins. ``"activation"`` (MLoRA's equation): at the input of the activation
    that follows the layer, after the shared path's batch norm; a dropout after that activation moves onto the
    shared path, before the sum (it acts as the backbone's dropout module does: off when that module is frozen or in
    eval). ``"linear"``: at the layer's output, before its batch norm, activation and dropout (LoRA's equation).
    A layer with no activation after it (the output layer) takes its delta at its output either way.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone the deltas attach to.
        targets: glob patterns of the ``nn.Linear`` modules to adapt (``["*"]``: all, e.g. ``["mlp.*"]``); no match
            is an error that lists the linear layers. None: the backbone's first hidden layer
            (``backbone.first_layer_site()``; a DIN attention MLP in the input layer is not adapted).
        variant: ``"lora"`` or ``"mlora"``.
        rank: R for LoRA (MLoRA derives each layer's rank from ``alpha``).
        alpha: LoRA's scale numerator (scale alpha / R); MLoRA's rank divisor.
        placement: ``"linear"`` or ``"activation"``; None: the variant's own (LoRA ``"linear"``, MLoRA
            ``"activation"``).

    Example:
        >>> LoRA(schema, backbone).sites  # the first hidden layer by default
        {'mlp.layers.0': 'output'}
        >>> adapter = LoRA(schema, backbone, targets=["mlp.*"], rank=8)
        >>> merged = adapter.merged(backbone, domain=2)  # a plain backbone for domain 2
        >>> type(merged).__name__
        'DNNBackbone'
    """

    def __init__(
        self,
        schema: Schema,
        backbone: Backbone,
        targets: Sequence[str] | None = None,
        variant: Variant = "lora",
        rank: int = 8,
        alpha: float = 16.0,
        placement: Placement | None = None,
    ) -> None:
        super().__init__(schema.num_domains)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {variant!r}")
        if placement is not None and placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {list(PLACEMENTS)} or null, got {placement!r}")
        if rank < 1 or alpha <= 0:
            raise ValueError(f"rank ({rank}) must be >= 1 and alpha ({alpha}) > 0")
        self.variant = variant
        self.placement: Placement = placement or ("linear" if variant == "lora" else "activation")
        self.deltas = nn.ModuleDict()
        self.scales: dict[str, float] = {}
        self.joins: dict[str, Join] = {}  # linear layer -> where its delta joins (placement "activation" only)
        self.join_sources: dict[str, str] = {}  # activation -> its linear layer
        self.moved_dropouts: dict[str, nn.Dropout] = {}  # activation -> the dropout moved before it (backbone's)
        if targets is None:
            targets = [backbone.first_layer_site()]
        for name, linear in select_modules(backbone, targets, nn.Linear).items():
            r = rank if variant == "lora" else max(int(linear.out_features // alpha), 1)
            delta = LowRankDelta(self.num_domains, linear.in_features, linear.out_features, r, bias=variant == "mlora")
            self.deltas[site_key(name)] = delta
            self.scales[name] = alpha / r if variant == "lora" else 1.0
            self.sites[name] = "output"
            join = find_join(backbone, name) if self.placement == "activation" else None
            if join is None:
                continue
            self.joins[name] = join
            self.join_sources[join.activation] = name
            self.sites[join.activation] = "input"
            for dropout_name, dropout in join.dropouts:
                self.moved_dropouts[join.activation] = dropout
                self.sites[dropout_name] = "output"

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        if name in self.join_sources:  # an activation's input x: the shared path, then the sum
            dropout = self.moved_dropouts.get(name)
            shared = x if dropout is None else dropout.forward(x)  # forward: not its own site's hook (the identity)
            return shared + route.handoff.pop(name)
        if name not in self.scales:  # a dropout moved before its activation: the identity here
            return x
        delta = self.scales[name] * self.deltas[site_key(name)].delta(x, route)
        join = self.joins.get(name)
        if join is None:
            return y + delta
        route.handoff[join.activation] = delta
        return y

    @torch.no_grad()
    def merged(self, backbone: Backbone, domain: int) -> nn.Module:
        """A copy of ``backbone`` with domain ``domain``'s deltas merged into its weights (a plain backbone that
        computes the adapted model in eval).

        A delta that joins after batch norms is folded through their eval statistics: ``BN(u) + c = BN(u + c s / g)``
        (``s = sqrt(running_var + eps)``, ``g`` the norm's weight). Raises ``ValueError`` for a join after a
        layer norm, or after a batch norm without running statistics or with a zero weight (no such fold)."""
        merged = copy.deepcopy(backbone)
        modules = dict(merged.named_modules())
        for name, scale in self.scales.items():
            delta = self.deltas[site_key(name)]
            weight = scale * delta.weight(domain)  # [out, in]
            bias = delta.bias[domain].clone() if delta.bias is not None else None  # [out]
            join = self.joins.get(name)
            for norm in join.norms if join is not None else ():
                factor = norm_inverse(modules[norm], name)  # [out]
                weight = weight * factor[:, None]
                bias = bias * factor if bias is not None else None
            modules[name].weight += weight
            if bias is not None:
                if modules[name].bias is None:  # MLoRA's b_d on a layer without a bias (a low-rank cross factor)
                    modules[name].bias = nn.Parameter(torch.zeros_like(bias))
                modules[name].bias += bias
        return merged


def norm_inverse(norm: nn.Module, name: str) -> Tensor:
    """``s / g`` of a batch norm in eval (``[C]``): what a change after it is, divided through it."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_var is None:
        raise ValueError(
            f"LoRA.merged: the delta of {name} joins after a {type(norm).__name__} without running statistics, "
            "which does not fold into the layer's weights; build the adapter with placement='linear' to merge it"
        )
    gain = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    if bool((gain == 0).any()):
        raise ValueError(f"LoRA.merged: the batch norm after {name} has a zero weight: its delta cannot fold through")
    return torch.sqrt(norm.running_var + norm.eps) / gain
