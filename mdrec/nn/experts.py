"""Experts and gates for MMoE and PLE, with domains as tasks.

Shared experts run as one batched computation on the whole batch: expert weights are stacked ``[E, in, out]``
and applied with one matmul (first layer: every expert reads the same input) or one ``einsum`` (later layers).
Per-domain experts and per-domain gates are stacked ``[K, ...]`` and run on the rows of their own domain only,
through :class:`mdrec.nn.domain.DomainGroups` (see that module for why grouped matmuls, not per-row gathers).
A row therefore computes the shared experts, its own domain's experts and its own domain's gate: nothing of the
other K - 1 domains. The exceptions are methods that by definition mix every domain's experts into every row (PLE's
shared gate below its last level, :meth:`CGCLayer.every_domain`; M3oE's balanced domain experts; HMoE's towers):
:meth:`Experts.every_domain` runs them with one matmul on the stacked weights per layer, K times the compute of
``grouped``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdrec.nn.domain import DomainGroups, DomainLinear, init_like_linear
from mdrec.nn.parameter import DomainParameter

SharedGateExperts = Literal["all", "own"]
SHARED_GATE_EXPERTS = get_args(SharedGateExperts)


def experts_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """E linear maps at once: ``x [B, in]`` (one input for all) or ``[B, E, in]`` -> ``[B, E, out]``.

    Args:
        x: the input, shared by every expert or one per expert.
        weight: ``[E, in, out]``.
        bias: ``[E, out]``.
    """
    num_experts, in_features, out_features = weight.shape
    if x.dim() == 2:
        flat = weight.permute(1, 0, 2).reshape(in_features, num_experts * out_features)  # [in, E * out]
        y = (x @ flat).view(x.shape[0], num_experts, out_features)  # [B, E, out]
    else:
        y = torch.einsum("bei,eio->beo", x, weight)  # [B, E, out]
    return y + bias


def mix(gates: Tensor, experts: Tensor) -> Tensor:
    """Gate-weighted sum of expert outputs: ``gates [B, E]``, ``experts [B, E, H]`` -> ``[B, H]``."""
    return torch.bmm(gates.unsqueeze(1), experts).squeeze(1)  # [B, 1, E] @ [B, E, H] -> [B, H]


class Experts(nn.Module):
    """E expert MLPs (``Linear -> ReLU -> [Dropout]`` per layer) computed together.

    Args:
        num_experts: E.
        in_features: input width.
        layer_sizes: hidden widths of every expert; the output width is the last one.
        dropout: dropout after each activation (0 disables).
        num_domains: None for experts shared by all rows; K for E experts per domain (stacked ``[K, E, ...]``),
            applied to each row's own domain only (``grouped``).

    Shapes: ``weights[l]`` ``[E, in_l, out_l]`` (``[K, E, in_l, out_l]`` per domain); ``forward(x [B, in])`` ->
    ``[B, E, out]``.

    Example:
        >>> experts = Experts(num_experts=3, in_features=8, layer_sizes=[16, 4])
        >>> experts(torch.zeros(5, 8)).shape
        torch.Size([5, 3, 4])
    """

    def __init__(
        self,
        num_experts: int,
        in_features: int,
        layer_sizes: list[int],
        dropout: float = 0.0,
        num_domains: int | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be positive, got {num_experts}")
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {layer_sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_domains is not None and num_domains < 1:
            raise ValueError(f"num_domains must be positive or None, got {num_domains}")
        self.num_experts = num_experts
        self.num_domains = num_domains
        prefix = (num_experts,) if num_domains is None else (num_domains, num_experts)
        widths = [in_features, *layer_sizes]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, o in zip(widths[:-1], widths[1:], strict=True):
            weight, bias = torch.empty(*prefix, o, i), torch.empty(*prefix, o)
            init_like_linear(weight, bias)
            stacked = nn.Parameter if num_domains is None else DomainParameter
            self.weights.append(stacked(weight.transpose(-1, -2).contiguous()))  # [..., in, out]
            self.biases.append(stacked(bias))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = layer_sizes[-1]

    def stack(self, x: Tensor, *params: Tensor) -> Tensor:
        """The expert MLPs on ``x [n, in]`` with the given weights and biases (shared, or one domain's)."""
        num_layers = len(params) // 2
        for weight, bias in zip(params[:num_layers], params[num_layers:], strict=True):
            x = self.dropout(F.relu(experts_linear(x, weight, bias)))  # [n, E, out_l]
        return x

    def grouped(self, xs: Tensor, groups: DomainGroups) -> Tensor:
        """Per-domain experts: ``xs [B, in]`` in grouped order -> each row's own domain's ``[B, E, out]``."""
        if self.num_domains is None:
            return self.forward(xs)
        return groups.map(self.stack, xs, *(groups.take(p) for p in (*self.weights, *self.biases)))

    def every_domain(self, x: Tensor) -> Tensor:
        """Every domain's experts on every row: ``x [B, in]`` (one input for all domains) or ``[B, K, in]`` (domain
        k's input in column k) -> ``[B, K, E, out]`` (K times the compute of ``grouped``, for methods that mix every
        domain's experts into every row).

        The first layer is one matmul on the stacked weights (a batched one over the domains for ``[B, K, in]``),
        every later layer one batched matmul over the K * E experts, biases fused into the matmuls.
        """
        if self.num_domains is None:
            raise ValueError("shared experts have no domains: call them directly")
        weight, bias = self.weights[0], self.biases[0]  # [K, E, in, out], [K, E, out]
        k, e, n_in, n_out = weight.shape
        if x.dim() == 2:
            flat = weight.permute(2, 0, 1, 3).reshape(n_in, k * e * n_out)  # [in, K * E * out]
            y = torch.addmm(bias.reshape(-1), x, flat).view(-1, k, e, n_out)  # [B, K, E, out]
        else:  # domain k's input in column k: [K, B, in] @ [K, in, E * out]
            per_domain = weight.permute(0, 2, 1, 3).reshape(k, n_in, e * n_out)
            y = torch.baddbmm(bias.reshape(k, 1, e * n_out), x.transpose(0, 1), per_domain)  # [K, B, E * out]
            y = y.view(k, -1, e, n_out).transpose(0, 1)  # [B, K, E, out]
        # ReLU in place only without autograd: in place on a view, autograd would copy the whole tensor
        y = self.dropout(F.relu(y, inplace=not y.requires_grad))
        for weight, bias in zip(self.weights[1:], self.biases[1:], strict=True):  # [K * E, B, in] @ [K * E, in, out]
            n_in, n_out = weight.shape[-2:]
            flat = y.permute(1, 2, 0, 3).reshape(k * e, -1, n_in)
            y = torch.baddbmm(bias.reshape(k * e, 1, n_out), flat, weight.reshape(k * e, n_in, n_out))
            y = y.view(k, e, -1, n_out).permute(2, 0, 1, 3)  # [B, K, E, out]
            y = self.dropout(F.relu(y, inplace=not y.requires_grad))
        return y

    def forward(self, x: Tensor) -> Tensor:
        if self.num_domains is not None:
            raise ValueError("per-domain experts need the rows' domains: call `grouped(xs, groups)`")
        return self.stack(x, *self.weights, *self.biases)


class CGCLayer(nn.Module):
    """One customized-gate-control level of PLE (docs/methods.md, PLE), with domains as tasks.

    Each domain has ``num_domain_experts`` experts of its own; ``num_shared_experts`` are shared. A row's
    domain gate (softmax of a per-domain linear map of its domain input) mixes its own domain's experts and the
    shared ones. With ``shared_gate``, a shared gate on the shared input mixes experts into the next level's shared
    input: with ``shared_gate_experts="all"`` (the paper) every domain's experts and the shared ones, which needs
    every domain's experts on every row (``every_domain``); with ``"own"`` the experts computed for the row (its
    own domain's and the shared ones, ``grouped``: other domains' experts are never evaluated on its rows).
    ``num_domain_experts=0`` with one level is MMoE (docs/methods.md, MMoE).

    Args:
        num_domains: K.
        in_features: width of the domain input and of the shared input.
        num_domain_experts: experts per domain (0: none).
        num_shared_experts: shared experts (0: none).
        expert_sizes: hidden widths of every expert.
        dropout: dropout in the experts.
        shared_gate: also produce the next level's shared input.
        shared_gate_experts: what the shared gate mixes, ``"all"`` or ``"own"`` (see above).

    Shapes: ``grouped(domain_in [B, in], shared_in [B, in], groups)`` (grouped row order) ->
    ``(domain_out [B, out], shared_out [B, out] or None)``; ``every_domain(domain_in [B, in] or [B, K, in],
    shared_in [B, in])`` -> ``(domain_out [B, K, out], shared_out [B, out])``.

    Example:
        >>> cgc = CGCLayer(3, 8, num_domain_experts=2, num_shared_experts=1, expert_sizes=[4], shared_gate=True)
        >>> x = torch.randn(4, 8)
        >>> [t.shape for t in cgc.every_domain(x, x)]  # every domain's output, the shared output
        [torch.Size([4, 3, 4]), torch.Size([4, 4])]
        >>> own = CGCLayer(3, 8, 2, 1, expert_sizes=[4], shared_gate=True, shared_gate_experts="own")
        >>> g = DomainGroups(torch.tensor([0, 0, 1, 2]), 3)
        >>> [t.shape for t in own.grouped(x, x, g)]
        [torch.Size([4, 4]), torch.Size([4, 4])]
    """

    def __init__(
        self,
        num_domains: int,
        in_features: int,
        num_domain_experts: int,
        num_shared_experts: int,
        expert_sizes: list[int],
        dropout: float = 0.0,
        shared_gate: bool = False,
        shared_gate_experts: SharedGateExperts = "all",
    ) -> None:
        super().__init__()
        if shared_gate_experts not in SHARED_GATE_EXPERTS:
            raise ValueError(
                f"shared_gate_experts must be one of {list(SHARED_GATE_EXPERTS)}, got {shared_gate_experts!r}"
            )
        if num_domain_experts < 0 or num_shared_experts < 0 or num_domain_experts + num_shared_experts < 1:
            raise ValueError(
                f"need at least one expert: num_domain_experts={num_domain_experts}, "
                f"num_shared_experts={num_shared_experts}"
            )
        total = num_domain_experts + num_shared_experts
        self.domain_experts = (
            Experts(num_domain_experts, in_features, expert_sizes, dropout, num_domains) if num_domain_experts else None
        )
        self.shared_experts = (
            Experts(num_shared_experts, in_features, expert_sizes, dropout) if num_shared_experts else None
        )
        self.num_domains = num_domains
        self.gate = DomainLinear(num_domains, in_features, total)
        self.mixes_all = shared_gate_experts == "all"
        shared_total = num_domains * num_domain_experts + num_shared_experts if self.mixes_all else total
        self.shared_gate = nn.Linear(in_features, shared_total) if shared_gate else None
        self.out_features = expert_sizes[-1]

    @property
    def reads_every_domain(self) -> bool:
        """True when the shared gate mixes every domain's experts: the level then runs through ``every_domain``."""
        return self.shared_gate is not None and self.mixes_all

    def grouped(self, domain_in: Tensor, shared_in: Tensor, groups: DomainGroups) -> tuple[Tensor, Tensor | None]:
        if self.reads_every_domain:
            raise ValueError("a shared gate over all experts needs every domain's experts: call `every_domain`")
        parts = []
        if self.domain_experts is not None:
            parts.append(self.domain_experts.grouped(domain_in, groups))  # [B, E_d, H]
        if self.shared_experts is not None:
            parts.append(self.shared_experts(shared_in))  # [B, E_s, H]
        experts = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [B, E_d + E_s, H]
        domain_out = mix(torch.softmax(self.gate.grouped(domain_in, groups), dim=-1), experts)  # [B, H]
        if self.shared_gate is None:
            return domain_out, None
        return domain_out, mix(torch.softmax(self.shared_gate(shared_in), dim=-1), experts)

    def every_domain(self, domain_in: Tensor, shared_in: Tensor) -> tuple[Tensor, Tensor]:
        """Every domain's output and the shared output on every row, in any row order (the paper's PLE below its
        last level)."""
        if not self.reads_every_domain:
            raise ValueError("every_domain is the level below the last of PLE with shared_gate_experts='all'")
        b, k = shared_in.shape[0], self.num_domains
        parts, pooled = [], []
        if self.domain_experts is not None:
            own = self.domain_experts.every_domain(domain_in)  # [B, K, E_d, H]
            parts.append(own)
            pooled.append(own.flatten(1, 2))  # [B, K * E_d, H]
        if self.shared_experts is not None:
            shared = self.shared_experts(shared_in)  # [B, E_s, H]
            parts.append(shared[:, None].expand(b, k, *shared.shape[1:]))
            pooled.append(shared)
        experts = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]  # [B, K, E_d + E_s, H]
        logits = self.gate.every_domain(domain_in)  # [B, K, E_d + E_s]
        domain_out = (torch.softmax(logits, dim=-1)[..., None] * experts).sum(2)  # [B, K, H]
        everything = torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]  # [B, K * E_d + E_s, H]
        return domain_out, mix(torch.softmax(self.shared_gate(shared_in), dim=-1), everything)
