"""Adapter contracts, for every adapter on every backbone: identity at step 0, only adapter parameters train,
mixed batches equal single-domain batches, LoRA merges, adapters save and load on their own."""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from mdrec.adapters.base import AdaptedNet, select_modules
from mdrec.adapters.head import WideDeepHead
from mdrec.adapters.iak import IAK
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import SequenceField
from mdrec.models.backbone import Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.nn.domain import DomainGroups
from mdrec.nn.parameter import per_domain_parameters
from mdrec.serve.export import export, max_difference
from mdrec.serve.parallel import ParallelModel
from tests.helpers import (
    ADAPTERS,
    BACKBONES,
    CASES,
    SCHEMA,
    K,
    adapted,
    embedded,
    make_batch,
    perturb,
    pretrained,
    rows_of,
)


@pytest.mark.parametrize(("backbone", "adapter"), CASES)
def test_identical_to_the_backbone_at_step_0(backbone: str, adapter: str) -> None:
    net = adapted(backbone, adapter)
    batch = make_batch()
    reference = pretrained(backbone)(batch).logits
    for mode in (False, True):  # eval, and training mode (frozen modules stay in eval; IAK samples z)
        # equal up to float rounding: the adapted pass runs the rows in grouped order, which can change BLAS blocking
        torch.testing.assert_close(net.train(mode)(batch).logits, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backbone", "adapter"), CASES)
def test_only_adapter_parameters_change_while_adapting(backbone: str, adapter: str) -> None:
    net = adapted(backbone, adapter)
    before = copy.deepcopy(net.backbone.state_dict())  # parameters and batch-norm statistics
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in net.adapter.parameters()}
    adapter_before = [p.detach().clone() for p in trainable]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    net.train()
    for step in range(3):
        batch = make_batch(seed=step)
        out = net(batch)
        loss = nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(p, q) for p, q in zip(trainable, adapter_before, strict=True))


@pytest.mark.parametrize(("backbone", "adapter"), CASES)
def test_mixed_batch_equals_single_domain_batches(backbone: str, adapter: str) -> None:
    net = perturb(adapted(backbone, adapter)).eval()
    batch = make_batch()
    mixed = net(batch).logits
    assert not torch.allclose(mixed, net.backbone(batch).logits)  # the adapter does something
    for d in range(K):
        mask = batch.domain == d
        torch.testing.assert_close(net(rows_of(batch, mask)).logits, mixed[mask], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_domain_parameters_get_gradient_only_from_their_own_rows(adapter: str) -> None:
    net = perturb(adapted("dnn", adapter)).train()
    batch = make_batch()
    only_b = rows_of(batch, batch.domain == 1)
    out = net(only_b)
    (out.logits.sum() + out.aux_loss).backward()
    stacked = list(per_domain_parameters(net.adapter))
    shared = {name for name, _ in net.adapter.named_parameters()} - {name for name, _ in stacked}
    # all of it is per domain, but HAMUR's hyper-network: shared by all domains, by the method's definition
    assert shared == ({"hyper.0.layers.0.weight", "hyper.0.layers.0.bias", "hyper.1.weight", "hyper.1.bias"}
                      if adapter == "hamur" else set())  # fmt: skip
    for name, p in stacked:
        assert p.grad is not None, name
        assert p.grad[[0, 2]].abs().sum() == 0, name
    assert any(p.grad[1].abs().sum() > 0 for _, p in stacked)


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("variant", ["lora", "mlora"])
def test_lora_merged_into_a_plain_backbone_equals_unmerged(backbone: str, variant: str) -> None:
    net = pretrained(backbone)
    lora = LoRA(SCHEMA, net, targets=["*"], variant=variant, rank=3, alpha=4)
    model = perturb(AdaptedNet(SCHEMA, net, lora)).eval()
    batch = make_batch()
    unmerged = model(batch).logits
    for d in range(K):
        merged = lora.merged(model.backbone, d)
        assert type(merged) is type(net)
        mask = batch.domain == d
        torch.testing.assert_close(merged(rows_of(batch, mask)).logits, unmerged[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_adapter_weights_save_and_load_without_the_backbone(adapter: str) -> None:
    trained = perturb(adapted("dnn", adapter)).eval()
    buffer = io.BytesIO()
    torch.save(trained.adapter.state_dict(), buffer)
    assert not any(k.startswith("backbone") for k in trained.adapter.state_dict())
    fresh = adapted("dnn", adapter).eval()
    fresh.adapter.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    batch = make_batch()
    torch.testing.assert_close(fresh(batch).logits, trained(batch).logits, rtol=0, atol=0)


def test_lora_ranks_scales_and_targets() -> None:
    net = pretrained("dnn")
    lora = LoRA(SCHEMA, net, targets=["mlp.*"], rank=4, alpha=8)
    assert sorted(lora.sites) == ["mlp.layers.0", "mlp.layers.4"] and set(lora.scales.values()) == {2.0}
    assert lora.deltas["mlp/layers/0"].a.shape == (K, net.input.out_features, 4)
    mlora = LoRA(SCHEMA, net, targets=["*"], variant="mlora", alpha=4)
    ranks = {name: d.a.shape[2] for name, d in mlora.deltas.items()}
    assert ranks == {"mlp/layers/0": 4, "mlp/layers/4": 2, "output": 1}  # max(out // alpha, 1)
    assert mlora.deltas["output"].bias.shape == (K, 1) and lora.deltas["mlp/layers/0"].bias is None
    with pytest.raises(ValueError, match=r"no Linear module .* available Linear modules: \['mlp.layers.0'"):
        LoRA(SCHEMA, net, targets=["tower.*"])


@pytest.mark.parametrize(
    ("backbone", "first"),
    [
        ("dnn", "mlp.layers.0"),
        ("pooled", "mlp.layers.0"),
        ("wide_deep", "deep.mlp.layers.0"),
        ("dcnv2", "mlp.layers.0"),
    ],
)
def test_lora_adapts_the_first_hidden_layer_by_default(backbone: str, first: str) -> None:
    """The default targets: the first linear layer of the backbone's MLP, one rank-8 delta ``in x 8 + 8 x out``
    per domain (DCNv2's cross factors and every head stay shared)."""
    net = pretrained(backbone)
    lora = LoRA(SCHEMA, net)
    layer = net.get_submodule(first)
    assert lora.sites == {first: "output"} and net.first_layer_site() == first
    assert sum(p.numel() for p in lora.parameters()) == K * 8 * (layer.in_features + layer.out_features)


def test_lora_default_leaves_a_din_attention_mlp_shared() -> None:
    schema = dataclasses.replace(SCHEMA, sequence=SequenceField("hist", "item", 5))
    backbone = DNNBackbone(schema, embedded(8, sequence_pooling="din"), [16, 8])
    linears = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    assert any(n.startswith("input.pooling.") and n.endswith("mlp.layers.0") for n in linears)  # the trap
    assert LoRA(schema, backbone).sites == {"mlp.layers.0": "output"}


def test_lora_default_on_a_backbone_without_a_first_layer_says_what_to_set() -> None:
    class Bare(DNNBackbone):  # a backbone that keeps the contract without naming its MLP
        first_layer_site = Backbone.first_layer_site

    with pytest.raises(NotImplementedError, match=r"Bare does not name its first hidden layer.*adapter.targets"):
        LoRA(SCHEMA, Bare(SCHEMA, embedded(8), [16, 8]))


def test_iak_kl_term_and_ablations() -> None:
    net = pretrained("dnn")
    batch = make_batch()
    base = net(batch).aux_loss
    with_kl = AdaptedNet(SCHEMA, net, IAK(SCHEMA, net, bottleneck=5, beta=0.1)).train()
    kl = with_kl(batch).aux_loss - base
    # standard prior, mu ~ small, log var = -4: KL per row ~ 0.5 * k * (e^-4 - 1 + 4) ~ 7.5; times beta
    assert 0.5 < kl.item() < 1.5
    no_kl = AdaptedNet(SCHEMA, net, IAK(SCHEMA, net, bottleneck=5, beta=0.1, kl=False)).train()
    assert float(no_kl(batch).aux_loss - base) == 0.0
    no_residual = AdaptedNet(SCHEMA, net, IAK(SCHEMA, net, bottleneck=5, residual=False)).eval()
    assert not torch.allclose(no_residual(batch).logits, net(batch).logits)  # documented: no identity start
    layers = IAK(SCHEMA, net, placement="layers", layer_targets=["mlp.*"])
    assert layers.sites == {"mlp.layers.0": "output", "mlp.layers.4": "output"}
    assert IAK(SCHEMA, net).sites == {"output": "input"}


def test_iak_kl_weight_scales_with_the_domains_size_in_the_batch() -> None:
    # domains [0, 0, 0, 1] of K = 3: 2 present, 2 rows per present domain; p = 1 -> 2/3 for d0's rows, 2 for d1's
    iak = IAK(SCHEMA, pretrained("dnn"), bottleneck=5, beta=0.1, beta_power=1.0)
    assert iak.size_weights(torch.tensor([0, 0, 0, 1])).tolist() == pytest.approx([2 / 3] * 3 + [2.0])
    squared = IAK(SCHEMA, pretrained("dnn"), bottleneck=5, beta_power=2.0).size_weights(torch.tensor([0, 0, 0, 1]))
    assert squared.tolist() == pytest.approx([4 / 9] * 3 + [4.0])
    net, batch = pretrained("dnn"), make_batch()
    iak = IAK(SCHEMA, net, bottleneck=5, beta=0.1, beta_power=1.0)
    adapted = perturb(AdaptedNet(SCHEMA, net, iak)).train()  # kernels apart: each domain's KL its own
    groups = DomainGroups(batch.domain, K)
    _, kl = iak.kernels["output"](net(batch.rows(groups.order)).h, groups)  # per row, grouped order
    counts = torch.bincount(groups.domain, minlength=K).float()
    weights = len(batch.domain) / int((counts > 0).sum()) / counts[groups.domain]
    assert counts.unique().numel() > 1  # sizes differ (and KLs): the weighted and the plain mean differ
    aux = adapted(batch).aux_loss - net(batch).aux_loss
    assert aux.item() == pytest.approx(0.1 * (weights * kl).mean().item(), rel=1e-5)
    assert abs((weights * kl).mean() - kl.mean()) > 10 * 1e-5 * kl.mean()  # the plain mean would fail the check
    with pytest.raises(ValueError, match=r"beta_power \(-1.0\) >= 0"):
        IAK(SCHEMA, net, beta_power=-1.0)


def test_wide_deep_head_uses_each_domains_own_wide_fields() -> None:
    net = pretrained("dnn")
    head = WideDeepHead(SCHEMA, net, wide_fields=["item"], domain_wide_fields={"a": []})
    model = AdaptedNet(SCHEMA, net, head).eval()
    with torch.no_grad():
        head.wide.tables[0].fill_(1.0)  # +1 on every id of `item`, for the domains that use it
    batch = make_batch()
    delta = (model(batch).logits - net(batch).logits).squeeze(1)
    torch.testing.assert_close(delta, (batch.domain != 0).float())
    with pytest.raises(ValueError, match=r"wide fields \['genre'\] are not sparse fields"):
        WideDeepHead(SCHEMA, net, wide_fields=["genre"])
    with pytest.raises(ValueError, match=r"unknown domain\(s\) \['z'\]"):
        WideDeepHead(SCHEMA, net, domain_wide_fields={"z": ["item"]})


def test_freeze_patterns() -> None:
    net = pretrained("dnn")
    partial = AdaptedNet(SCHEMA, net, None, freeze=["input", "mlp"])
    assert [n for n, p in partial.named_parameters() if p.requires_grad] == [
        "backbone.output.weight",
        "backbone.output.bias",
    ]
    partial.train()
    assert not partial.backbone.mlp.training and partial.backbone.output.training
    with pytest.raises(ValueError, match=r"freeze patterns \['tower'\] match no module"):
        AdaptedNet(SCHEMA, pretrained("dnn"), None, freeze=["tower"])
    assert list(select_modules(net, ["mlp.layers.0"], nn.Linear)) == ["mlp.layers.0"]


def test_plain_backbone_outside_the_adapted_pass() -> None:
    net = pretrained("dnn")
    model = perturb(AdaptedNet(SCHEMA, net, LoRA(SCHEMA, net, rank=2))).eval()
    batch = make_batch()
    model(batch)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    torch.testing.assert_close(net(batch).logits, pretrained("dnn")(batch).logits, rtol=0, atol=0)


def test_batch_rows() -> None:
    batch = make_batch(5)
    picked = batch.rows(torch.tensor([4, 0]))
    assert isinstance(picked, Batch) and picked.domain.tolist() == batch.domain[[4, 0]].tolist()
    assert picked.seq is None and picked.sparse.shape == (2, 2)


@pytest.mark.parametrize("adapter", ["lora", "iak_layers_learned_prior"])
def test_adapters_inside_a_sequence_module_train_and_serve(adapter: str, tmp_path: Path) -> None:
    """LoRA on every linear layer and IAK's layer targets reach DIN's attention MLP, whose input is ``[B, L, 4D]``: the
    per-domain products run on every item of a row with the row's domain, in training and in the serving graph."""
    schema = dataclasses.replace(SCHEMA, sequence=SequenceField("hist", "item", 5))
    torch.manual_seed(0)
    backbone = DNNBackbone(schema, embedded(8, sequence_pooling="din"), [16, 8]).eval()
    make = ADAPTERS[adapter]
    net = perturb(AdaptedNet(schema, backbone, make(schema, backbone)))
    assert any(site.startswith("input.pooling.") for site in net.adapter.sites)
    g = torch.Generator().manual_seed(1)
    rows = 48
    base = make_batch(rows, seed=1)
    batch = Batch(
        base.sparse, base.dense, base.domain, base.labels,
        torch.randint(0, 11, (rows, 5), generator=g), torch.randint(0, 6, (rows,), generator=g),
    )  # fmt: skip
    out = net.train()(batch)
    out.logits.sum().add(out.aux_loss).backward()
    assert torch.isfinite(out.aux_loss) and bool(out.aux_loss > 0) == adapter.startswith("iak")  # IAK's KL term
    serving = ParallelModel(net.eval(), schema, make)
    assert max_difference(serving, net, batch) < 1e-5
    served = export(serving, batch, tmp_path / "serving.pt")
    assert max_difference(served, net, batch) < 1e-5
    # every index tensor of the graph is built on its inputs' device: none is fixed to the example's (CPU)
    code = "\n".join(m.code for m in served.modules() if hasattr(m, "code"))
    assert "torch.device(" not in code and "arange" in code


def test_an_empty_batch_passes_through_an_adapted_net() -> None:
    net = perturb(adapted("dnn", "lora")).eval()
    assert net(make_batch(0)).logits.shape == (0, 1)
    assert max_difference(ParallelModel(net, SCHEMA, ADAPTERS["lora"]), net, make_batch(0)) == 0.0
