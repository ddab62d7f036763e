"""A run directory: the one place that knows its file names and how each file is written and read back.

A run writes ``config.yaml`` (the resolved config), ``provenance.json``, ``metrics.json``, ``predictions.npz`` (when
tested), ``data_report.json`` and, by stage, ``backbone.pt`` + ``backbone.yaml`` (the backbone and the config that
rebuilds it) and ``adapter.pt``; a failed run leaves ``failure.json``; Lightning writes ``checkpoints/``; the serving
tools add ``serving.pt``. Loading is strict: a mismatch names the missing and unexpected keys and the shapes.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mdrec.adapters.base import AdaptedNet, Adapter, AdapterFactory
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone

# what a config read back from a file may instantiate: mdrec's own classes and the optimisers configs name
SAFE_TARGET_PREFIXES = ("mdrec.",)
SAFE_TARGETS = frozenset(f"torch.optim.{name}" for name in ("Adam", "AdamW", "SGD", "Adagrad", "RMSprop"))


def check_targets(value: Any, source: Path, key: str) -> None:
    """Refuse a config value (resolved, plain containers) that names a ``_target_`` outside the allow-list, at any
    nesting level: instantiating it could run any code. The error names the file, the key and the target."""
    if isinstance(value, dict):
        target = value.get("_target_")
        if target is not None and not (
            isinstance(target, str) and (target.startswith(SAFE_TARGET_PREFIXES) or target in SAFE_TARGETS)
        ):
            where = f"{key}._target_" if key else "_target_"
            raise ValueError(
                f"{source}: {where} is {target!r}, which mdrec does not instantiate from a file (only mdrec.* "
                f"classes and {sorted(SAFE_TARGETS)}): the file was not written by mdrec or was edited; delete it, or "
                "rebuild the run from a config you trust"
            )
        for k, v in value.items():
            check_targets(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_targets(v, source, f"{key}[{i}]")


def safe_instantiate(node: DictConfig, source: Path, key: str, partial: bool = False) -> Any:
    """``hydra.utils.instantiate`` of a config node read from ``source``, its targets checked first (resolved, at
    every level: :func:`check_targets`)."""
    value = OmegaConf.to_container(node, resolve=True)
    check_targets(value, source, key)
    return hydra.utils.instantiate(OmegaConf.create(value), _partial_=partial)


@dataclass(frozen=True)
class RunDir:
    """The files of one run, under ``path``."""

    path: Path

    CONFIG = "config.yaml"
    PROVENANCE = "provenance.json"
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.npz"
    DATA_REPORT = "data_report.json"
    FAILURE = "failure.json"
    BACKBONE = "backbone.pt"
    BACKBONE_CONFIG = "backbone.yaml"
    ADAPTER = "adapter.pt"
    SERVING = "serving.pt"
    CHECKPOINTS = "checkpoints"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def file(self, name: str) -> Path:
        """``path / name``."""
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    # --- the config, metrics and other JSON records -------------------------------------------------------------
    def write_config(self, cfg: DictConfig) -> None:
        """``config.yaml``: ``cfg`` resolved (the directory is made if missing)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(self.CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def read_config(self) -> DictConfig:
        """``config.yaml`` as written by :meth:`write_config`."""
        return self._load_yaml(self.CONFIG)

    def write_json(self, name: str, value: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(name).write_text(json.dumps(value, indent=2, sort_keys=name == self.METRICS))

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads(self.file(name).read_text())

    def write_metrics(self, metrics: Mapping[str, float]) -> None:
        """``metrics.json``; a run that finishes is no longer a failure (``failure.json`` goes)."""
        self.write_json(self.METRICS, metrics)
        self.file(self.FAILURE).unlink(missing_ok=True)

    def read_metrics(self) -> dict[str, float]:
        return self.read_json(self.METRICS)

    def write_failure(self, error: BaseException) -> None:
        """``failure.json``: the error, its traceback and the time."""
        record = {
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.write_json(self.FAILURE, record)

    # --- predictions ------------------------------------------------------------------------------------------------
    def write_predictions(self, predictions: Mapping[str, np.ndarray]) -> None:
        """``predictions.npz``: ``prob [n, T]``, ``label [n, T_all]``, ``domain [n]`` of the test rows, ``domains``
        (names in id order) and optionally ``zeroshot_prob [n, T]``."""
        np.savez_compressed(self.file(self.PREDICTIONS), **predictions)

    def read_predictions(self) -> dict[str, np.ndarray]:
        """``predictions.npz`` (arrays only: no pickled objects are loaded)."""
        path = self.file(self.PREDICTIONS)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the run was not tested (test=false) or did not finish")
        with np.load(path, allow_pickle=False) as data:
            return dict(data)

    # --- backbone and adapter ---------------------------------------------------------------------------------------
    def save_backbone(self, backbone: nn.Module, backbone_cfg: DictConfig) -> None:
        """``backbone.pt`` (the state dict) and ``backbone.yaml`` (the config node that rebuilds it)."""
        torch.save(backbone.state_dict(), self.file(self.BACKBONE))
        self.file(self.BACKBONE_CONFIG).write_text(OmegaConf.to_yaml(backbone_cfg, resolve=True))

    def has_backbone(self) -> bool:
        return self.exists(self.BACKBONE) and self.exists(self.BACKBONE_CONFIG)

    def backbone_config(self) -> DictConfig:
        """``backbone.yaml``."""
        if not self.has_backbone():
            raise FileNotFoundError(
                f"{self.path} holds no pre-trained backbone ({self.BACKBONE} and {self.BACKBONE_CONFIG}); point "
                "stage.pretrained at a run made with stage=pretrain, or leave it null to pre-train one"
            )
        return self._load_yaml(self.BACKBONE_CONFIG)

    def load_backbone(self, schema: Schema) -> Backbone:
        """The backbone of ``backbone.pt`` + ``backbone.yaml``, rebuilt for ``schema`` and loaded strictly."""
        config = self.file(self.BACKBONE_CONFIG)
        backbone = safe_instantiate(self.backbone_config(), config, "", partial=True)(schema)
        load_state_strict(backbone, self._load_tensors(self.BACKBONE), str(self.file(self.BACKBONE)))
        return backbone

    def save_adapter(self, adapter: Adapter) -> None:
        torch.save(adapter.state_dict(), self.file(self.ADAPTER))

    def instantiate(self, key: str) -> Any:
        """The object of ``config.yaml``'s node ``key`` (e.g. ``data``), its targets checked first."""
        return safe_instantiate(self.read_config()[key], self.file(self.CONFIG), key)

    def adapter_config(self) -> DictConfig | None:
        """The ``adapter`` node of ``config.yaml`` (None: the run had no adapter)."""
        return self.read_config().get("adapter")

    def adapter_factory(self) -> AdapterFactory:
        """The adapter class of ``config.yaml``'s ``adapter`` node with its options bound: ``factory(schema,
        backbone)``."""
        adapter_cfg = self.adapter_config()
        if adapter_cfg is None:
            raise FileNotFoundError(f"{self.file(self.CONFIG)} has no adapter: point at a run made with stage=adapt")
        return safe_instantiate(adapter_cfg, self.file(self.CONFIG), "adapter", partial=True)

    def load_adapted(self, schema: Schema) -> AdaptedNet:
        """The adapted network of an adapt (or onboard) run, rebuilt for ``schema``, loaded strictly, its backbone
        frozen."""
        backbone = self.load_backbone(schema)
        if self.adapter_config() is None or not self.exists(self.ADAPTER):
            raise FileNotFoundError(
                f"{self.path} holds no adapter ({self.ADAPTER}): point at a run made with stage=adapt"
            )
        adapter = self.adapter_factory()(schema, backbone)
        load_state_strict(adapter, self._load_tensors(self.ADAPTER), str(self.file(self.ADAPTER)))
        return AdaptedNet(schema, backbone, adapter, freeze=["*"])

    # --- reading ----------------------------------------------------------------------------------------------------
    def _load_yaml(self, name: str) -> DictConfig:
        path = self.file(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: give the directory of a finished mdrec run")
        value = OmegaConf.load(path)
        if not isinstance(value, DictConfig):
            raise ValueError(f"{path} holds a {type(value).__name__}, not a mapping of config keys")
        return value

    def _load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return torch.load(self.file(name), map_location="cpu", weights_only=True)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; on any mismatch raise listing missing and unexpected keys and shape changes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    common = set(own) & set(state)
    shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in common if state[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        raise ValueError(
            f"the weights in {source} do not fit the {type(module).__name__} this config builds: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape differences (saved, built) "
            f"{dict(sorted(shapes.items()))}. Build it with the config and data the file was made with (the run's "
            "backbone.yaml / config.yaml), or point at the right run"
        )
    module.load_state_dict(state)
