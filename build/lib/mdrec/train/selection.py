"""Per-domain model selection for adapters: each domain keeps its adapter slice from its own best validation epoch,
the pre-trained model itself (step 0) included."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mdrec.nn.parameter import per_domain_parameters

log = logging.getLogger(__name__)


class DomainSelection(pl.Callback):
    """After every validation, snapshot each domain's slice of every per-domain parameter whose validation AUC
    (``val/auc/<domain>``) improved; when fitting ends, put every domain's best slice back.

    Every trainable parameter must be stacked per domain (an adapter on a frozen backbone): then the slices are
    independent and each domain can keep a different epoch. The validation before fitting (the pre-trained model,
    step 0) is a candidate and is snapshotted for every domain, so a domain the adapter never improves keeps it.
    A domain whose validation AUC is undefined (its validation rows are one class, or none) cannot show that an
    adapter ranks better: it keeps step 0 and is listed in ``unrankable``.

    Args:
        domains: the domain names, in id order.
        only: select for these domains only (onboarding one domain); None: all.
        patience: stop training after this many validations in a row where no domain improved (None: never; the
            overall early stopping would stop when the big domains stop improving, before the small ones do).

    Attributes:
        best: per domain, the best AUC seen; ``best_epoch``: the epoch it came from (-1: step 0, before fitting);
        ``unrankable``: the domains whose validation AUC was undefined.
    """

    MONITOR = "val/auc"

    def __init__(
        self, domains: tuple[str, ...] | list[str], only: list[str] | None = None, patience: int | None = None
    ) -> None:
        self.domains = list(domains)
        self.patience = patience
        self.stale = 0  # validations in a row without any domain improving
        self.only = set(only) if only is not None else set(domains)
        self.best: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}
        self.unrankable: set[str] = set()
        self.snapshots: dict[str, dict[str, Tensor]] = {}
        self.fitted = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loose = shared_trainable(pl_module)
        if loose:
            raise ValueError(
                f"per-domain selection needs every trainable parameter stacked per domain; these are shared: {loose}. "
                "Freeze them or turn per-domain selection off (stage.select_per_domain=false)"
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step0 = trainer.state.fn != "fit"
        if trainer.sanity_checking or (step0 and self.fitted):  # evaluating the selected model after fitting
            return
        epoch = -1 if step0 else trainer.current_epoch
        params = dict(per_domain_parameters(pl_module))
        improved = False
        for d, name in enumerate(self.domains):
            if name not in self.only:
                continue
            value = trainer.callback_metrics.get(f"{self.MONITOR}/{name}")
            auc = float(value) if value is not None else math.nan
            if math.isnan(auc):
                self.unrankable.add(name)
            if step0 or auc > self.best.get(name, -math.inf):  # NaN never improves
                self.best[name], self.best_epoch[name] = auc, epoch
                self.snapshots[name] = {key: p[d].detach().clone() for key, p in params.items()}
                improved |= not step0
        self.stale = 0 if improved else self.stale + (not step0)
        if not step0 and self.patience is not None and self.stale >= self.patience:
            log.info("no domain improved on validation for %d validations: stopping", self.stale)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to select as the uninterrupted one would (saved in every checkpoint)."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "unrankable": sorted(self.unrankable),
            "stale": self.stale,
            "snapshots": self.snapshots,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = dict(state_dict["best"]), dict(state_dict["best_epoch"])
        self.unrankable = set(state_dict["unrankable"])
        self.stale, self.snapshots = state_dict["stale"], dict(state_dict["snapshots"])

    @torch.no_grad()
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        missing = sorted(self.only - set(self.snapshots))
        if missing:
            raise RuntimeError(
                f"per-domain selection has no candidate for domains {missing}: validate the model before fitting "
                "(step 0) so that every domain has one"
            )
        params = dict(per_domain_parameters(pl_module))
        for d, name in enumerate(self.domains):
            for key, value in self.snapshots.get(name, {}).items():
                params[key][d] = value
        self.fitted = True
        log.info("per-domain selection (epoch per domain, -1 = the pre-trained model): %s", self.best_epoch)
        if self.unrankable:
            log.info("no validation AUC (one class or no rows): kept step 0 for %s", sorted(self.unrankable))

    def metrics(self) -> dict[str, float]:
        """``selection/epoch/<domain>`` (-1: step 0) and ``selection/unrankable/<domain>`` (1: no validation AUC,
        step 0 kept) of every selected domain."""
        out = {f"selection/epoch/{d}": float(e) for d, e in self.best_epoch.items()}
        out.update({f"selection/unrankable/{d}": float(d in self.unrankable) for d in self.best_epoch})
        return out


def shared_trainable(module: nn.Module) -> list[str]:
    """The names of ``module``'s trainable parameters that are not stacked per domain."""
    stacked = {name for name, _ in per_domain_parameters(module)}
    return [name for name, p in module.named_parameters() if p.requires_grad and name not in stacked]
