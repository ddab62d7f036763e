"""Topology A: a domain's trimmed variant (its adapter merged, the dropped features' lookups gone, the first layer
narrowed with the blanked ids' constant folded into its bias) equals the adapted network with those features
blanked on the domain's rows; re-training it changes nothing but its own dense layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.eval.trim import Retraining
from mdrec.serve.variants import blanked_difference, kept_schema, recovered, split_inputs, variant
from tests.helpers import SCHEMA, K, adapted, make_batch, perturb, pretrained


@pytest.mark.parametrize("backbone", ["dnn", "pooled"])
@pytest.mark.parametrize("adapter", ["lora", "mlora", None])
@pytest.mark.parametrize("drop", [[True, False, False], [False, True, True], [True, True, False], [False] * 3])
def test_a_variant_equals_the_blanked_network_on_its_domain(
    backbone: str, adapter: str | None, drop: list[bool]
) -> None:
    net = perturb(adapted(backbone, adapter)) if adapter else AdaptedNet(SCHEMA, pretrained(backbone), None)
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


def test_re_training_a_variant_changes_only_its_dense_layers_and_lowers_its_loss() -> None:
    net = perturb(adapted("dnn", "lora")).eval()
    gone = torch.tensor([False, True, False])  # item dropped: the click below depends on it and on age
    batch = make_batch(256, seed=4)
    labels = ((batch.sparse[:, 1] > 5) | (batch.dense[:, 0] > 0.5)).float()[:, None]
    rows = Batch(batch.sparse, batch.dense, torch.zeros_like(batch.domain), labels)  # domain a's training rows
    net_before = {k: v.clone() for k, v in net.state_dict().items()}
    sliced, other = variant(net, SCHEMA, 0, gone), variant(net, SCHEMA, 1, gone)
    sliced_before = {k: v.clone() for k, v in sliced.state_dict().items()}
    other_before = {k: v.clone() for k, v in other.state_dict().items()}

    def loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            p = model(*split_inputs(rows, gone))
        return float(torch.nn.functional.binary_cross_entropy(p, labels))

    again, losses = recovered(sliced, rows, gone, Retraining(steps=80, rows=128, lr=1e-2))
    assert len(losses) == 80 and loss(again) < loss(sliced)  # the training rows' loss goes down
    after = again.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, sliced_before[k])}
    assert changed and all(not k.startswith("network.input.") for k in changed)  # dense layers only
    assert "network.mlp.layers.0.weight" in changed  # the narrowed first layer among them
    assert all(torch.equal(v, sliced_before[k]) for k, v in sliced.state_dict().items())  # a copy was trained
    assert all(torch.equal(v, other_before[k]) for k, v in other.state_dict().items())  # another domain's: as it was
    assert all(torch.equal(v, net_before[k]) for k, v in net.state_dict().items())  # the shared network too
    assert not any(p.requires_grad for p in again.parameters())
    drop = torch.zeros(K, 3, dtype=torch.bool)
    drop[0] = gone
    assert blanked_difference(net, SCHEMA, drop, make_batch(64, seed=3)) < 1e-5  # as sliced: the blanked network
