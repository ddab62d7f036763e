"""An adapted run's directory on disk: the backbone (``backbone.pt`` + ``backbone.yaml``), the run's config
(``config.yaml``, whose ``adapter`` node built the adapter) and the adapter's weights (``adapter.pt``).

A pretrain run writes the backbone only; an adapt run writes all three, so it rebuilds on its own (onboarding
and serving start from it). Loading is strict: a mismatch names the missing and unexpected keys and the shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mdrec.adapters.base import AdaptedNet, Adapter
from mdrec.data.schema import Schema

WEIGHTS, CONFIG, ADAPTER, RUN_CONFIG = "backbone.pt", "backbone.yaml", "adapter.pt", "config.yaml"


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
            f"the weights in {source} do not fit the {type(module).__name__} this config builds: "
            f"missing keys {missing}, unexpected keys {unexpected}, shape differences (saved, built) "
            f"{dict(sorted(shapes.items()))}. Build it with the config and data the file was made with (the run's "
            "backbone.yaml / config.yaml), or point at the right run"
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


def adapter_factory(adapter_cfg: DictConfig) -> Callable[[Schema, nn.Module], Adapter]:
    """The adapter class of an ``adapter`` config node with its options bound: ``factory(schema, backbone)``."""
    return hydra.utils.instantiate(adapter_cfg, _partial_=True)


def build_adapter(adapter_cfg: DictConfig | None, schema: Schema, backbone: nn.Module) -> Adapter | None:
    """The adapter an ``adapter`` config node builds on ``backbone`` for ``schema`` (None for a null node)."""
    return adapter_factory(adapter_cfg)(schema, backbone) if adapter_cfg else None


def load_adapted(directory: Path, schema: Schema) -> AdaptedNet:
    """The adapted network an adapt run wrote into ``directory``, rebuilt for ``schema``, loaded strictly, frozen."""
    backbone = load_backbone(directory, schema)
    adapter = build_adapter(OmegaConf.load(directory / RUN_CONFIG).get("adapter"), schema, backbone)
    if adapter is None or not (directory / ADAPTER).exists():
        raise FileNotFoundError(f"{directory} holds no adapter ({ADAPTER}): point at a run made with stage=adapt")
    load_state_strict(adapter, torch.load(directory / ADAPTER, weights_only=True), str(directory / ADAPTER))
    return AdaptedNet(schema, backbone, adapter, freeze=["*"])
