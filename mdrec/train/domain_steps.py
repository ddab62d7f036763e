"""Callbacks that act on each optimiser step of the per-domain parameters, domain by domain: the base that counts a
step's rows per domain, and the per-domain weight decay scaled by domain size (docs/methods.md, Per-domain weight
decay). The dynamic learning rate (:mod:`mdrec.train.dynamic_lr`) is the other one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from mdrec.data.batch import Batch
from mdrec.nn.domain import size_factors
from mdrec.nn.parameter import per_domain_parameters

# the `callbacks` config keys of the DomainStepCallback subclasses (a sub-run drops them: mdrec.train.subrun)
DOMAIN_STEP_CALLBACKS = ("dynamic_lr", "domain_decay")


class DomainStepCallback(pl.Callback):
    """Base of the callbacks that change each step of the trainable per-domain parameters per domain: ``params``
    (name -> parameter, first dimension K) and ``counts`` (``[K]``, the step's rows of each domain on all processes:
    summed every step under DDP, so every replica acts alike).

    ``key`` is the callback's name under ``callbacks`` in the config, which its errors name.
    """

    key = ""

    def __init__(self) -> None:
        self.params: dict[str, torch.nn.Parameter] = {}
        self.counts: Tensor | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"{self.key} acts on each step with its batch's domain counts; it needs "
                "trainer.accumulate_grad_batches=1"
            )
        self.params = {n: p for n, p in per_domain_parameters(pl_module) if p.requires_grad}
        if not self.params:
            raise ValueError(
                f"{self.key} acts on the steps of per-domain parameters, and this model trains none: use it with an "
                "adapter (stage=adapt) or a multi-domain model (e.g. model=star)"
            )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Batch, i: int) -> None:
        counts = torch.bincount(batch.domain, minlength=pl_module.schema.num_domains)  # [K] this process's rows
        self.counts = trainer.strategy.reduce(counts, reduce_op="sum")  # [K] the step's rows on all processes


class DomainWeightDecay(DomainStepCallback):
    """Decoupled weight decay on each domain's slice of the per-domain parameters towards its value when training
    started, stronger for smaller domains: right after each optimiser step that holds rows of domain d,
    ``p_d <- a_d + (p_d - a_d) * max(0, 1 - lr * lambda_d)`` with ``a_d`` the slice at the start of training,
    ``lambda_d = weight_decay * (n_mean / n_d)^power`` (``decays``), ``n_d`` domain d's training rows and ``n_mean``
    their mean over the domains that have rows, and ``lr`` the rate the step used. An adapter starts at the identity,
    so the decay pulls a small domain's adapter back towards the pre-trained model: a prior whose weight grows as
    the domain's data shrink (a multi-domain layer towards its initialisation). A domain the step does not hold is
    not decayed, a step the optimiser skips (a mixed-precision overflow) decays nothing, and shared parameters keep
    the optimiser's own step.

    Args:
        weight_decay: lambda for a domain of mean size (> 0).
        power: how fast lambda grows as a domain shrinks (0: the same for every domain).
        rows: training rows per domain, in the schema's domain order; None: counted on the data module's training
            split when training starts.

    Example:
        >>> DomainWeightDecay(0.1, power=1.0).decays(torch.tensor([300, 100, 0])).tolist()  # doctest: +ELLIPSIS
        [0.0666..., 0.2, 0.0]
    """

    key = "domain_decay"

    def __init__(self, weight_decay: float, power: float = 1.0, rows: Sequence[int] | None = None) -> None:
        super().__init__()
        if weight_decay <= 0 or power < 0:
            raise ValueError(f"domain_decay needs weight_decay > 0 and power >= 0, got {weight_decay} and {power}")
        self.weight_decay, self.power = weight_decay, power
        self.rows = torch.tensor(list(rows), dtype=torch.float64) if rows is not None else None
        self.lambdas: Tensor | None = None  # [K]
        self.anchors: dict[int, Tensor] = {}  # id(parameter) -> its value when training started
        self.handles: list[RemovableHandle] = []

    def decays(self, rows: Tensor) -> Tensor:
        """``rows [K]`` training rows per domain -> ``lambda_d [K]`` (0 for a domain without rows)."""
        return self.weight_decay * size_factors(rows.double(), self.power)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        schema = pl_module.schema
        rows = self.rows
        if rows is None:
            if trainer.datamodule is None:
                raise ValueError(
                    "callbacks.domain_decay.rows=null counts the training rows per domain on the data module, and "
                    f"this fit has none: give one count per domain, in the order {list(schema.domains)}"
                )
            domain = trainer.datamodule.split_column("train", schema.domain_field)
            rows = torch.from_numpy(np.bincount(domain, minlength=schema.num_domains).astype(np.float64))
        if len(rows) != schema.num_domains:
            raise ValueError(
                f"callbacks.domain_decay.rows has {len(rows)} entries for {schema.num_domains} domains: give one "
                f"count per domain, in the order {list(schema.domains)}"
            )
        self.lambdas = self.decays(rows)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.anchors = {id(p): p.detach().clone() for p in self.params.values()}
        self.handles = [optimizer.register_step_post_hook(self.decay) for optimizer in trainer.optimizers]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @torch.no_grad()
    def decay(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        """The step post-hook: decay the slices this optimiser just stepped, at the rates it used."""
        present = (self.counts > 0).cpu()
        for group in optimizer.param_groups:
            factor = torch.where(present, (1.0 - group["lr"] * self.lambdas).clamp(min=0.0), 1.0)  # [K]
            for p in group["params"]:
                anchor = self.anchors.get(id(p))
                if anchor is not None:
                    f = factor.to(p.device, p.dtype).view(-1, *[1] * (p.dim() - 1))
                    p.copy_(anchor + f * (p - anchor))
