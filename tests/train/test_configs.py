"""Every config option composes and instantiates; the tabular and W&B paths run end to end."""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import hydra
import numpy as np
import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.train.run import train
from mdrec.train.typecheck import check_types
from tests.helpers import CONF_DIR, TrainCfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# tabular needs the user's files; aligned, partner and partner_fresh a run's encoding (tests/train/test_onboard.py,
# tests/test_readme.py)
NEEDS_FILES = ("tabular", "aligned", "partner", "partner_fresh")


@pytest.mark.parametrize("data", [d for d in options("data") if d not in NEEDS_FILES])
def test_data_options_instantiate(train_cfg: TrainCfg, data: str) -> None:
    dm = hydra.utils.instantiate(train_cfg([f"data={data}"]).data)
    assert isinstance(dm, MultiDomainDataModule) and dm.batch_size > 0


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_and_callbacks_instantiate(train_cfg: TrainCfg, trainer: str) -> None:
    cfg = train_cfg([f"trainer={trainer}", "trainer.accelerator=cpu"])
    for c in cfg.callbacks.values():
        hydra.utils.instantiate(c)
    assert hydra.utils.instantiate(cfg.trainer, logger=False).max_epochs == cfg.trainer.max_epochs


def test_tabular_files_train_end_to_end(tmp_path: Path, train_cfg: TrainCfg) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3000), ("val", 600), ("test", 600)):
        with (tmp_path / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user", "item", "price", "site", "click"])
            for _ in range(n):
                item = int(rng.integers(0, 50))
                users = 200 if split == "train" else 250  # a fifth of val/test users are new
                w.writerow(
                    [
                        f"u{rng.integers(0, users)}",
                        f"i{item}",
                        f"{rng.random():.3f}",
                        rng.choice(["web", "app"]),
                        int(rng.random() < 0.2 + 0.6 * (item % 2)),
                    ]
                )
    files = [f"data.source.{s}_files=[{tmp_path / f'{s}.csv'}]" for s in ("train", "val", "test")]
    cfg = train_cfg(
        [
            "data=tabular",
            "data.source.name=shop",
            *files,
            "data.source.spec.sparse=[user,item]",
            "data.source.spec.dense=[price]",
            "data.source.spec.domain=site",
            "data.source.spec.labels=[click]",
            "data.source.spec.user=user",
            "trainer.max_epochs=3",
        ]
    )
    metrics = train(cfg)
    assert {"test/auc/app", "test/auc/web", "test/gauc"} <= metrics.keys()
    assert metrics["test/auc"] > 0.75  # the click depends on the item's parity only
    unseen = json.loads((tmp_path / "run" / "data_report.json").read_text())["unseen_share"]
    for site in ("app", "web"):
        assert unseen["train"]["user"][site] == 0.0
        assert 0.12 < unseen["test"]["user"][site] < 0.28  # about 50 of 250 test users never trained
        assert unseen["test"]["item"][site] == 0.0


def test_wandb_logger_works_offline(tmp_path: Path, train_cfg: TrainCfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(train_cfg(["logger=wandb", "debug=limit", "trainer.max_epochs=1"]))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


@pytest.mark.parametrize(
    "override", [f"experiment={e}" for e in options("experiment")] + [f"debug={d}" for d in options("debug")]
)
def test_experiment_and_debug_files_compose(train_cfg: TrainCfg, override: str) -> None:
    cfg = train_cfg([override])
    check_types(cfg)
    net = cfg.model.net  # every key a recipe sets is an argument of the network's constructor
    arguments = inspect.signature(hydra.utils.get_object(net._target_)).parameters
    unknown = {k for k in net if not k.startswith("_")} - set(arguments)
    assert not unknown, f"model.net keys {sorted(unknown)} are not arguments of {net._target_}"
    assert isinstance(hydra.utils.instantiate(cfg.data), MultiDomainDataModule)
    hydra.utils.instantiate(cfg.trainer, logger=False)


# the options that are another option with a switch flipped: the values they set apart from the constructor's defaults
VARIANTS = {
    ("model", "epnet"): {"ppnet": False},
    ("model", "ppnet"): {"epnet": False},
    ("input", "pooled"): {"domain_as_feature": True, "domain_dropout": 0.1},
}
# where each group's network node sits in the composed config
NODES = {"model": "model.net", "backbone": "backbone", "input": "input"}


def plain(value: object) -> object:
    """A config value or a constructor default as plain Python: sequences as lists."""
    if isinstance(value, ListConfig):
        value = OmegaConf.to_object(value)
    return [plain(v) for v in value] if isinstance(value, list | tuple) else value


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in NODES for o in options(g)])
def test_option_values_are_the_constructor_defaults(train_cfg: TrainCfg, group: str, option: str) -> None:
    """The config mirrors the constructor: every value an option gives its network (nested networks and inputs
    aside, tested as their own groups) is the constructor's default, so ``MMoE(schema)`` is ``model=mmoe``.
    Paper-specific sizes live in experiment= files."""
    node = OmegaConf.select(train_cfg([f"{group}={option}"]), NODES[group])
    parameters = inspect.signature(hydra.utils.get_object(node._target_)).parameters
    defaults = {k: plain(p.default) for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
    defaults |= VARIANTS.get((group, option), {})
    values = {k: plain(v) for k, v in node.items() if not k.startswith("_") and not isinstance(v, DictConfig)}
    differing = {k: (v, defaults.get(k, "no default")) for k, v in values.items() if defaults.get(k, ...) != v}
    assert not differing, f"{group}={option}: config value vs {node._target_} default: {differing}"


@pytest.mark.parametrize("model", options("model"))
def test_every_model_option_trains_one_batch(train_cfg: TrainCfg, model: str) -> None:
    metrics = train(train_cfg([f"model={model}", "debug=fdr"]))
    assert 0.0 <= metrics["test/auc"] <= 1.0


@pytest.mark.parametrize("adapter", options("adapter"))
def test_every_adapter_option_adapts_one_batch(train_cfg: TrainCfg, adapter: str) -> None:
    freeze = ["stage.freeze=[]", "stage.select_per_domain=false"] if adapter == "none" else []
    metrics = train(train_cfg(["stage=adapt", f"adapter={adapter}", "debug=fdr", *freeze]))
    assert 0.0 <= metrics["test/auc"] <= 1.0 and "zeroshot/test/auc" in metrics
