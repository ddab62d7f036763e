"""Each zoo model's defining equation (docs/models.md) against a hand computation on a tiny input; the contract every
multi-domain network keeps (shapes, mixed = single-domain batches, per-domain gradients, overfit, CLI) is tested for
them in tests/models/test_baselines.py."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdrec.models.pepnet import PEPNet
from mdrec.nn.gates import GateNU
from tests.helpers import SCHEMA, embedded, make_batch


def gate_nu(gate: GateNU, c: Tensor) -> Tensor:
    """``γ σ(W2 ReLU(W1 c + b1) + b2)`` written out."""
    hidden = (c @ gate.hidden.weight.T + gate.hidden.bias).clamp(min=0)
    return gate.gamma * torch.sigmoid(hidden @ gate.output.weight.T + gate.output.bias)


def perturbed(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with every parameter moved off its initial value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return net.eval()


def test_pepnet_gates_the_embeddings_and_every_layer_input() -> None:
    torch.manual_seed(0)
    # D = 2, fields row (columns 0-1) and item (columns 2-3), then the dense feature (column 4)
    net = perturbed(PEPNet(SCHEMA, embedded(2), layer_sizes=[3, 2], prior_fields=["item"], batch_norm=False))
    batch = make_batch(rows=6)
    e = net.input(batch)  # [6, 5]
    e_d = net.domain_embedding[batch.domain]  # [6, 2]
    o_ep = gate_nu(net.ep_gate, torch.cat([e_d, e], 1)) * e
    condition = torch.cat([e_d, e[:, 2:4], o_ep], 1)  # the prior: domain and item embeddings
    h = o_ep
    for gate, linear in zip(net.pp_gates, net.linears, strict=True):
        h = (gate_nu(gate, condition) * h @ linear.weight.T + linear.bias).clamp(min=0)
    out = net(batch)
    torch.testing.assert_close(out.h, h)
    torch.testing.assert_close(out.logits, h @ net.output.weight.T + net.output.bias)


def test_pepnet_gates_see_their_inputs_through_a_stop_gradient() -> None:
    """The embeddings reach the logit through the gated path only: their gradient is that of a net whose gate
    inputs are constants."""
    torch.manual_seed(0)
    net = perturbed(PEPNet(SCHEMA, embedded(2), layer_sizes=[3], prior_fields=[], batch_norm=False))
    batch = make_batch(rows=4)
    e = net.input(batch).detach().requires_grad_()
    net.input.forward = lambda _: e  # the embedded input as a leaf
    net(batch).logits.sum().backward()
    e_d = net.domain_embedding[batch.domain].detach()
    x = e.detach().requires_grad_()
    o_ep = gate_nu(net.ep_gate, torch.cat([e_d, e.detach()], 1)).detach() * x
    delta = gate_nu(net.pp_gates[0], torch.cat([e_d, o_ep.detach()], 1)).detach()
    linear = net.linears[0]
    h = (delta * o_ep @ linear.weight.T + linear.bias).clamp(min=0)
    (h @ net.output.weight.T + net.output.bias).sum().backward()
    torch.testing.assert_close(e.grad, x.grad)
