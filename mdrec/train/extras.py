"""Conveniences of ``mdrec-train`` around each job (the lightning-hydra-template's ``extras``)."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.prompt import Prompt

from mdrec.console import print_config


class Extras:
    """What ``mdrec-train`` does for each job before the run starts (the ``extras`` config node).

    Args:
        print_config: print the resolved config as a tree (:func:`mdrec.console.config_tree`).
        enforce_tags: a run of an experiment config (``experiment=<name>``) must carry ``tags`` (they name and
            group it in W&B and in ``config.yaml``): with none, a single run in a terminal asks for them; any
            other run (a multirun, no terminal) fails before any work, saying how to set them.
    """

    def __init__(self, print_config: bool = True, enforce_tags: bool = True) -> None:
        self.print_config = print_config
        self.enforce_tags = enforce_tags

    def apply(self, cfg: DictConfig, experiment: str | None, can_ask: bool) -> None:
        """Check and complete ``cfg`` (its ``tags``), then print it as configured.

        Args:
            cfg: the job's config; ``cfg.tags`` is set here when the user is asked for tags.
            experiment: the ``experiment`` config the job was composed with (None: none).
            can_ask: whether the user can be asked (a single run with a terminal on its standard input).

        Raises:
            ValueError: ``enforce_tags`` and an experiment without tags, and no one to ask.
        """
        if self.enforce_tags and experiment is not None and not cfg.get("tags"):
            if not can_ask:
                raise ValueError(
                    f"experiment={experiment} sets no tags and extras.enforce_tags is true: add `tags: [...]` to "
                    f"its config (experiment/{experiment}.yaml), pass tags=[name,...], or set "
                    "extras.enforce_tags=false"
                )
            answer = Prompt.ask(f"experiment={experiment} has no tags; enter tags, comma-separated", default="dev")
            cfg.tags = [tag.strip() for tag in answer.split(",") if tag.strip()] or ["dev"]
        if self.print_config:
            print_config(cfg)
