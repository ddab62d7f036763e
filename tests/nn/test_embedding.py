"""One embedding table for all sparse fields, each field at its own offset."""

from __future__ import annotations

import pytest
import torch

from mdrec.nn.embedding import FieldEmbedding


def test_field_embedding_offsets_separate_fields() -> None:
    emb = FieldEmbedding([3, 4], embedding_dim=2, init_std=0.01)
    assert emb.table.weight.shape == (7, 2) and emb.table.weight.std() < 0.05
    out = emb(torch.tensor([[1, 1]]))  # field 0 owns rows 0..2, field 1 rows 3..6: its id 1 is row 4
    assert torch.equal(out[0, 0], emb.table.weight[1]) and torch.equal(out[0, 1], emb.table.weight[4])
    assert torch.equal(emb.lookup(torch.tensor([[2]]), field=1)[0, 0], emb.table.weight[5])
    with pytest.raises(ValueError, match="embedding_dim must be positive"):
        FieldEmbedding([3], embedding_dim=0)
