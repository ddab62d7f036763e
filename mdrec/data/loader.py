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
    indexing (sorted within the batch, so memory-mapped columns are read in page order). With several processes
    (DDP) every process draws the same permutation and takes its own slices of it (``bounds``).

    Args:
        store: the prepared data.
        indices: int64 ``[n]`` row indices of the split.
        batch_size: B.
        shuffle: new random order every epoch (training) or fixed order (evaluation).
        seed: seed of the permutations.
        drop_last: drop a final batch smaller than ``batch_size``.
        validate: check every batch against the store's schema (``Batch.validate``); for debugging.
        rank: this process's rank, 0..world_size-1.
        world_size: the number of processes sharing the split (trainer.world_size); 1: all rows.

    Example:
        >>> loader = BatchLoader(store, np.arange(len(store)), batch_size=8, shuffle=True, seed=0)
        >>> batch = next(iter(loader))
        >>> len(loader), batch.sparse.shape, batch.labels.shape
        (4, torch.Size([8, 3]), torch.Size([8, 1]))
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        if not shuffle and 0 < len(indices) < world_size:
            raise ValueError(
                f"the split has {len(indices)} rows, fewer than the {world_size} processes evaluating it: "
                "evaluate on fewer devices (trainer.devices, trainer.num_nodes)"
            )
        self.store = store
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.validate = validate
        self.rank = rank
        self.world_size = world_size
        self.sampler = EpochPermutation(indices, shuffle, seed)
        self.served = 0  # batches of the current epoch handed out so far
        self._resume: dict[str, int] | None = None  # from load_state_dict, for the next iteration

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(start [M], stop [M])``: this process's M batches as slices of the epoch's order.

        Training (``shuffle``): the order is cut into global batches of ``world_size * batch_size`` rows and rank r
        takes the r-th ``batch_size`` rows of each, so every process takes the same number of steps and the step
        of all processes together is one batch of ``world_size * batch_size`` rows. The last, partial global batch
        is shared evenly: its last ``rows % world_size`` rows (fewer than world_size) sit that epoch out.
        Evaluation: rank r takes the r-th of ``world_size`` contiguous shares (sizes differ by at most one), so
        every row is evaluated exactly once and the processes' rows, concatenated in rank order, are the split's
        order; batch counts may then differ by one between processes (evaluation steps hold no collective).
        With one process both are the plain slicing of the order into batches of ``batch_size``.
        """
        n, b, w, r = len(self.sampler.indices), self.batch_size, self.world_size, self.rank
        if self.sampler.shuffle:
            full, rest = divmod(n, w * b)
            tail = 0 if self.drop_last else rest // w  # this process's rows of the last, partial global batch
            sizes = np.full(full + (tail > 0), b, dtype=np.int64)  # [M]
            sizes[full:] = tail
            starts = np.arange(len(sizes)) * w * b + r * sizes
            return starts, starts + sizes
        low, high = r * n // w, (r + 1) * n // w
        starts = np.arange(low, high, b)
        stops = np.minimum(starts + b, high)
        keep = stops - starts == b if self.drop_last else slice(None)
        return starts[keep], stops[keep]

    def __len__(self) -> int:
        return len(self.bounds()[0])

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands: its number and the batches handed out. Lightning saves it in every checkpoint
        (a loader with ``state_dict`` / ``load_state_dict`` is resumable) after a step, when the batches handed out
        are the batches trained."""
        return {"epoch": self.sampler.epoch, "batches": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from a checkpoint saved inside an epoch: the next iteration over epoch ``state["epoch"]`` goes on
        after its first ``state["batches"]`` batches, in the same order (another epoch starts at its beginning)."""
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[Batch]:
        order = self.sampler.order()
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == self.sampler.epoch else 0
        starts, stops = self.bounds()
        self.served = skip
        for start, stop in zip(starts[skip:], stops[skip:], strict=True):
            batch = self.store.take(np.sort(order[start:stop]))
            if self.validate:
                batch.validate(self.store.schema.num_domains, self.store.schema.vocab_sizes)
            self.served += 1
            yield batch
