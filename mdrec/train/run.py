"""One run from a composed config: the stage (``cfg.stage``, :mod:`mdrec.train.stages`) decides what is trained
and how it is selected; the run validates, tests the selected model and writes its run directory."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.eval.metrics import domain_metrics
from mdrec.eval.report import domain_rows, domain_table
from mdrec.nn.parameter import per_domain_parameters
from mdrec.rundir import RunDir
from mdrec.train.checkpoint import resume_path
from mdrec.train.module import RankingModule
from mdrec.train.provenance import provenance
from mdrec.train.stages import Adapt, Specialise, Stage, Train, target_of
from mdrec.train.subrun import sub_run_config
from mdrec.train.typecheck import check_types

log = logging.getLogger(__name__)


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
    """Run ``cfg.stage`` on ``cfg``: prepare (an adapt stage pre-trains its backbone first, as a run of its own),
    build the module, fit, select, test; write the run directory (:class:`~mdrec.rundir.RunDir`) and return the
    metrics. A multi-process run (DDP) runs this in every process: all train and evaluate together, the metrics and
    predictions cover every process's rows, and process 0 alone writes files."""
    check_types(cfg)  # a value of the wrong type fails here, naming its key, not after data preparation
    stage: Stage = hydra.utils.instantiate(cfg.stage)
    baseline: dict[str, float] = {}
    if cfg.get("baseline") is not None:
        check_baseline(cfg, stage)
        baseline = baseline_metrics(cfg)  # first, so that its loggers (a W&B run of its own) finish before this run's
    run_dir = RunDir(Path(cfg.paths.output_dir))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule: MultiDomainDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    schema = datamodule.schema
    cfg = stage.prepare(cfg, datamodule, train)
    module = stage.build(cfg, schema)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = stage.callbacks(instantiate_group(cfg.get("callbacks")), module)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, **stage.trainer_options()
    )
    if trainer.is_global_zero:
        run_dir.write_config(cfg)
        run_dir.write_json(RunDir.PROVENANCE, provenance(int(cfg.seed)))
    for logger in loggers:  # the resolved config: W&B's run config, the CSV logger's hparams.yaml
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_path = resume_path(cfg.get("ckpt_path"), trainer.checkpoint_callback)  # a missing one fails before fitting

    metrics: dict[str, float] = {}
    predictions: dict[str, np.ndarray] = {}
    if stage.step0_candidate:  # the model before fitting: zero-shot, and a candidate of the selection
        metrics.update(evaluate(trainer, module, datamodule, "zeroshot/", test=cfg.test))
        if cfg.test:
            predictions["zeroshot_prob"] = module.test_predictions()["prob"]
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - start
    metrics["val/auc_best"] = float(trainer.callback_metrics.get("val/auc_best", float("nan")))
    stage.after_fit(trainer, module)
    if cfg.test:
        metrics.update(evaluate(trainer, module, datamodule, "", test=True))
        metrics.update(oracle_metrics(datamodule, "test"))
        predictions.update(module.test_predictions(), domains=np.asarray(schema.domains))
    metrics.update(parameter_counts(module.net))
    metrics.update({"time/fit_seconds": fit_seconds, "train/epochs": float(trainer.current_epoch)})
    metrics["seed"] = float(cfg.seed)
    metrics.update(stage.metrics(predictions))
    metrics.update(baseline)
    if trainer.is_global_zero:
        stage.save(run_dir, module)
        write_run_files(run_dir, datamodule, metrics, predictions)
        publish(loggers, metrics, schema.domains, trainer.global_step, run_dir.path)
        if "test/auc" in metrics:
            name = cfg.baseline.net._target_.rsplit(".", 1)[-1] if cfg.get("baseline") is not None else "baseline"
            table = domain_table(metrics, schema.domains, baseline=name)
            log.info("per-domain test metrics (%s):\n%s", run_dir.path, table)
    stage.finish(metrics)
    return metrics


def check_baseline(cfg: DictConfig, stage: Stage) -> None:
    """Refuse a ``baseline=`` the run cannot compare with: without a test, or beside a stage other than train, adapt
    and specialise (a pre-training is a step of an adapt run; an onboarding trains some domains only)."""
    if not cfg.test:
        raise ValueError("baseline= compares test figures, but test=false: drop one of the two")
    if not isinstance(stage, (Train, Adapt, Specialise)):
        raise ValueError(
            "baseline= compares a stage=train, adapt or specialise run with an end-to-end model, but this run's stage "
            f"is {type(stage).__name__}: drop baseline= (or compare in a stage=adapt run of the same data)"
        )


def baseline_metrics(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg.baseline`` (a ``model`` node) end to end on the same data, trainer and seed, on the run's input
    layer without the domain id, as a stage=train run of its own in ``<output_dir>/baseline`` (tagged
    ``baseline``), and return its test metrics, parameter counts and fit time under ``baseline/``
    (``baseline/test/auc/<domain>``, ...)."""
    sub = sub_run_config(cfg, target_of(Train))
    with open_dict(sub):
        if "domain_as_feature" in sub.input:  # the end-to-end models read the domain id through their routing
            sub.input.domain_as_feature, sub.input.domain_dropout = False, 0.0
        sub.paths.output_dir = str(Path(cfg.paths.output_dir) / RunDir.BASELINE)
        sub.baseline = cfg.baseline  # back for a moment: resolved against this run's model and the input above
        sub.model, sub.baseline = OmegaConf.to_container(sub.baseline, resolve=True), None
        sub.tags = [*cfg.tags, "baseline"]
    log.info("baseline=: training %s end to end in %s", cfg.baseline.net._target_, sub.paths.output_dir)
    kept = ("test/", "params/", "time/fit_seconds")
    return {f"baseline/{k}": v for k, v in train(sub).items() if k.startswith(kept)}


def write_run_files(
    run_dir: RunDir, datamodule: MultiDomainDataModule, metrics: dict[str, float], predictions: dict[str, np.ndarray]
) -> None:
    """Write a finished run's ``metrics.json``, ``predictions.npz`` (when tested) and ``data_report.json``."""
    if predictions:
        run_dir.write_predictions(predictions)
    run_dir.write_metrics(metrics)
    report = {
        "domains": list(datamodule.schema.domains),
        "prepared_dir": str(datamodule.prepared_dir),
        "preparation": datamodule.store.report(),
        "unseen_share": {s: datamodule.unseen_shares(s) for s in datamodule.splits},
    }
    run_dir.write_json(RunDir.DATA_REPORT, report)


def evaluate(
    trainer: pl.Trainer, module: RankingModule, datamodule: MultiDomainDataModule, prefix: str, test: bool
) -> dict[str, float]:
    """Validation (and with ``test`` test) metrics of ``module`` as it is, keys ``<prefix>val/...`` and
    ``<prefix>test/...``."""
    out: dict[str, float] = {}
    runs = (("val", trainer.validate), ("test", trainer.test))
    for split, run in runs if test else runs[:1]:
        run(module, datamodule=datamodule, verbose=False)
        out.update({prefix + k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{split}/")})
    return out


def record_failure(out_dir: Path, error: BaseException) -> None:
    """Record why a run failed: ``failure.json`` in ``out_dir`` (the error and its traceback); a W&B run still
    open is finished as failed (the next job of a sweep starts its own). In a multi-process run only process 0
    records (as it alone writes the run's files)."""
    if rank_zero_only.rank != 0:
        return
    RunDir(out_dir).write_failure(error)
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=1)


# the run files a W&B run carries along (offline too; its own config.yaml holds the config): `mdrec-report <W&B
# dir>` reads them there
WANDB_FILES = (RunDir.METRICS, ".hydra/overrides.yaml")


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
