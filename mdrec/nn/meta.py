"""Layers whose weights are generated from a condition: once per domain (M2M's meta unit) or per row (APG)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mdrec.nn.domain import DomainGroups


class MetaLinear(nn.Module):
    """A linear layer whose weight and bias are linear functions of a condition s: ``W(s) = reshape(V_W s + c_W)``,
    ``b(s) = V_b s + c_b`` (M2M's meta unit, docs/models.md, M2M).

    The generator starts so that ``W(s)`` has ``nn.Linear``'s scale whatever s: ``c_W`` as ``nn.Linear``'s weight,
    ``V_W`` small (uniform in ±1/sqrt(in · cond)).

    Args:
        cond_features: width of the condition s.
        in_features: input width.
        out_features: output width.

    Shapes: ``generate(s [P, cond])`` -> ``(weight [P, out, in], bias [P, out])``; ``grouped(xs [B, ..., in], s
    [P, cond], groups)`` applies each present domain's generated layer to its rows (grouped order).

    Example:
        >>> layer = MetaLinear(cond_features=3, in_features=4, out_features=2)
        >>> g = DomainGroups(torch.tensor([0, 1, 1]), 2)
        >>> layer.grouped(torch.randn(3, 4), torch.randn(2, 3), g).shape
        torch.Size([3, 2])
    """

    def __init__(self, cond_features: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_generator = nn.Linear(cond_features, out_features * in_features)
        self.bias_generator = nn.Linear(cond_features, out_features)
        base = nn.Linear(in_features, out_features)
        bound = 1 / math.sqrt(in_features * cond_features)
        with torch.no_grad():
            self.weight_generator.weight.uniform_(-bound, bound)
            self.weight_generator.bias.copy_(base.weight.reshape(-1))
            self.bias_generator.weight.uniform_(-bound, bound)
            self.bias_generator.bias.copy_(base.bias)

    def generate(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """The layers of conditions ``s [P, cond]``: weights ``[P, out, in]`` and biases ``[P, out]``."""
        weight = self.weight_generator(s).view(-1, self.out_features, self.in_features)
        return weight, self.bias_generator(s)

    def grouped(self, xs: Tensor, s: Tensor, groups: DomainGroups) -> Tensor:
        return groups.linear(xs, *self.generate(s))
