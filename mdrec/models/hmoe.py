"""HMoE (Li et al., CIKM 2020, "Improving Multi-Scenario Learning to Rank in E-commerce by Exploiting Task
Relationships in the Label Space"), as MMLRec implements it with scenarios as tasks: MMoE, then each scenario's
prediction mixes every scenario's tower output with learned per-row weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import STATIC, DomainGroups, DomainLinear
from mdrec.nn.experts import Experts, mix

EVERY_TOWER_ROWS = 128  # rows per block of the every-domain towers (their [rows, K, H] intermediates in cache)


class HMoE(nn.Module):
    """``t_k = tower_k(Σ_i softmax(G_k x0)_i f_i(x0))`` for every domain k, then for the row's domain d
    ``z = w_d · t_d + Σ_{k≠d} w_k ∅(t_k)`` with ``w = softmax(Ω_d x0)`` and ``s = u_d · z + c_d`` (docs/models.md,
    HMoE).

    The experts run once on the whole batch. The row's own gate and tower (t_d) run on its domain's block of rows,
    with their gradient; the other domains' towers enter through a stop-gradient, so only their values are needed:
    every domain's gate and tower run on every row with no autograd graph (K times the forward of the gates and
    towers, none of their backward). A domain's parameters learn from its own rows only. ``h`` is z.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        num_experts: shared experts.
        expert_sizes: hidden widths of every expert.
        tower_sizes: hidden widths of every domain's tower (ReLU after each).
        dropout: dropout after each expert and tower activation.

    Example:
        >>> net = HMoE(schema, num_experts=2, expert_sizes=[8], tower_sizes=[4])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 4]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        num_experts: int = 4,
        expert_sizes: Sequence[int] = (256, 128),
        tower_sizes: Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_domains = schema.num_domains
        self.input = input(schema)
        width, k = self.input.out_features, self.num_domains
        self.experts = Experts(num_experts, width, list(expert_sizes), dropout)
        self.gate = DomainLinear(k, width, num_experts)
        self.towers = Experts(1, self.experts.out_features, list(tower_sizes), dropout, num_domains=k)
        self.weights = DomainLinear(k, width, k)
        self.output = DomainLinear(k, self.towers.out_features, 1)

    @torch.no_grad()
    def every_tower(self, xs: Tensor, experts: Tensor) -> Tensor:
        """``t_k`` of every domain k on every row, by value (no autograd graph): ``xs [n, in]`` and the experts'
        outputs ``[n, E, H]`` -> ``[n, K, T]``."""
        # the softmax over the E experts with the K domains innermost: over a short last dimension it runs 7x slower
        logits = self.gate.every_domain(xs).transpose(1, 2).contiguous()  # [n, E, K]
        gates = torch.softmax(logits, dim=1).transpose(1, 2)  # [n, K, E]
        return self.towers.every_domain(gates @ experts).squeeze(2)  # [n, K, H] -> [n, K, T]

    def mix_towers(self, xs: Tensor, experts: Tensor, w: Tensor) -> Tensor:
        """``Σ_k w_k ∅(t_k)`` over every domain k: ``xs [B, in]``, the experts' outputs ``[B, E, H]``, the weights
        ``w [B, K]`` -> ``[B, T]`` (gradient to w only), on blocks of ``EVERY_TOWER_ROWS`` rows so that each block's
        ``[rows, K, H]`` intermediates stay in cache; in one block in a static (serving) graph, whose traced loop
        would hold only for the example's row count."""
        if STATIC.get():
            return mix(w, self.every_tower(xs, experts))
        experts = experts.contiguous()  # each row's E outputs side by side for the blocks' batched matmuls
        blocks = zip(*(t.split(EVERY_TOWER_ROWS) for t in (xs, experts, w)), strict=True)
        return torch.cat([mix(w_rows, self.every_tower(x, f)) for x, f, w_rows in blocks])

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        xs = groups.group(self.input(batch))  # [B, in] grouped order
        experts = self.experts(xs)  # [B, E, H]
        mixed = mix(torch.softmax(self.gate.grouped(xs, groups), dim=-1), experts)  # [B, H] the row's own domain's
        own = self.towers.grouped(mixed, groups).squeeze(1)  # [B, T] t_d, with its gradient
        w = torch.softmax(self.weights.grouped(xs, groups), dim=-1)  # [B, K]
        # z = Σ_k w_k ∅(t_k) + w_d (t_d - ∅(t_d)): the value of Σ_k w_k t_k, t_d's gradient through the row's own tower
        z = self.mix_towers(xs, experts, w) + w.gather(1, groups.domain[:, None]) * (own - own.detach())  # [B, T]
        logits = self.output.grouped(z, groups)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(z))
