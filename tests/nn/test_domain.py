"""Per-domain layers: grouping the rows of a batch by domain, and a stacked Linear per domain."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdrec.nn.domain import DomainGroups, DomainLinear, DomainMLP
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
