"""The store of pre-trained backbones, keyed by config (the files of a run: :class:`mdrec.rundir.RunDir`).

A pretrain run directory holds ``backbone.pt`` (the backbone's state dict, from the best validation checkpoint)
and ``backbone.yaml`` (the backbone's config, so an adapt run rebuilds the same architecture). The store under
``paths.pretrained_dir`` keeps one such directory per key: the hash of everything that determines the backbone
(data, backbone with its input layer, model and optimiser, stage, trainer, early stopping, seed). An adapt sweep finds
its backbone there and pre-trains it only once. A stage=specialise run keeps its end-to-end network there too, as the
stage=train run directory that trained it.
"""

from __future__ import annotations

import copy
import hashlib
import json

from omegaconf import DictConfig, OmegaConf, open_dict

# the config nodes that determine a pre-trained model (the stage: a stage=pretrain backbone or a stage=train network)
KEY_NODES = (
    "data",
    "backbone",
    "model",
    "stage",
    "trainer",
    "callbacks.early_stopping",
    "callbacks.model_checkpoint",
    "seed",
)
# trainer options that change what a run shows, not the backbone it trains
DISPLAY_ONLY = ("enable_progress_bar", "log_every_n_steps")


def pretrain_key(cfg: DictConfig) -> str:
    """A short hash of the config nodes that determine the pre-trained backbone (``KEY_NODES``).

    Paths (``paths.*``, e.g. the run's own output directory that ``trainer.default_root_dir`` points to) enter as
    their names, not their values: every run of a sweep, wherever it writes, finds the same backbone; trainer
    options that change only what a run shows (``DISPLAY_ONLY``) are left out.
    """
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for name in cfg.get("paths") or {}:
            cfg.paths[name] = f"<paths.{name}>"
        for name in DISPLAY_ONLY:
            cfg.trainer.pop(name, None)
    parts = {node: plain_value(OmegaConf.select(cfg, node)) for node in KEY_NODES}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plain_value(value: object) -> object:
    """A config value as plain Python (containers resolved), for comparing and hashing."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
