"""Mean and spread of run metrics over seeds, as a markdown table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def load_runs(root: str | Path) -> list[dict[str, float]]:
    """Every ``metrics.json`` below ``root`` (a Hydra multirun directory or a list of runs)."""
    paths = sorted(Path(root).rglob("metrics.json"))
    if not paths:
        raise FileNotFoundError(f"no metrics.json below {root}; point at a run or multirun directory")
    return [json.loads(p.read_text()) for p in paths]


def mean_std_table(runs: Sequence[dict[str, float]], rows: Sequence[str], columns: Sequence[str]) -> str:
    """A markdown table of ``<metric>[/<column>]`` keys, mean ± std (sample) over runs.

    Args:
        runs: metrics of each run (e.g. one per seed).
        rows: metric names, e.g. ``["test/auc", "test/logloss"]``.
        columns: ``""`` for the overall figure, else a domain name (key ``<metric>/<domain>``).

    Example:
        >>> print(mean_std_table([{"test/auc": 0.8}, {"test/auc": 0.82}], ["test/auc"], [""]))
        | metric | overall |
        |---|---|
        | test/auc | 0.8100 ± 0.0141 |
    """
    header = "| metric | " + " | ".join(c or "overall" for c in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for metric in rows:
        cells = []
        for col in columns:
            key = f"{metric}/{col}" if col else metric
            values = np.array([r[key] for r in runs if key in r], dtype=np.float64)
            if len(values) == 0:
                cells.append("n/a")
            else:
                spread = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"{values.mean():.4f} ± {spread:.4f}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
