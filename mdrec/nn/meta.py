"""Layers whose weights are generated from a condition: once per domain (M2M's meta unit) or per row (APG)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mdrec.nn.domain import DomainGroups
from mdrec.nn.mlp import MLP


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


class APGLinear(nn.Module):
    """APG's linear layer: a weight generated from a condition z, low-rank ``W(z) = U S(z) V`` (docs/models.md, APG).

    ``S(z) = reshape(hyper(z))`` is ``[R, R]`` with ``rank=R`` (``U [in, R]``, ``V [R, out]`` shared; with
    ``overparam=p``, ``U = U_l U_r`` and ``V = V_l V_r`` through a width p), or the whole ``[in, out]`` weight with
    ``rank=None``. ``hyper`` is an MLP (``hyper_sizes``, ReLU) ending in a linear map; with ``generate_bias`` it also
    generates the bias, else the bias is a plain parameter.

    Args:
        cond_features: width of z.
        in_features: input width.
        out_features: output width.
        rank: R (None: generate the full weight).
        overparam: p, the over-parameterisation width of U and V (None: plain U, V; needs ``rank``).
        generate_bias: generate the bias from z too.
        hyper_sizes: hidden widths of the generator.

    Shapes: ``rows(x [B, in], z [B, cond])`` (a weight per row) and ``grouped(xs [B, in], z [K, cond], groups)``
    (a condition per domain, each present domain's weight applied to its rows, grouped order) -> ``[B, out]``.

    Example:
        >>> layer = APGLinear(cond_features=3, in_features=8, out_features=4, rank=2)
        >>> layer.rows(torch.randn(5, 8), torch.randn(5, 3)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        cond_features: int,
        in_features: int,
        out_features: int,
        rank: int | None = None,
        overparam: int | None = None,
        generate_bias: bool = True,
        hyper_sizes: list[int] | None = None,
    ) -> None:
        super().__init__()
        if rank is not None and not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in 1..min(in, out) = {min(in_features, out_features)} or None, got {rank}")
        if overparam is not None and (rank is None or overparam < rank):
            raise ValueError(f"overparam needs a rank and must be >= it, got overparam={overparam}, rank={rank}")
        self.rank, self.out_features = rank, out_features
        self.shape = (rank, rank) if rank is not None else (in_features, out_features)
        width = hyper_sizes[-1] if hyper_sizes else cond_features
        self.hyper = nn.Sequential(
            MLP(cond_features, hyper_sizes) if hyper_sizes else nn.Identity(),
            nn.Linear(width, self.shape[0] * self.shape[1] + (out_features if generate_bias else 0)),
        )
        self.bias = None if generate_bias else nn.Parameter(torch.zeros(out_features))
        self.factors = nn.ParameterList()
        if rank is not None:
            shapes = [(in_features, rank), (rank, out_features)]
            if overparam is not None:
                shapes = [(in_features, overparam), (overparam, rank), (rank, overparam), (overparam, out_features)]
            for shape in shapes:
                self.factors.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(shape))))

    def generate(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The core ``S [N, a, b]`` and the bias (``[N, out]`` generated, or the parameter ``[out]``)."""
        out = self.hyper(z)
        core = out[:, : self.shape[0] * self.shape[1]].view(-1, *self.shape)
        bias = out[:, self.shape[0] * self.shape[1] :] if self.bias is None else self.bias
        return core, bias

    def u_v(self) -> tuple[Tensor, Tensor]:
        """U ``[in, R]`` and V ``[R, out]`` (products of their factors with ``overparam``)."""
        if len(self.factors) == 2:
            return self.factors[0], self.factors[1]
        return self.factors[0] @ self.factors[1], self.factors[2] @ self.factors[3]

    def rows(self, x: Tensor, z: Tensor) -> Tensor:
        core, bias = self.generate(z)
        if self.rank is None:
            return torch.bmm(x[:, None], core).squeeze(1) + bias
        u, v = self.u_v()
        return torch.bmm((x @ u)[:, None], core).squeeze(1) @ v + bias

    def grouped(self, xs: Tensor, z: Tensor, groups: DomainGroups) -> Tensor:
        core, bias = self.generate(z)  # [K, a, b], [K, out] or [out]
        if self.bias is None:
            bias = bias.index_select(0, groups.domain)  # [B, out]
        if self.rank is None:
            return groups.matmul(xs, groups.take(core)) + bias
        u, v = self.u_v()
        return groups.matmul(xs @ u, groups.take(core)) @ v + bias
