"""Pre-trained backbones on disk: what a pretrain run writes, strict loading, and the store keyed by config.

A pretrain run directory holds ``backbone.pt`` (the backbone's state dict, from the best validation checkpoint)
and ``backbone.yaml`` (the backbone's config, so an adapt run rebuilds the same architecture). The store under
``paths.pretrained_dir`` keeps one such directory per key: the hash of everything that determines the backbone
(data, backbone, model and optimiser, trainer, early stopping, seed). An adapt sweep finds its backbone there and
pre-trains it only once.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from mdrec.data.schema import Schema

WEIGHTS, CONFIG = "backbone.pt", "backbone.yaml"
# the config nodes that determine a pre-trained backbone
KEY_NODES = ("data", "backbone", "model", "trainer", "callbacks.early_stopping", "seed")


def pretrain_key(cfg: DictConfig) -> str:
    """A short hash of the config nodes that determine the pre-trained backbone (``KEY_NODES``).

    Paths (``paths.*``, e.g. the run's own output directory that ``trainer.default_root_dir`` points to) enter as
    their names, not their values: every run of a sweep, wherever it writes, finds the same backbone.
    """
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for name in cfg.get("paths") or {}:
            cfg.paths[name] = f"<paths.{name}>"
    parts = {node: _plain(OmegaConf.select(cfg, node)) for node in KEY_NODES}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: object) -> object:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def save_backbone(directory: Path, backbone: nn.Module, backbone_cfg: DictConfig) -> None:
    """Write ``backbone.pt`` and ``backbone.yaml`` into ``directory``."""
    torch.save(backbone.state_dict(), directory / WEIGHTS)
    (directory / CONFIG).write_text(OmegaConf.to_yaml(backbone_cfg, resolve=True))


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; on any mismatch raise listing missing and unexpected keys and shape changes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    common = set(own) & set(state)
    shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in common if state[k].shape != own[k].shape}
    if missing or unexpected or shapes:
        raise ValueError(
            f"the pre-trained weights in {source} do not fit the {type(module).__name__} this config builds: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape differences (saved, built) "
            f"{dict(sorted(shapes.items()))}. Pre-train with the same backbone and data, or point at the right run"
        )
    module.load_state_dict(state)


def load_backbone(directory: Path, schema: Schema) -> nn.Module:
    """The backbone a pretrain run wrote into ``directory``, rebuilt from its config for ``schema`` and loaded."""
    weights, config = directory / WEIGHTS, directory / CONFIG
    if not weights.exists() or not config.exists():
        raise FileNotFoundError(
            f"{directory} holds no pre-trained backbone ({WEIGHTS} and {CONFIG}); "
            "point stage.pretrained at a run made with stage=pretrain, or leave it null to pre-train one"
        )
    backbone = hydra.utils.instantiate(OmegaConf.load(config), _partial_=True)(schema=schema)
    load_state_strict(backbone, torch.load(weights, weights_only=True), str(weights))
    return backbone
