"""The shared input layer and the DNN backbone at tiny sizes (the embedding table alone: tests/nn/)."""

from __future__ import annotations

import pytest
import torch

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from tests.helpers import SEQ_SCHEMA, embedded


def tiny_batch() -> Batch:
    return Batch(
        sparse=torch.tensor([[1, 2], [6, 4], [0, 0]]),
        dense=torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]),
        domain=torch.tensor([0, 1, 1]),
        labels=torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
        seq=torch.tensor([[1, 2, 0], [3, 4, 4], [0, 0, 0]]),
        seq_lengths=torch.tensor([2, 3, 0]),
    )


def test_sequence_is_mean_pooled_over_its_true_length() -> None:
    inp = EmbeddedInput(SEQ_SCHEMA, embedding_dim=4)
    batch = tiny_batch()
    x = inp(batch)
    assert x.shape == (3, 2 * 4 + 4 + 2) == (3, inp.out_features)
    item = lambda ids: inp.embedding.lookup(torch.tensor(ids), field=1)  # noqa: E731
    torch.testing.assert_close(x[0, 8:12], item([1, 2]).mean(0))
    torch.testing.assert_close(x[1, 8:12], item([3, 4, 4]).mean(0))
    assert torch.equal(x[2, 8:12], torch.zeros(4))  # an empty history pools to zeros
    torch.testing.assert_close(x[:, 12:], batch.dense)
    with pytest.raises(ValueError, match="carries no `seq`"):
        inp(Batch(batch.sparse, batch.dense, batch.domain, batch.labels))


def test_dnn_backbone_shapes_and_task_check() -> None:
    torch.manual_seed(0)
    net = DNNBackbone(SEQ_SCHEMA, embedded(4), layer_sizes=[8, 6], num_tasks=2).eval()
    out = net(tiny_batch())
    assert out.logits.shape == (3, 2) and out.h.shape == (3, 6) and net.hidden_size == 6
    assert float(out.aux_loss) == 0.0 and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match=r"num_tasks 3 must be in 1..2"):
        DNNBackbone(SEQ_SCHEMA, num_tasks=3)


def test_dense_only_schema() -> None:
    schema = Schema("dense", (), ("x", "y"), "domain", ("a",), ("click",))
    net = DNNBackbone(schema, layer_sizes=[4]).eval()
    batch = Batch(
        torch.zeros(2, 0, dtype=torch.long), torch.ones(2, 2), torch.zeros(2, dtype=torch.long), torch.ones(2, 1)
    )
    assert net(batch).logits.shape == (2, 1)
