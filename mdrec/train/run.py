"""One run from a composed config: train (or pretrain) a network, or adapt a pre-trained backbone per domain;
then validate, test the selected model and write metrics.json."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from mdrec.adapters.saved import ADAPTER, CONFIG, RUN_CONFIG, save_backbone
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.eval.metrics import domain_metrics
from mdrec.eval.report import domain_rows, domain_table
from mdrec.eval.summary import FAILURE, METRICS
from mdrec.nn.domain import per_domain_parameters
from mdrec.train.checkpoint import resume_path
from mdrec.train.module import RankingModule
from mdrec.train.provenance import provenance
from mdrec.train.selection import DomainSelection
from mdrec.train.stages import build_adapted, check_adapt_config, domain_name, keep_other_domains, other_domains_change

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


STAGES = ("train", "pretrain", "adapt", "onboard")


def train(cfg: DictConfig) -> dict[str, float]:
    """Run ``stage.name``: train (or pretrain) a network, or adapt a pre-trained backbone; validate; test the
    selected model; write ``metrics.json``, the test ``predictions.npz`` (and ``backbone.pt`` / ``adapter.pt``);
    return the metrics. A multi-process run (DDP) runs this in every process: all train and evaluate together, the
    metrics and predictions cover every process's rows, and process 0 alone writes files."""
    stage = cfg.stage.name
    if stage not in STAGES:
        raise ValueError(f"stage.name {stage!r} is not one of {STAGES}")
    if stage == "pretrain" and cfg.model.net is not None:
        raise ValueError(
            f"stage=pretrain trains a backbone, but model.net is {cfg.model.net._target_}; use model=backbone or "
            "model=pooled (a multi-domain network is not a backbone adapters can attach to)"
        )
    if stage == "adapt":  # before config.yaml is written: it records the model and backbone adapted
        check_adapt_config(cfg, HydraConfig.get().overrides.task if HydraConfig.initialized() else ())
    if stage == "onboard":  # the adapter is the adapted run's: record it, so this run rebuilds on its own
        with open_dict(cfg):
            cfg.adapter = OmegaConf.load(Path(cfg.stage.adapted) / RUN_CONFIG).adapter
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: MultiDomainDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    schema = datamodule.schema
    adapting = stage in ("adapt", "onboard")
    callbacks = instantiate_group(cfg.get("callbacks"))
    selection = None
    if stage == "onboard":
        selection = DomainSelection(schema.domains, only=[domain_name(cfg, schema)], patience=cfg.stage.patience)
    elif stage == "adapt" and cfg.stage.select_per_domain:
        selection = DomainSelection(schema.domains, patience=cfg.stage.patience)
    if selection is not None:  # it stops when no domain improves; overall early stopping would stop too soon
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.EarlyStopping)]
    loggers = instantiate_group(cfg.get("logger"))
    # adapters over-fit within an epoch on large data: their stage may validate (and select) more often
    interval = cfg.stage.get("val_check_interval") if adapting else None
    validate_every = {"val_check_interval": interval} if interval is not None else {}
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[*callbacks, *([selection] if selection else [])],
        logger=loggers or False,
        **validate_every,
    )
    rank_zero = trainer.is_global_zero  # the process that writes files
    if rank_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out_dir / "provenance.json").write_text(json.dumps(provenance(int(cfg.seed)), indent=2))
    if adapting:  # may pre-train the backbone first: a run of its own, with its own loggers (and W&B run)
        module, source = build_adapted(cfg, schema, train, trainer.strategy)
    else:
        module, source = build_module(cfg, schema), None
    # the resolved config: W&B's run config, the CSV logger's hparams.yaml (process 0). Only now: this starts the
    # W&B run, which a nested pre-training above would otherwise have taken over and finished
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if stage == "onboard":
        before = {k: v.detach().clone() for k, v in module.net.adapter.state_dict().items()}
    ckpt_path = resume_path(cfg.get("ckpt_path"), trainer.checkpoint_callback)  # a missing one fails before fitting

    metrics: dict[str, float] = {}
    predictions: dict[str, np.ndarray] = {}
    if adapting and cfg.get("test", True):  # the model before adapting: zero-shot, and the step-0 candidate
        metrics.update(evaluate(trainer, module, datamodule, "zeroshot/"))
        predictions["zeroshot_prob"] = module.test_predictions()["prob"]
    start = time.perf_counter()
    # a run's own checkpoints hold more than tensors (the optimiser factory among the hyper-parameters)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
    fit_seconds = time.perf_counter() - start

    metrics["val/auc_best"] = float(trainer.callback_metrics.get("val/auc_best", float("nan")))
    # the selected model: per-domain selection keeps its choice in memory, else the best validation checkpoint
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback and not selection else ""
    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    if stage == "onboard":  # every other domain's adapter as loaded, bit for bit, whatever the optimiser did
        keep_other_domains(module.net.adapter, before, schema.domains.index(cfg.stage.domain))
    if cfg.get("test", True):
        metrics.update(evaluate(trainer, module, datamodule, ""))
        metrics.update(oracle_metrics(datamodule, "test"))
        predictions.update(module.test_predictions(), domains=np.asarray(schema.domains))
    metrics.update(parameter_counts(module.net))
    metrics.update({"time/fit_seconds": fit_seconds, "train/epochs": float(trainer.current_epoch)})
    metrics["seed"] = float(cfg.seed)
    if stage == "onboard" and "prob" in predictions:
        metrics["onboard/other_domains_max_abs_change"] = other_domains_change(cfg, schema, predictions)
    if selection is not None:
        metrics.update({f"selection/epoch/{d}": float(e) for d, e in selection.best_epoch.items()})
    if rank_zero:
        write_run_files(cfg, module, datamodule, source, metrics, predictions)
        publish(loggers, metrics, schema.domains, trainer.global_step, out_dir)
        if "test/auc" in metrics:
            log.info("per-domain test metrics (%s):\n%s", out_dir, domain_table(metrics, schema.domains))
    return metrics


def write_run_files(
    cfg: DictConfig,
    module: RankingModule,
    datamodule: MultiDomainDataModule,
    source: Path | None,
    metrics: dict[str, float],
    predictions: dict[str, np.ndarray],
) -> None:
    """Write a finished run's files into ``paths.output_dir``: ``metrics.json``, ``predictions.npz`` (when tested),
    ``data_report.json``, and the trained weights (``backbone.pt`` of a pretrain run; an adapt run's backbone from
    ``source`` and its ``adapter.pt``)."""
    out_dir, stage, schema = Path(cfg.paths.output_dir), cfg.stage.name, datamodule.schema
    if predictions:
        np.savez_compressed(out_dir / "predictions.npz", **predictions)
    if stage == "pretrain":
        save_backbone(out_dir, module.net, cfg.backbone)
    if source is not None:  # the run directory is self-contained: the backbone it adapted and the adapter
        save_backbone(out_dir, module.net.backbone, OmegaConf.load(source / CONFIG))
        if module.net.adapter is not None:
            torch.save(module.net.adapter.state_dict(), out_dir / ADAPTER)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    (out_dir / FAILURE).unlink(missing_ok=True)  # a resumed run that finishes is no longer a failure
    (out_dir / "data_report.json").write_text(
        json.dumps(
            {
                "domains": list(schema.domains),
                "prepared_dir": str(datamodule.prepared_dir),
                "preparation": datamodule.store.report(),
                "unseen_share": {s: datamodule.unseen_shares(s) for s in datamodule.splits},
            },
            indent=2,
        )
    )


def evaluate(
    trainer: pl.Trainer, module: RankingModule, datamodule: MultiDomainDataModule, prefix: str
) -> dict[str, float]:
    """Validation and test metrics of ``module`` as it is, keys ``<prefix>val/...`` and ``<prefix>test/...``."""
    out: dict[str, float] = {}
    for split, run in (("val", trainer.validate), ("test", trainer.test)):
        run(module, datamodule=datamodule, verbose=False)
        out.update({prefix + k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")})
    return out


def record_failure(out_dir: Path, error: BaseException) -> None:
    """Record why a run failed: ``<out_dir>/failure.json`` with the error and its traceback; a W&B run still
    open is finished as failed (the next job of a sweep starts its own). In a multi-process run only process 0
    records (as it alone writes the run's files)."""
    if rank_zero_only.rank != 0:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(traceback.format_exception(error)),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out_dir / FAILURE).write_text(json.dumps(record, indent=2))
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=1)


# the run files a W&B run carries along (offline too; its own config.yaml holds the config): `mdrec-report <W&B
# dir>` reads them there
WANDB_FILES = (METRICS, ".hydra/overrides.yaml")


def publish(
    loggers: Sequence[Logger], metrics: dict[str, float], domains: Sequence[str], step: int, out_dir: Path
) -> None:
    """Send the run's final figures (selected model's metrics, parameter counts, wall time) to every logger.

    W&B also gets them as a per-domain table (``summary/test_domains``: a row per domain and overall) and keeps
    ``WANDB_FILES`` among its run files.
    """
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, WandbLogger):
            if "test/auc" in metrics:
                columns, rows = domain_rows(metrics, domains)
                logger.log_table(key="summary/test_domains", columns=columns, data=rows)
            for name in WANDB_FILES:
                if (out_dir / name).exists():
                    logger.experiment.save(str(out_dir / name), base_path=str(out_dir), policy="now")
        logger.save()
        if isinstance(logger, WandbLogger):  # a sweep's next job (same process) starts a run of its own
            logger.experiment.finish()


def parameter_counts(net: nn.Module) -> dict[str, float]:
    """``params/total``, ``params/trainable`` and ``params/added_per_domain`` (trainable per-domain parameters / K)."""
    per_domain = [p for _, p in per_domain_parameters(net) if p.requires_grad]
    return {
        "params/total": float(sum(p.numel() for p in net.parameters())),
        "params/trainable": float(sum(p.numel() for p in net.parameters() if p.requires_grad)),
        "params/added_per_domain": float(sum(p.numel() / p.shape[0] for p in per_domain)),
    }
