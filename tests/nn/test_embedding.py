"""One embedding table for all sparse fields, each field at its own offset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdrec.nn.embedding import FieldEmbedding, sparse_gradients


def test_field_embedding_offsets_separate_fields() -> None:
    emb = FieldEmbedding([3, 4], embedding_dim=2, init_std=0.01)
    assert emb.table.weight.shape == (7, 2) and emb.table.weight.std() < 0.05
    out = emb(torch.tensor([[1, 1]]))  # field 0 owns rows 0..2, field 1 rows 3..6: its id 1 is row 4
    assert torch.equal(out[0, 0], emb.table.weight[1]) and torch.equal(out[0, 1], emb.table.weight[4])
    assert torch.equal(emb.lookup(torch.tensor([[2]]), field=1)[0, 0], emb.table.weight[5])
    with pytest.raises(ValueError, match="embedding_dim must be positive"):
        FieldEmbedding([3], embedding_dim=0)


def test_sparse_gradients_switches_the_trainable_tables_and_their_gradients_hold_the_looked_up_rows() -> None:
    trained, frozen = FieldEmbedding([5, 3], embedding_dim=2), FieldEmbedding([4], embedding_dim=2)
    frozen.requires_grad_(False)
    net = nn.ModuleList([trained, frozen, trained])  # a table reached twice counts once
    assert sparse_gradients(net) == [trained.table.weight] and not frozen.table.sparse
    trained(torch.tensor([[1, 2], [1, 0]])).sum().backward()
    grad = trained.table.weight.grad.coalesce()
    assert grad.is_sparse and grad.indices().flatten().tolist() == [1, 5, 7]  # field offsets 0 and 5
    torch.testing.assert_close(grad.values(), torch.tensor([[2.0, 2.0], [1.0, 1.0], [1.0, 1.0]]))
