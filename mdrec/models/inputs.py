"""What every network shares at its edges: the input layer (a Batch -> one flat feature vector per row) and the
check of its task count against the schema's labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.nn.embedding import FieldEmbedding
from mdrec.nn.sequence import MeanPooling, TargetAttentionPooling

SequencePooling = Literal["mean", "din"]
SEQUENCE_POOLINGS = get_args(SequencePooling)


def check_num_tasks(schema: Schema, num_tasks: int) -> int:
    """Return ``num_tasks`` if the schema has that many labels (T in ``1..len(schema.labels)``), else raise."""
    if not 1 <= num_tasks <= len(schema.labels):
        raise ValueError(f"num_tasks {num_tasks} must be in 1..{len(schema.labels)} (labels: {list(schema.labels)})")
    return num_tasks


class EmbeddedInput(nn.Module):
    """Embeds the sparse fields, pools the sequence (if the schema has one) and appends the dense features.

    The sequence shares the embedding table of its ``vocab_field``. ``"mean"`` pooling averages the history;
    ``"din"`` weighs it by target attention (DIN), the target being the row's own id of the ``vocab_field`` (e.g.
    the candidate movie against the user's recent movies). With ``domain_as_feature`` the domain id is embedded as
    one more field, after the sparse ones: the "pooled" reference baseline (one model, the domain an ordinary
    feature). Otherwise the input knows nothing of domains. With ``domain_dropout`` > 0 the domain field has one more
    id, K, "any domain": in training each row's domain id is replaced by K with that probability, so K's vector
    learns what serves every domain; a domain id outside ``0..K-1`` (a domain the network was not trained on: an
    unknown one served, or a new one being onboarded onto the frozen network) always reads K's vector
    (``serves_any_domain``: the network can serve unknown domains, as a domain-agnostic one does).

    Args:
        schema: the data's schema (vocabulary sizes, fields).
        embedding_dim: D.
        init_std: standard deviation of the initial embedding weights.
        sequence_pooling: ``"mean"`` or ``"din"`` (needs a sequence field in the schema).
        attention_layer_sizes: hidden widths of DIN's attention MLP (unused by mean pooling).
        attention_softmax: normalise DIN's attention scores with a softmax (DIN itself keeps the raw scores).
        domain_as_feature: embed the domain id as a field (``schema.num_domains`` ids, named
            ``schema.domain_field``).
        domain_dropout: with ``domain_as_feature``, the probability of reading a training row's domain as "any
            domain" (id K, one more row of the domain field); 0: no such id.
        embedded_domains: with ``domain_as_feature``, K: how many of the schema's domains (the first ones) have a
            vector of their own; None: all of them. A network onboarded onto keeps the K it was pre-trained with
            (stage=onboard records it), its later domains reading the "any domain" vector (needs ``domain_dropout``).

    Shapes: ``forward(batch)`` -> ``[B, F' * D + (D if a sequence) + N]`` with ``F' = F (+ 1 with
    domain_as_feature)``; ``out_features`` holds the width, ``field_names`` and ``vocab_sizes`` the F' fields.

    Example:
        >>> inp = EmbeddedInput(seq_schema, embedding_dim=16, sequence_pooling="din")
        >>> inp(seq_batch).shape  # 3 fields and the pooled history of 16 each, 1 dense feature
        torch.Size([8, 65])
    """

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        init_std: float = 1e-2,
        sequence_pooling: SequencePooling = "mean",
        attention_layer_sizes: Sequence[int] = (80, 40),
        attention_softmax: bool = False,
        domain_as_feature: bool = False,
        domain_dropout: float = 0.0,
        embedded_domains: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= domain_dropout < 1.0 or (domain_dropout > 0 and not domain_as_feature):
            raise ValueError(
                f"domain_dropout must be in [0, 1) and needs domain_as_feature=true, got {domain_dropout} with "
                f"domain_as_feature={domain_as_feature}"
            )
        if embedded_domains is not None and not (domain_dropout > 0 and 1 <= embedded_domains <= schema.num_domains):
            raise ValueError(
                f"embedded_domains={embedded_domains} must be in 1..{schema.num_domains} (the schema's domains) and "
                f"needs an 'any domain' id (domain_dropout > 0, got {domain_dropout}) for the domains after them"
            )
        if sequence_pooling not in SEQUENCE_POOLINGS:
            raise ValueError(f"sequence_pooling must be one of {list(SEQUENCE_POOLINGS)}, got {sequence_pooling!r}")
        if sequence_pooling == "din" and schema.sequence is None:
            raise ValueError(
                f"sequence_pooling 'din' attends over a sequence field, but schema {schema.dataset_id!r} has none"
            )
        self.embedding_dim, self.init_std, self.domain_as_feature = embedding_dim, init_std, domain_as_feature
        self.num_domains = embedded_domains if embedded_domains is not None else schema.num_domains  # K
        self.domain_dropout = domain_dropout
        domain_vocab = self.num_domains + (1 if domain_dropout > 0 else 0)
        self.field_names = [*schema.sparse_names, *([schema.domain_field] if domain_as_feature else [])]
        self.vocab_sizes = [*schema.vocab_sizes, *([domain_vocab] if domain_as_feature else [])]
        # a data set of dense features only (and no domain feature) has nothing to embed
        self.embedding = FieldEmbedding(self.vocab_sizes, embedding_dim, init_std) if self.vocab_sizes else None
        self.seq_field = schema.sparse_index(schema.sequence.vocab_field) if schema.sequence is not None else None
        self.pooling: MeanPooling | TargetAttentionPooling | None = None
        if self.seq_field is not None:
            self.pooling = (
                TargetAttentionPooling(embedding_dim, attention_layer_sizes, attention_softmax)
                if sequence_pooling == "din"
                else MeanPooling()
            )
        num_pooled = len(self.vocab_sizes) + (1 if self.seq_field is not None else 0)
        self.out_features = num_pooled * embedding_dim + len(schema.dense)

    @property
    def serves_any_domain(self) -> bool:
        """Whether a domain id outside ``0..K-1`` has a meaning: none is read (domain-agnostic) or it reads K."""
        return self.domain_dropout > 0 or not self.domain_as_feature

    def domain_ids(self, domain: Tensor) -> Tensor:
        """The domain field's ids of domain ids ``[B]``: each its own, an unknown one (outside ``0..K-1``) K, "any
        domain", where there is such an id; in training, with ``domain_dropout``, also a random share of the rows K."""
        if self.domain_dropout == 0:
            return domain
        k = self.num_domains
        dropped = (domain < 0) | (domain >= k)  # [B]: unknown domains
        if self.training:
            dropped |= torch.rand(domain.shape, device=domain.device) < self.domain_dropout
        return domain.masked_fill(dropped, k)  # [B]: K, any domain

    def field_ids(self, batch: Batch) -> Tensor:
        """The ids of the ``field_names`` fields: ``[B, F']`` (the sparse ids, then the domain id if it is a field)."""
        if not self.domain_as_feature:
            return batch.sparse
        return torch.cat([batch.sparse, self.domain_ids(batch.domain)[:, None]], dim=1)  # [B, F] + [B, 1] -> [B, F + 1]

    def forward(self, batch: Batch) -> Tensor:
        """``batch`` -> ``[B, out_features]``."""
        parts = []
        if self.embedding is not None:
            fields = self.embedding(self.field_ids(batch))  # [B, F', D]
            parts.append(fields.flatten(1))  # [B, F' * D]
        if self.pooling is not None:
            if batch.seq is None or batch.seq_lengths is None:
                raise ValueError("the schema has a sequence field but the batch carries no `seq`")
            items = self.embedding.lookup(batch.seq, self.seq_field)  # [B, L, D]
            parts.append(self.pooling(fields[:, self.seq_field], items, batch.seq_lengths))  # [B, D]
        parts.append(batch.dense)
        return torch.cat(parts, dim=1)
