"""M2M (Zhang et al., WSDM 2022, "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning Approach for
Advertiser Modeling"): shared experts, a meta attention that mixes them and a meta tower, both with weights
generated from the scenario's representation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups
from mdrec.nn.experts import Experts, mix
from mdrec.nn.meta import MetaLinear
from mdrec.nn.mlp import MLP
from mdrec.nn.parameter import DomainParameter


class M2M(nn.Module):
    """Meta attention over shared experts, then a residual meta tower (docs/models.md, M2M).

    ``S_d = MLP_s(e_d)`` is the scenario representation and ``T = MLP_t(t)`` the task's (one learned task
    embedding t: one task). Every meta unit's weights are linear in ``S_d``; they are generated once per domain
    present in the batch and applied to that domain's block of rows. The experts run once on the whole batch.
    ``h`` is the meta tower's output.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        num_experts: E, shared experts.
        expert_sizes: hidden widths of every expert; H = the last.
        scenario_sizes: hidden widths of ``MLP_s``; the condition's width is the last.
        num_tower_layers: residual meta layers in the tower.
        dropout: dropout after each expert activation.

    Example:
        >>> net = M2M(schema, num_experts=2, expert_sizes=[16], scenario_sizes=[8])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 16]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        num_experts: int = 4,
        expert_sizes: Sequence[int] = (128, 64),
        scenario_sizes: Sequence[int] = (32,),
        num_tower_layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_tower_layers < 1:
            raise ValueError(f"num_tower_layers must be positive, got {num_tower_layers}")
        self.num_domains = schema.num_domains
        self.input = input(schema)
        self.experts = Experts(num_experts, self.input.out_features, list(expert_sizes), dropout)
        hidden, dim, std = self.experts.out_features, self.input.embedding_dim, self.input.init_std
        self.domain_embedding = DomainParameter(torch.randn(self.num_domains, dim) * std)
        self.task_embedding = nn.Parameter(torch.randn(dim) * std)
        self.scenario = MLP(dim, list(scenario_sizes))
        self.task = MLP(dim, [hidden])
        cond = self.scenario.out_features
        self.attention = MetaLinear(cond, 2 * hidden, hidden)
        self.attention_vector = nn.Parameter(torch.empty(hidden).uniform_(-(hidden**-0.5), hidden**-0.5))
        self.tower = nn.ModuleList(MetaLinear(cond, hidden, hidden) for _ in range(num_tower_layers))
        self.output = nn.Linear(hidden, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        experts = self.experts(groups.group(self.input(batch)))  # [B, E, H] grouped order
        s = self.scenario(groups.take(self.domain_embedding))  # [P, cond] per present domain
        t = self.task(self.task_embedding[None]).expand_as(experts)  # [B, E, H]
        scores = torch.relu(self.attention.grouped(torch.cat([experts, t], dim=-1), s, groups))  # [B, E, H]
        r = mix(torch.softmax(scores @ self.attention_vector, dim=-1), experts)  # [B, H]
        for layer in self.tower:
            r = torch.relu(layer.grouped(r, s, groups) + r)
        logits = self.output(r)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(r))
