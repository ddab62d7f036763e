"""M3oE (Zhang et al., SIGIR 2024, "M3oE: Multi-Domain Multi-Task Mixture-of-Experts Recommendation Framework")
with one task, as Scenario-Wise-Rec runs it: a star-topology bottom, shared experts under each domain's gate, and
per-domain experts balanced across domains with learned fusion weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainLinear, DomainTower, StarLinear
from mdrec.nn.experts import Experts, mix


def linear_norm_relu(in_features: int, out_features: int) -> nn.Sequential:
    """``ReLU(LayerNorm(W x + b))``."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.LayerNorm(out_features), nn.ReLU())


class M3oE(nn.Module):
    """``z = LN-MLP(StarLinear_d(x0)) + LN-MLP(x0)``, then ``f = Σ_i softmax(G_d z)_i e_i(z) + w_exp · g_d(z)`` and
    domain d's tower (docs/models.md, M3oE).

    ``g_d`` is domain d's balanced expert: ``w_bal f_d(z) + (1 - w_bal) / (K - 1) Σ_{j≠d} f_j(z)`` with ``balance``
    (every domain's expert on every row: K times the domain experts' compute, as the method defines it), or
    ``f_d(z)`` without. ``w_bal = σ(β_bal)`` and ``w_exp = σ(β_exp)`` are learned scalars (the searched fusion
    weights). Everything else runs each row's own domain only. ``h`` is the fused ``f``.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        star_sizes: widths of the star-topology layer and of the layer after it (z's width).
        num_experts: shared experts.
        expert_sizes: hidden widths of every expert (shared and per domain).
        tower_sizes: hidden widths of each domain's tower.
        balance: mix every domain's expert into each domain's (see above).
        balance_init: β_bal at the start.
        expert_weight_init: β_exp at the start.

    Example:
        >>> net = M3oE(schema, star_sizes=[16, 8], num_experts=2, expert_sizes=[8], tower_sizes=[4])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        star_sizes: Sequence[int] = (256, 128),
        num_experts: int = 4,
        expert_sizes: Sequence[int] = (64,),
        tower_sizes: Sequence[int] = (64,),
        balance: bool = True,
        balance_init: float = 1.0,
        expert_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        if len(star_sizes) != 2:
            raise ValueError(f"star_sizes must name the star layer's and the next layer's widths, got {star_sizes}")
        self.num_domains, self.balance = schema.num_domains, balance
        self.input = input(schema)
        width, (star, hidden) = self.input.out_features, star_sizes
        self.star = StarLinear(self.num_domains, width, star)
        self.star_mlp = linear_norm_relu(star, hidden)
        self.skip = linear_norm_relu(width, hidden)
        self.experts = Experts(num_experts, hidden, list(expert_sizes))
        self.gate = DomainLinear(self.num_domains, hidden, num_experts)
        self.domain_experts = Experts(1, hidden, list(expert_sizes), num_domains=self.num_domains)
        self.balance_logit = nn.Parameter(torch.tensor(float(balance_init)))
        self.expert_logit = nn.Parameter(torch.tensor(float(expert_weight_init)))
        self.tower = DomainTower(self.num_domains, self.experts.out_features, list(tower_sizes))

    def domain_expert(self, z: Tensor, groups: DomainGroups) -> Tensor:
        """``g_d(z)`` of each row's domain d: ``z [B, hidden]`` (grouped order) -> ``[B, H]``.

        Balanced: ``w_bal f_d + c Σ_{k≠d} f_k = (w_bal - c) f_d + c Σ_k f_k`` with ``c = (1 - w_bal) / (K - 1)``:
        ``f_d`` on each domain's block of rows, the sum of every domain's expert on every row.
        """
        own = self.domain_experts.grouped(z, groups).squeeze(1)  # [B, H] f_d
        if not self.balance or self.num_domains == 1:
            return own
        total = self.domain_experts.every_domain(z).sum((1, 2))  # [B, K, 1, H] -> [B, H] Σ_k f_k
        w = torch.sigmoid(self.balance_logit)
        c = (1 - w) / (self.num_domains - 1)
        return (w - c) * own + c * total

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        x = groups.group(self.input(batch))  # [B, in] grouped order
        z = self.star_mlp(self.star.grouped(x, groups)) + self.skip(x)  # [B, hidden]
        shared = mix(torch.softmax(self.gate.grouped(z, groups), dim=-1), self.experts(z))  # [B, H]
        fused = shared + torch.sigmoid(self.expert_logit) * self.domain_expert(z, groups)
        _, logits = self.tower.grouped(fused, groups)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(fused))
