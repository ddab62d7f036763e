"""The LightningModule: BCE task loss + auxiliary loss, per-domain validation and test metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.eval.metrics import DomainMetrics
from mdrec.models.output import ModelOutput

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class RankingModule(pl.LightningModule):
    """Trains any network that maps a Batch to a ModelOutput.

    The loss is the mean binary cross-entropy of each predicted task against ``labels[:, :T]`` (row-weighted when
    the batch has weights) plus the network's ``aux_loss``. Validation and test compute, on all the epoch's
    predictions of the first task (click), the overall and per-domain AUC, logloss, GAUC, WAUC and mean AUC,
    logged as ``val/auc``, ``val/auc/<domain>``, ...

    Args:
        net: the network.
        schema: the data's schema (domain names, user field).
        optimizer: a partial optimiser (``_partial_: true`` in the config), completed with the parameters.

    Example:
        >>> adam = functools.partial(torch.optim.Adam, lr=1e-3)  # doctest: +SKIP
        >>> module = RankingModule(DNNBackbone(schema), schema, adam)  # doctest: +SKIP
    """

    def __init__(self, net: nn.Module, schema: Schema, optimizer: OptimizerFactory) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "schema"], logger=False)
        self.net = net
        self.schema = schema
        self.optimizer_factory = optimizer
        self.user_col = schema.sparse_index(schema.user_field) if schema.user_field is not None else None
        with_users = self.user_col is not None
        self.val_metrics = DomainMetrics(schema.domains, with_users)
        self.test_metrics = DomainMetrics(schema.domains, with_users)
        self.val_auc_best = torchmetrics.MaxMetric()
        self.val_auc_best.persistent(True)  # kept in checkpoints: the best value survives a resume

    def forward(self, batch: Batch) -> ModelOutput:
        return self.net(batch)

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Mean BCE over rows and predicted tasks, plus the auxiliary loss."""
        t = out.logits.shape[1]
        bce = F.binary_cross_entropy_with_logits(out.logits, batch.labels[:, :t], reduction="none").mean(1)  # [B]
        task = bce.mean() if batch.weight is None else (bce * batch.weight).sum() / batch.weight.sum()
        return task + out.aux_loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self.net(batch)
        loss = self.loss(out, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.size)
        return loss

    def _eval_step(self, batch: Batch, metrics: DomainMetrics, stage: str) -> None:
        out = self.net(batch)
        self.log(f"{stage}/loss", self.loss(out, batch), batch_size=batch.size)
        users = batch.sparse[:, self.user_col] if self.user_col is not None else None
        metrics.update(torch.sigmoid(out.logits[:, 0]), batch.labels[:, 0], batch.domain, users)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _log_metrics(self, metrics: DomainMetrics, stage: str) -> dict[str, float]:
        values = metrics.compute()
        metrics.reset()
        for key, value in values.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "auc")
        return values

    def on_validation_epoch_end(self) -> None:
        values = self._log_metrics(self.val_metrics, "val")
        if not self.trainer.sanity_checking:
            self.val_auc_best.update(values["auc"])
            self.log("val/auc_best", self.val_auc_best.compute())

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the network has no trainable parameters; check what the config freezes")
        return self.optimizer_factory(params)
