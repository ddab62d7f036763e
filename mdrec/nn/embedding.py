"""Field embeddings built from the schema: ``[B, F]`` ids -> ``[B, F, D]``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FieldEmbedding(nn.Module):
    """One embedding table per sparse field, stored as a single table with per-field offsets.

    Id 0 of every field (padding / out of vocabulary) has its own row, so unseen values still get a (learned)
    vector. Tables start at N(0, ``init_std``): PyTorch's default N(0, 1) makes a DNN on ML-1M stall.

    Args:
        vocab_sizes: ids per field (including id 0), in ``Batch.sparse`` column order.
        embedding_dim: D.
        init_std: standard deviation of the initial weights.

    Example:
        >>> emb = FieldEmbedding([10, 5], embedding_dim=4)
        >>> emb(torch.tensor([[3, 1], [0, 4]])).shape
        torch.Size([2, 2, 4])
    """

    def __init__(self, vocab_sizes: list[int], embedding_dim: int, init_std: float = 1e-2) -> None:
        super().__init__()
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes must be a non-empty list of positive sizes, got {vocab_sizes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
        self.num_fields = len(vocab_sizes)
        self.embedding_dim = embedding_dim
        offsets = torch.tensor([0, *vocab_sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # [F]
        self.table = nn.Embedding(sum(vocab_sizes), embedding_dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids`` int64 ``[B, F]`` -> ``[B, F, D]``."""
        return self.table(ids + self.offsets)

    def lookup(self, ids: Tensor, field: int) -> Tensor:
        """Ids of one field, any shape ``[...]`` (e.g. a sequence sharing the field's vocabulary) -> ``[..., D]``."""
        return self.table(ids + self.offsets[field])


class SkippingEmbedding(FieldEmbedding):
    """A :class:`FieldEmbedding` for serving a trimmed model (one shared model with a per-domain feature mask): an id
    of -1 marks a field the row's domain dropped; it is not looked up and gets the field's id-0 vector, which is
    what looking up the blanked id 0 gives. Built from a trained embedding (its table is shared, not copied).

    Example:
        >>> emb = FieldEmbedding([10, 5], embedding_dim=4)
        >>> skip = SkippingEmbedding(emb)
        >>> ids = torch.tensor([[3, -1], [-1, 4]])
        >>> torch.equal(skip(ids), emb(ids.clamp(min=0)))
        True
    """

    def __init__(self, trained: FieldEmbedding) -> None:
        nn.Module.__init__(self)
        self.num_fields, self.embedding_dim = trained.num_fields, trained.embedding_dim
        self.register_buffer("offsets", trained.offsets.clone(), persistent=False)  # [F]
        self.table = trained.table

    def forward(self, ids: Tensor) -> Tensor:
        """``ids`` int64 ``[B, F]`` (-1: skipped) -> ``[B, F, D]``: one gather of the kept ids only."""
        keep = ids >= 0  # [B, F]
        blank = self.table.weight[self.offsets]  # [F, D]: each field's id-0 vector
        out = blank.expand(ids.shape[0], -1, -1).clone()
        out[keep] = self.table((ids + self.offsets)[keep])
        return out


def sparse_gradients(net: nn.Module) -> list[nn.Parameter]:
    """Switch the table of every :class:`FieldEmbedding` in ``net`` that trains (``requires_grad``) to sparse
    gradients (a sparse tensor of the looked-up rows instead of a dense ``[rows, D]`` one) and return those tables.

    Their optimiser must accept sparse gradients (``torch.optim.SparseAdam``, ``torch.optim.Adagrad``, SGD).
    Frozen tables are left as they are.

    Example:
        >>> emb = FieldEmbedding([10, 5], embedding_dim=4)
        >>> [p.shape for p in sparse_gradients(nn.Sequential(emb))], emb.table.sparse
        ([torch.Size([15, 4])], True)
    """
    tables = [m.table for m in net.modules() if isinstance(m, FieldEmbedding) and m.table.weight.requires_grad]
    unique = list({id(t): t for t in tables}.values())  # a table shared by two embeddings counts once
    for table in unique:
        table.sparse = True
    return [t.weight for t in unique]
