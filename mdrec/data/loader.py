"""Batches cut from a column store by slicing a per-epoch permutation: no per-row ``__getitem__``, no collate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mdrec.data.batch import Batch
from mdrec.data.store import ColumnStore


class EpochPermutation:
    """The row order of one split for one epoch: a seeded permutation, new each epoch, reproducible.

    Lightning calls ``set_epoch`` on ``loader.sampler`` at the start of every epoch, so a resumed run
    sees the same order as an uninterrupted one.

    Args:
        indices: int64 ``[n]`` row indices of the split.
        shuffle: permute (training) or keep ``indices`` in order (evaluation).
        seed: base seed; the permutation of epoch e is drawn from ``(seed, e)``.
    """

    def __init__(self, indices: np.ndarray, shuffle: bool, seed: int) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """int64 ``[n]``: the split's rows in this epoch's order."""
        if not self.shuffle:
            return self.indices
        return np.random.default_rng((self.seed, self.epoch)).permutation(self.indices)


class BatchLoader:
    """Iterates a split of a ColumnStore in batches of ``batch_size`` rows.

    Each batch is one slice of the epoch's permutation; its rows are gathered column by column with fancy
    indexing (sorted within the batch, so memory-mapped columns are read in page order).

    Args:
        store: the prepared data.
        indices: int64 ``[n]`` row indices of the split.
        batch_size: B.
        shuffle: new random order every epoch (training) or fixed order (evaluation).
        seed: seed of the permutations.
        drop_last: drop a final batch smaller than ``batch_size``.
        validate: check every batch against the store's schema (``Batch.validate``); for debugging.

    Example:
        >>> loader = BatchLoader(store, splits["train"], batch_size=4096, shuffle=True, seed=0)  # doctest: +SKIP
        >>> batch = next(iter(loader))                                                          # doctest: +SKIP
    """

    # Lightning treats the loader like a DataLoader: it calls ``sampler.set_epoch(epoch)`` every epoch and reads
    # ``batch_sampler`` (there is none: batches are slices of the permutation).
    batch_sampler = None

    def __init__(
        self,
        store: ColumnStore,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        validate: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.store = store
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.validate = validate
        self.sampler = EpochPermutation(indices, shuffle, seed)

    def __len__(self) -> int:
        n = len(self.sampler.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.sampler.order()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = self.store.take(np.sort(order[start : start + self.batch_size]))
            if self.validate:
                batch.validate(self.store.schema.num_domains, self.store.schema.vocab_sizes)
            yield batch
