"""Batch: the only object that crosses from data to model."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class Batch:
    """A typed batch of B rows, columnar.

    Args:
        sparse: int64 ``[B, F]``, one id per sparse field, 0 = padding / out of vocabulary.
        dense: float32 ``[B, N]``.
        domain: int64 ``[B]``, 0..K-1 in ``schema.domains`` order.
        labels: float32 ``[B, T]``, in ``schema.labels`` order (click first).
        seq: optional int64 ``[B, L]`` id sequence, left-aligned, 0-padded.
        seq_lengths: optional int64 ``[B]``, the true length of each row's sequence.
        weight: optional float32 ``[B]`` row weights for the loss.

    Example:
        >>> b = Batch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1), torch.tensor([0, 1]), torch.ones(2, 1))
        >>> b.size, b.to(torch.device("cpu")).sparse.shape
        (2, torch.Size([2, 3]))
    """

    sparse: Tensor
    dense: Tensor
    domain: Tensor
    labels: Tensor
    seq: Tensor | None = None
    seq_lengths: Tensor | None = None
    weight: Tensor | None = None

    @classmethod
    def unlabelled(
        cls, sparse: Tensor, dense: Tensor, domain: Tensor, seq: Tensor | None = None, seq_lengths: Tensor | None = None
    ) -> Batch:
        """A batch of serving inputs: no labels (``[B, 0]``)."""
        return cls(sparse, dense, domain, dense.new_zeros(dense.shape[0], 0), seq, seq_lengths)

    @property
    def size(self) -> int:
        """B, the number of rows."""
        return self.domain.shape[0]

    def rows(self, index: Tensor) -> Batch:
        """The rows ``index [B']`` (int64 positions) of every tensor, in that order."""
        return replace(self, **{f.name: _take(getattr(self, f.name), index) for f in fields(self)})

    def blanked(self, drop: Tensor, sparse_fill: int = 0) -> Batch:
        """Each row's dropped features blank (feature trimming): ``drop`` is bool ``[K, F + N]`` per domain, the
        sparse fields then the dense features; a dropped sparse id becomes ``sparse_fill`` (0: unknown; -1: not
        looked up at all, ``mdrec.nn.embedding.SkippingEmbedding``), a dropped dense value 0."""
        d = drop[self.domain]  # [B, F + N]
        f = self.sparse.shape[1]
        sparse = self.sparse.masked_fill(d[:, :f], sparse_fill)
        return replace(self, sparse=sparse, dense=self.dense.masked_fill(d[:, f:], 0.0))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor on ``device``."""
        return replace(self, **{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (for asynchronous host-to-GPU copies)."""
        return replace(self, **{f.name: _pin(getattr(self, f.name)) for f in fields(self)})

    def validate(self, num_domains: int | None = None, vocab_sizes: list[int] | None = None) -> Batch:
        """Check dtypes, shapes and id ranges; raise ``ValueError`` naming the offending part. Not for the hot path."""
        b = self.size
        expect = {
            "sparse": (torch.int64, 2),
            "dense": (torch.float32, 2),
            "domain": (torch.int64, 1),
            "labels": (torch.float32, 2),
            "seq": (torch.int64, 2),
            "seq_lengths": (torch.int64, 1),
            "weight": (torch.float32, 1),
        }
        for name, (dtype, ndim) in expect.items():
            t = getattr(self, name)
            if t is None:
                continue
            if t.dtype != dtype or t.dim() != ndim or t.shape[0] != b:
                raise ValueError(
                    f"Batch.{name}: expected {dtype} with {ndim} dims and {b} rows, got {t.dtype} {tuple(t.shape)}"
                )
        if (self.seq is None) != (self.seq_lengths is None):
            raise ValueError("Batch.seq and Batch.seq_lengths must be given together")
        if self.sparse.numel() and int(self.sparse.min()) < 0:
            raise ValueError(f"Batch.sparse holds a negative id ({int(self.sparse.min())}); ids start at 0")
        if num_domains is not None and b and (int(self.domain.min()) < 0 or int(self.domain.max()) >= num_domains):
            bad = self.domain[(self.domain < 0) | (self.domain >= num_domains)][0]
            raise ValueError(f"Batch.domain holds id {int(bad)}, outside 0..{num_domains - 1}")
        if vocab_sizes is not None and self.sparse.numel():
            too_big = self.sparse >= torch.tensor(vocab_sizes)
            if bool(too_big.any()):
                row, col = (int(i) for i in too_big.nonzero()[0])
                raise ValueError(
                    f"Batch.sparse[:, {col}] holds id {int(self.sparse[row, col])} >= vocab_size {vocab_sizes[col]}"
                )
        return self


def _move(t: Tensor | None, device: torch.device | str, non_blocking: bool) -> Tensor | None:
    return None if t is None else t.to(device, non_blocking=non_blocking)


def _take(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else t.index_select(0, index)


def _pin(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.pin_memory()
