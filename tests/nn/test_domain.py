"""Per-domain layers: grouping the rows of a batch by domain, a stacked Linear per domain, every domain's layer or
experts on every row."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdrec.nn.domain import DomainGroups, DomainLinear, DomainMLP, StarLinear
from mdrec.nn.experts import Experts
from mdrec.nn.parameter import DomainParameter
from tests.helpers import K


def test_domain_groups_and_bad_ids() -> None:
    domain = torch.tensor([2, 0, 2, 2, 0])
    g = DomainGroups(domain, num_domains=4)
    assert g.present.tolist() == [0, 2] and g.sizes == [2, 3]
    assert g.domain.tolist() == [0, 0, 2, 2, 2] and g.order.tolist() == [1, 4, 0, 2, 3]
    x = torch.arange(5)
    assert torch.equal(g.ungroup(g.group(x)), x)
    with pytest.raises(ValueError, match="ids >= num_domains"):
        DomainGroups(torch.tensor([0, 4]), num_domains=4)


def test_domain_linear_equals_a_loop_of_linears() -> None:
    torch.manual_seed(0)
    layer = DomainLinear(K, 5, 4)
    bound = 1 / 5**0.5  # nn.Linear's init range for fan_in 5, per domain slice
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])
    x, domain = torch.randn(40, 5), torch.randint(0, K, (40,))
    expected = torch.empty(40, 4)
    for d in range(K):
        ref = nn.Linear(5, 4)
        ref.load_state_dict({"weight": layer.weight[d], "bias": layer.bias[d]})
        expected[domain == d] = ref(x[domain == d])
    torch.testing.assert_close(layer(x, domain), expected)
    # the same grouping serves a whole stack; a batch missing a domain works too
    mlp = DomainMLP(K, 5, [6, 3], batch_norm=True)
    present = domain != 1
    full = mlp.eval()(x, domain)
    torch.testing.assert_close(full[present], mlp(x[present], domain[present]))


def test_every_domain_is_each_domains_layer_on_every_row() -> None:
    """``every_domain`` column k is domain k's layer on every row: one input for all domains or one per domain, for
    the independent and the star-topology layer (``W ⊙ W_k``, ``b + b_k``)."""
    torch.manual_seed(0)
    x, per_domain = torch.randn(6, 5), torch.randn(6, K, 5)
    for layer in (DomainLinear(K, 5, 4), StarLinear(K, 5, 4)):
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight))  # the star factors off their initial ones
        weight, bias = layer.effective(layer.weight, layer.bias)
        for k in range(K):
            torch.testing.assert_close(layer.every_domain(x)[:, k], x @ weight[k].T + bias[k])
            torch.testing.assert_close(layer.every_domain(per_domain)[:, k], per_domain[:, k] @ weight[k].T + bias[k])
            torch.testing.assert_close(layer.every_domain(x)[:, k], layer(x, torch.full((6,), k)))
    assert isinstance(StarLinear(K, 5, 4).weight, DomainParameter)
    plain = StarLinear(K, 5, 4, per_domain=False)  # e.g. clusters: stacked, but not per domain
    assert not isinstance(plain.weight, DomainParameter) and not isinstance(plain.bias, DomainParameter)


def test_every_domain_experts_equal_each_domains_experts() -> None:
    """``Experts.every_domain`` (two layers) equals each domain's expert MLPs written out, values and gradients."""
    torch.manual_seed(0)
    experts = Experts(2, 5, [4, 3], num_domains=K)
    x, per_domain = torch.randn(6, 5, requires_grad=True), torch.randn(6, K, 5)
    out = experts.every_domain(x)  # [6, K, 2, 3]
    for k in range(K):
        for e in range(2):
            h = (x @ experts.weights[0][k, e] + experts.biases[0][k, e]).clamp(min=0)
            expected = (h @ experts.weights[1][k, e] + experts.biases[1][k, e]).clamp(min=0)
            torch.testing.assert_close(out[:, k, e], expected)
            h = (per_domain[:, k] @ experts.weights[0][k, e] + experts.biases[0][k, e]).clamp(min=0)
            expected = (h @ experts.weights[1][k, e] + experts.biases[1][k, e]).clamp(min=0)
            torch.testing.assert_close(experts.every_domain(per_domain)[:, k, e], expected)
    probe = torch.randn_like(out)
    grads = torch.autograd.grad((out * probe).sum(), [x, *experts.parameters()])
    reference = x  # the same network as one einsum per layer (the form every_domain replaced)
    for i, (weight, bias) in enumerate(zip(experts.weights, experts.biases, strict=True)):
        reference = torch.einsum("bi,keio->bkeo" if i == 0 else "bkei,keio->bkeo", reference, weight) + bias
        reference = reference.clamp(min=0)
    expected = torch.autograd.grad((reference * probe).sum(), [x, *experts.parameters()])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
