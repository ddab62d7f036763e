"""A finished run's selected model evaluated again: on either split of its own data, or on other data on the same
schema (``mdrec-eval``, :func:`evaluate_run`).

Any run directory: a stage=train run of any model (its best validation checkpoint), a stage=pretrain run
(``backbone.pt``), a stage=adapt or stage=onboard run (``backbone.pt`` + ``adapter.pt``, each domain's selection).
Everything is read through :class:`~mdrec.rundir.RunDir`: checksummed weights, ``config.yaml`` instantiated only
through the target allow-list.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from mdrec.conf import CONFIG_DIR
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.rundir import RunDir, safe_instantiate
from mdrec.train.checkpoint import load_selected
from mdrec.train.module import RankingModule
from mdrec.train.run import oracle_metrics
from mdrec.train.typecheck import check_types

SPLITS = ("val", "test")


def compose_eval(run_dir: RunDir, overrides: Sequence[str], config_name: str = "eval") -> DictConfig:
    """``mdrec/conf/<config_name>.yaml`` (``eval``, or ``drift``) with ``overrides``; its ``data`` is the run's own
    data node (``config.yaml``'s, as the option ``data=run``) unless an override picks another data config
    (``data=<option>``); ``data.<key>=...`` changes either."""
    recorded = run_dir.read_config()
    data, seed = recorded.get("data"), recorded.get("seed")
    if not isinstance(data, DictConfig) or not isinstance(seed, int):
        raise ValueError(
            f"{run_dir.file(RunDir.CONFIG)} has no data node or no integer seed: give the directory of an mdrec run"
        )
    ConfigStore.instance().store(group="data", name="run", node=data)
    own = [f"seed={seed}", f"stage.adapted={run_dir.path.resolve()}"]  # the user's overrides come after: they win
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=[*own, *overrides])


def job_config(run_dir: RunDir, overrides: Sequence[str], config_name: str) -> DictConfig:
    """:func:`compose_eval`'s config, checked before any work (``split``, the constructors' types), with its
    ``paths.output_dir`` set (``output_dir``, default ``<run dir>/<config_name>/<time>``) and torch's threads.

    Raises:
        ValueError: a split other than ``val`` or ``test``; TypeError: a value of the wrong type.
    """
    cfg = compose_eval(run_dir, overrides, config_name)
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split} is not one of {SPLITS}")
    check_types(cfg)
    out = Path(cfg.output_dir or run_dir.path / config_name / time.strftime("%Y-%m-%d_%H-%M-%S"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    return cfg


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_run` measured: the metrics (keys as a run's own: ``test/auc``, ``test/auc/<domain>``,
    ...), the split, the domains in id order, and where it wrote them."""

    metrics: dict[str, float]
    split: str
    domains: list[str]
    output_dir: Path


def evaluate_run(run_path: Path, overrides: Sequence[str]) -> Evaluation:
    """Evaluate the model of the run in ``run_path`` on ``split`` of the data ``overrides`` compose
    (:func:`compose_eval`); write ``metrics.json`` (``<split>/...`` keys; ``oracle/...`` for synthetic data) and
    the eval's ``config.yaml`` into ``output_dir`` (default ``<run dir>/eval/<time>``).

    Raises:
        ValueError: a bad split, data on other domains than the run's, or a file refused by :mod:`mdrec.rundir`.
    """
    run_dir = RunDir(run_path)
    cfg = job_config(run_dir, overrides, "eval")
    out = Path(cfg.paths.output_dir)
    datamodule = prepared_data(run_dir, cfg)
    schema = datamodule.schema
    check_domains(run_dir, schema)
    model_cfg = run_dir.read_config().model
    options = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k != "net"])
    module_factory = safe_instantiate(options, run_dir.file(RunDir.CONFIG), "model", partial=True)
    module: RankingModule = module_factory(net=load_selected(run_dir, schema), schema=schema)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer)
    (trainer.validate if cfg.split == "val" else trainer.test)(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{cfg.split}/")}
    metrics.pop("val/auc_best", None)  # a training figure
    metrics.update(oracle_metrics(datamodule, cfg.split))
    result = RunDir(out)
    result.write_config(cfg)
    result.write_metrics(metrics)
    return Evaluation(metrics, cfg.split, list(schema.domains), out)


def prepared_data(run_dir: RunDir, cfg: DictConfig) -> MultiDomainDataModule:
    """The data of ``cfg.data`` (from the run's ``config.yaml`` or a data option: its targets checked), prepared and
    set up."""
    datamodule: MultiDomainDataModule = safe_instantiate(cfg.data, run_dir.file(RunDir.CONFIG), "data")
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def check_domains(run_dir: RunDir, schema: Schema) -> None:
    """Refuse data whose domains (names, in id order) are not the run's (its ``data_report.json``): each domain's
    rows would go through another domain's parameters."""
    if not run_dir.exists(RunDir.DATA_REPORT):
        return
    domains = run_dir.read_json(RunDir.DATA_REPORT).get("domains")
    if domains is not None and list(domains) != list(schema.domains):
        raise ValueError(
            f"the data's domains {list(schema.domains)} are not the run's {domains} "
            f"({run_dir.file(RunDir.DATA_REPORT)}): evaluate on data with the same domains in the same order (a "
            "tabular data config lists them in data.source.spec.domains)"
        )
