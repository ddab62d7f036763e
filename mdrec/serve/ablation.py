"""Ablation importance's re-training (docs/methods.md, Feature trimming): an adapted network whose adapter is briefly
re-trained with features blanked, as the ``retrained`` function :func:`mdrec.eval.trim.ablation_importance` takes."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy

import torch
from torch import Tensor

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.eval.trim import Predict, Retraining, retrain


def adapter_retrainer(net: AdaptedNet, train: Batch, how: Retraining) -> Callable[[Tensor], Predict]:
    """``retrained(drop)``: for bool ``drop [F + N]`` (the same features for every domain), a copy of ``net`` whose
    adapter (every domain's slice, each on its own rows of ``train``) is re-trained by :func:`retrain` with those
    features blanked on every row, as a ``Predict`` that blanks them too. The backbone stays as it is.

    Raises:
        ValueError: ``net`` has no adapter (nothing per domain to re-train).
    """
    if net.adapter is None or not any(True for _ in net.adapter.parameters()):
        raise ValueError("ablation importance re-trains each domain's adapter; this run has none (adapter=none)")
    k = net.num_domains

    def retrained(drop: Tensor) -> Predict:
        copy = deepcopy(net).train()
        copy.requires_grad_(False)
        params = list(copy.adapter.parameters())
        for p in params:
            p.requires_grad_(True)
        every = drop.expand(k, -1)
        retrain(lambda b: copy(b.blanked(every)).logits, params, train, how)
        copy.eval().requires_grad_(False)
        return lambda b: torch.sigmoid(copy(b.blanked(every)).logits[:, 0])

    return retrained
