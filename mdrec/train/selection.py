"""Per-domain model selection for adapters: each domain keeps its adapter slice from its own best validation epoch,
the pre-trained model itself (step 0) included."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from mdrec.nn.domain import per_domain_parameters

log = logging.getLogger(__name__)


class DomainSelection(pl.Callback):
    """After every validation, snapshot each domain's slice of every per-domain parameter whose ``<monitor>/<domain>``
    improved; when fitting ends, put every domain's best slice back.

    Every trainable parameter must be stacked per domain (an adapter on a frozen backbone): then the slices are
    independent and each domain can keep a different epoch. Run one validation before fitting (the pre-trained
    model, step 0) so that it is a candidate: a domain the adapter never improves on validation keeps it.

    Args:
        domains: the domain names, in id order.
        monitor: metric prefix, higher is better (``val/auc`` reads ``val/auc/<domain>``).
        only: select for these domains only (onboarding one domain); None: all.
        patience: stop training after this many validations in a row where no domain improved (None: never; the
            overall early stopping would stop when the big domains stop improving, before the small ones do).

    Attributes:
        best: per domain, the best value seen; ``best_epoch``: the epoch it came from (-1: step 0, before fitting).
    """

    def __init__(
        self,
        domains: tuple[str, ...] | list[str],
        monitor: str = "val/auc",
        only: list[str] | None = None,
        patience: int | None = None,
    ) -> None:
        self.domains = list(domains)
        self.patience = patience
        self.stale = 0  # validations in a row without any domain improving
        self.monitor = monitor
        self.only = set(only) if only is not None else set(domains)
        self.best: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}
        self.snapshots: dict[str, dict[str, Tensor]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        params = dict(per_domain_parameters(pl_module))
        loose = [n for n, p in pl_module.named_parameters() if p.requires_grad and n not in params]
        if loose:
            raise ValueError(
                f"per-domain selection needs every trainable parameter stacked per domain; these are shared: {loose}. "
                "Freeze them or turn per-domain selection off (stage.select_per_domain=false)"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch if trainer.state.fn == "fit" else -1
        params = dict(per_domain_parameters(pl_module))
        improved = False
        for d, name in enumerate(self.domains):
            value = trainer.callback_metrics.get(f"{self.monitor}/{name}")
            if name not in self.only or value is None or float(value) <= self.best.get(name, float("-inf")):
                continue
            self.best[name], self.best_epoch[name], improved = float(value), epoch, True
            self.snapshots[name] = {key: p[d].detach().clone() for key, p in params.items()}
        self.stale = 0 if improved else self.stale + 1
        if trainer.state.fn == "fit" and self.patience is not None and self.stale >= self.patience:
            log.info("no domain improved on validation for %d epochs: stopping", self.stale)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to select as the uninterrupted one would (saved in every checkpoint)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale, "snapshots": self.snapshots}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = dict(state_dict["best"]), dict(state_dict["best_epoch"])
        self.stale, self.snapshots = state_dict["stale"], dict(state_dict["snapshots"])

    @torch.no_grad()
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = dict(per_domain_parameters(pl_module))
        for d, name in enumerate(self.domains):
            for key, value in self.snapshots.get(name, {}).items():
                params[key][d] = value
        log.info("per-domain selection (epoch per domain, -1 = the pre-trained model): %s", self.best_epoch)
