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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from mdrec.adapters.base import AdaptedNet
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.parameter import per_domain_parameters
from mdrec.rundir import RunDir
from mdrec.train.checkpoint import load_checkpoint
from mdrec.train.module import OptimizerFactory, RankingModule
from mdrec.train.pretrained import plain_value, pretrain_key
from mdrec.train.selection import DomainSelection, Guard, shared_trainable

log = logging.getLogger(__name__)

# runs a whole config to completion (mdrec.train.run.train): how a stage runs another stage first
Runner = Callable[[DictConfig], dict[str, float]]


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

    def prepare(self, cfg: DictConfig, schema: Schema, run: Runner) -> DictConfig:
        """Check ``cfg`` and do what must finish before this run starts; return the config the run records."""
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


class Train(Stage):
    """Train a backbone or a multi-domain network (``model``) from scratch: the default stage."""


class Pretrain(Stage):
    """Train a backbone (``model=backbone``, or ``model=pooled`` for the domain id as a feature) and save it as
    ``backbone.pt`` + ``backbone.yaml``, for stage=adapt to load."""

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


class AdapterStage(Stage):
    """What adapting and onboarding share: a backbone from another run's directory with a per-domain adapter,
    step 0 as a candidate, per-domain selection (each domain keeps its adapter slice from its own best validation),
    and a self-contained run directory (the backbone adapted and the adapter).

    Args:
        optimizer: the adapter's optimiser (a partial, completed with the trainable parameters).
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
        self.source: Path | None = None  # the run directory the backbone comes from
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

    def save(self, run_dir: RunDir, module: RankingModule) -> None:
        net: AdaptedNet = module.net
        run_dir.save_backbone(net.backbone, RunDir(self.source).backbone_config())
        if net.adapter is not None:
            run_dir.save_adapter(net.adapter)


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
    ) -> None:
        super().__init__(optimizer, patience, val_check_interval, guard)
        self.pretrained = pretrained
        self.source_domains = list(source_domains) if source_domains is not None else None
        self.freeze = list(freeze)
        self.select_per_domain = select_per_domain

    def prepare(self, cfg: DictConfig, schema: Schema, run: Runner) -> DictConfig:
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
            self.source = find_or_pretrain(pretrain_config(cfg, schema, self.source_domains), run)
        return cfg

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        backbone = RunDir(self.source).load_backbone(schema)
        pl.seed_everything(cfg.seed, workers=True)  # the adapter's initialisation does not depend on pre-training
        adapter = hydra.utils.instantiate(cfg.adapter, _partial_=True)(schema, backbone) if cfg.adapter else None
        net = AdaptedNet(schema, backbone, adapter, freeze=self.freeze)
        module = module_factory(cfg.model, "net", "optimizer")(net=net, schema=schema, optimizer=self.optimizer)
        per_domain = self.select_per_domain
        if per_domain is None:
            per_domain = adapter is not None and not shared_trainable(net)
            log.info("stage.select_per_domain=null: %s", "per domain" if per_domain else "overall (shared weights)")
        if per_domain:
            self.selection = DomainSelection(schema.domains, patience=self.patience, guard=self.guard)
        return module


class Onboard(AdapterStage):
    """Onboard one domain into an adapted model: load the stage=adapt run's backbone and adapter, train only
    ``domain``'s adapter slice; every other domain's weights stay as loaded, bit for bit (the run reports the
    largest change of their test predictions as ``onboard/other_domains_max_abs_change``).

    Args:
        adapted: a stage=adapt run directory (backbone, adapter, config.yaml, predictions.npz).
        domain: the domain to train.
        optimizer, patience, val_check_interval, guard: see :class:`AdapterStage`.
    """

    def __init__(
        self,
        adapted: str,
        domain: str,
        optimizer: OptimizerFactory,
        patience: int | None = 3,
        val_check_interval: float | int | None = None,
        guard: Guard | None = None,
    ) -> None:
        super().__init__(optimizer, patience, val_check_interval, guard)
        self.source = Path(adapted)
        self.domain = domain

    def prepare(self, cfg: DictConfig, schema: Schema, run: Runner) -> DictConfig:
        """The config with the adapted run's ``adapter`` node: the run directory rebuilds on its own."""
        if self.domain not in schema.domains:
            raise ValueError(f"stage.domain {self.domain!r} is not a domain of the data: {list(schema.domains)}")
        if cfg.test:  # compared with the onboarding run's after it: read (or refused) now, not after training
            self.adapted_predictions = RunDir(self.source).read_predictions()
        recorded = copy.deepcopy(cfg)
        with open_dict(recorded):
            recorded.adapter = RunDir(self.source).adapter_config()
        return recorded

    def build(self, cfg: DictConfig, schema: Schema) -> RankingModule:
        net = RunDir(self.source).load_adapted(schema)
        self.index = schema.domains.index(self.domain)
        train_only_domain(net.adapter, self.index)
        self.loaded = {k: v.detach().clone() for k, v in net.adapter.state_dict().items()}
        self.selection = DomainSelection(schema.domains, only=[self.domain], patience=self.patience, guard=self.guard)
        return module_factory(cfg.model, "net", "optimizer")(net=net, schema=schema, optimizer=self.optimizer)

    def after_fit(self, trainer: pl.Trainer, module: RankingModule) -> None:
        """Every other domain's adapter slices as loaded, bit for bit, whatever the optimiser did."""
        keep_other_domains(module.net.adapter, self.loaded, self.index)

    def metrics(self, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        out = super().metrics(predictions)
        if "prob" in predictions:
            out["onboard/other_domains_max_abs_change"] = self.other_domains_change(predictions)
        return out

    def other_domains_change(self, predictions: dict[str, np.ndarray]) -> float:
        """Largest change of a test prediction of another domain than ``domain``, against the adapted run's."""
        adapted = self.adapted_predictions
        if not np.array_equal(adapted["domain"], predictions["domain"]):
            raise ValueError(
                f"the onboarding run was tested on other rows than the adapted run {self.source}: use the same data "
                "config"
            )
        others = predictions["domain"] != self.index
        return float(np.abs(adapted["prob"][others] - predictions["prob"][others]).max(initial=0.0))


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
            "pre-training's backbone=, input= and model= options (e.g. model=pooled), or point stage.pretrained at a "
            "run pre-trained with this config"
        )


def train_only_domain(adapter: nn.Module, domain: int) -> None:
    """Mask the gradient of every stacked per-domain parameter of ``adapter`` to its ``domain`` slice."""
    for _, param in per_domain_parameters(adapter):
        mask = torch.zeros(param.shape[0], *[1] * (param.dim() - 1))
        mask[domain] = 1.0
        param.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))


@torch.no_grad()
def keep_other_domains(adapter: nn.Module, before: dict[str, torch.Tensor], domain: int) -> None:
    """Put every domain's slice but ``domain``'s back to ``before`` (the adapter's state dict as loaded)."""
    for name, param in per_domain_parameters(adapter):  # names as in the state dict
        others = torch.arange(param.shape[0]) != domain
        param[others] = before[name][others]


def pretrain_config(cfg: DictConfig, schema: Schema, source_domains: list[str] | None) -> DictConfig:
    """The stage=pretrain config an adapt config implies: the same config, with the training data restricted to
    ``source_domains`` (all domains when None), no vocabulary mapping, and no dynamic learning rate (a backbone has
    no per-domain parameters to scale)."""
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.stage = {"_target_": f"{Pretrain.__module__}.{Pretrain.__qualname__}"}
        sub.ckpt_path = None  # the adapt run's checkpoint: not the pre-training's
        if sub.get("callbacks"):
            sub.callbacks.pop("dynamic_lr", None)
        if source_domains is not None:
            unknown = sorted(set(source_domains) - set(schema.domains))
            if unknown:
                raise ValueError(f"stage.source_domains names unknown domain(s) {unknown}; domains: {schema.domains}")
            sub.data.domain_fractions = {d: 0.0 for d in schema.domains if d not in source_domains}
            sub.data.vocab_domains = None
    return sub


def find_or_pretrain(sub: DictConfig, run: Runner) -> Path:
    """The store's backbone for the pretrain config ``sub`` (under ``paths.pretrained_dir``, keyed by
    :func:`pretrain_key`), pre-trained now with ``run`` if it is missing.

    Jobs that need the same backbone take turns through a file lock per key (released by the operating system when
    a job dies): exactly one pre-trains, the others wait and then find it. The pre-training writes into
    ``<key>.partial`` and is renamed when complete: a killed one never looks finished. In a multi-process run every
    process pre-trains (they train together); process 0 alone holds the lock, clears and renames the directory.
    """
    directory = Path(sub.paths.pretrained_dir) / pretrain_key(sub)
    directory.parent.mkdir(parents=True, exist_ok=True)
    rank_zero = rank_zero_only.rank == 0
    with store_lock(directory) if rank_zero else contextlib.nullcontext():
        if RunDir(directory).has_backbone():
            log.info("pre-trained backbone found: %s", directory)
            return directory
        log.info("no pre-trained backbone for this config yet: pre-training it into %s", directory)
        partial_dir = directory.with_name(directory.name + ".partial")
        if rank_zero:
            shutil.rmtree(partial_dir, ignore_errors=True)
        with open_dict(sub):
            sub.paths.output_dir = str(partial_dir)
        run(sub)
        if rank_zero:
            partial_dir.rename(directory)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the others wait for the rename
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
