"""The stages around a pre-trained backbone: find or pre-train it, build the adapted network, onboard a domain."""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.strategies import Strategy
from torch import nn

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.saved import CONFIG, WEIGHTS, build_adapter, load_adapted, load_backbone
from mdrec.data.schema import Schema
from mdrec.nn.domain import per_domain_parameters
from mdrec.train.module import RankingModule
from mdrec.train.pretrained import plain_value, pretrain_key

log = logging.getLogger(__name__)

Run = Callable[[DictConfig], object]


def check_adapt_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Refuse a stage=adapt config whose ``model`` or ``backbone`` the run would silently ignore; with
    ``stage.pretrained``, set ``cfg.backbone`` to the pre-trained run's (its ``backbone.yaml``), so the run's
    config.yaml records the backbone it adapts.

    ``model`` must not name a multi-domain network (stage=adapt adapts a backbone). The pre-trained backbone's class
    must be the configured one, and so must every ``backbone.<field>`` that ``overrides`` (the command line's
    Hydra overrides) set. Other fields (defaults, ``model=pooled``, experiment files) are taken from the saved run.
    """
    if cfg.model.net is not None:
        raise ValueError(
            f"stage=adapt adapts a pre-trained backbone with per-domain adapters, but model.net is "
            f"{cfg.model.net._target_}, a multi-domain network stage=adapt does not build. Use model=backbone (or "
            "model=pooled) and choose the adaptation with adapter= (iak, lora, mlora, head, none); to train that "
            "network itself, use stage=train (the default) with the same model="
        )
    if not cfg.stage.pretrained or not (Path(cfg.stage.pretrained) / CONFIG).exists():
        return  # no run named (the backbone is this config's), or none there: loading says what is missing
    saved_path = Path(cfg.stage.pretrained) / CONFIG
    saved = OmegaConf.load(saved_path)
    if cfg.backbone._target_ != saved._target_:
        raise ValueError(
            f"stage=adapt adapts the backbone of stage.pretrained={cfg.stage.pretrained}, a {saved._target_} "
            f"({saved_path}), but this config's backbone is {cfg.backbone._target_}: drop the backbone override "
            f"(or choose the backbone= that builds {saved._target_}), or point stage.pretrained at a run "
            f"pre-trained with {cfg.backbone._target_}"
        )
    for field in sorted(overridden_fields(overrides, "backbone")):
        ours, theirs = plain_value(cfg.backbone.get(field)), plain_value(saved.get(field))
        if ours != theirs:
            raise ValueError(
                f"stage=adapt adapts the backbone of stage.pretrained={cfg.stage.pretrained} as it was pre-trained, "
                f"with backbone.{field}={theirs!r} ({saved_path}), but backbone.{field} is overridden to {ours!r} "
                f"here: drop the override backbone.{field}, or point stage.pretrained at a run pre-trained with it"
            )
    keys = set(cfg.backbone) | set(saved)
    taken = sorted(k for k in keys if plain_value(cfg.backbone.get(k)) != plain_value(saved.get(k)))
    if taken:
        log.info("stage.pretrained: backbone fields %s are the pre-trained run's (%s)", taken, saved_path)
    with open_dict(cfg):
        cfg.backbone = saved


def overridden_fields(overrides: Sequence[str], node: str) -> set[str]:
    """The fields of config node ``node`` that Hydra ``overrides`` (``node.field=...``, ``+``/``++``/``~`` too) set."""
    keys = (o.lstrip("+~").split("=", 1)[0] for o in overrides)
    return {k.split(".")[1] for k in keys if k.startswith(f"{node}.")}


def build_adapted(cfg: DictConfig, schema: Schema, run: Run, strategy: Strategy) -> tuple[RankingModule, Path]:
    """The pre-trained backbone (found, loaded strictly, or pre-trained first with ``run``), frozen as
    ``stage.freeze`` says, with ``adapter`` attached for every domain, in a RankingModule with
    ``stage.optimizer``; and the directory the backbone came from. ``strategy`` is the run's trainer's: with
    several processes, all pre-train together and process 0 alone writes the backbone.

    For ``stage=onboard``: the backbone and adapter of the ``stage.adapted`` run, loaded strictly, everything
    frozen except the ``stage.domain`` slice of the adapter's stacked parameters (its gradient is masked).
    """
    onboard = cfg.stage.name == "onboard"
    source = Path(cfg.stage.adapted) if onboard else find_or_pretrain(cfg, schema, run, strategy)
    if onboard:
        net = load_adapted(source, schema)
        train_only_domain(net.adapter, schema.domains.index(domain_name(cfg, schema)))
    else:
        backbone = load_backbone(source, schema)
        pl.seed_everything(cfg.seed, workers=True)  # the adapter's initialisation does not depend on pre-training
        adapter = build_adapter(cfg.get("adapter"), schema, backbone)
        net = AdaptedNet(schema, backbone, adapter, freeze=list(cfg.stage.freeze))
    model_cfg = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in ("net", "optimizer")])
    optimizer = hydra.utils.instantiate(cfg.stage.optimizer, _partial_=True)
    return hydra.utils.instantiate(model_cfg, _partial_=True)(net=net, schema=schema, optimizer=optimizer), source


def domain_name(cfg: DictConfig, schema: Schema) -> str:
    """``stage.domain``, checked against the schema."""
    if cfg.stage.domain not in schema.domains:
        raise ValueError(f"stage.domain {cfg.stage.domain!r} is not a domain of the data: {list(schema.domains)}")
    return cfg.stage.domain


def train_only_domain(adapter: nn.Module, domain: int) -> None:
    """Mask the gradient of every stacked per-domain parameter of ``adapter`` to its ``domain`` slice."""
    for _, param in per_domain_parameters(adapter):
        mask = torch.zeros(param.shape[0], *[1] * (param.dim() - 1))
        mask[domain] = 1.0
        param.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))


def pretrain_config(cfg: DictConfig, schema: Schema) -> DictConfig:
    """The stage=pretrain config an adapt config implies: the same config, with the training data restricted to
    ``stage.source_domains`` (all domains when null), no vocabulary mapping, and no dynamic learning rate (a
    backbone has no per-domain parameters to scale)."""
    sub = copy.deepcopy(cfg)
    sources = cfg.stage.get("source_domains")
    with open_dict(sub):
        sub.stage = {"name": "pretrain"}
        if sub.get("callbacks"):
            sub.callbacks.pop("dynamic_lr", None)
        if sources is not None:
            unknown = sorted(set(sources) - set(schema.domains))
            if unknown:
                raise ValueError(f"stage.source_domains names unknown domain(s) {unknown}; domains: {schema.domains}")
            sub.data.domain_fractions = {d: 0.0 for d in schema.domains if d not in sources}
            sub.data.vocab_domains = None
    return sub


def find_or_pretrain(cfg: DictConfig, schema: Schema, run: Run, strategy: Strategy) -> Path:
    """``stage.pretrained`` if set; else the store's backbone for this config, pre-trained now (``run`` of the
    pretrain config) if it is missing. Every process of a multi-process run pre-trains (they train together);
    process 0 alone clears and renames the directory, and the others wait for it (``strategy.barrier``)."""
    if cfg.stage.pretrained:
        return Path(cfg.stage.pretrained)
    sub = pretrain_config(cfg, schema)
    directory = Path(cfg.paths.pretrained_dir) / pretrain_key(sub)
    if (directory / WEIGHTS).exists():
        log.info("pre-trained backbone found: %s", directory)
        return directory
    log.info("no pre-trained backbone for this config yet: pre-training it into %s", directory)
    partial_dir = directory.with_name(directory.name + ".partial")
    if strategy.is_global_zero:
        shutil.rmtree(partial_dir, ignore_errors=True)
    with open_dict(sub):
        sub.paths.output_dir = str(partial_dir)
    run(sub)
    if strategy.is_global_zero:
        partial_dir.rename(directory)  # complete or absent: a killed pre-training never looks finished
    strategy.barrier("pretrained backbone in place")
    return directory


@torch.no_grad()
def keep_other_domains(adapter: nn.Module, before: dict[str, torch.Tensor], domain: int) -> None:
    """Put every domain's slice but ``domain``'s back to ``before`` (the adapter's state dict as loaded)."""
    for name, param in per_domain_parameters(adapter):  # names as in the state dict
        others = torch.arange(param.shape[0]) != domain
        param[others] = before[name][others]


def other_domains_change(cfg: DictConfig, schema: Schema, predictions: dict[str, np.ndarray]) -> float:
    """Largest change of a test prediction of another domain than ``stage.domain``, against the adapted run's."""
    adapted = dict(np.load(Path(cfg.stage.adapted) / "predictions.npz"))
    if not np.array_equal(adapted["domain"], predictions["domain"]):
        raise ValueError("the onboarding run was tested on other rows than the adapted run: use the same data config")
    others = predictions["domain"] != schema.domains.index(cfg.stage.domain)
    return float(np.abs(adapted["prob"][others] - predictions["prob"][others]).max(initial=0.0))
