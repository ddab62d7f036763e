"""The input layer every network shares: a Batch -> one flat feature vector per row."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.nn.embedding import FieldEmbedding


class EmbeddedInput(nn.Module):
    """Embeds the sparse fields, mean-pools the sequence (if the schema has one) and appends the dense features.

    Args:
        schema: the data's schema (vocabulary sizes, fields).
        embedding_dim: D.
        init_std: standard deviation of the initial embedding weights.

    Shapes: ``forward(batch)`` -> ``[B, F * D + (D if a sequence) + N]``; ``out_features`` holds the width.

    Example:
        >>> inp = EmbeddedInput(schema, embedding_dim=16)     # doctest: +SKIP
        >>> inp(batch).shape                                 # doctest: +SKIP
        torch.Size([4096, 132])
    """

    def __init__(self, schema: Schema, embedding_dim: int, init_std: float = 1e-2) -> None:
        super().__init__()
        # a data set of dense features only has nothing to embed
        self.embedding = FieldEmbedding(schema.vocab_sizes, embedding_dim, init_std) if schema.sparse else None
        self.seq_field = schema.sparse_index(schema.sequence.vocab_field) if schema.sequence is not None else None
        num_pooled = len(schema.sparse) + (1 if self.seq_field is not None else 0)
        self.out_features = num_pooled * embedding_dim + len(schema.dense)

    def forward(self, batch: Batch) -> Tensor:
        parts = [self.embedding(batch.sparse).flatten(1)] if self.embedding is not None else []  # [B, F * D]
        if self.seq_field is not None:
            if batch.seq is None or batch.seq_lengths is None:
                raise ValueError("the schema has a sequence field but the batch carries no `seq`")
            items = self.embedding.lookup(batch.seq, self.seq_field)  # [B, L, D]
            mask = torch.arange(batch.seq.shape[1], device=batch.seq.device) < batch.seq_lengths[:, None]
            pooled = (items * mask[..., None]).sum(1) / batch.seq_lengths.clamp(min=1)[:, None]  # [B, D]
            parts.append(pooled)
        parts.append(batch.dense)
        return torch.cat(parts, dim=1)
