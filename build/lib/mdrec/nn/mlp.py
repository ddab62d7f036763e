"""The multi-layer perceptron used by backbones, towers and experts."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``Linear -> [BatchNorm] -> ReLU -> [Dropout]`` per hidden layer.

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
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, in_features]`` -> ``[B, layer_sizes[-1]]``."""
        return self.layers(x)
