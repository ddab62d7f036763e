"""Train/val/test splits of a prepared store, as sorted row-index arrays per split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdrec.data.schema import SPLIT_COLUMN, SPLIT_NAMES
from mdrec.data.store import ColumnStore

Splits = dict[str, np.ndarray]


def _check_fractions(fractions: tuple[float, ...] | list[float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(
            f"split fractions {list(fractions)} must be three non-negative numbers (train, val, test) summing to 1"
        )
    return f


def _cut(order: np.ndarray, fractions: np.ndarray) -> list[np.ndarray]:
    """Cut ``order`` into three consecutive parts of the given fractions (rounded, every row used once)."""
    bounds = np.round(np.cumsum(fractions)[:2] * len(order)).astype(np.int64)
    return np.split(order, bounds)


def _finish(parts: list[np.ndarray], how: str, n: int) -> Splits:
    splits = {name: np.sort(p).astype(np.int64) for name, p in zip(SPLIT_NAMES, parts, strict=True)}
    empty = [name for name, idx in splits.items() if len(idx) == 0]
    if empty:
        sizes = {name: len(idx) for name, idx in splits.items()}
        raise ValueError(
            f"{how} of {n} rows left split(s) {empty} empty (sizes {sizes}); use more data or larger fractions"
        )
    return splits


@dataclass(frozen=True)
class RandomSplit:
    """Uniformly random split (the Scenario-Wise-Rec / HAMUR protocol uses 0.8/0.1/0.1).

    Args:
        fractions: train, val, test shares.
        seed: seed of the permutation.
    """

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2022

    def __call__(self, store: ColumnStore) -> Splits:
        f = _check_fractions(self.fractions)
        order = np.random.default_rng(self.seed).permutation(len(store))
        return _finish(_cut(order, f), "random split", len(store))


@dataclass(frozen=True)
class StratifiedSplit:
    """Random split within each domain, so every domain keeps the same shares (MLoRA uses 0.6/0.2/0.2).

    Args:
        fractions: train, val, test shares, applied per domain.
        seed: seed of the permutation.
    """

    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 123

    def __call__(self, store: ColumnStore) -> Splits:
        f = _check_fractions(self.fractions)
        domain = np.asarray(store.column(store.schema.domain_field))
        order = np.random.default_rng(self.seed).permutation(len(store))
        order = order[np.argsort(domain[order], kind="stable")]  # grouped by domain, random within
        starts = np.searchsorted(domain[order], np.arange(store.schema.num_domains + 1))
        # position of each row inside its domain, as a fraction: cut each domain at the same shares
        size = np.diff(starts)
        pos = np.arange(len(order)) - np.repeat(starts[:-1], size)
        bounds = np.round(np.cumsum(f)[:2][None, :] * size[:, None]).astype(np.int64)  # [K, 2]
        dom = domain[order]
        which = (pos >= bounds[dom, 0]).astype(np.int64) + (pos >= bounds[dom, 1])
        return _finish([order[which == i] for i in range(3)], "per-domain stratified split", len(store))


@dataclass(frozen=True)
class TemporalSplit:
    """Oldest rows train, newest rows test, cut at global time quantiles (no look-ahead).

    Args:
        fractions: train, val, test shares in time order. Rows with equal timestamps stay together.
    """

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __call__(self, store: ColumnStore) -> Splits:
        f = _check_fractions(self.fractions)
        if store.schema.time_column is None:
            raise ValueError(
                f"data set {store.schema.dataset_id!r} has no time column; a temporal split needs one "
                "(use RandomSplit or StratifiedSplit)"
            )
        t = np.asarray(store.column(store.schema.time_column))
        cut_times = np.quantile(t, np.cumsum(f)[:2], method="lower")
        which = (t > cut_times[0]).astype(np.int64) + (t > cut_times[1])
        rows = np.arange(len(t))
        return _finish([rows[which == i] for i in range(3)], "temporal split", len(t))


@dataclass(frozen=True)
class PredefinedSplit:
    """The split the data came with (separate train/val/test files): the store's ``split`` column."""

    def __call__(self, store: ColumnStore) -> Splits:
        if not store.schema.has_split_column:
            raise ValueError(
                f"data set {store.schema.dataset_id!r} came without its own split; use RandomSplit, "
                "StratifiedSplit or TemporalSplit"
            )
        code = np.asarray(store.column(SPLIT_COLUMN))
        rows = np.arange(len(code))
        return _finish([rows[code == i] for i in range(3)], "predefined split", len(code))
