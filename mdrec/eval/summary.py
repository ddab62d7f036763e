"""Runs of a sweep: their metrics and overrides, grouped, as mean ± spread tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class Run:
    """One finished run: where it is, what it measured, and the Hydra overrides it was launched with."""

    path: Path
    metrics: dict[str, float]
    overrides: dict[str, str]


def load_runs(root: str | Path) -> list[Run]:
    """Every run below ``root`` (a Hydra multirun directory or a single run) that wrote ``metrics.json``."""
    paths = sorted(Path(root).rglob("metrics.json"))
    if not paths:
        raise FileNotFoundError(f"no metrics.json below {root}; point at a run or multirun directory")
    runs = []
    for path in paths:
        overrides_file = path.parent / ".hydra" / "overrides.yaml"
        items = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        overrides = dict(item.split("=", 1) for item in items or [] if "=" in item)
        runs.append(Run(path.parent, json.loads(path.read_text()), overrides))
    return runs


def mean_std(values: Sequence[float]) -> str:
    """``mean ± sample std`` to 4 decimals (± 0 for a single value, n/a for none).

    Example:
        >>> mean_std([0.8, 0.82])
        '0.8100 ± 0.0141'
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.4f} ± {(v.std(ddof=1) if len(v) > 1 else 0.0):.4f}"


def cell(runs: Sequence[Run], key: str) -> str:
    """``mean ± std`` of metric ``key`` over the runs that report it."""
    return mean_std([r.metrics[key] for r in runs if key in r.metrics])


def mean_std_table(runs: Sequence[Run], rows: Sequence[str], columns: Sequence[str]) -> str:
    """A markdown table of ``<metric>[/<column>]`` keys, mean ± std over runs.

    Args:
        runs: the runs (e.g. one per seed).
        rows: metric names, e.g. ``["test/auc", "test/logloss"]``.
        columns: ``""`` for the overall figure, else a domain name (key ``<metric>/<domain>``).

    Example:
        >>> runs = [Run(Path("a"), {"test/auc": 0.8}, {}), Run(Path("b"), {"test/auc": 0.82}, {})]
        >>> print(mean_std_table(runs, ["test/auc"], [""]))
        | metric | overall |
        |---|---|
        | test/auc | 0.8100 ± 0.0141 |
    """
    header = "| metric | " + " | ".join(c or "overall" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for metric in rows:
        keys = [f"{metric}/{col}" if col else metric for col in columns]
        cells = [cell(runs, k) for k in keys]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(groups: dict[tuple[str, ...], list[Run]], by: Sequence[str], keys: Sequence[str]) -> str:
    """A markdown table with one row per group of runs (e.g. per model) and one column per metric key.

    Args:
        groups: runs per group, as :func:`group_runs` returns them.
        by: the override keys the groups were formed by (the first columns' titles).
        keys: full metric keys, e.g. ``["test/auc", "test/auc/d0"]``; each cell is mean ± std over the group.

    Example:
        >>> runs = [Run(Path("a"), {"test/auc": 0.8}, {"model": "star"}), Run(Path("b"), {"test/auc": 0.7}, {})]
        >>> print(comparison_table(group_runs(runs, ["model"]), ["model"], ["test/auc"]))
        | model | runs | test/auc |
        |---|---|---|
        |  | 1 | 0.7000 ± 0.0000 |
        | star | 1 | 0.8000 ± 0.0000 |
    """
    lines = ["| " + " | ".join([*by, "runs", *keys]) + " |", "|---" * (len(by) + 1 + len(keys)) + "|"]
    for values, runs in groups.items():
        cells = [cell(runs, k) for k in keys]
        lines.append("| " + " | ".join([*values, str(len(runs)), *cells]) + " |")
    return "\n".join(lines)


def method_table(methods: Sequence[tuple[str, Sequence[Run], str]], columns: Sequence[str]) -> str:
    """A markdown table with one row per method and one column per domain (``""``: overall).

    Args:
        methods: ``(label, runs, metric)``; the cell reads ``<metric>[/<column>]``, so one set of runs can give
            several rows, e.g. ``("IAK", adapt_runs, "test/auc")``, ``("zero-shot", adapt_runs,
            "zeroshot/test/auc")``, ``("oracle", adapt_runs, "oracle/auc")``.
        columns: ``""`` for the overall figure, else a domain name.

    Example:
        >>> runs = [Run(Path("a"), {"test/auc": 0.8, "zeroshot/test/auc": 0.7}, {})]
        >>> print(method_table([("IAK", runs, "test/auc"), ("zero-shot", runs, "zeroshot/test/auc")], [""]))
        | method | metric | runs | overall |
        |---|---|---|---|
        | IAK | test/auc | 1 | 0.8000 ± 0.0000 |
        | zero-shot | zeroshot/test/auc | 1 | 0.7000 ± 0.0000 |
    """
    header = "| method | metric | runs | " + " | ".join(c or "overall" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 3) + "|"]
    for label, runs, metric in methods:
        keys = [f"{metric}/{c}" if c else metric for c in columns]
        cells = [cell(runs, k) for k in keys]
        lines.append(f"| {label} | {metric} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> dict[tuple[str, ...], list[Run]]:
    """Runs grouped by the values of the override ``keys`` (a missing override groups as ``""``)."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides.get(k, "") for k in keys), []).append(run)
    return dict(sorted(groups.items()))
