"""Per-domain embedding adaptation: per-domain deltas on the backbone's field embeddings (docs/methods.md,
Per-domain embedding adaptation).

The delta acts on the output of the backbone's input embedding (``backbone.input.embedding``, ids ``[B, F]`` ->
``[B, F, D]``), so the backbone's table itself stays frozen and shared; every domain adds its own slice, stacked
``[K, ...]``, zero at the start (the adapted model equals the backbone at step 0). A pooled sequence's items are
looked up outside the embedding's forward and keep the shared vectors.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.adapters.base import Adapter, Route
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.parameter import DomainParameter

EmbeddingKind = Literal["bias", "lowrank"]
EMBEDDING_KINDS = get_args(EmbeddingKind)


class EmbeddingDelta(Adapter):
    """Domain d's delta on each field's embedding ``e_{f, i}`` (field f, id i).

    ``kind="bias"``: ``e_{f,i} + c_{d,f}``, one vector per domain and field, the same for every id
    (``c [K, F, D]``, zeros).
    ``kind="lowrank"``: ``e_{f,i} + u_{d,f,i} V_d``, a low-rank per-id table per domain
    (``u [K, N, R]`` over all fields' N ids, random like an embedding; ``V [K, R, D]``, zeros).

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone whose ``input.embedding`` output the delta adds to.
        kind: ``"bias"`` or ``"lowrank"``.
        rank: R of ``"lowrank"`` (unused by ``"bias"``).

    Parameters per domain: ``F * D`` (bias), ``N * R + R * D`` (lowrank).

    Example:
        >>> delta = EmbeddingDelta(schema, backbone, kind="lowrank", rank=1)
        >>> list(delta.sites.values()), delta.v.shape[0] == schema.num_domains
        (['output'], True)
    """

    def __init__(self, schema: Schema, backbone: Backbone, kind: EmbeddingKind = "lowrank", rank: int = 1) -> None:
        super().__init__(schema.num_domains)
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"kind must be one of {list(EMBEDDING_KINDS)}, got {kind!r}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        embedding = backbone.input.embedding
        if embedding is None:
            raise ValueError(f"{type(backbone).__name__} embeds no sparse field: there is no embedding to adapt")
        self.kind = kind
        site = next(name for name, module in backbone.named_modules() if module is embedding)
        self.sites[site] = "output"
        k, d = self.num_domains, embedding.embedding_dim
        if kind == "bias":
            self.bias = DomainParameter(torch.zeros(k, embedding.num_fields, d))
            return
        self.num_ids = embedding.table.num_embeddings
        self.register_buffer("offsets", embedding.offsets.clone(), persistent=False)  # [F]
        self.u = DomainParameter(torch.randn(k, self.num_ids, rank) / rank**0.5)
        self.v = DomainParameter(torch.zeros(k, rank, d))

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        """``x``: the ids ``[B, F]``, ``y``: their embeddings ``[B, F, D]`` (grouped order) -> ``[B, F, D]``."""
        groups = route.groups
        if self.kind == "bias":
            return y + self.bias[groups.domain]  # [B, F, D]: a small per-domain tensor, gathered per row
        rows = groups.domain[:, None] * self.num_ids + x + self.offsets  # [B, F]: domain d's row of each id
        u = nn.functional.embedding(rows, self.u.view(-1, self.u.shape[-1]))  # [B, F, R]
        return y + groups.matmul(u, groups.take(self.v))  # one [n_d, F, R] @ [R, D] per present domain
