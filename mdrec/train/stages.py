"""The stages of a run as objects: each ``mdrec/conf/stage/*.yaml`` instantiates one of these.

:func:`mdrec.train.run.train` asks its stage for everything that differs between stages: the work before the run
(:meth:`Stage.prepare`, e.g. pre-training the backbone an adapt run needs), the module, the callbacks and trainer
options, whether the model before fitting is a candidate (step 0), what happens after fitting, extra metrics and the
files a run writes. A new stage is a new class here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from mdrec.adapters.base import AdaptedNet, Stacked, grow
from mdrec.adapters.embedding import EMBEDDING_KINDS, EmbeddingDelta
from mdrec.data.alignment import Encoding, coverage_table
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.eval.drift import DomainReference, reference_arrays, reference_of
from mdrec.eval.gate import gate_table, negative_transfer
from mdrec.models.backbone import Backbone
from mdrec.models.shared_frozen import SharedFrozen
from mdrec.nn.parameter import per_domain_parameters
from mdrec.rundir import RunDir, check_targets
from mdrec.train.checkpoint import holds_weights, load_checkpoint, load_selected
from mdrec.train.module import OptimizerFactory, RankingModule
from mdrec.train.neighbours import (
    NEIGHBOURS,
    WEIGHTINGS,
    NeighbourRows,
    Neighbours,
    Weighting,
    domain_gradients,
    gradient_similarity,
    matrix_metrics,
    neighbour_weights,
    row_factor,
    sample_rows,
    similarity_table,
    size_capped,
)
from mdrec.train.onboarding import (
    INITS,
    GateOptions,
    Init,
    NegativeTransferError,
    NoNewDomainRowsError,
    backbone_probabilities,
    drift_reference,
    init_weights,
    keep_other_domains,
    other_domains_change,
    routed_logloss,
    scratch_config,
    split_rows,
    train_only_domains,
    warm_start,
)
from mdrec.train.pretrained import plain_value, pretrain_key
from mdrec.train.selection import DomainSelection, Guard, shared_trainable
from mdrec.train.subrun import sub_run_config

log = logging.getLogger(__name__)

# runs a whole config to completion (mdrec.train.run.train): how a stage runs another stage first
Runner = Callable[[DictConfig], dict[str, float]]
# how stage=adapt adapts the backbone's embeddings: frozen, a per-domain delta (mdrec.adapters.embedding), or the
# shared table fine-tuned at its own learning rate
Embeddings = Literal["frozen", "bias", "lowrank", "finetune"]
EMBEDDINGS = get_args(Embeddings)


class Stage:
    """Train the network ``model`` names from scratch, select the best validation checkpoint.

    Args:
        val_check_interval: validate this often (a fraction of an epoch or a number of batches); None: the
            trainer's ``val_check_interval``.
    """

    # the model before fitting is validated (and tested) as a candidate: ``zeroshot/...`` metrics
    step0_candidate = False

    def __init__(self, val_check_interval: float | int | None = None) -> None:
        self.val_check_interval = val_check_interval

    def prepare(self, cfg: DictConfig, data: MultiDomainDataModule, run: Runner) -> DictConfig:
        """Check ``cfg`` against the prepared ``data`` and do what must finish before this run starts (``run`` runs
        another config to completion); return the config the run records."""
        return cfg

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        """The LightningModule this stage trains."""
        net = hydra.utils.instantiate(cfg.model.net)(schema)
        return module_factory(cfg.model, "net")(net=net, schema=schema)

    def callbacks(self, callbacks: list[pl.Callback], module: RankingModule) -> list[pl.Callback]:
        """The trainer's callbacks, given the configured ones."""
        return callbacks

    def trainer_options(self) -> dict[str, Any]:
        """Arguments of ``pl.Trainer`` this stage sets over ``cfg.trainer``."""
        return {} if self.val_check_interval is None else {"val_check_interval": self.val_check_interval}

    def after_fit(self, trainer: pl.Trainer, module: RankingModule) -> None:
        """Put the selected model into ``module``: the best validation checkpoint, if one was kept."""
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            module.load_state_dict(load_checkpoint(best)["state_dict"])

    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of this stage's own, given the test ``predictions`` (empty when not tested)."""
        return {}

    def save(self, run_dir: RunDir, module: RankingModule) -> None:
        """Write this stage's files (weights) into ``run_dir``."""

    def finish(self, metrics: dict[str, float]) -> None:
        """After the run's files are written: raise to fail the run on its results (e.g. a gate's verdict)."""


class Train(Stage):
    """Train a backbone or a multi-domain network (``model``) from scratch: the default stage."""


class Pretrain(Stage):
    """Train a backbone (``model=backbone`` or ``model=pooled``; with ``input=pooled`` by default, the domain id a
    field with an "any domain" id) and save it as ``backbone.pt`` + ``backbone.yaml``, for stage=adapt to load."""

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        module = super().build(cfg, schema)
        if not isinstance(module.net, Backbone):
            raise ValueError(
                f"stage=pretrain trains a backbone, but model.net is {cfg.model.net._target_}; use model=backbone or "
                "model=pooled (a multi-domain network is not a backbone adapters can attach to)"
            )
        self.backbone_cfg = cfg.model.net
        return module

    def save(self, run_dir: RunDir, module: RankingModule) -> None:
        run_dir.save_backbone(module.net, self.backbone_cfg)


class PerDomainStage(Stage):
    """What the stages that train per-domain parameters on a trained model share: step 0 (the model before fitting)
    as a candidate, and per-domain selection (each domain keeps its slices from its own best validation, as the guard
    allows) when ``build`` sets ``selection``.

    Args:
        optimizer: the optimiser of the trained parameters (a partial, completed with them).
        patience: with per-domain selection, stop after this many validations in a row in which no domain improved.
        val_check_interval: see :class:`Stage`.
        guard: with per-domain selection, when a domain may adopt its best epoch over step 0 (None: always).
    """

    step0_candidate = True

    def __init__(
        self,
        optimizer: OptimizerFactory,
        patience: int | None = 3,
        val_check_interval: float | int | None = None,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(val_check_interval)
        self.optimizer = optimizer
        self.patience = patience
        self.guard = guard
        self.source: Path | None = None  # the run directory the trained model comes from
        self.selection: DomainSelection | None = None

    def callbacks(self, callbacks: list[pl.Callback], module: RankingModule) -> list[pl.Callback]:
        if self.selection is None:
            return callbacks
        # it stops when no domain improves; the overall early stopping would stop when the big domains stop improving
        kept = [c for c in callbacks if not isinstance(c, pl.callbacks.EarlyStopping)]
        return [*kept, self.selection]

    def after_fit(self, trainer: pl.Trainer, module: RankingModule) -> None:
        if self.selection is None:  # per-domain selection restores each domain's choice itself when fitting ends
            super().after_fit(trainer, module)

    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        return self.selection.metrics() if self.selection is not None else {}


class AdapterStage(PerDomainStage):
    """What adapting and onboarding share: a backbone from another run's directory with a per-domain adapter, and a
    self-contained run directory (the backbone adapted and the adapter); see :class:`PerDomainStage` for the
    arguments."""

    # set in prepare: how this run's data is encoded (encoding.json), and the data
    encoding: Encoding | None = None
    data: MultiDomainDataModule | None = None
    # of later drift checks (drift_reference.npz), set (never changed in place) in metrics
    reference: dict[str, DomainReference] = {}

    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """The selection's metrics; also makes the drift reference of the domains this run trained (their
        training rows' histograms and test predictions), the others' taken from the run it started from."""
        merged = {**self.inherited_reference(), **drift_reference(self.data, predictions, self.trained_domains())}
        self.reference = {d: merged[d] for d in self.data.schema.domains if d in merged}
        return super().metrics(predictions)

    def saved_backbone_config(self) -> DictConfig:
        """The ``backbone.yaml`` this run writes: the source run's."""
        return RunDir(self.source).backbone_config()

    def trained_domains(self) -> list[str]:
        """The domains whose adapters this run trains."""
        return list(self.data.schema.domains)

    def inherited_reference(self) -> dict[str, DomainReference]:
        """The drift reference of the domains this run does not train (none)."""
        return {}

    def save(self, run_dir: RunDir, module: RankingModule) -> None:
        net: AdaptedNet = module.net
        run_dir.save_backbone(net.backbone, self.saved_backbone_config())
        if net.adapter is not None:
            run_dir.save_adapter(net.adapter)
        if self.encoding is not None:  # what new files need to be encoded for this model (stage=onboard)
            self.encoding.save(run_dir.path)
        if self.reference:  # what a drift check compares fresh rows with (mdrec.train.drift)
            run_dir.write_drift_reference(reference_arrays(self.reference))


class Adapt(AdapterStage):
    """Adapt a pre-trained backbone: load it strictly, freeze it as ``freeze`` says, attach ``adapter`` for every
    domain, train the adapter.

    Without ``pretrained`` the backbone is what stage=pretrain makes of this same config (data, input, backbone,
    model, trainer, seed), found in ``paths.pretrained_dir`` or pre-trained there first, as a run of its own that
    finishes before this one starts (an adapter sweep pre-trains once). ``model.optimizer`` is that pre-training's;
    the adapter trains with ``optimizer``.

    Args:
        optimizer: the adapter's optimiser (a partial).
        pretrained: a stage=pretrain run directory; its backbone config must equal this config's ``backbone``.
        source_domains: pre-train on these domains only (None: all): the cross-domain warm start.
        freeze: glob patterns of backbone module names to freeze (``"*"``: all of it; ``[]``: nothing).
        select_per_domain: True: each domain keeps its adapter from its own best validation, step 0 included (every
            trainable parameter must be per-domain); False: the best overall validation checkpoint; None: per
            domain when every trainable parameter is per-domain, else overall.
        patience, guard: see :class:`AdapterStage`.
        val_check_interval: see :class:`Stage`.
        embeddings: how the backbone's field embeddings adapt (docs/methods.md, Per-domain embedding adaptation):
            ``"frozen"`` as ``freeze`` says; ``"bias"`` or ``"lowrank"``: a per-domain
            :class:`~mdrec.adapters.embedding.EmbeddingDelta` beside ``adapter`` (the run records the two as one
            :class:`~mdrec.adapters.base.Stacked` adapter); ``"finetune"``: the shared table trains, at
            ``embedding_lr`` (shared weights: the selection is then overall unless ``select_per_domain`` says).
        embedding_rank: R of ``"lowrank"``.
        embedding_lr: the learning rate of the fine-tuned table (``"finetune"``).
        neighbours: what data each domain's adapter trains on (docs/methods.md, Neighbour rows): ``"none"`` its own
            rows; ``"similarity"`` also every other domain's rows, a row of domain d' weighted by
            ``s(d, d') ** neighbour_power`` in domain d's loss (own rows 1), ``s`` the cosine of the two domains'
            mean loss gradients w.r.t. the pre-trained backbone's head, clipped to [0, 1]
            (:mod:`mdrec.train.neighbours`), measured once before adapting. Validation, test and the per-domain
            selection see each domain's own rows only.
        neighbour_top_k: route each domain only the rows of its ``neighbour_top_k`` most similar other domains
            (None: of every other domain with ``s > 0``).
        neighbour_power: the exponent on ``s`` (> 1 favours the most similar domains).
        neighbour_scale: a factor in (0, 1] on every neighbour weight (how much a neighbour's row counts against an
            own row at ``s = 1``).
        neighbour_rows: measure each domain's gradient on at most this many of its training rows (drawn with
            ``seed``; None: all).
        neighbour_weighting: ``"row"``: a neighbour row weighs its weight; ``"size"``: that times
            ``min(1, n_d / n_d')`` (training rows), so domain d' brings at most ``weight * n_d`` rows' worth into d's
            loss (:func:`~mdrec.train.neighbours.size_capped`).
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        pretrained: str | None = None,
        source_domains: Sequence[str] | None = None,
        freeze: Sequence[str] = ("*",),
        select_per_domain: bool | None = None,
        patience: int | None = 3,
        val_check_interval: float | int | None = None,
        guard: Guard | None = None,
        embeddings: Embeddings = "frozen",
        embedding_rank: int = 1,
        embedding_lr: float = 1e-4,
        neighbours: Neighbours = "none",
        neighbour_top_k: int | None = None,
        neighbour_power: float = 1.0,
        neighbour_scale: float = 1.0,
        neighbour_rows: int | None = 20_000,
        neighbour_weighting: Weighting = "row",
    ) -> None:
        super().__init__(optimizer, patience, val_check_interval, guard)
        if neighbours not in NEIGHBOURS:
            raise ValueError(f"stage.neighbours={neighbours!r} must be one of {list(NEIGHBOURS)}")
        if (neighbour_top_k is not None and neighbour_top_k < 1) or neighbour_power <= 0:
            raise ValueError(
                f"stage.neighbour_top_k ({neighbour_top_k}) must be null or >= 1 and stage.neighbour_power "
                f"({neighbour_power}) > 0"
            )
        if not 0 < neighbour_scale <= 1:
            raise ValueError(f"stage.neighbour_scale ({neighbour_scale}) must be in (0, 1]")
        if neighbour_rows is not None and neighbour_rows < 1:
            raise ValueError(f"stage.neighbour_rows ({neighbour_rows}) must be null (all rows) or >= 1")
        if neighbour_weighting not in WEIGHTINGS:
            raise ValueError(f"stage.neighbour_weighting={neighbour_weighting!r} must be one of {list(WEIGHTINGS)}")
        if embeddings not in EMBEDDINGS:
            raise ValueError(f"stage.embeddings={embeddings!r} must be one of {list(EMBEDDINGS)}")
        if embedding_rank < 1 or embedding_lr <= 0:
            raise ValueError(
                f"stage.embedding_rank ({embedding_rank}) must be >= 1 and stage.embedding_lr ({embedding_lr}) > 0"
            )
        self.pretrained = pretrained
        self.source_domains = list(source_domains) if source_domains is not None else None
        self.freeze = list(freeze)
        self.select_per_domain = select_per_domain
        self.embeddings, self.embedding_rank, self.embedding_lr = embeddings, embedding_rank, embedding_lr
        self.neighbours, self.neighbour_top_k = neighbours, neighbour_top_k
        self.neighbour_power, self.neighbour_rows = neighbour_power, neighbour_rows
        self.neighbour_weighting, self.neighbour_scale = neighbour_weighting, neighbour_scale
        self.neighbour_metrics: dict[str, float] = {}  # the measured similarities and weights (neighbours/...)

    def prepare(self, cfg: DictConfig, data: MultiDomainDataModule, run: Runner) -> DictConfig:
        self.encoding = Encoding.from_datamodule(data)
        self.data = data
        if plain_value(cfg.model.net) != plain_value(cfg.backbone):
            raise ValueError(
                f"stage=adapt adapts a pre-trained backbone with per-domain adapters, but model.net is "
                f"{cfg.model.net._target_}, a multi-domain network stage=adapt does not build. Use model=backbone (or "
                "model=pooled) and choose the adaptation with adapter= (iak, lora, mlora, head, none); to train that "
                "network itself, use stage=train (the default) with the same model="
            )
        if self.pretrained is not None:
            if self.source_domains is not None:
                raise ValueError(
                    f"stage.source_domains={self.source_domains} chooses the domains this run pre-trains on, but "
                    f"stage.pretrained={self.pretrained} names a backbone pre-trained already: drop one of the two"
                )
            self.source = Path(self.pretrained)
            check_same_backbone(cfg.backbone, RunDir(self.source))
        else:
            self.source = find_or_pretrain(pretrain_config(cfg, data.schema, self.source_domains), run)
        if self.embeddings in EMBEDDING_KINDS:
            return with_embedding_delta(cfg, self.embeddings, self.embedding_rank)
        return cfg

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        backbone = RunDir(self.source).load_backbone(schema)
        pl.seed_everything(cfg.seed, workers=True)  # the adapter's initialisation does not depend on pre-training
        adapter = hydra.utils.instantiate(cfg.adapter, _partial_=True)(schema, backbone) if cfg.adapter else None
        net = AdaptedNet(schema, backbone, adapter, freeze=self.freeze)
        optimizer = self.optimizer
        if self.embeddings == "finetune":
            table = backbone.input.embedding
            if table is None:
                raise ValueError(f"stage.embeddings=finetune: {type(backbone).__name__} embeds no sparse field")
            table.requires_grad_(True)
            optimizer = with_group_lr(self.optimizer, list(table.parameters()), self.embedding_lr)
        train_rows = self.neighbour_rows_of(backbone, schema, int(cfg.seed)) if self.neighbours != "none" else None
        module = module_factory(cfg.model, "net", "optimizer")(
            net=net, schema=schema, optimizer=optimizer, train_rows=train_rows
        )
        per_domain = self.select_per_domain
        if per_domain is None:
            per_domain = adapter is not None and not shared_trainable(net)
            log.info("stage.select_per_domain=null: %s", "per domain" if per_domain else "overall (shared weights)")
        if per_domain:
            self.selection = DomainSelection(schema.domains, patience=self.patience, guard=self.guard)
        return module

    def neighbour_rows_of(self, backbone: Backbone, schema: Schema, seed: int) -> NeighbourRows:
        """The neighbour rows of ``stage.neighbours=similarity``: the domains' similarities measured on the
        pre-trained ``backbone`` and their weights, recorded as metrics (``neighbours/similarity/<d>/<d'>``,
        ``neighbours/weight/<d>/<d'>``, ``neighbours/row_factor``) and logged."""
        domain = self.data.split_column("train", schema.domain_field)
        rows = sample_rows(self.data.splits["train"], domain, schema.num_domains, self.neighbour_rows, seed)
        similarity = gradient_similarity(domain_gradients(backbone, self.data, rows))
        counts = np.bincount(domain, minlength=schema.num_domains).tolist()
        weights = neighbour_weights(similarity, self.neighbour_top_k, self.neighbour_power, self.neighbour_scale)
        if self.neighbour_weighting == "size":
            weights = size_capped(weights, counts)
        factor = row_factor(weights, counts)
        names = schema.domains
        self.neighbour_metrics = {
            **matrix_metrics("neighbours/similarity", similarity, names),
            **matrix_metrics("neighbours/weight", weights, names),
            "neighbours/row_factor": factor,
        }
        log.info(
            "stage.neighbours=similarity: the domains' head-gradient similarity s(d, d') (row d, column d'):\n%s\n"
            "loss weight of a row of d' in d's adapter (top_k %s, power %s, scale %s, weighting %s; %.2fx the "
            "training rows):\n%s",
            similarity_table(similarity, names),
            self.neighbour_top_k,
            self.neighbour_power,
            self.neighbour_scale,
            self.neighbour_weighting,
            factor,
            similarity_table(weights, names),
        )
        return NeighbourRows(weights)

    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        return {**super().metrics(predictions), **self.neighbour_metrics}


class Specialise(PerDomainStage):
    """Specialise a multi-domain network per domain (docs/methods.md, Specialising a multi-domain network): train
    ``model`` end to end as stage=train does, then freeze its shared parameters and train only its per-domain
    parameters that ``trainable`` names, each domain keeping its slices from its own best validation, the end-to-end
    model (step 0) included, as ``guard`` allows. MLoRA's two-stage recipe with the network's own per-domain parts as
    the per-domain deltas.

    The end-to-end model is what stage=train makes of this same config (data, input, model, trainer, seed), found in
    ``paths.pretrained_dir`` or trained there first, as a run of its own. ``model.optimizer`` trains it; the
    per-domain parameters then train with ``optimizer``. The run writes ``network.pt``.

    Args:
        optimizer: the per-domain parameters' optimiser (a partial).
        trainable: glob patterns of the per-domain parameters to train, by name below the network (by default each
            domain's towers and gates, PLE's and MMoE's; ``["*"]``: all).
        patience, val_check_interval, guard: see :class:`PerDomainStage`.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        trainable: Sequence[str] = ("tower.*", "*gate.*"),
        patience: int | None = 3,
        val_check_interval: float | int | None = None,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(optimizer, patience, val_check_interval, guard)
        self.trainable = list(trainable)

    def prepare(self, cfg: DictConfig, data: MultiDomainDataModule, run: Runner) -> DictConfig:
        """Check the network and ``trainable`` on a freshly built network first (before training it end to end):
        :meth:`SharedFrozen.check` on up to 2,048 validation rows."""
        probe = SharedFrozen(hydra.utils.instantiate(cfg.model.net)(data.schema), self.trainable)
        batch = data.on_before_batch_transfer(next(iter(data.val_dataloader())), 0)
        probe.check(batch.rows(torch.arange(min(batch.size, 2048))))
        self.source = find_or_pretrain(sub_run_config(cfg, target_of(Train)), run)
        return cfg

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        net = SharedFrozen(load_selected(RunDir(self.source), schema), self.trainable)
        self.selection = DomainSelection(schema.domains, patience=self.patience, guard=self.guard)
        return module_factory(cfg.model, "net", "optimizer")(net=net, schema=schema, optimizer=self.optimizer)

    def save(self, run_dir: RunDir, module: RankingModule) -> None:
        run_dir.save_network(module.net.net)


class Onboard(AdapterStage):
    """Onboard domains into an adapted model: load the stage=adapt (or onboard) run's backbone and adapter, grow the
    adapter by one slice per domain the run does not know, start the new slices as ``init`` says, train only the
    slices of ``domains``, check that no other domain's predictions moved and judge each onboarded domain with the
    negative-transfer gate.

    The data (typically ``data=aligned``: the new partner's files encoded with the adapted run's ``encoding.json``,
    ``mdrec.data.alignment``) must have the adapted run's fields, vocabulary sizes and labels, and its domains must
    start with the run's, in the run's order; the domains after them are new: every stacked per-domain tensor of the
    adapter grows by one slice each, the run's K slices copied bit for bit, and the run directory's model serves the
    K + n domains (``encoding.json`` lists them, so a later onboarding can grow it again).

    Args:
        adapted: a stage=adapt (or onboard) run directory (backbone, adapter, config.yaml, encoding.json).
        optimizer: the adapter's optimiser.
        domains: the domains to train; None: every domain of the data the run does not know. A known domain (e.g.
            one held out of the adapt run with ``data.domain_fractions``) trains from its slice as loaded.
        init: how a new slice starts: ``identity`` (as built: the backbone), ``nearest`` (a copy of the slice of the
            existing domain whose adapter fits the new domain's training rows best: the smallest log loss of those rows
            routed through it), ``weighted`` (the average of the existing slices weighted by
            ``softmax(-logloss / temperature)``).
        temperature: of ``weighted``, in nats of log loss.
        min_coverage: per sparse field, the least share of a new domain's training rows whose value the alignment
            matched (exactly or through a mapping; ``report.json``'s ``alignment``): below it the run stops before
            training, naming the fields, unless ``force``. None: no minimum.
        force: train even below ``min_coverage`` (the coverage is still reported).
        gate: the negative-transfer gate's options (:class:`~mdrec.train.onboarding.GateOptions`).
        patience, val_check_interval, guard: see :class:`AdapterStage`.
    """

    def __init__(
        self,
        adapted: str,
        optimizer: OptimizerFactory,
        domains: Sequence[str] | None = None,
        init: Init = "identity",
        temperature: float = 0.01,
        min_coverage: dict[str, float] | None = None,
        force: bool = False,
        gate: GateOptions | None = None,
        patience: int | None = 3,
        val_check_interval: float | int | None = None,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(optimizer, patience, val_check_interval, guard)
        if init not in INITS or temperature <= 0:
            raise ValueError(f"stage.init={init!r} must be one of {INITS}, stage.temperature={temperature} > 0")
        self.source = Path(adapted)
        self.requested = list(domains) if domains is not None else None
        self.init, self.temperature = init, temperature
        self.min_coverage, self.force = dict(min_coverage or {}), force
        self.gate = gate or GateOptions()
        self.extra: dict[str, float] = {}  # the stage's metrics before testing (warm start)
        self.flagged: list[str] = []
        self.gate_report = ""

    def prepare(self, cfg: DictConfig, data: MultiDomainDataModule, run: Runner) -> DictConfig:
        """Check the data against the adapted run, the domains to train and their alignment coverage; train the
        gate's from-scratch model if asked; return the config with the adapted run's ``adapter`` node (the run
        directory rebuilds on its own)."""
        self.data, schema = data, data.schema
        adapted = Encoding.of_run(self.source)
        check_same_fields(adapted.schema, schema, self.source)
        self.k = adapted.schema.num_domains
        self.encoding = adapted.with_domains(schema.domains)
        new = list(schema.domains[self.k :])
        self.domains = self.requested if self.requested is not None else new
        unknown = sorted(set(self.domains) - set(schema.domains))
        counts = np.bincount(data.split_column("train", schema.domain_field), minlength=schema.num_domains)
        empty = [d for d in self.domains if d in schema.domains and counts[schema.domains.index(d)] == 0]
        if not self.domains or unknown or empty:
            raise NoNewDomainRowsError(
                f"stage=onboard has no training rows of a domain to onboard: the adapted run {self.source} knows "
                f"{list(adapted.schema.domains)}, the data's domains are {list(schema.domains)} (new: {new}), "
                f"stage.domains={self.requested}; no training rows of {unknown + empty or 'any new domain'}. Give the "
                "new partner's files (data=aligned), or name the domains to train in stage.domains"
            )
        self.indices = [schema.domains.index(d) for d in self.domains]
        self.alignment = data.store.report().get("alignment")
        if self.alignment is not None:
            self.check_coverage(self.alignment)
        elif self.min_coverage:
            raise ValueError(
                f"stage.min_coverage={self.min_coverage} checks how new files align with the adapted run's "
                "vocabularies, but these data were not encoded with its encoding (no alignment in their report.json): "
                "use data=aligned, or drop stage.min_coverage (data_report.json gives every field's unseen share)"
            )
        if self.gate.scratch:
            backbone_cfg = RunDir(self.source).backbone_config()
            plain = OmegaConf.to_container(backbone_cfg, resolve=True)
            check_targets(plain, RunDir(self.source).file(RunDir.BACKBONE_CONFIG), "backbone")
            self.scratch_dir = Path(cfg.paths.output_dir) / "gate_scratch"
            run(scratch_config(cfg, backbone_cfg, self.scratch_dir))
        recorded = copy.deepcopy(cfg)
        with open_dict(recorded):
            recorded.adapter = RunDir(self.source).adapter_config()
        return recorded

    def check_coverage(self, alignment: dict) -> None:
        """Log the coverage of every new domain and field; raise below ``min_coverage`` unless ``force``."""
        log.info("alignment coverage of the new domains' training rows:\n%s", coverage_table(alignment))
        fields = set(self.min_coverage) - set(self.encoding.schema.sparse_names)
        if fields:
            raise ValueError(
                f"stage.min_coverage names {sorted(fields)}, not sparse fields of the data: "
                f"{self.encoding.schema.sparse_names}"
            )
        low = [
            f"{f} of {d}: {c[f]['coverage']:.1%} < {self.min_coverage[f]:.1%}"
            for d, c in alignment.get("coverage", {}).items()
            if d in self.domains
            for f in self.min_coverage
            if not c[f]["coverage"] >= self.min_coverage[f]  # NaN (no value at all) is below
        ]
        if low and not self.force:
            raise CoverageError(
                f"the alignment of the new domain(s) to the run {self.source} is below stage.min_coverage: "
                f"{'; '.join(low)} (coverage: the share of the domain's training rows whose value is in the run's "
                "vocabulary or mapped onto it). Give a mapping file for those fields (data.source.mappings), or "
                "train anyway with stage.force=true"
            )
        if low:
            log.warning("coverage below stage.min_coverage, training anyway (stage.force): %s", "; ".join(low))

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        run_dir = RunDir(self.source)
        old = replace(schema, domains=schema.domains[: self.k])
        self.adapted = run_dir.load_adapted(old).eval()  # the run's model as is: the other domains' reference
        if schema.domains[self.k :] and not self.adapted.backbone.input.serves_any_domain:
            raise ValueError(
                f"stage=onboard: the backbone of {self.source} embeds the domain id (input.domain_as_feature=true) "
                f"without an 'any domain' id, so a new domain ({', '.join(schema.domains[self.k :])}) has no embedding "
                "to read. Adapt a backbone pre-trained with one (input=pooled, stage=adapt's default: a new domain "
                "reads it, its adapter learns the rest) or a domain-agnostic one (input=embedded), then onboard"
            )
        loaded = copy.deepcopy(self.adapted)  # the one this run grows and trains (the files are read once)
        pl.seed_everything(cfg.seed, workers=True)  # the new slices' initialisation
        fresh = run_dir.adapter_factory()(schema, loaded.backbone)
        self.identity = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
        net = AdaptedNet(schema, loaded.backbone, grow(loaded.adapter, fresh), freeze=["*"])
        self.extra = self.warm_start(net, schema)
        train_only_domains(net.adapter, self.indices)
        self.loaded = {k: v.detach().clone() for k, v in net.adapter.state_dict().items()}
        self.selection = DomainSelection(schema.domains, only=self.domains, patience=self.patience, guard=self.guard)
        self.net = net
        return module_factory(cfg.model, "net", "optimizer")(net=net, schema=schema, optimizer=self.optimizer)

    def warm_start(self, net: AdaptedNet, schema: Schema) -> dict[str, float]:
        """Start the new slices as ``init`` says, from the log loss of each new domain's training rows routed
        through every existing slice (and through its own, the identity); return those and the weights as metrics
        (``onboard/init_logloss/<new>/<domain or identity>``, ``onboard/init_weight/<new>/<domain>``)."""
        new = [i for i in self.indices if i >= self.k]
        if not new:
            return {}
        out: dict[str, float] = {}
        losses = []
        for i in new:
            rows = split_rows(self.data, "train", [i])
            loss = routed_logloss(net, self.data, rows, [*range(self.k), i])
            losses.append(loss)  # the K existing slices, then the new one as built (the identity)
            name = schema.domains[i]
            out.update(
                {
                    f"onboard/init_logloss/{name}/{d}": float(v)
                    for d, v in zip(schema.domains, loss[: self.k].tolist(), strict=False)
                }
            )
            out[f"onboard/init_logloss/{name}/identity"] = float(loss[-1])
        weights = init_weights(torch.stack(losses), self.init, self.temperature)
        if weights is not None:
            warm_start(net.adapter, self.k, new, weights)
            for row, i in zip(weights, new, strict=True):
                name = schema.domains[i]
                candidates = [*schema.domains[: self.k], "identity"]
                weighted = zip(candidates, row.tolist(), strict=True)
                out.update({f"onboard/init_weight/{name}/{d}": float(w) for d, w in weighted})
            log.info(
                "stage.init=%s: weights of the existing slices and the identity per new domain %s",
                self.init,
                weights.tolist(),
            )
        return out

    def trained_domains(self) -> list[str]:
        return list(self.domains)

    def saved_backbone_config(self) -> DictConfig:
        """The source run's ``backbone.yaml``, plus, where the backbone embeds the domain id, how many domains have
        a vector of their own (``input.embedded_domains``): this run's model serves more domains than it embeds."""
        cfg = super().saved_backbone_config()
        if cfg.input.get("domain_as_feature"):
            with open_dict(cfg):
                cfg.input.embedded_domains = self.adapted.backbone.input.num_domains
        return cfg

    def inherited_reference(self) -> dict[str, DomainReference]:
        """The adapted run's drift reference (none if it has no ``drift_reference.npz``)."""
        source = RunDir(self.source)
        if not source.exists(RunDir.DRIFT_REFERENCE):
            return {}
        return reference_of(source.read_drift_reference(), source.file(RunDir.DRIFT_REFERENCE))

    @torch.no_grad()
    def _reset(self, adapter: nn.Module, slices: Sequence[int]) -> None:
        """Put ``slices`` of every per-domain parameter back to what each served before this run: a new domain's to
        the identity (the freshly built adapter's), a known domain's to the adapted run's slice."""
        new = [s for s in slices if s >= self.k]
        old = [s for s in slices if s < self.k]
        for name, param in per_domain_parameters(adapter):
            param[new] = self.identity[name][new].to(param.device)
            param[old] = self.loaded[name][old].to(param.device)

    def after_fit(self, trainer: pl.Trainer, module: RankingModule) -> None:
        """Every other domain's adapter slices as loaded, bit for bit, whatever the optimiser did."""
        keep_other_domains(module.net.adapter, self.loaded, self.indices)

    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        out = {**super().metrics(predictions), **self.extra}
        if "prob" not in predictions:
            return out
        change, rows = other_domains_change(self.adapted, self.net, self.data, self.k, self.indices)
        out["onboard/other_domains_max_abs_change"] = change
        out["onboard/other_domains_rows"] = float(rows)
        out.update(self.judge(predictions))
        return out

    def judge(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """The negative-transfer gate on the test rows of every onboarded domain: ``gate/<figure>/<domain>``."""
        g = self.gate
        zero_shot = backbone_probabilities(self.net, self.data)[:, 0]
        scratch = None
        if g.scratch:
            other = RunDir(self.scratch_dir).read_predictions()
            if not np.array_equal(other["domain"], predictions["domain"]):
                raise ValueError(f"the gate's scratch run {self.scratch_dir} was tested on other rows than this run")
            scratch = other["prob"][:, 0]
        names = list(self.data.schema.domains)
        rows = negative_transfer(
            predictions["prob"][:, 0],
            scratch,
            zero_shot,
            predictions["label"][:, 0],
            predictions["domain"],
            names,
            g.delta,
            g.confidence,
            g.resamples,
            g.seed,
        )
        rows = [r for r in rows if r.domain in self.domains]
        self.flagged = [r.domain for r in rows if r.flagged]
        out: dict[str, float] = {}
        for r in rows:
            figures = {
                "auc_onboarded": r.auc_warm,
                "auc_zero_shot": r.auc_zero_shot,
                "auc_scratch": r.auc_scratch,
                "diff": r.diff,
                "low": r.low,
                "high": r.high,
                "flagged": float(r.flagged),
                "rows": float(r.rows),
            }
            out.update({f"gate/{k}/{r.domain}": v for k, v in figures.items()})
        verdict = ", ".join(self.flagged) if self.flagged else "none"
        self.gate_report = (
            "# Negative-transfer gate of the onboarded domains\n\n"
            f"Onboarded into {self.source}: {', '.join(self.domains)} (init {self.init}). Per domain, on its test "
            "rows: the onboarded model against the backbone alone "
            f"(zero-shot){' and a model trained from scratch on the same rows' if g.scratch else ''}; paired "
            f"bootstrap ({g.resamples} resamples) of AUC onboarded - best other, delta {g.delta}.\n\n"
            f"{gate_table(rows, g.confidence)}\n\nFlagged (not promoted): {verdict}"
            + (
                " (stage.gate.strict: in adapter.pt their slices are those served before: the identity for a new "
                "domain, the adapted run's for a known one)"
                if g.strict and self.flagged
                else ""
            )
            + "\n"
        )
        log.info("%s", self.gate_report)
        return out

    def save(self, run_dir: RunDir, module: RankingModule) -> None:
        if self.gate.strict and self.flagged:
            self._reset(module.net.adapter, [self.data.schema.domains.index(d) for d in self.flagged])
        super().save(run_dir, module)
        if self.alignment is not None:
            run_dir.write_json(ALIGNMENT_FILE, self.alignment)
            run_dir.file(ALIGNMENT_REPORT).write_text(coverage_table(self.alignment) + "\n")
        if self.gate_report:
            run_dir.file(GATE_REPORT).write_text(self.gate_report)

    def finish(self, metrics: dict[str, float]) -> None:
        if self.gate.strict and self.flagged:
            raise NegativeTransferError(
                f"the negative-transfer gate flagged {self.flagged} (stage.gate.strict): onboarding them is worse than "
                f"the alternatives beyond the noise (gate.md); in adapter.pt their slices are those they served "
                "before this run (a new domain's the identity: a serving file exported from this run gives its "
                "requests the backbone)"
            )


class CoverageError(ValueError):
    """Fields of a new domain whose values the alignment matches too rarely (``stage.min_coverage``)."""


# files an onboarding run adds to its run directory
ALIGNMENT_FILE = "alignment.json"
ALIGNMENT_REPORT = "alignment.md"
GATE_REPORT = "gate.md"


def check_same_fields(adapted: Schema, data: Schema, source: Path, user: str = "stage=onboard") -> None:
    """Refuse data whose fields, vocabulary sizes, dense features, labels or sequence differ from the adapted run's,
    or whose domains do not start with the run's, naming every difference (``user``: who refuses them)."""
    differ = [
        f"{what}: {theirs!r} in the run, {ours!r} here"
        for what, theirs, ours in (
            ("sparse fields and vocabulary sizes", adapted.sparse, data.sparse),
            ("dense features", adapted.dense, data.dense),
            ("labels", adapted.labels, data.labels),
            ("sequence", adapted.sequence, data.sequence),
            ("first domains", adapted.domains, data.domains[: adapted.num_domains]),
        )
        if theirs != ours
    ]
    if differ:
        raise ValueError(
            f"{user}: the data do not read as the adapted run {source} read its own: {'; '.join(differ)}. "
            "Encode new files with the run's encoding (data=aligned, which takes data.source.run=<that run>), or use "
            "the run's own data config"
        )


def with_embedding_delta(cfg: DictConfig, kind: str, rank: int) -> DictConfig:
    """``cfg`` whose ``adapter`` node is a :class:`~mdrec.adapters.base.Stacked` adapter of the per-domain embedding
    delta (``kind``, ``rank``) and the configured adapter (if any): what the run builds, and what its run directory
    rebuilds from ``config.yaml``."""
    if cfg.adapter and cfg.adapter.get("_target_") == target_of(Stacked):
        raise ValueError(
            f"stage.embeddings={kind} adds the embedding delta to the adapter, but the adapter is a "
            f"{target_of(Stacked)} already (a recorded adapt run's config?): use stage.embeddings=frozen with that "
            "adapter, or choose the adapter again (adapter=lora, ...)"
        )
    parts = {"embeddings": {"_target_": target_of(EmbeddingDelta), "_partial_": True, "kind": kind, "rank": rank}}
    if cfg.adapter:  # adapter=none: the embedding delta alone
        parts["adapter"] = cfg.adapter
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.adapter = {"_target_": target_of(Stacked), "_partial_": True, "parts": parts}
    return out


def target_of(cls: type) -> str:
    """The ``_target_`` of ``cls``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def with_group_lr(optimizer: OptimizerFactory, params: list[nn.Parameter], lr: float) -> OptimizerFactory:
    """``optimizer`` with ``params`` in a parameter group of their own at learning rate ``lr`` (the others keep the
    optimiser's)."""
    own = {id(p) for p in params}

    def build(trainable: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        trainable = list(trainable)
        rest = [p for p in trainable if id(p) not in own]
        group = [p for p in trainable if id(p) in own]
        return optimizer([g for g in ({"params": rest}, {"params": group, "lr": lr}) if g["params"]])

    return build


def module_factory(model_cfg: DictConfig, *runtime: str) -> Callable[..., RankingModule]:
    """The ``model`` node's RankingModule with its options bound, except the ``runtime`` arguments (objects the run
    builds: a config node cannot hold them)."""
    options = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k not in runtime])
    return hydra.utils.instantiate(options, _partial_=True)


def check_same_backbone(backbone_cfg: DictConfig, source: RunDir) -> None:
    """Refuse a ``backbone`` config that differs from the one ``source`` was pre-trained with, naming every field."""
    saved = source.backbone_config()
    ours, theirs = plain_value(backbone_cfg), plain_value(saved)
    fields = sorted((set(ours) | set(theirs)) - {"_partial_"})
    differ = {f: (ours.get(f), theirs.get(f)) for f in fields if ours.get(f) != theirs.get(f)}
    if differ:
        listed = "; ".join(f"backbone.{f}: {o!r} here, {t!r} there" for f, (o, t) in differ.items())
        raise ValueError(
            f"stage=adapt adapts the backbone of stage.pretrained={source.path} as it was pre-trained "
            f"({source.file(RunDir.BACKBONE_CONFIG)}), but this config's backbone differs: {listed}. Use the "
            "pre-training's backbone=, input= and model= options (e.g. input=embedded for a domain-agnostic backbone), "
            "or point stage.pretrained at a run pre-trained with this config"
        )


def pretrain_config(cfg: DictConfig, schema: Schema, source_domains: list[str] | None) -> DictConfig:
    """The stage=pretrain config an adapt config implies: the same config, with the training data restricted to
    ``source_domains`` (all domains when None), no vocabulary mapping, no dynamic learning rate (a backbone has no
    per-domain parameters to scale) and no ``baseline``."""
    sub = sub_run_config(cfg, target_of(Pretrain))
    with open_dict(sub):
        if source_domains is not None:
            unknown = sorted(set(source_domains) - set(schema.domains))
            if unknown:
                raise ValueError(f"stage.source_domains names unknown domain(s) {unknown}; domains: {schema.domains}")
            if cfg.input.get("domain_as_feature"):
                raise ValueError(
                    f"stage.source_domains={list(source_domains)} pre-trains on those domains only, but the input "
                    "embeds the domain id (input=pooled, stage=adapt's default), so the other domains' vectors would "
                    "never train and their adapters would start from noise. Pre-train a domain-agnostic backbone for "
                    "a cross-domain warm start: add input=embedded"
                )
            sub.data.domain_fractions = {d: 0.0 for d in schema.domains if d not in source_domains}
            sub.data.vocab_domains = None
    return sub


def find_or_pretrain(sub: DictConfig, run: Runner) -> Path:
    """The store's run directory for the config ``sub`` (under ``paths.pretrained_dir``, keyed by
    :func:`pretrain_key`): a stage=pretrain run's backbone, or a stage=train run's network, found when it holds
    weights (:func:`~mdrec.train.checkpoint.holds_weights`), else trained now with ``run``.

    Jobs that need the same backbone take turns through a file lock per key (released by the operating system when
    a job dies): exactly one pre-trains, the others wait and then find it. The pre-training writes into
    ``<key>.partial`` and is renamed when complete: a killed one never looks finished. In a multi-process run every
    process pre-trains (they train together); process 0 alone holds the lock, clears and renames the directory.
    """
    directory = Path(sub.paths.pretrained_dir) / pretrain_key(sub)
    directory.parent.mkdir(parents=True, exist_ok=True)
    rank_zero = rank_zero_only.rank == 0
    with store_lock(directory) if rank_zero else contextlib.nullcontext():
        if holds_weights(RunDir(directory)):
            log.info("pre-trained model found: %s", directory)
            return directory
        log.info("no pre-trained model for this config yet: training it into %s", directory)
        partial_dir = directory.with_name(directory.name + ".partial")
        if rank_zero:
            shutil.rmtree(partial_dir, ignore_errors=True)
        with open_dict(sub):
            sub.paths.output_dir = str(partial_dir)
        run(sub)
        if rank_zero and holds_weights(RunDir(partial_dir)):
            partial_dir.rename(directory)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the others wait for the rename
    if not holds_weights(RunDir(directory)):  # every process raises, none waits at a barrier for process 0
        raise FileNotFoundError(
            f"the run trained into {partial_dir} kept no weights to reuse (a stage=train run keeps them as "
            "checkpoints/last.ckpt): keep callbacks.model_checkpoint and trainer.enable_checkpointing on"
        )
    return directory


@contextlib.contextmanager
def store_lock(directory: Path) -> Iterator[None]:
    """Hold ``<directory>.lock`` (waiting, with a message, while another job holds it)."""
    lock = FileLock(str(directory.with_name(directory.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another job is pre-training %s: waiting for it", directory)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
