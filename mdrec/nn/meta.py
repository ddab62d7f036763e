"""Layers whose weights are generated from a condition: once per domain (M2M's meta unit) or per row (APG, HAMUR's
adapter cell)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.nn.domain import DomainGroups
from mdrec.nn.mlp import MLP
from mdrec.nn.norm import PartitionedNorm
from mdrec.nn.parameter import DomainParameter


def hyper_network(in_features: int, hidden_sizes: Sequence[int], out_features: int) -> nn.Sequential:
    """The weight generator of APG and HAMUR: an MLP of ``hidden_sizes`` (ReLU; none: the identity), then a linear
    map to ``out_features`` (the generated weights, flattened). ``[N, in] -> [N, out]``; its modules are ``0`` (the
    MLP) and ``1`` (the linear map), initialised in that order.

    Example:
        >>> hyper_network(8, [16], 9)(torch.randn(5, 8)).shape
        torch.Size([5, 9])
    """
    hidden = list(hidden_sizes)
    return nn.Sequential(
        MLP(in_features, hidden) if hidden else nn.Identity(),
        nn.Linear(hidden[-1] if hidden else in_features, out_features),
    )


def xavier_factors(num_domains: int, rows: int, cols: int) -> DomainParameter:
    """``[K, rows, cols]`` per-domain factors, each slice Xavier-uniform (drawn domain by domain)."""
    return DomainParameter(torch.stack([nn.init.xavier_uniform_(torch.empty(rows, cols)) for _ in range(num_domains)]))


class HyperAdapterCell(nn.Module):
    """HAMUR's adapter cell (docs/models.md, HAMUR), shared by the zoo model (``model=hamur``) and the adapter on a
    pre-trained backbone (``adapter=hamur``):

        ``h' = h + DN_d(σ(h W1 + b1_d) W2 + b2_d)``,   ``W_i = U_{i,d} Z V_{i,d}``,   ``Z = reshape(hyper(x0))``

    with the hyper-network shared and generating ``Z [R, R]`` per row from the embedded input x0; ``U``, ``V``, the
    biases and the domain norm DN (a :class:`~mdrec.nn.norm.PartitionedNorm` without shared scales) per domain. A
    subclass calls :meth:`build_cell` in its constructor, which registers ``hyper``, ``down_u``, ``down_v``,
    ``up_u``, ``up_v``, ``down_bias``, ``up_bias`` and ``norm`` on it (in that order), then :meth:`adapt`.
    """

    rank: int

    def build_cell(
        self,
        num_domains: int,
        cond_features: int,
        hidden: int,
        bottleneck: int,
        rank: int,
        hyper_sizes: Sequence[int],
        norm_weight: float = 1.0,
    ) -> None:
        """The cell's parameters: x0 of width ``cond_features``, h of width ``hidden`` (H), the down-projection to
        ``bottleneck`` (m), ``Z`` of ``rank`` x ``rank``; DN's per-domain scales start at ``norm_weight`` (0: the
        cell starts as the identity, ``h' = h``)."""
        for field, value in (("bottleneck", bottleneck), ("rank", rank)):
            if value < 1:
                raise ValueError(f"HAMUR's {field} must be positive, got {value}")
        self.rank = rank
        self.hyper = hyper_network(cond_features, hyper_sizes, rank * rank)
        self.down_u, self.down_v = (
            xavier_factors(num_domains, hidden, rank),
            xavier_factors(num_domains, rank, bottleneck),
        )
        self.up_u, self.up_v = xavier_factors(num_domains, bottleneck, rank), xavier_factors(num_domains, rank, hidden)
        self.down_bias = DomainParameter(torch.zeros(num_domains, bottleneck))
        self.up_bias = DomainParameter(torch.zeros(num_domains, hidden))
        self.norm = PartitionedNorm(num_domains, hidden, shared_affine=False)
        with torch.no_grad():
            self.norm.weight.fill_(norm_weight)

    def adapt(self, hs: Tensor, x0s: Tensor, groups: DomainGroups) -> Tensor:
        """``h'`` ``[B, H]`` of ``hs [B, H]`` and ``x0s [B, in]``, both in grouped order."""
        z = self.hyper(x0s).view(-1, self.rank, self.rank)  # [B, R, R]
        d = groups.domain
        t = torch.sigmoid(generated_product(hs, z, self.down_u, self.down_v, groups) + self.down_bias[d])  # [B, m]
        up = generated_product(t, z, self.up_u, self.up_v, groups) + self.up_bias[d]  # [B, H]
        return hs + self.norm(up, d)


def generated_product(xs: Tensor, z: Tensor, u: Tensor, v: Tensor, groups: DomainGroups) -> Tensor:
    """``xs (U_d Z V_d)`` row by row without forming the weight: ``xs [B, in]``, ``z [B, R, R]``, ``u [K, in, R]``,
    ``v [K, R, out]`` -> ``[B, out]`` (a per-domain matmul, an ``[R, R]`` product per row, a per-domain matmul)."""
    low = torch.bmm(groups.matmul(xs, groups.take(u))[:, None], z).squeeze(1)  # [B, R]
    return groups.matmul(low, groups.take(v))


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
        generated = self.shape[0] * self.shape[1] + (out_features if generate_bias else 0)
        self.hyper = hyper_network(cond_features, hyper_sizes or [], generated)
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
