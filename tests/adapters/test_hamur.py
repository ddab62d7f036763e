"""HAMUR's adapter on a pre-trained backbone: its defining equation by hand, its shapes, and what is shared.

The contracts of every adapter (identity at step 0, only the adapter trains, mixed = single-domain batches, per-domain
gradients, saving, serving) run for it in tests/adapters/test_adapters.py and tests/serve (``ADAPTERS["hamur"]``)."""

from __future__ import annotations

import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.hamur import HAMURAdapter
from mdrec.nn.parameter import per_domain_parameters
from tests.helpers import SCHEMA, K, make_batch, perturb, pretrained, rows_of


def adapted_hamur(backbone: str = "dnn") -> tuple[AdaptedNet, HAMURAdapter]:
    net = pretrained(backbone)
    adapter = HAMURAdapter(SCHEMA, net, bottleneck=2, rank=3, hyper_sizes=[5])
    model = perturb(AdaptedNet(SCHEMA, net, adapter))
    with torch.no_grad():
        adapter.norm.running_mean.normal_()
        adapter.norm.running_var.uniform_(0.5, 2.0)
    return model.eval(), adapter


def test_hamur_adapter_defining_equation_by_hand() -> None:
    """Row i of domain d: ``Z = A2 ReLU(A1 x0 + a1) + a2`` (``[R, R]``, x0 the backbone's embedded input),
    ``t = σ(h U1_d Z V1_d + b1_d)``, ``u = t U2_d Z V2_d + b2_d``, ``h' = h + γ_d (u - μ_d) / sqrt(σ²_d + ε) + β_d``
    (the domain's running statistics in eval), and the backbone's head on h': ``s = w · h' + c``."""
    model, adapter = adapted_hamur()
    backbone = model.backbone
    batch = make_batch(rows=12)
    with torch.no_grad():
        plain = backbone(batch)
        h, x0 = plain.h, backbone.input(batch)
        out = model(batch)
    hidden, last, norm, head = adapter.hyper[0].layers[0], adapter.hyper[1], adapter.norm, backbone.head
    for i, d in enumerate(batch.domain.tolist()):
        z = (last.weight @ (hidden.weight @ x0[i] + hidden.bias).clamp(min=0) + last.bias).view(3, 3)
        t = torch.sigmoid(h[i] @ adapter.down_u[d] @ z @ adapter.down_v[d] + adapter.down_bias[d])
        u = t @ adapter.up_u[d] @ z @ adapter.up_v[d] + adapter.up_bias[d]
        dn = norm.weight[d] * (u - norm.running_mean[d]) / torch.sqrt(norm.running_var[d] + norm.eps) + norm.bias[d]
        torch.testing.assert_close(out.logits[i], head.weight @ (h[i] + dn) + head.bias)
    assert not torch.allclose(out.logits, plain.logits)  # the adapter acts


def test_hamur_adapter_shapes_and_start() -> None:
    net = pretrained("wide_deep")
    adapter = HAMURAdapter(SCHEMA, net, bottleneck=2, rank=3, hyper_sizes=[5])
    hidden, width = net.hidden_size, net.input.out_features
    assert adapter.sites == {"deep.input": "output", "deep.output": "input"}  # x0 from the input layer, h at the head
    shapes = {name: tuple(p.shape) for name, p in per_domain_parameters(adapter)}
    assert shapes == {
        "down_u": (K, hidden, 3),
        "down_v": (K, 3, 2),
        "up_u": (K, 2, 3),
        "up_v": (K, 3, hidden),
        "down_bias": (K, 2),
        "up_bias": (K, hidden),
        "norm.weight": (K, hidden),
        "norm.bias": (K, hidden),
    }
    assert adapter.hyper[0].layers[0].in_features == width and adapter.hyper[1].out_features == 9
    assert float(adapter.norm.weight.abs().sum()) == 0.0  # DN's scales start at 0: the adapter starts as the backbone
    model = AdaptedNet(SCHEMA, net, adapter).eval()
    batch = make_batch(rows=16)
    out = model(batch)
    assert out.logits.shape == (16, 1) and out.h.shape == (16, hidden)


def test_hamur_adapter_shares_only_its_hyper_network() -> None:
    """Rows of domain 1 alone: every per-domain slice but domain 1's gets no gradient; the shared hyper-network does
    get one (it serves every domain)."""
    model, adapter = adapted_hamur()
    batch = make_batch()
    out = model.train()(rows_of(batch, batch.domain == 1))
    out.logits.sum().backward()
    for name, p in per_domain_parameters(adapter):
        assert p.grad[[0, 2]].abs().sum() == 0 and p.grad[1].abs().sum() > 0, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.hyper.parameters())
