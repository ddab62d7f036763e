"""Dynamic batch-aware learning rate (docs/methods.md, Dynamic per-domain learning rate): each domain's slice of
the per-domain parameters takes a step scaled by how much of the batch is that domain's and by its gradient norm."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

from mdrec.data.batch import Batch
from mdrec.train.domain_steps import DomainStepCallback


class DynamicDomainLR(DomainStepCallback):
    """Scales each optimiser step of the per-domain parameters, domain by domain, by
    ``s_d = clip((n_d K / B)^gamma, r_min, r_max) * min(1, grad_cap / (||g_d|| + eps))`` (``scales``), 0 where
    ``n_d = 0`` (no step for a domain the batch does not hold).

    The factor acts on the step itself: the domain's slice moves by ``s_d`` times what the optimiser moved it
    (``p <- p_old + s_d (p_new - p_old)``), so it works with Adam, whose update ignores any rescaling of the loss
    or the gradient. Shared parameters keep the optimiser's own step. The mean factor per domain over the epoch's
    steps that hold the domain is logged as ``lr_scale/<domain>``.

    With several processes (DDP) ``n_d`` and ``B`` count the step's rows on all processes (summed every step) and
    the gradients are the averaged ones: every replica scales by the same factors, those of one process training
    on the whole step's batch, so the replicas stay identical. The sum (an all-reduce of K integers) counts the rows
    actually trained on; deriving it from the shared epoch order would tie the callback to BatchLoader's slicing
    (and plain DataLoaders have no shared order).

    Args:
        gamma: exponent of the batch-share ratio ``n_d K / B`` (0: no batch-share term).
        r_min, r_max: clip range of the batch-share factor.
        grad_cap: c, the cap on the norm of a domain's gradient slice over all per-domain parameters (None: no
            gradient-norm term).
        eps: keeps the cap finite for a zero gradient.

    Example:
        >>> DynamicDomainLR().scales(torch.tensor([3, 1]), torch.tensor([0.5, 4.0])).tolist()  # doctest: +ELLIPSIS
        [1.224..., 0.176...]
    """

    key = "dynamic_lr"

    def __init__(
        self,
        gamma: float = 0.5,
        r_min: float = 0.1,
        r_max: float = 10.0,
        grad_cap: float | None = 1.0,
        eps: float = 1e-8,
    ) -> None:
        if not 0 < r_min <= r_max:
            raise ValueError(f"dynamic_lr needs 0 < r_min <= r_max, got r_min={r_min}, r_max={r_max}")
        if grad_cap is not None and grad_cap <= 0:
            raise ValueError(f"dynamic_lr.grad_cap must be positive or null, got {grad_cap}")
        super().__init__()
        self.gamma, self.r_min, self.r_max, self.grad_cap, self.eps = gamma, r_min, r_max, grad_cap, eps
        self.before: dict[str, Tensor] = {}
        self.sums: Tensor | None = None  # [K] sum of the factors over the epoch's steps holding the domain
        self.steps: Tensor | None = None  # [K] those steps

    def scales(self, counts: Tensor, grad_norms: Tensor) -> Tensor:
        """``counts [K]`` rows of each domain in the batch, ``grad_norms [K]`` -> the step factors ``[K]``."""
        counts = counts.float()
        share = counts * counts.numel() / counts.sum().clamp(min=1)
        scale = share.pow(self.gamma).clamp(self.r_min, self.r_max)
        if self.grad_cap is not None:
            scale = scale * (self.grad_cap / (grad_norms + self.eps)).clamp(max=1.0)
        return torch.where(counts > 0, scale, torch.zeros_like(scale))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        k = pl_module.schema.num_domains
        self.sums, self.steps = torch.zeros(k), torch.zeros(k)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Batch, i: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, i)
        self.before = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: Batch, i: int
    ) -> None:
        squares = torch.zeros(len(self.counts), device=self.counts.device)  # [K]
        for p in self.params.values():
            if p.grad is not None:
                squares += p.grad.reshape(len(p), -1).square().sum(1).float()
        norms = squares.sqrt()
        scales = self.scales(self.counts, norms)  # [K]
        for name, p in self.params.items():
            s = scales.to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1))
            p.copy_(self.before[name] + s * (p - self.before[name]))
        present = (self.counts > 0).cpu()
        self.sums += torch.where(present, scales.cpu(), 0.0)
        self.steps += present

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for d, name in enumerate(pl_module.schema.domains):
            if self.steps[d] > 0:
                # the same on every process (global counts, averaged gradients): no sync_dist
                pl_module.log(f"lr_scale/{name}", float(self.sums[d] / self.steps[d]))
