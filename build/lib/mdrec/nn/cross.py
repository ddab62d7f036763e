"""DCNv2 cross layers (Wang et al. 2021): explicit feature crosses of bounded degree, ``[B, d] -> [B, d]``."""

from __future__ import annotations

from torch import Tensor, nn


class CrossLayer(nn.Module):
    """One cross layer: ``x_{l+1} = x0 * (W x_l + b) + x_l``.

    Full rank learns ``W`` (``[d, d]``); low rank learns ``W = U V^T`` with ``U, V`` of shape ``[d, R]``
    (``2dR`` weights instead of ``d^2``; DCNv2 section 3.3, worth it when ``R << d / 2``).

    Args:
        in_features: d, the width of ``x0`` and of every ``x_l``.
        rank: R for a low-rank ``W``; None for a full-rank one.

    Example:
        >>> layer = CrossLayer(4, rank=2)
        >>> x0 = torch.randn(3, 4)
        >>> layer(x0, x0).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_features: int, rank: int | None = None) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be a positive integer or None (full rank), got {rank}")
        self.rank = rank
        # low rank: x -> V^T x ([B, R]) -> U (V^T x) + b ([B, d]); full rank: x -> W x + b
        self.down = nn.Linear(in_features, rank, bias=False) if rank is not None else None
        self.up = nn.Linear(rank if rank is not None else in_features, in_features)

    @property
    def weight(self) -> Tensor:
        """The effective ``W`` (``[d, d]``): ``U V^T`` for a low-rank layer."""
        return self.up.weight if self.down is None else self.up.weight @ self.down.weight

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        """``x0 [B, d]`` (the cross network's input), ``x [B, d]`` (this layer's input) -> ``[B, d]``."""
        projected = self.up(x if self.down is None else self.down(x))  # [B, d]
        return x0 * projected + x


class CrossNetwork(nn.Module):
    """``num_layers`` cross layers, each crossing its input with the network's input ``x0``.

    Args:
        in_features: d.
        num_layers: number of cross layers (the highest polynomial degree is ``num_layers + 1``).
        rank: R for low-rank layers; None for full-rank ones.

    Example:
        >>> net = CrossNetwork(6, num_layers=3, rank=None)
        >>> net(torch.randn(2, 6)).shape
        torch.Size([2, 6])
    """

    def __init__(self, in_features: int, num_layers: int, rank: int | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {num_layers}")
        self.layers = nn.ModuleList(CrossLayer(in_features, rank) for _ in range(num_layers))
        self.out_features = in_features

    def forward(self, x0: Tensor) -> Tensor:
        """``x0 [B, d]`` -> ``[B, d]``."""
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x
