"""The LightningModule: BCE task loss + auxiliary loss, per-domain validation and test metrics."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.eval.metrics import GatheredRows, domain_metrics
from mdrec.models.output import ModelOutput
from mdrec.nn.embedding import sparse_gradients
from mdrec.train.checkpoint import rng_states, set_rng_states
from mdrec.train.optim import JointOptimizer

log = logging.getLogger(__name__)

LossNormalization = Literal["batch", "domain"]
LOSS_NORMALIZATIONS = get_args(LossNormalization)
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# The metrics of the gathered rows (and DynamicDomainLR's factors) are the same on every process: they are logged
# without sync_dist, which would cost a collective per key, and Lightning's reminder to sync them does not apply.
warnings.filterwarnings("ignore", r"It is recommended to use `self\.log\('(val|test|lr_scale)/", PossibleUserWarning)


class RankingModule(pl.LightningModule):
    """Trains any network that maps a Batch to a ModelOutput.

    The loss is the binary cross-entropy of each predicted task t against ``labels[:, t]`` (averaged over the
    T tasks), reduced over rows as ``loss_normalization`` says, plus the network's ``aux_loss``. Validation and
    test compute, on all of an epoch's predictions, the overall and per-domain AUC, logloss, GAUC, WAUC and mean
    AUC of every predicted task: ``val/auc``, ``val/auc/<domain>``, ... for the first label (click) and
    ``val/<label>_auc``, ``val/<label>_auc/<domain>``, ... for the others (e.g. ``conversion_auc``: CTCVR-AUC).
    With several processes (DDP) every process's rows are gathered once per epoch, and the metrics (an AUC over all
    rows, not a mean of per-process AUCs) and the test predictions come from them: every process logs the same
    values.
    Checkpoints carry the global random states, and loading one restores them: a resumed run draws the dropout
    masks the uninterrupted run would have drawn.

    Args:
        net: the network.
        schema: the data's schema (domain names, labels, user field).
        optimizer: a partial optimiser (``_partial_: true`` in the config), completed with the parameters.
        loss_normalization: ``"batch"``: the (weighted) mean over the batch's rows, so a domain counts by its
            share of rows; ``"domain"``: each domain's loss is averaged over its own rows first, then the present
            domains are averaged (weighted by ``domain_weights``), so a small domain counts as much as a big one.
        domain_weights: loss weight per domain name (missing domains weigh 1); None: all 1.
        compile: run the network through ``torch.compile`` (dynamic batch sizes; the module's parameters and state
            dict are the network's own, so checkpoints do not change). Where the backend fails (no C++ compiler,
            an unsupported operation), the run says why and goes on eagerly.
        embedding_optimizer: sparse embedding updates: a partial optimiser that accepts sparse gradients
            (``torch.optim.SparseAdam``, ``torch.optim.Adagrad``). The trainable embedding tables
            (:class:`~mdrec.nn.embedding.FieldEmbedding`) then produce sparse gradients (the batch's rows only) and
            this optimiser updates them (only those rows: lazily), ``optimizer`` the other parameters; the two
            step as one (:class:`~mdrec.train.optim.JointOptimizer`). None: ``optimizer`` updates every parameter
            from dense gradients. With no trainable table (a frozen backbone) it has nothing to update.
        train_rows: what a training step trains on, given its batch (stage=adapt's neighbour rows,
            :class:`~mdrec.train.neighbours.NeighbourRows`); validation and test see their batches as they are.
            None: the batch itself.

    Example:
        >>> adam = functools.partial(torch.optim.Adam, lr=1e-3)
        >>> module = RankingModule(DNNBackbone(schema), schema, adam, loss_normalization="domain")
        >>> module.loss(module(batch), batch).shape
        torch.Size([])
    """

    def __init__(
        self,
        net: nn.Module,
        schema: Schema,
        optimizer: OptimizerFactory,
        loss_normalization: LossNormalization = "batch",
        domain_weights: dict[str, float] | None = None,
        compile: bool = False,
        embedding_optimizer: OptimizerFactory | None = None,
        train_rows: Callable[[Batch], Batch] | None = None,
    ) -> None:
        super().__init__()
        # plain values only: a checkpoint loads with torch.load(weights_only=True) (the run's config.yaml has the rest)
        weights = {str(d): float(w) for d, w in (domain_weights or {}).items()} or None
        self.save_hyperparameters({"loss_normalization": loss_normalization, "domain_weights": weights}, logger=False)
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization {loss_normalization!r} is not one of {LOSS_NORMALIZATIONS}")
        unknown = sorted(set(domain_weights or {}) - set(schema.domains))
        if unknown:
            raise ValueError(f"domain_weights name unknown domain(s) {unknown}; domains: {list(schema.domains)}")
        self.net = net
        # before compiling: the tables' gradient layout is part of the traced graph
        self.sparse_tables = sparse_gradients(net) if embedding_optimizer is not None else []
        self.embedding_optimizer = embedding_optimizer
        # a compiled function, not a module: it holds no parameters of its own and adds nothing to the state dict
        self.compiled: Callable[[Batch], ModelOutput] | None = (
            torch.compile(net.forward, dynamic=True) if compile else None
        )
        self.schema = schema
        self.optimizer_factory = optimizer
        self.train_rows = train_rows
        self.loss_normalization = loss_normalization
        weights = [float((domain_weights or {}).get(d, 1.0)) for d in schema.domains]
        if min(weights) < 0:
            raise ValueError(f"domain_weights must be non-negative, got {domain_weights}")
        self.register_buffer("domain_weights", torch.tensor(weights), persistent=False)  # [K]
        self.user_col = schema.sparse_index(schema.user_field) if schema.user_field is not None else None
        # an epoch's rows: prob [n, T] of the T predicted labels, label [n, T_all], domain [n] (and user [n])
        rows = ("prob", "label", "domain", "user") if self.user_col is not None else ("prob", "label", "domain")
        self.val_rows, self.test_rows = GatheredRows(rows), GatheredRows(rows)
        self.last_test: dict[str, np.ndarray] = {}  # the last test pass's rows (test_predictions)
        self.last_validation: dict[str, np.ndarray] = {}  # the last validation's rows (per-domain selection's guard)
        self.val_auc_best = torchmetrics.MaxMetric(sync_on_compute=False)  # of global AUCs: no sync needed
        self.val_auc_best.persistent(True)  # kept in checkpoints: the best value survives a resume

    def forward(self, batch: Batch) -> ModelOutput:
        if self.compiled is None:
            return self.net(batch)
        try:
            return self.compiled(batch)
        except torch._dynamo.exc.BackendCompilerFailed as error:  # e.g. no C++ compiler for the CPU backend
            cause = getattr(error, "inner_exception", error)  # the backend's own error says what is missing
            first = (str(cause).strip().splitlines() or [""])[0][:300]
            log.warning(
                "model.compile=true: torch.compile failed (%s: %s); training on eagerly", type(cause).__name__, first
            )
            self.compiled = None
            return self.net(batch)

    def loss(self, out: ModelOutput, batch: Batch) -> Tensor:
        """Task loss (BCE averaged over tasks, reduced over rows by ``loss_normalization``) + auxiliary loss."""
        t = out.logits.shape[1]
        bce = F.binary_cross_entropy_with_logits(out.logits, batch.labels[:, :t], reduction="none").mean(1)  # [B]
        row_w = torch.ones_like(bce) if batch.weight is None else batch.weight  # [B]
        if self.loss_normalization == "batch":
            w = row_w * self.domain_weights[batch.domain]
            return (bce * w).sum() / w.sum() + out.aux_loss
        k = self.schema.num_domains
        loss_d = torch.zeros(k, device=bce.device).index_add_(0, batch.domain, bce * row_w)  # [K]
        rows_d = torch.zeros(k, device=bce.device).index_add_(0, batch.domain, row_w)  # [K]
        present = rows_d > 0
        w_d = self.domain_weights * present
        return (w_d * loss_d / rows_d.clamp(min=1e-12)).sum() / w_d.sum() + out.aux_loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if self.train_rows is not None:
            batch = self.train_rows(batch)
        out = self(batch)
        loss = self.loss(out, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.size)
        return loss

    def _eval_step(self, batch: Batch, rows: GatheredRows, stage: str) -> None:
        out = self(batch)
        self.log(f"{stage}/loss", self.loss(out, batch), batch_size=batch.size, sync_dist=True)
        users = () if self.user_col is None else (batch.sparse[:, self.user_col],)
        rows.update(torch.sigmoid(out.logits), batch.labels, batch.domain, *users)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_rows, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_rows, "test")

    @staticmethod
    def _gather(rows: GatheredRows) -> dict[str, Tensor]:
        """The epoch's rows of every process (one gather), on the CPU; ``rows`` is reset for the next epoch."""
        gathered = {name: value.cpu() for name, value in rows.compute().items()}
        rows.reset()
        return gathered

    def _log_metrics(self, rows: dict[str, Tensor], stage: str) -> dict[str, float]:
        """Compute and log the metrics of every predicted label on the gathered ``rows``; return them (keys
        without the stage)."""
        prob, label, domain, users = (rows.get(name) for name in ("prob", "label", "domain", "user"))
        values: dict[str, float] = {}
        for t in range(prob.shape[1]):
            prefix = "" if t == 0 else f"{self.schema.labels[t]}_"
            metrics = domain_metrics(prob[:, t], label[:, t], domain, self.schema.domains, users)
            values.update({prefix + key: value for key, value in metrics.items()})
        for key, value in values.items():  # the same on every process: no sync_dist (see the filter above)
            self.log(f"{stage}/{key}", value, prog_bar=key == "auc")
        return values

    def on_validation_epoch_end(self) -> None:
        rows = self._gather(self.val_rows)
        self.last_validation = {name: rows[name].numpy() for name in ("prob", "label", "domain")}
        values = self._log_metrics(rows, "val")
        if not self.trainer.sanity_checking:
            self.val_auc_best.update(values["auc"])
            self.log("val/auc_best", float(self.val_auc_best.compute()))

    def test_predictions(self) -> dict[str, np.ndarray]:
        """The last test pass's ``prob [n, T]``, ``label [n, T_all]`` and ``domain [n]`` of every process, in the
        test split's order."""
        if not self.last_test:
            raise RuntimeError("no test predictions yet: run trainer.test(module, datamodule=...) first")
        return self.last_test

    def on_test_epoch_end(self) -> None:
        rows = self._gather(self.test_rows)
        self._log_metrics(rows, "test")
        self.last_test = {name: rows[name].numpy() for name in ("prob", "label", "domain")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:  # checkpoints from before the states were saved lack them
            set_rng_states(checkpoint["rng_states"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the network has no trainable parameters; check what the config freezes")
        if not self.sparse_tables:
            return self.optimizer_factory(params)
        if self.trainer.gradient_clip_val:
            raise ValueError(
                f"trainer.gradient_clip_val={self.trainer.gradient_clip_val} clips a gradient norm, which the sparse "
                "embedding gradients of model.embedding_optimizer do not support: drop one of the two"
            )
        sparse = {id(p) for p in self.sparse_tables}
        dense = [p for p in params if id(p) not in sparse]
        tables = self.embedding_optimizer(self.sparse_tables)
        return JointOptimizer(self.optimizer_factory(dense), tables) if dense else tables
