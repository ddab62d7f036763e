"""Shared-bottom: a backbone's representation shared by all domains, one tower per domain on top."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import BackboneFactory
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainTower


class SharedBottom(nn.Module):
    """Domains as tasks on a shared bottom: ``h = backbone(batch).h``, then the row's own domain's tower.

    Each row runs only its own domain's tower (rows grouped by domain, one matmul per present domain); the
    backbone's own output layer is not used.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the bottom's factory (a backbone class with its options bound; the ``backbone`` config node).
        tower_sizes: hidden widths of each domain's tower (empty: a per-domain linear output on ``h``).
        dropout: dropout after each tower activation.
        batch_norm: per-domain batch normalisation in the towers.

    Example:
        >>> bottom = functools.partial(DNNBackbone, layer_sizes=[128])
        >>> net = SharedBottom(schema, bottom, tower_sizes=[8])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 128]))
    """

    def __init__(
        self,
        schema: Schema,
        backbone: BackboneFactory,
        tower_sizes: Sequence[int] = (8,),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_domains = schema.num_domains
        self.backbone = backbone(schema)
        self.tower = DomainTower(self.num_domains, self.backbone.hidden_size, list(tower_sizes), dropout, batch_norm)

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.backbone(batch)
        groups = DomainGroups(batch.domain, self.num_domains)
        _, logits = self.tower.grouped(groups.group(out.h), groups)  # [B, 1] grouped order
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=out.aux_loss, h=out.h)
