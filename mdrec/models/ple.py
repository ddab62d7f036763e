"""PLE (Tang et al. 2020) with domains as tasks: stacked CGC levels, then one tower per domain."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainTower
from mdrec.nn.experts import CGCLayer, SharedGateExperts


class PLE(nn.Module):
    """Progressive layered extraction (docs/methods.md, PLE).

    Level j: each domain has ``num_domain_experts`` experts of its own plus ``num_shared_experts`` shared ones; a
    per-domain gate on the row's domain input mixes its own and the shared experts into its next domain input;
    below the last level a shared gate on the shared input mixes experts into the next shared input: every
    domain's and the shared ones (``shared_gate_experts="all"``, the paper), so the levels below the last carry
    every domain's input for every row (K times their compute); or the row's own domain's and the shared ones
    (``"own"``), so that each row only ever computes the shared experts and its own domain's. The last level and the
    tower run each row's own domain only. ``h`` is the last level's output for the row's domain.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        num_levels: J, stacked CGC levels.
        num_domain_experts: experts per domain and level.
        num_shared_experts: shared experts per level.
        expert_sizes: hidden widths of every expert (the same at every level).
        tower_sizes: hidden widths of each domain's tower.
        dropout: dropout after each expert and tower activation.
        shared_gate_experts: what the shared gates below the last level mix, ``"all"`` or ``"own"`` (see above).

    Example:
        >>> net = PLE(schema, num_levels=2, num_domain_experts=2, num_shared_experts=1)
        >>> net(batch).logits.shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        num_levels: int = 1,
        num_domain_experts: int = 2,
        num_shared_experts: int = 1,
        expert_sizes: Sequence[int] = (256, 128),
        tower_sizes: Sequence[int] = (64,),
        dropout: float = 0.2,
        shared_gate_experts: SharedGateExperts = "all",
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be positive, got {num_levels}")
        self.num_domains = schema.num_domains
        self.input = input(schema)
        sizes = list(expert_sizes)
        widths = [self.input.out_features] + [sizes[-1]] * (num_levels - 1)
        self.levels = nn.ModuleList(
            CGCLayer(
                self.num_domains,
                width,
                num_domain_experts,
                num_shared_experts,
                sizes,
                dropout,
                shared_gate=level < num_levels - 1,
                shared_gate_experts=shared_gate_experts,
            )
            for level, width in enumerate(widths)
        )
        self.tower = DomainTower(self.num_domains, sizes[-1], list(tower_sizes), dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        domain_in = shared_in = groups.group(self.input(batch))  # [B, in] grouped order
        for level in self.levels:
            if level.reads_every_domain:  # below the last level with shared_gate_experts="all"
                domain_in, shared_in = level.every_domain(domain_in, shared_in)  # [B, K, H], [B, H]
                continue
            if domain_in.dim() == 3:  # every domain's input: keep each row's own domain's
                domain_in = domain_in[torch.arange(domain_in.shape[0], device=domain_in.device), groups.domain]
            domain_in, shared_in = level.grouped(domain_in, shared_in, groups)  # [B, H], [B, H] or None
        _, logits = self.tower.grouped(domain_in, groups)  # [B, 1]
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(domain_in))
