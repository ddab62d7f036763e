"""The multi-layer perceptron used by backbones, towers and experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BITS = 16  # random bits per keep decision: p is rounded to a multiple of 2^-16


class Dropout(nn.Dropout):
    """An ``nn.Dropout`` (inverted dropout) whose CPU mask costs a fraction of ``torch.bernoulli``'s.

    In training each element is kept with probability ``1 - q`` and scaled by ``1 / (1 - q)``, where
    ``q = round(p * 2^16) / 2^16`` (within 8e-6 of ``p``), so the output's expectation is the input. On the CPU an
    element's keep decision compares 16 random bits with a threshold, four decisions per 64-bit draw of torch's
    default generator (seeded and checkpointed like every other draw); other devices use their fused
    ``F.dropout``. In evaluation it is the identity.

    Example:
        >>> drop = Dropout(0.25)
        >>> out = drop(torch.ones(1000, 100))
        >>> out.unique().tolist()  # dropped, or kept and scaled by 4 / 3
        [0.0, 1.3333333730697632]
    """

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        super().__init__(p)
        dropped = round(p * 2**BITS)  # of the 2^16 values of 16 random bits, this many drop the element
        self.threshold = dropped - 2 ** (BITS - 1)  # the bits read as int16: values below it drop
        self.scale = 2**BITS / (2**BITS - dropped)

    def forward(self, x: Tensor) -> Tensor:
        """``x [...]`` -> the same shape."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # every 64-bit value alike
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * (keep * self.scale).to(x.dtype)


class MLP(nn.Module):
    """``Linear -> [BatchNorm] -> ReLU -> [Dropout]`` per hidden layer (:class:`Dropout`: ``nn.Dropout``'s numbers
    with a cheaper mask on the CPU).

    Args:
        in_features: input width.
        layer_sizes: width of each hidden layer; the output width is the last one.
        dropout: dropout after each activation (0 disables).
        batch_norm: batch normalisation before each activation.

    Example:
        >>> mlp = MLP(8, [16, 4])
        >>> mlp(torch.zeros(3, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, in_features: int, layer_sizes: list[int], dropout: float = 0.0, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {layer_sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_features
        for size in layer_sizes:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, in_features]`` -> ``[B, layer_sizes[-1]]``."""
        return self.layers(x)
