"""Per-domain embedding deltas (mdrec.adapters.embedding) and stacked adapters: the backbone at step 0, each
domain's slice trained by its own rows only, the defining equations on a hand-computed case."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mdrec.adapters.base import AdaptedNet, Stacked
from mdrec.adapters.embedding import EmbeddingDelta
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SparseField
from mdrec.models.dnn import DNNBackbone
from mdrec.nn.parameter import per_domain_parameters
from mdrec.serve.export import export, max_difference
from mdrec.serve.parallel import ParallelModel
from tests.helpers import SCHEMA, K, embedded, make_batch, perturb, pretrained, rows_of

KINDS = ["bias", "lowrank"]


def stacked(kind: str) -> Callable[[Schema, nn.Module], Stacked]:
    """A factory of the embedding delta (rank 2) beside LoRA (rank 2)."""
    delta = lambda s, b: EmbeddingDelta(s, b, kind=kind, rank=2)  # noqa: E731
    return lambda s, b: Stacked(s, b, {"embeddings": delta, "adapter": lambda s, b: LoRA(s, b, rank=2)})


def delta_net(kind: str, with_lora: bool = False) -> AdaptedNet:
    backbone = pretrained("dnn")
    make = stacked(kind) if with_lora else lambda s, b: EmbeddingDelta(s, b, kind=kind, rank=2)
    return AdaptedNet(SCHEMA, backbone, make(SCHEMA, backbone))


@pytest.mark.parametrize("with_lora", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_step_0_equals_the_backbone_exactly(kind: str, with_lora: bool) -> None:
    net = delta_net(kind, with_lora)
    batch = make_batch()
    reference = pretrained("dnn")(batch).logits
    for mode in (False, True):  # frozen modules stay in eval mode while training
        # the rows run in grouped order: equal up to BLAS blocking, as every adapter (tests/adapters/test_adapters.py)
        torch.testing.assert_close(net.train(mode)(batch).logits, reference, rtol=1e-6, atol=1e-6)
    one_domain = rows_of(batch, batch.domain == 1)  # grouped order is the batch order: bit for bit
    assert torch.equal(net(one_domain).logits, pretrained("dnn")(one_domain).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_a_domains_delta_gets_gradient_only_from_its_own_rows(kind: str) -> None:
    net = perturb(delta_net(kind)).train()  # perturbed: lowrank's u gets gradient only once V is not zero
    batch = make_batch()
    out = net(rows_of(batch, batch.domain == 1))
    out.logits.sum().backward()
    stacked = dict(per_domain_parameters(net.adapter))
    assert {id(p) for p in stacked.values()} == {id(p) for p in net.adapter.parameters()}
    for name, p in stacked.items():
        assert p.grad[[0, 2]].abs().sum() == 0, name
        assert p.grad[1].abs().sum() > 0, name
    assert all(p.grad is None for p in net.backbone.parameters())  # the shared table stays frozen


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_batch_equals_single_domain_batches_and_the_serving_grouping(kind: str) -> None:
    net = perturb(delta_net(kind, with_lora=True)).eval()
    batch = make_batch()
    mixed = net(batch).logits
    assert not torch.allclose(mixed, net.backbone(batch).logits)
    torch.testing.assert_close(net(batch, static=True).logits, mixed, rtol=1e-5, atol=1e-6)
    for d in range(K):
        mask = batch.domain == d
        torch.testing.assert_close(net(rows_of(batch, mask)).logits, mixed[mask], rtol=1e-5, atol=1e-6)


def test_the_deltas_on_a_hand_computed_case() -> None:
    # two fields of 2 and 3 ids (N = 5 rows of the table), D = 2, two domains
    schema = Schema("hand", (SparseField("f", 2), SparseField("g", 3)), (), "domain", ("a", "b"), ("click",))
    backbone = DNNBackbone(schema, embedded(2), [2])
    table = backbone.input.embedding.table.weight
    with torch.no_grad():
        table.copy_(torch.arange(10.0).view(5, 2))  # f: ids 0-1 -> rows 0-1; g: ids 0-2 -> rows 2-4
    ids, domain = torch.tensor([[1, 2], [0, 1]]), torch.tensor([1, 0])
    batch = Batch(sparse=ids, dense=torch.zeros(2, 0), domain=domain, labels=torch.zeros(2, 1))
    seen: list[torch.Tensor] = []
    # what the layers above the embedding see: the input layer's output [B, F * D], rows in grouped order (a, b)
    backbone.input.register_forward_hook(lambda m, args, out: seen.append(out.view(2, 2, 2)))

    bias = EmbeddingDelta(schema, backbone, kind="bias")
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]))  # [K, F, D]
    AdaptedNet(schema, backbone, bias).eval()(batch)
    # row 0 (domain b): f id 1 -> [2, 3] + [10, 20]; g id 2 -> row 4 [8, 9] + [30, 40]
    # row 1 (domain a): f id 0 -> [0, 1] + [1, 2];   g id 1 -> row 3 [6, 7] + [3, 4]
    expected = torch.tensor([[[12.0, 23.0], [38.0, 49.0]], [[1.0, 3.0], [9.0, 11.0]]])
    assert torch.equal(seen[-1], expected[[1, 0]])

    low = EmbeddingDelta(schema, backbone, kind="lowrank", rank=1)
    with torch.no_grad():
        low.u.copy_(torch.arange(10.0).view(2, 5, 1))  # u[a] = 0..4, u[b] = 5..9 (one per table row)
        low.v.copy_(torch.tensor([[[1.0, -1.0]], [[0.5, 2.0]]]))  # V_a = [1, -1], V_b = [0.5, 2]
    AdaptedNet(schema, backbone, low).eval()(batch)
    # row 0 (b): f row 1 -> u 6 * [0.5, 2] = [3, 12]; g row 4 -> u 9 * [0.5, 2] = [4.5, 18]
    # row 1 (a): f row 0 -> u 0 -> 0;                 g row 3 -> u 3 * [1, -1] = [3, -3]
    expected = torch.tensor([[[5.0, 15.0], [12.5, 27.0]], [[0.0, 1.0], [9.0, 4.0]]])
    assert torch.equal(seen[-1], expected[[1, 0]])
    assert low.u.numel() / 2 + low.v.numel() / 2 == 5 * 1 + 1 * 2  # N R + R D per domain


def test_stacked_refuses_two_parts_at_one_site() -> None:
    backbone = pretrained("dnn")
    lora = lambda s, b: LoRA(s, b, rank=2)  # noqa: E731
    with pytest.raises(ValueError, match=r"adapter parts 'one' and 'two' both act at site"):
        Stacked(SCHEMA, backbone, {"one": lora, "two": lora})
    with pytest.raises(ValueError, match="kind must be one of"):
        EmbeddingDelta(SCHEMA, backbone, kind="table")


def test_stacked_serving_form_computes_the_same() -> None:
    net = perturb(delta_net("lowrank", with_lora=True)).eval()
    served = net.adapter.for_serving(net.backbone)
    assert served is not net.adapter and set(served.parts) == {"embeddings", "adapter"}
    batch = make_batch()
    torch.testing.assert_close(AdaptedNet(SCHEMA, net.backbone, served).eval()(batch).logits, net(batch).logits)
    assert isinstance(net.adapter.parts, nn.ModuleDict)  # the trained adapter keeps its own parts


@pytest.mark.parametrize("kind", KINDS)
def test_the_stacked_adapter_serves_in_one_graph(kind: str, tmp_path: Path) -> None:
    net = perturb(delta_net(kind, with_lora=True)).eval()
    batch = make_batch()
    serving = ParallelModel(net, SCHEMA, stacked(kind))  # unknown domain ids fall back to a fresh slot: the backbone
    assert max_difference(serving, net, batch) < 1e-5
    assert max_difference(export(serving, batch, tmp_path / "serving.pt"), net, batch) < 1e-5
