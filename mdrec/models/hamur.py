"""HAMUR (Li et al., CIKM 2023, "HAMUR: Hyper Adapter for Multi-Domain Recommendation"): a domain-specific adapter
on a backbone's representation, its weights ``U_d Z V_d`` completed per row by a shared hyper-network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import BackboneFactory
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainLinear
from mdrec.nn.mlp import MLP
from mdrec.nn.norm import PartitionedNorm
from mdrec.nn.parameter import DomainParameter


class HAMUR(nn.Module):
    """``h' = h + DN_d(σ(h W1 + b1_d) W2 + b2_d)`` with ``W_i = U_{i,d} Z V_{i,d}``, ``Z = hyper(x0)`` per row,
    then domain d's output layer (docs/models.md, HAMUR).

    The backbone (any of ``backbone=``: DNN, Wide&Deep, DCNv2) gives ``h [B, H]``; its own head is not used. The
    hyper-network (shared) maps the row's embedded input to ``Z [R, R]``; the factors ``U``, ``V``, the biases, the
    domain norm (a :class:`~mdrec.nn.norm.PartitionedNorm` without shared scales) and the output layer are per
    domain, applied to each domain's block of rows (``h W = ((h U_d) Z) V_d``: a per-domain matmul, an ``[R, R]``
    product per row, a per-domain matmul). ``h`` is the adapted representation.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone's factory (a backbone class with its options bound; the ``backbone`` config node).
        bottleneck: m, the adapter's down-projected width.
        rank: R, the size of the generated ``Z``.
        hyper_sizes: hidden widths of the hyper-network (ReLU), then a linear map to ``R²``.

    Example:
        >>> net = HAMUR(schema, functools.partial(DNNBackbone, layer_sizes=[16]), bottleneck=4, rank=3)
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 16]))
    """

    def __init__(
        self,
        schema: Schema,
        backbone: BackboneFactory,
        bottleneck: int = 32,
        rank: int = 32,
        hyper_sizes: Sequence[int] = (64,),
    ) -> None:
        super().__init__()
        self.num_domains, self.rank = schema.num_domains, rank
        self.backbone = backbone(schema)
        k, hidden = self.num_domains, self.backbone.hidden_size
        width = self.backbone.input.out_features
        self.hyper = nn.Sequential(
            MLP(width, list(hyper_sizes)) if hyper_sizes else nn.Identity(),
            nn.Linear(hyper_sizes[-1] if hyper_sizes else width, rank * rank),
        )

        def factor(rows: int, cols: int) -> DomainParameter:  # [K, rows, cols], each slice Xavier-uniform
            return DomainParameter(torch.stack([nn.init.xavier_uniform_(torch.empty(rows, cols)) for _ in range(k)]))

        self.down_u, self.down_v = factor(hidden, rank), factor(rank, bottleneck)
        self.up_u, self.up_v = factor(bottleneck, rank), factor(rank, hidden)
        self.down_bias = DomainParameter(torch.zeros(k, bottleneck))
        self.up_bias = DomainParameter(torch.zeros(k, hidden))
        self.norm = PartitionedNorm(k, hidden, shared_affine=False)
        self.output = DomainLinear(k, hidden, 1)

    def project(self, hs: Tensor, z: Tensor, u: Tensor, v: Tensor, groups: DomainGroups) -> Tensor:
        """``hs (U_d Z V_d)`` per row: ``hs [B, in]``, ``z [B, R, R]``, ``u [K, in, R]``, ``v [K, R, out]``."""
        low = torch.bmm(groups.matmul(hs, groups.take(u))[:, None], z).squeeze(1)  # [B, R]
        return groups.matmul(low, groups.take(v))

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        out = self.backbone(batch)
        hs = groups.group(out.h)  # [B, H] grouped order
        z = self.hyper(groups.group(self.backbone.input(batch))).view(-1, self.rank, self.rank)  # [B, R, R]
        d = groups.domain
        t = torch.sigmoid(self.project(hs, z, self.down_u, self.down_v, groups) + self.down_bias[d])  # [B, m]
        up = self.project(t, z, self.up_u, self.up_v, groups) + self.up_bias[d]  # [B, H]
        adapted = hs + self.norm(up, d)
        logits = self.output.grouped(adapted, groups)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=out.aux_loss, h=groups.ungroup(adapted))
