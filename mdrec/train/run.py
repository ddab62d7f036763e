"""One training run from a composed config: data, network, Lightning trainer, test, metrics.json."""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.eval.metrics import domain_metrics
from mdrec.eval.report import domain_table
from mdrec.train.module import RankingModule

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, schema: Schema) -> RankingModule:
    """Instantiate the network with the data's schema, then the LightningModule around it.

    ``model.net: null`` makes the backbone itself the network; otherwise ``model.net`` names a network class,
    which receives the schema and, if its constructor has a ``backbone`` argument, the instantiated backbone
    (shared-bottom, ESMM, ... build on a backbone; MMoE, PLE, STAR are whole networks of their own).
    Runtime objects are passed to partially instantiated constructors, never merged into the config (Hydra
    would turn a dataclass argument into a config node).
    """
    make_backbone = lambda: hydra.utils.instantiate(cfg.backbone, _partial_=True)(schema=schema)  # noqa: E731
    if cfg.model.net is None:
        net = make_backbone()
    else:
        make_net = hydra.utils.instantiate(cfg.model.net, _partial_=True)
        wants_backbone = "backbone" in inspect.signature(make_net.func).parameters
        net = make_net(schema=schema, backbone=make_backbone()) if wants_backbone else make_net(schema=schema)
    model_cfg = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k != "net"])
    return hydra.utils.instantiate(model_cfg, _partial_=True)(net=net, schema=schema)


def instantiate_group(node: DictConfig | None) -> list:
    """Every object of a name -> config mapping such as ``callbacks`` or ``logger`` (null entries skipped)."""
    return [hydra.utils.instantiate(c) for c in (node or {}).values() if c is not None]


def oracle_metrics(datamodule: MultiDomainDataModule, split: str) -> dict[str, float]:
    """Metrics of the true probabilities on ``split`` for every label that has them (synthetic data).

    Keys follow the module's: ``oracle/auc/<domain>`` for the first label, ``oracle/<label>_auc/<domain>`` else.
    """
    schema = datamodule.schema
    col = lambda name: torch.from_numpy(datamodule.split_column(split, name))  # noqa: E731
    users = col(schema.user_field).long() if schema.user_field is not None else None
    domain = col(schema.domain_field).long()
    out: dict[str, float] = {}
    for t, label in enumerate(schema.labels):
        if label not in schema.oracle_columns:
            continue
        values = domain_metrics(col(schema.oracle_columns[label]), col(label), domain, schema.domains, users)
        prefix = "oracle/" if t == 0 else f"oracle/{label}_"
        out.update({prefix + k: v for k, v in values.items()})
    return out


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, validate, test on the best validation checkpoint; write ``metrics.json``; return the metrics."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: MultiDomainDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    module = build_module(cfg, datamodule.schema)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start

    metrics = {"val/auc_best": float(trainer.callback_metrics.get("val/auc_best", float("nan")))}
    if cfg.get("test", True):
        # validation and test figures of one model: the best validation checkpoint (the last weights without one)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        metrics.update(oracle_metrics(datamodule, "test"))
    metrics.update(
        {
            "params/total": float(sum(p.numel() for p in module.net.parameters())),
            "params/trainable": float(sum(p.numel() for p in module.net.parameters() if p.requires_grad)),
            "time/fit_seconds": fit_seconds,
            "train/epochs": float(trainer.current_epoch),
            "seed": float(cfg.seed),
        }
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out_dir / "data_report.json").write_text(
        json.dumps(
            {
                "prepared_dir": str(datamodule.prepared_dir),
                "preparation": datamodule.store.report(),
                "unseen_share": {s: datamodule.unseen_shares(s) for s in datamodule.splits},
            },
            indent=2,
        )
    )
    if "test/auc" in metrics:
        log.info("per-domain test metrics (%s):\n%s", out_dir, domain_table(metrics, datamodule.schema.domains))
    return metrics
