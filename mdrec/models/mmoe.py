"""MMoE (Ma et al. 2018) with domains as tasks: shared experts, one gate and one tower per domain."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainTower
from mdrec.nn.experts import CGCLayer


class MMoE(nn.Module):
    """``f^d(x) = Σ_i softmax(W_d x)_i f_i(x)``, then domain d's tower (docs/methods.md, MMoE).

    The experts run once on the whole batch (one batched matmul); each row evaluates only its own domain's gate
    and tower. The representation ``h`` is the row's gated mixture of experts.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        num_experts: shared experts.
        expert_sizes: hidden widths of every expert.
        tower_sizes: hidden widths of each domain's tower.
        dropout: dropout after each expert and tower activation.

    Example:
        >>> net = MMoE(schema, num_experts=4, expert_sizes=[16], tower_sizes=[8])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 16]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        num_experts: int = 4,
        expert_sizes: Sequence[int] = (256, 128),
        tower_sizes: Sequence[int] = (64,),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_domains = schema.num_domains
        self.input = input(schema)
        self.experts = CGCLayer(
            self.num_domains, self.input.out_features, 0, num_experts, list(expert_sizes), dropout, shared_gate=False
        )
        self.tower = DomainTower(self.num_domains, self.experts.out_features, list(tower_sizes), dropout)

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        xs = groups.group(self.input(batch))  # [B, in] grouped order
        h, _ = self.experts.grouped(xs, xs, groups)  # [B, H]
        _, logits = self.tower.grouped(h, groups)  # [B, 1]
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(h))
