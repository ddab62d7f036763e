"""LoRA and MLoRA's defining equations, by hand on a tiny backbone: where the delta joins and where dropout acts."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.lora import LoRA
from mdrec.models.dnn import DNNBackbone
from tests.helpers import SCHEMA, embedded, make_batch


def tiny(placement: str) -> tuple[AdaptedNet, LoRA]:
    """A DNN [5] with batch norm and dropout 0.5, non-trivial weights and statistics, and an MLoRA adapter away from
    the identity. Only the dropout module is left out of the freeze: it drops in training mode."""
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedded(4), [5], dropout=0.5, batch_norm=True)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
        backbone.train()(make_batch(256, seed=7))  # running statistics away from 0 and 1
    adapter = LoRA(SCHEMA, backbone.eval(), ["*"], variant="mlora", alpha=2, placement=placement)  # ranks 2 and 1
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.5 * torch.randn_like(p))
    net = AdaptedNet(SCHEMA, backbone, adapter, freeze=["input", "mlp.layers.0", "mlp.layers.1", "output"])
    return net, adapter


def low_rank(adapter: LoRA, site: str, x: Tensor, domain: Tensor) -> Tensor:
    """``(x A_d) B_d + b_d`` row by row, each row with its own domain's factors."""
    delta = adapter.deltas[site]
    return torch.einsum("bi,bir,bro->bo", x, delta.a[domain], delta.b[domain]) + delta.bias[domain]


@pytest.mark.parametrize("placement", ["activation", "linear"])
def test_mlora_defining_equation_by_hand(placement: str) -> None:
    """activation (the paper): ``h = ReLU(Dropout(BN(W x + b)) + (x A_d) B_d + b_d)``;
    linear: ``h = Dropout(ReLU(BN(W x + b + (x A_d) B_d + b_d)))``; the logit ``w h + c + (h A_d) B_d + b_d``."""
    net, adapter = tiny(placement)
    backbone = net.backbone
    batch = make_batch(64, seed=1)
    linear, norm, out = backbone.mlp.layers[0], backbone.mlp.layers[1], backbone.output
    with torch.no_grad():
        x = backbone.input(batch)  # [B, in]
        delta = low_rank(adapter, "mlp/layers/0", x, batch.domain)  # [B, 5]

        def bn(u: Tensor) -> Tensor:
            return (u - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias

        shared = bn(x @ linear.weight.T + linear.bias)  # [B, 5]
        if placement == "activation":
            h_eval = torch.relu(shared + delta)
            kept, dropped = torch.relu(2 * shared + delta), torch.relu(delta)  # dropout 0.5 on the shared path
        else:
            h_eval = torch.relu(bn(x @ linear.weight.T + linear.bias + delta))
            kept, dropped = 2 * h_eval, torch.zeros_like(h_eval)  # dropout 0.5 after the sum
        logits = h_eval @ out.weight.T + out.bias + low_rank(adapter, "output", h_eval, batch.domain)

        result = net.eval()(batch)
        torch.testing.assert_close(result.h, h_eval, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.logits, logits, rtol=1e-5, atol=1e-6)

        h = net.train()(batch).h  # every unit either kept (x2) or dropped, on the path the placement says
        is_kept = torch.isclose(h, kept, rtol=1e-5, atol=1e-6)
        is_dropped = torch.isclose(h, dropped, rtol=1e-5, atol=1e-6)
        assert bool((is_kept | is_dropped).all())
        assert bool((is_kept & ~is_dropped).any()) and bool((is_dropped & ~is_kept).any())


def test_mlora_joins_at_the_activation_and_moves_the_dropout() -> None:
    net, adapter = tiny("activation")
    assert adapter.sites == {
        "mlp.layers.0": "output",  # the delta, from the layer's input
        "mlp.layers.2": "input",  # joins at the ReLU's input
        "mlp.layers.3": "output",  # the dropout after it: moved onto the shared path
        "output": "output",  # no activation after the output layer: at its output
    }
    assert LoRA(SCHEMA, net.backbone, ["*"], rank=2).sites == {
        "mlp.layers.0": "output",
        "output": "output",
    }  # LoRA: linear
    with pytest.raises(ValueError, match="placement must be one of"):
        LoRA(SCHEMA, net.backbone, variant="mlora", placement="norm")  # type: ignore[arg-type]
