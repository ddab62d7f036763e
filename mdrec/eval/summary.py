"""Runs of a sweep: their metrics and overrides, grouped, as mean ± spread tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mdrec.rundir import RunDir


@dataclass(frozen=True)
class Run:
    """One finished run: where it is, what it measured, the Hydra overrides it was launched with, and its resolved
    config flattened to dotted keys (:func:`config_of`; empty when it records none)."""

    path: Path
    metrics: dict[str, float]
    overrides: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """A run that raised: where it is, its error line, and the Hydra overrides it was launched with."""

    path: Path
    error: str
    overrides: dict[str, str]


def overrides_of(run_dir: Path) -> dict[str, str]:
    """The ``key=value`` overrides of ``run_dir/.hydra/overrides.yaml`` (none for a run Hydra did not launch;
    items without ``=``, such as ``~key`` deletions, are left out).

    Raises:
        ValueError: the file is not YAML, or not a list of strings (Hydra writes one); the error names the file.
    """
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    remedy = "Hydra writes a list of key=value strings: fix the file, or delete it (the run then has no overrides)"
    try:
        items = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{path} is not valid YAML ({reason}). {remedy}") from None
    items = items if items is not None else []
    if not isinstance(items, list):
        raise ValueError(f"{path} holds a {type(items).__name__}, not a list of overrides. {remedy}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"{path}: item {i} is {item!r}, not a key=value string. {remedy}")
    return dict(item.split("=", 1) for item in items if "=" in item)


def config_of(run_dir: Path) -> dict[str, Any]:
    """The resolved config of the run in ``run_dir`` (``config.yaml``; in a W&B run's ``files/``, W&B's copy, whose
    values it unwraps) as ``{dotted key: value}`` (lists are values); ``{}`` when there is none, or it is not a
    YAML mapping (the report then says how many runs record no config).

    Example:
        >>> _ = (tmp_dir / "config.yaml").write_text("{seed: 1, data: {batch_size: 64, sizes: [1, 2]}}")
        >>> config_of(tmp_dir)
        {'seed': 1, 'data.batch_size': 64, 'data.sizes': [1, 2]}
    """
    path = run_dir / RunDir.CONFIG
    try:
        value = yaml.safe_load(path.read_text()) if path.exists() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    if not isinstance(value, dict):
        return {}
    if "_wandb" in value:  # W&B's copy: {key: {value: ..., desc: ...}}
        value = {k: v["value"] for k, v in value.items() if k != "_wandb" and isinstance(v, dict) and "value" in v}
    return _flatten(value, "")


def _flatten(value: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        out.update(_flatten(item, f"{name}.") if isinstance(item, dict) and item else {name: item})
    return out


def run_dirs(root: str | Path, marker: str) -> list[Path]:
    """The directories below ``root`` that hold ``marker``, in path order.

    A directory inside a run directory is not a run of the sweep: a W&B run's copies of the run's files
    (``files/metrics.json``), a ``baseline=`` run or a gate's scratch run. Such a directory is skipped when a
    directory above it (``root`` included) holds ``marker``, a Hydra job's ``.hydra`` or a failed run's
    ``failure.json``, so a run counts once whether ``root`` is a sweep directory or a directory of W&B runs, and a
    failed run's finished baseline does not count at all.
    """
    root = Path(root)
    dirs = sorted((p.parent for p in root.rglob(marker)), key=_natural)
    found = set(dirs)

    def inside_a_run(d: Path) -> bool:
        above = [p for p in d.parents if p == root or root in p.parents]
        return any(p in found or (p / ".hydra").is_dir() or (p / RunDir.FAILURE).exists() for p in above)

    return [d for d in dirs if not inside_a_run(d)]


def _natural(path: Path) -> list[tuple[int, str]]:
    """Sort key that orders numbered directories by number (Hydra's job 2 before job 10)."""
    return [(0, f"{int(part):012d}") if part.isdigit() else (1, part) for part in path.parts]


def read_run(run_dir: Path) -> Run | Failure:
    """The finished run in ``run_dir`` (it holds ``metrics.json``), or, when its ``metrics.json`` is malformed (not
    JSON, not a mapping, a value not a number), a :class:`Failure` whose error says why, naming the file, the key
    and the value.

    Raises:
        ValueError: its ``.hydra/overrides.yaml`` is malformed (:func:`overrides_of`).
    """
    overrides = overrides_of(run_dir)
    try:
        return Run(run_dir, RunDir(run_dir).read_metrics(), overrides, config_of(run_dir))
    except ValueError as error:
        return Failure(run_dir, str(error), overrides)


def load_sweep(root: str | Path) -> tuple[list[Run], list[Failure]]:
    """Every run below ``root`` (a Hydra multirun directory, a single run, or W&B run directories), each file read
    once: the runs with a well-formed ``metrics.json``, and, in path order, those that did not give metrics: runs
    that raised (``failure.json``, written by ``mdrec-train``) and did not finish later (a resumed run's
    ``metrics.json`` wins), and runs whose ``metrics.json`` is malformed (:func:`read_run`). A malformed
    ``failure.json`` is listed with the reason.

    Raises:
        ValueError: a run's ``.hydra/overrides.yaml`` is malformed (:func:`overrides_of`).
    """
    read = [read_run(d) for d in run_dirs(root, RunDir.METRICS)]
    raised = [
        Failure(d, failure_error(RunDir(d)), overrides_of(d))
        for d in run_dirs(root, RunDir.FAILURE)
        if not RunDir(d).exists(RunDir.METRICS)
    ]
    malformed = [run for run in read if isinstance(run, Failure)]
    failures = sorted([*raised, *malformed], key=lambda failure: _natural(failure.path))
    return [run for run in read if isinstance(run, Run)], failures


def load_runs(root: str | Path) -> list[Run]:
    """The runs below ``root`` with a well-formed ``metrics.json`` (:func:`load_sweep`).

    Raises:
        FileNotFoundError: no ``metrics.json`` below ``root``.
        ValueError: a run's ``.hydra/overrides.yaml`` is malformed (:func:`overrides_of`).
    """
    if not run_dirs(root, RunDir.METRICS):
        raise FileNotFoundError(f"no metrics.json below {root}; point at a run or multirun directory")
    return load_sweep(root)[0]


def load_failures(root: str | Path) -> list[Failure]:
    """The runs below ``root`` that did not give metrics (:func:`load_sweep`)."""
    return load_sweep(root)[1]


def failure_error(run_dir: RunDir) -> str:
    """The error line of ``run_dir``'s ``failure.json``, or why it cannot be read."""
    try:
        error = run_dir.read_json(RunDir.FAILURE).get("error")
    except ValueError as malformed:
        return str(malformed)
    return error if isinstance(error, str) else f"{run_dir.file(RunDir.FAILURE)} records no error line"


def metric_key(metric: str, column: str) -> str:
    """The key of ``metric`` in ``column``: ``""`` is the overall figure (``metric``), else ``<metric>/<domain>``."""
    return f"{metric}/{column}" if column else metric


def values_of(runs: Sequence[Run], key: str) -> list[float]:
    """Metric ``key`` of the runs that report it."""
    return [r.metrics[key] for r in runs if key in r.metrics]


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (std 0 for a single value; nan and 0 for none)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan"), 0.0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mean_std(values: Sequence[float]) -> str:
    """``mean ± sample std`` to 4 decimals; a single value alone (it has no spread), n/a for none.

    Example:
        >>> mean_std([0.8, 0.82]), mean_std([0.8])
        ('0.8100 ± 0.0141', '0.8000')
    """
    if len(values) == 0:
        return "n/a"
    mean, std = mean_and_std(values)
    return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"


def cell(runs: Sequence[Run], key: str) -> str:
    """``mean ± std`` of metric ``key`` over the runs that report it."""
    return mean_std(values_of(runs, key))


def lower_is_better(key: str) -> bool:
    """Whether a smaller value of metric ``key`` is better (losses, parameter counts, times, how much onboarding
    moved the other domains)."""
    return "loss" in key or key.removeprefix("baseline/").startswith(("params/", "time/", "onboard/"))


def comparison_table(
    groups: dict[tuple[str, ...], list[Run]], by: Sequence[str], keys: Sequence[str], mark_best: bool = False
) -> str:
    """A markdown table with one row per group of runs (e.g. per model) and one column per metric key.

    Args:
        groups: runs per group, as :func:`group_runs` returns them.
        by: the override keys the groups were formed by (the first columns' titles).
        keys: full metric keys, e.g. ``["test/auc", "test/auc/d0"]``; each cell is mean ± std over the group.
        mark_best: bold the best mean of each column (the lowest for :func:`lower_is_better` keys).

    Example:
        >>> runs = [Run(Path("a"), {"test/auc": 0.8}, {"model": "star"}), Run(Path("b"), {"test/auc": 0.7}, {})]
        >>> print(comparison_table(group_runs(runs, ["model"]), ["model"], ["test/auc"], mark_best=True))
        | model | runs | test/auc |
        |---|---|---|
        |  | 1 | 0.7000 |
        | star | 1 | **0.8000** |
    """
    means = np.array([[mean_and_std(values_of(runs, k))[0] for k in keys] for runs in groups.values()])
    means = means.reshape(len(groups), len(keys))
    best = np.full(means.shape, False)
    if mark_best and len(groups) > 1:
        for j, key in enumerate(keys):
            column = means[:, j]
            if not np.isnan(column).all():
                target = np.nanmin(column) if lower_is_better(key) else np.nanmax(column)
                best[:, j] = column == target
    lines = ["| " + " | ".join([*by, "runs", *keys]) + " |", "|---" * (len(by) + 1 + len(keys)) + "|"]
    for i, (values, runs) in enumerate(groups.items()):
        cells = [f"**{cell(runs, k)}**" if best[i, j] else cell(runs, k) for j, k in enumerate(keys)]
        lines.append("| " + " | ".join([*values, str(len(runs)), *cells]) + " |")
    return "\n".join(lines)


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> dict[tuple[str, ...], list[Run]]:
    """Runs grouped by the values of the override ``keys`` (a missing override groups as ``""``)."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides.get(k, "") for k in keys), []).append(run)
    return dict(sorted(groups.items()))
