"""Per-domain model selection for adapters: each domain keeps its adapter slice from its own best validation epoch,
the pre-trained model itself (step 0) included, and adopts it only where its guard allows."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mdrec.eval.gate import bootstrap_auc
from mdrec.nn.parameter import per_domain_parameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Guard:
    """When a domain may adopt its best adapter epoch instead of keeping the pre-trained model (step 0).

    A small domain's validation AUC is noisy: its best epoch is often best by chance, and the adapter it brings
    serves worse on test than the backbone. The guard keeps step 0 unless the gain is large enough to trust.

    Args:
        min_rows: a domain with fewer validation rows keeps step 0 (``selection/too_few_rows/<d>`` = 1, whatever its
            best epoch); 0: no minimum.
        confidence: adopt the best epoch only when the one-sided lower confidence bound, at this level, of
            ``AUC(best) - AUC(step 0)`` on the domain's validation rows (paired bootstrap over those rows, both
            models scored on every resample) is above 0; otherwise keep step 0 (``selection/not_significant/<d>``
            = 1). The bound is ``selection/gain_low/<d>``. None: no test.
        num_resamples: bootstrap resamples per domain.
        seed: seed of the resamples (domain d uses ``seed + d``).

    Example:
        >>> Guard(min_rows=100, confidence=0.9).active
        True
        >>> Guard().active  # min_rows=100
        True
        >>> Guard(min_rows=0).active
        False
    """

    min_rows: int = 100
    confidence: float | None = None
    num_resamples: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_rows < 0:
            raise ValueError(f"stage.guard.min_rows must be >= 0, got {self.min_rows}")
        if self.confidence is not None and not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"stage.guard.confidence must be in [0.5, 1) or null, got {self.confidence}")
        if self.num_resamples < 10:
            raise ValueError(f"stage.guard.num_resamples must be >= 10, got {self.num_resamples}")

    @property
    def active(self) -> bool:
        """Whether the guard can overrule a domain's best epoch."""
        return self.min_rows > 0 or self.confidence is not None

    def gain_low(self, best: np.ndarray, step0: np.ndarray, labels: np.ndarray, domain: int) -> float:
        """The lower confidence bound of ``AUC(best) - AUC(step0)`` (``[n]`` probabilities on the same ``[n]``
        0/1 labels); NaN when no resample has both classes."""
        boot = bootstrap_auc(np.stack([best, step0]), labels, self.num_resamples, self.seed + domain)
        diff = boot[0] - boot[1]
        diff = diff[~np.isnan(diff)]
        return float(np.percentile(diff, (1.0 - self.confidence) * 100)) if diff.size else math.nan


class DomainSelection(pl.Callback):
    """After every validation, snapshot each domain's slice of every trainable per-domain parameter whose validation AUC
    (``val/auc/<domain>``) improved; when fitting ends, put every domain's best slice back.

    Every trainable parameter must be stacked per domain (an adapter on a frozen backbone): then the slices are
    independent and each domain can keep a different epoch. The validation before fitting (the pre-trained model,
    step 0) is a candidate and is snapshotted for every domain, so a domain the adapter never improves keeps it.
    A domain whose validation AUC is undefined (its validation rows are one class, or none) cannot show that an
    adapter ranks better: it keeps step 0 and is listed in ``unrankable``. When fitting ends, the ``guard`` may
    overrule a domain's best epoch and keep step 0 (too few validation rows, or a gain that is not significant).

    Args:
        domains: the domain names, in id order.
        only: select for these domains only (onboarding one domain); None: all.
        patience: stop training after this many validations in a row where no domain improved (None: never; the
            overall early stopping would stop when the big domains stop improving, before the small ones do).
        guard: see :class:`Guard`; None: every domain adopts its best epoch.

    Attributes:
        best: per domain, the best AUC seen; ``best_epoch``: the epoch it came from (-1: step 0, before fitting);
        ``best_step``: the optimiser step it came from (0: before fitting; it tells apart validations within an
        epoch, ``stage.val_check_interval`` < 1);
        ``unrankable``: the domains whose validation AUC was undefined; ``too_few_rows`` and ``not_significant``:
        the domains whose best epoch the guard overruled, by reason; ``gain_low``: per domain tested, the bound.
    """

    MONITOR = "val/auc"

    def __init__(
        self,
        domains: tuple[str, ...] | list[str],
        only: list[str] | None = None,
        patience: int | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.domains = list(domains)
        self.patience = patience
        self.guard = guard if guard is not None and guard.active else None
        self.stale = 0  # validations in a row without any domain improving
        self.only = set(only) if only is not None else set(domains)
        self.best: dict[str, float] = {}
        self.best_epoch: dict[str, int] = {}
        self.best_step: dict[str, int] = {}
        self.unrankable: set[str] = set()
        self.snapshots: dict[str, dict[str, Tensor]] = {}
        self.step0: dict[str, dict[str, Tensor]] = {}  # with a guard: each domain's step-0 slices
        self.val_probs: dict[str, np.ndarray] = {}  # with a guard: the validation probabilities of each snapshot
        self.step0_probs: dict[str, np.ndarray] = {}  # ... and of step 0, and the domain's validation labels
        self.val_labels: dict[str, np.ndarray] = {}
        self.too_few_rows: set[str] = set()
        self.not_significant: set[str] = set()
        self.gain_low: dict[str, float] = {}
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
        params = trained_slices(pl_module)
        rows = pl_module.last_validation if self.guard is not None else {}
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
                self.best_step[name] = 0 if step0 else trainer.global_step
                self.snapshots[name] = {key: p[d].detach().clone() for key, p in params.items()}
                improved |= not step0
                if self.guard is not None:
                    mine = rows["domain"] == d
                    self.val_probs[name] = rows["prob"][mine, 0]
                    if step0:
                        self.step0[name] = self.snapshots[name]
                        self.step0_probs[name], self.val_labels[name] = self.val_probs[name], rows["label"][mine, 0]
        self.stale = 0 if improved else self.stale + (not step0)
        if not step0 and self.patience is not None and self.stale >= self.patience:
            log.info("no domain improved on validation for %d validations: stopping", self.stale)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to select as the uninterrupted one would (saved in every checkpoint)."""
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "unrankable": sorted(self.unrankable),
            "stale": self.stale,
            "snapshots": self.snapshots,
            "step0": self.step0,
            "val_probs": {k: torch.from_numpy(v) for k, v in self.val_probs.items()},
            "step0_probs": {k: torch.from_numpy(v) for k, v in self.step0_probs.items()},
            "val_labels": {k: torch.from_numpy(v) for k, v in self.val_labels.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = dict(state_dict["best"]), dict(state_dict["best_epoch"])
        self.best_step = dict(state_dict.get("best_step", {}))  # checkpoints from before steps were recorded
        self.unrankable = set(state_dict["unrankable"])
        self.stale, self.snapshots = state_dict["stale"], dict(state_dict["snapshots"])
        if self.guard is not None and set(state_dict.get("val_labels", {})) != set(self.best):
            raise ValueError(
                "this checkpoint was written by a run without stage.guard (or by an mdrec older than the guard): the "
                "guard needs each domain's validation predictions at step 0, which the checkpoint does not hold; "
                "resume with the run's own stage.guard options, or start the run again"
            )
        self.step0 = dict(state_dict.get("step0", {}))  # checkpoints from before the guard lack these
        for key in ("val_probs", "step0_probs", "val_labels"):
            setattr(self, key, {k: v.numpy() for k, v in state_dict.get(key, {}).items()})

    @torch.no_grad()
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        missing = sorted(self.only - set(self.snapshots))
        if missing:
            raise RuntimeError(
                f"per-domain selection has no candidate for domains {missing}: validate the model before fitting "
                "(step 0) so that every domain has one"
            )
        if self.guard is not None:
            self._apply_guard()
        params = trained_slices(pl_module)
        for d, name in enumerate(self.domains):
            for key, value in self.snapshots.get(name, {}).items():
                params[key][d] = value
        self.fitted = True
        log.info("per-domain selection (epoch per domain, -1 = the pre-trained model): %s", self.best_epoch)
        if self.unrankable:
            log.info("no validation AUC (one class or no rows): kept step 0 for %s", sorted(self.unrankable))
        if self.too_few_rows or self.not_significant:
            log.info(
                "the guard kept step 0 for %s (too few validation rows) and %s (gain not significant)",
                sorted(self.too_few_rows),
                sorted(self.not_significant),
            )

    def _apply_guard(self) -> None:
        """Put step 0 back for every domain whose best epoch the guard does not trust."""
        for d, name in enumerate(self.domains):
            if name not in self.best_epoch:
                continue
            labels = self.val_labels[name]
            if labels.shape[0] < self.guard.min_rows:  # reported whatever the domain's best epoch
                self.too_few_rows.add(name)
            elif self.guard.confidence is not None and self.best_epoch[name] >= 0:
                self.gain_low[name] = self.guard.gain_low(self.val_probs[name], self.step0_probs[name], labels, d)
                if not self.gain_low[name] > 0:  # NaN (no resample with both classes) is no evidence either
                    self.not_significant.add(name)
            if name in self.too_few_rows | self.not_significant:
                self.snapshots[name], self.best_epoch[name], self.best_step[name] = self.step0[name], -1, 0

    def metrics(self) -> dict[str, float]:
        """``selection/epoch/<domain>`` (-1: step 0), ``selection/step/<domain>`` (the optimiser step; 0: step 0)
        and ``selection/unrankable/<domain>`` (1: no validation AUC, step 0 kept) of every selected domain; with a
        guard, ``selection/too_few_rows/<domain>`` and ``selection/not_significant/<domain>`` (1: the guard kept
        step 0, for that reason) and
        ``selection/gain_low/<domain>`` (the lower bound, where it was computed)."""
        out = {f"selection/epoch/{d}": float(e) for d, e in self.best_epoch.items()}
        out.update({f"selection/step/{d}": float(s) for d, s in self.best_step.items()})
        out.update({f"selection/unrankable/{d}": float(d in self.unrankable) for d in self.best_epoch})
        if self.guard is not None:
            out.update({f"selection/too_few_rows/{d}": float(d in self.too_few_rows) for d in self.best_epoch})
            out.update({f"selection/not_significant/{d}": float(d in self.not_significant) for d in self.best_epoch})
            out.update({f"selection/gain_low/{d}": v for d, v in self.gain_low.items()})
        return out


def trained_slices(module: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable per-domain parameters below ``module``, by name: what the selection snapshots and restores."""
    return {name: p for name, p in per_domain_parameters(module) if p.requires_grad}


def shared_trainable(module: nn.Module) -> list[str]:
    """The names of ``module``'s trainable parameters that are not stacked per domain."""
    stacked = {name for name, _ in per_domain_parameters(module)}
    return [name for name, p in module.named_parameters() if p.requires_grad and name not in stacked]
