"""The one output type every network returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What a network returns for a Batch.

    Args:
        logits: ``[B, T]``, one logit per task (column t predicts ``schema.labels[t]``).
        aux_loss: scalar added to the task loss (0 when the network has none; e.g. IAK's beta * KL).
        h: ``[B, H]`` the shared representation (adapters attach here), or None.
    """

    logits: Tensor
    aux_loss: Tensor
    h: Tensor | None = None
