"""Gates computed per row from a conditioning input: PEPNet's gate neural unit and its relatives."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GateNU(nn.Module):
    """PEPNet's gate neural unit: ``δ = γ · σ(W2 ReLU(W1 c + b1) + b2)`` (docs/models.md, PEPNet).

    With γ = 2 a gate of 1 (σ = ½) leaves its input unchanged, and the gate can amplify as well as suppress.

    Args:
        in_features: width of the conditioning input c.
        out_features: width of δ (the width of what it scales).
        hidden: width of the hidden layer (None: ``out_features``).
        gamma: γ, the gate's scale (its range is (0, γ)).

    Shapes: ``forward(c [B, in])`` -> ``[B, out]``.

    Example:
        >>> gate = GateNU(in_features=6, out_features=4)
        >>> delta = gate(torch.randn(3, 6))
        >>> delta.shape, bool(((delta > 0) & (delta < 2)).all())
        (torch.Size([3, 4]), True)
    """

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        hidden = out_features if hidden is None else hidden
        self.gamma = gamma
        self.hidden = nn.Linear(in_features, hidden)
        self.output = nn.Linear(hidden, out_features)

    def forward(self, c: Tensor) -> Tensor:
        return self.gamma * torch.sigmoid(self.output(torch.relu(self.hidden(c))))
