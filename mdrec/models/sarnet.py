"""SAR-Net (Shen et al., CIKM 2021, "SAR-Net: A Scenario-Aware Ranking Network for Personalized Fair Recommendation
in Hundreds of Travel Scenarios"): a scenario-specific transform of the input, then a mixture of shared and
scenario-specific debiasing experts, then a shared MLP."""

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
from mdrec.nn.experts import CGCLayer
from mdrec.nn.mlp import MLP
from mdrec.nn.parameter import DomainParameter


class SARNet(nn.Module):
    """``x' = BN(x0 ⊙ w_d + b_d)``, ``h = MLP(Σ_i softmax(G_d x')_i f_i(x'))`` over the shared experts and domain
    d's own, ``s = w_o · h + b_o`` (docs/models.md, SAR-Net).

    The transform's ``w_d``, ``b_d`` are gathered per row; each row runs the shared experts and its own domain's
    experts and gate only (one customized-gate-control level, :class:`~mdrec.nn.experts.CGCLayer`). ``h`` is the
    MLP's output.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        num_shared_experts: experts shared by all domains.
        num_domain_experts: experts per domain.
        expert_sizes: hidden widths of every expert.
        layer_sizes: hidden widths of the MLP on the mixture.
        dropout: dropout after each expert and MLP activation.

    Example:
        >>> net = SARNet(schema, num_shared_experts=2, num_domain_experts=1, expert_sizes=[8], layer_sizes=[4])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 4]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        num_shared_experts: int = 4,
        num_domain_experts: int = 1,
        expert_sizes: Sequence[int] = (128,),
        layer_sizes: Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_domains = schema.num_domains
        self.input = input(schema)
        width = self.input.out_features
        self.scale = DomainParameter(torch.ones(self.num_domains, width))
        self.shift = DomainParameter(torch.zeros(self.num_domains, width))
        self.norm = nn.BatchNorm1d(width)
        self.experts = CGCLayer(
            self.num_domains, width, num_domain_experts, num_shared_experts, list(expert_sizes), dropout
        )
        self.mlp = MLP(self.experts.out_features, list(layer_sizes), dropout)
        self.output = nn.Linear(self.mlp.out_features, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        d = groups.domain
        xs = self.norm(groups.group(self.input(batch)) * self.scale[d] + self.shift[d])  # [B, in] grouped order
        mixed, _ = self.experts.grouped(xs, xs, groups)  # [B, H]
        h = self.mlp(mixed)
        logits = self.output(h)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(h))
