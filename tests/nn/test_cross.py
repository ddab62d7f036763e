"""DCNv2's cross layers: full rank against a hand computation, and low rank against full rank."""

from __future__ import annotations

import torch

from mdrec.nn.cross import CrossLayer, CrossNetwork


def test_cross_layers_match_a_hand_computation() -> None:
    net = CrossNetwork(2, num_layers=2, rank=None)
    with torch.no_grad():
        net.layers[0].up.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        net.layers[0].up.bias.copy_(torch.tensor([0.5, -1.0]))
        net.layers[1].up.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        net.layers[1].up.bias.zero_()
    x0 = torch.tensor([[1.0, 2.0]])
    # x1 = x0 * (W0 x0 + b0) + x0 = [1, 2] * [5.5, 1] + [1, 2] = [6.5, 4]
    torch.testing.assert_close(net.layers[0](x0, x0), torch.tensor([[6.5, 4.0]]))
    # x2 = x0 * (W1 x1) + x1 = [1, 2] * [4, 6.5] + [6.5, 4] = [10.5, 17]
    torch.testing.assert_close(net(x0), torch.tensor([[10.5, 17.0]]))


def test_low_rank_cross_equals_full_rank_with_w_equal_u_v_transposed() -> None:
    torch.manual_seed(0)
    low, full = CrossLayer(5, rank=2), CrossLayer(5, rank=None)
    with torch.no_grad():
        full.up.weight.copy_(low.up.weight @ low.down.weight)  # [5, 2] @ [2, 5]: W = U V^T
        full.up.bias.copy_(low.up.bias)
    x0, x = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(low(x0, x), full(x0, x))
    torch.testing.assert_close(low.weight, full.weight)
    assert sum(p.numel() for p in low.parameters()) == 2 * 5 * 2 + 5 < sum(p.numel() for p in full.parameters())
