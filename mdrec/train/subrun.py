"""The config of a run that an mdrec run starts inside itself: the pre-training of an adapt run, the onboarding gate's
from-scratch model, a ``baseline=`` model."""

from __future__ import annotations

import copy

from omegaconf import DictConfig, open_dict

from mdrec.train.domain_steps import DOMAIN_STEP_CALLBACKS


def sub_run_config(cfg: DictConfig, stage_target: str) -> DictConfig:
    """A copy of ``cfg`` whose stage is ``stage_target`` (a ``_target_``), with no checkpoint to resume (the outer
    run's is not the sub-run's), no ``baseline`` (the outer run trains its own once) and no per-domain step callbacks
    (the sub-run trains another model than the outer run's: a backbone without per-domain parameters, a model from
    scratch, a baseline at its defaults). The caller changes the rest under ``open_dict``."""
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.stage = {"_target_": stage_target}
        sub.ckpt_path = None
        sub.baseline = None
        for key in DOMAIN_STEP_CALLBACKS if sub.get("callbacks") else ():
            sub.callbacks.pop(key, None)
    return sub
