"""Topology A: a domain's trimmed variant (its adapter merged, the dropped features' lookups gone, the first layer
narrowed with the blanked ids' constant folded into its bias) equals the adapted network with those features
blanked on the domain's rows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.serve.variants import kept_schema, split_inputs, variant
from tests.helpers import SCHEMA, K, adapted, make_batch, perturb, pretrained


@pytest.mark.parametrize("adapter", ["lora", "mlora", None])
@pytest.mark.parametrize("drop", [[True, False, False], [False, True, True], [True, True, False], [False] * 3])
def test_a_variant_equals_the_blanked_network_on_its_domain(adapter: str | None, drop: list[bool]) -> None:
    net = perturb(adapted("dnn", adapter)) if adapter else AdaptedNet(SCHEMA, pretrained("dnn"), None)
    net.eval()
    gone = torch.tensor(drop)
    batch = make_batch(64, seed=3)
    for d in range(K):
        rows = dataclasses.replace(batch.rows(torch.nonzero(batch.domain == d).flatten()))
        mask = torch.zeros(K, len(drop), dtype=torch.bool)
        mask[d] = gone
        with torch.no_grad():
            expected = torch.sigmoid(net(rows.blanked(mask)).logits)
            served = variant(net, SCHEMA, d, gone)(*split_inputs(rows, gone))
        torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-6)
    # the variant has no trace of the dropped features: fewer embedding rows, a narrower first layer
    v = variant(net, SCHEMA, 0, gone)
    kept = kept_schema(SCHEMA, gone)
    assert v.sparse_names == kept.sparse_names and v.dense_names == list(kept.dense)
    first = v.network.mlp.layers[0]
    assert first.in_features == 8 * len(kept.sparse) + len(kept.dense)
    if v.network.input.embedding is not None:
        assert v.network.input.embedding.table.num_embeddings == sum(kept.vocab_sizes)


def test_a_variant_needs_a_dnn_backbone_and_a_mergeable_adapter() -> None:
    drop = torch.tensor([True, False, False])
    with pytest.raises(ValueError, match="does not merge"):
        variant(adapted("dnn", "iak"), SCHEMA, 0, drop)
    with pytest.raises(ValueError, match="narrow the first layer of a DNN backbone"):
        variant(adapted("wide_deep", "lora"), SCHEMA, 0, drop)
    with pytest.raises(ValueError, match=r"drop must be bool \[F\+N=3\]"):
        variant(adapted("dnn", "lora"), SCHEMA, 0, drop[:2])
