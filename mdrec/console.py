"""What the command lines print: tables and trees rendered with ``rich``, and the third-party chatter they leave
out (:func:`quiet_third_party`, the one place that filters it)."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from rich import box
from rich.console import Console, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

# log records of third-party loggers that every run would print and no run needs: (logger, message pattern)
QUIET_RECORDS = (
    ("pytorch_lightning.utilities.rank_zero", r"💡 Tip: "),  # advertisements for Lightning's cloud products
    ("pytorch_lightning.utilities.rank_zero", r"(GPU available: False, used: False|TPU available: False, using: 0 )"),
    ("lightning_fabric.utilities.seed", r"(\[rank: \d+\] )?Seed set to \d+$"),  # the seed is in config.yaml
)
# warnings every run would show that say nothing about the run: (category, message pattern)
QUIET_WARNINGS = (
    # raised inside Lightning's own pytree helper by torch >= 2.10; nothing a user can change
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # stage=adapt and stage=onboard keep the frozen backbone in eval mode on purpose (batch-norm statistics)
    (UserWarning, r"Found \d+ module\(s\) in eval mode at the start of training"),
)


class _DropMatching(logging.Filter):
    """Drops the records whose message matches ``pattern`` (from its start)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_third_party() -> None:
    """Leave out what ``QUIET_RECORDS`` and ``QUIET_WARNINGS`` list, each by its logger or category and message:
    anything else Lightning, torch or Hydra says still shows. Called once by each command line (idempotent)."""
    for name, pattern in QUIET_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    for category, pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", pattern, category)


def render(renderable: RenderableType) -> str:
    """``renderable`` as plain text (no colours, no width limit, no trailing spaces), for the log and files."""
    buffer = io.StringIO()
    Console(file=buffer, width=100_000, color_system=None, soft_wrap=False).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], footer: Sequence[str] | None = None, left: int = 1
) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned, every column as wide as
    its widest cell; ``footer`` (e.g. a total) below a rule.

    Example:
        >>> print(table(["domain", "rows"], [["a", "10"], ["a much longer name", "2"]], footer=["overall", "12"]))
        domain               rows
        ─────────────────────────
        a                      10
        a much longer name      2
        ─────────────────────────
        overall                12
    """
    grid = Table(box=box.HORIZONTALS, show_edge=False, pad_edge=False)
    for i, name in enumerate(columns):
        grid.add_column(name, justify="left" if i < left else "right", no_wrap=True)
    for i, row in enumerate(rows):
        grid.add_row(*row, end_section=footer is not None and i == len(rows) - 1)
    if footer is not None:
        grid.add_row(*footer)
    return render(grid)


class _Dumper(yaml.SafeDumper):
    """YAML with lists of plain values in flow style (``[256, 128]``), everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    flow = not any(isinstance(v, list | dict) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def config_tree(cfg: DictConfig) -> Tree:
    """The config as a tree: a branch per top-level node (its YAML, resolved; lists of plain values on one line),
    top-level values in the branch's label."""
    tree = Tree("config", guide_style="dim")
    for key in cfg:
        node = cfg[key]
        if isinstance(node, DictConfig):
            branch = tree.add(Text(str(key), style="bold"))
            text = yaml.dump(OmegaConf.to_container(node, resolve=True), Dumper=_Dumper, sort_keys=False)
            branch.add(Syntax(text.rstrip(), "yaml", background_color="default", word_wrap=True))
        else:
            value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            tree.add(Text.assemble((str(key), "bold"), ": ", value if isinstance(value, str) else json.dumps(value)))
    return tree


def print_config(cfg: DictConfig) -> None:
    """Print :func:`config_tree` of ``cfg`` to the terminal (with colours where it has them)."""
    Console().print(config_tree(cfg))
