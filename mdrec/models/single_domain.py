"""The single-domain reference: one independent DNN per domain, all K trained in one run by stacking."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainTower
from mdrec.nn.parameter import DomainParameter


class SingleDomain(nn.Module):
    """K independent models, one per domain: own embeddings, own MLP, own output layer; nothing is shared.

    Equivalent to training one DNN per domain on that domain's rows alone, but run as one network on mixed
    batches: the embedding tables are stacked ``[K, sum(V), D]`` and gathered at ``(domain, id)``, the MLPs are
    per-domain layers over rows grouped by domain (one matmul per present domain). A domain's parameters only
    ever see its own rows, so this is the no-transfer reference every multi-domain model should beat on small
    domains.

    Args:
        schema: the data's schema (K = ``schema.num_domains``); sequence fields are not read.
        embedding_dim: D.
        layer_sizes: hidden widths of each domain's MLP.
        dropout: dropout after each hidden activation.
        batch_norm: per-domain batch normalisation in the hidden layers.
        embedding_init_std: standard deviation of the initial embedding weights.

    Example:
        >>> net = SingleDomain(schema, embedding_dim=16, layer_sizes=[256, 128])
        >>> net(batch).logits.shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        layer_sizes: Sequence[int] = (256, 128),
        dropout: float = 0.2,
        batch_norm: bool = True,
        embedding_init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        if schema.sequence is not None:
            raise ValueError(
                f"SingleDomain does not read sequence features; data set {schema.dataset_id!r} has "
                f"{schema.sequence.name!r}: prepare it without one (e.g. data.source.sequence_length=0)"
            )
        self.num_domains = schema.num_domains
        offsets = torch.tensor([0, *schema.vocab_sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # [F]
        self.embedding = DomainParameter(
            torch.randn(self.num_domains, sum(schema.vocab_sizes), embedding_dim) * embedding_init_std
        )  # [K, sum(V), D]
        in_features = len(schema.sparse) * embedding_dim + len(schema.dense)
        self.tower = DomainTower(self.num_domains, in_features, list(layer_sizes), dropout, batch_norm)

    def forward(self, batch: Batch) -> ModelOutput:
        emb = self.embedding[batch.domain[:, None], batch.sparse + self.offsets]  # [B, F, D]
        x = torch.cat([emb.flatten(1), batch.dense], dim=1)  # [B, F * D + N]
        groups = DomainGroups(batch.domain, self.num_domains)
        hidden, logits = self.tower.grouped(groups.group(x), groups)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=x.new_zeros(()), h=groups.ungroup(hidden))
