"""Report plots (PNG, matplotlib's Agg backend: no display needed): ablation bars and metric-vs-x curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdrec.eval.summary import Run, mean_and_std, metric_key, values_of  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (PNG, 120 dpi), close it; return ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def colour(i: int, n: int) -> tuple[float, ...]:
    """The i-th of n distinct colours (tab10 up to 10 groups, tab20 beyond)."""
    return plt.get_cmap("tab10" if n <= 10 else "tab20")(i % 20)


def bar_plot(groups: dict[str, list[Run]], metric: str, domains: Sequence[str], path: Path) -> Path:
    """Grouped bars: a cluster per column (overall, then each domain), a bar per group, mean ± std error bars.

    The y axis starts near the smallest bar (AUC differences of 0.01 matter and would vanish from 0)."""
    columns = ["", *domains]  # "": overall
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(min(14.0, 4.0 + 0.22 * len(columns) * len(groups)), 4.2))
    lows, highs = [], []
    for i, (name, runs) in enumerate(groups.items()):
        means, stds = zip(*(mean_and_std(values_of(runs, metric_key(metric, c))) for c in columns), strict=True)
        x = np.arange(len(columns)) + (i - (len(groups) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=2, label=f"{name} (n={len(runs)})", color=colour(i, len(groups)))
        finite = np.isfinite(means)
        lows += list(np.subtract(means, stds)[finite])
        highs += list(np.add(means, stds)[finite])
    if lows:
        span = max(highs) - min(lows)
        ax.set_ylim(min(lows) - 0.15 * span - 1e-4, max(highs) + 0.1 * span + 1e-4)
    slanted = len(columns) > 6  # long domain names would overlap
    ax.set_xticks(
        np.arange(len(columns)),
        [c or "overall" for c in columns],
        rotation=35 if slanted else 0,
        ha="right" if slanted else "center",
    )
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± std over seeds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def numeric(run: Run, key: str) -> float:
    """The run's override ``key`` as a number (the x of a curve)."""
    value = run.overrides.get(key)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"run {run.path}: override {key!r} is {value!r}, not a number; --x needs a numeric override "
            "that every run sets (e.g. data.source.num_domains)"
        ) from None


def curve_plot(
    groups: dict[str, list[Run]], x: str, metrics: Sequence[str], domains: Sequence[str], path: Path
) -> Path:
    """Metrics against a numeric override ``x``: a panel per metric and column (overall, then each domain; a row
    of panels per metric, or up to 3 metrics a row without domains), a line per group (mean over the runs at each
    x, a band of ± std), e.g. data-scarcity or domain-scaling curves."""
    columns = ["", *domains]  # "": overall
    panels = [(m, c) for m in metrics for c in columns]
    ncols = len(columns) if len(columns) > 1 else min(3, len(metrics))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.2 * nrows), squeeze=False)
    log_x = _spans_decades(groups, x)
    for ax, (metric, column) in zip(axes.flat, panels, strict=False):
        key = metric_key(metric, column)
        for i, (name, runs) in enumerate(groups.items()):  # a group keeps its colour in every panel
            xs = sorted({numeric(r, x) for r in runs})
            points = [mean_and_std(values_of([r for r in runs if numeric(r, x) == v], key)) for v in xs]
            mean, std = (np.array(v) for v in zip(*points, strict=True))
            if np.isnan(mean).all():
                continue
            ax.plot(xs, mean, marker="o", label=name, color=colour(i, len(groups)))
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=colour(i, len(groups)))
        if log_x:
            ax.set_xscale("log")
        ticks = sorted(_xs(groups, x))
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], minor=False)
        ax.minorticks_off()
        ax.set_title((column or "overall") if len(columns) > 1 else metric)
        ax.set_ylabel(metric)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=7)
    return save(fig, path)


def _xs(groups: dict[str, list[Run]], x: str) -> set[float]:
    return {numeric(r, x) for runs in groups.values() for r in runs}


def _spans_decades(groups: dict[str, list[Run]], x: str) -> bool:
    """Whether the x values are positive, at least 3, and span a factor of 10 or more (then the axis is log)."""
    values = _xs(groups, x)
    return len(values) > 2 and min(values) > 0 and max(values) / min(values) >= 10


def tradeoff_plot(
    budgets: Sequence[float],
    kept: Sequence[Sequence[int]],
    change: Sequence[Sequence[float]],
    domains: Sequence[str],
    total: int,
    path: Path,
) -> Path:
    """Feature trimming's trade-off: features kept and test AUC change against the AUC-loss budget, a line per
    domain (``kept``, ``change``: ``[budgets][K]``)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(budgets))  # evenly spaced budgets (they usually grow geometrically, from 0)
    for d, name in enumerate(domains):
        left.plot(x, [row[d] for row in kept], marker="o", label=name, color=colour(d, len(domains)))
        right.plot(x, [row[d] for row in change], marker="o", label=name, color=colour(d, len(domains)))
    left.set_ylabel(f"features kept (of {total})")
    right.set_ylabel("test AUC change (trimmed - all)")
    right.axhline(0.0, color="grey", linewidth=0.8)
    for ax in (left, right):
        ax.set_xticks(x, [f"{b:g}" for b in budgets])
        ax.set_xlabel("budget: validation AUC loss allowed per domain")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    return save(fig, path)


def reliability_plot(bins: dict[str, Sequence[tuple[float, float]]], path: Path, title: str) -> Path:
    """A reliability diagram: per domain, the observed rate against the mean predicted probability of each bin
    (``bins``: domain -> ``(predicted, observed)`` per bin), and the diagonal of a calibrated model."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    top = max([0.05, *(max(p, o) for points in bins.values() for p, o in points)])
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="calibrated")
    for i, (name, points) in enumerate(bins.items()):
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", ms=3, lw=1.2, color=colour(i, len(bins)), label=name)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed rate (bin)")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, top * 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, path)
