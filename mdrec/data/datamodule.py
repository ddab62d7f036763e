"""The LightningDataModule: prepare a source once (cached by fingerprint), split it, serve BatchLoaders."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from filelock import FileLock

from mdrec.data.batch import Batch
from mdrec.data.files import check_dataset_id
from mdrec.data.loader import BatchLoader
from mdrec.data.schema import SCHEMA_FILE, SPLIT_NAMES, Schema
from mdrec.data.sources.base import Source, fingerprint
from mdrec.data.splits import PredefinedSplit, RandomSplit, StratifiedSplit, TemporalSplit
from mdrec.data.store import COLUMNS_DIR, ColumnStore

log = logging.getLogger(__name__)

Split = RandomSplit | StratifiedSplit | TemporalSplit | PredefinedSplit


class MultiDomainDataModule(pl.LightningDataModule):
    """Prepared multi-domain data for training and evaluation.

    The source is prepared into ``<data_dir>/<dataset_id>-<fingerprint>`` the first time and reused after;
    raw downloads are cached under ``<data_dir>/raw``.

    Args:
        source: what to prepare (synthetic generator, MovieLens, tabular files, ...).
        split: how to cut train/val/test.
        data_dir: root of prepared data and raw caches.
        batch_size: training batch size B per process: with W processes (trainer.devices x trainer.num_nodes) a step
            trains on W x B rows; B / W reproduces a one-process run's steps.
        eval_batch_size: validation/test batch size per process (default: 4 x batch_size).
        seed: seed of the training order.
        mmap: memory-map the columns (True) or read them into RAM (False); None (default) reads them into RAM
            when they take less than half of the available memory (faster batches), else memory-maps them.
        release_pages: with memory-mapped columns, drop each column's pages from the process's mapping as soon as a
            batch has read them (``ColumnStore``): the process's resident memory then stays near the anonymous
            memory in use instead of growing to the data's size with pages the kernel could reclaim anyway (they
            stay in its page cache). Costs time per batch, as every batch maps its columns' pages again
            (``scripts/bench_out_of_core.py`` measures both).
        validate_batches: check every batch's dtypes and id ranges (``Batch.validate``; the debug configs
            turn it on, training runs leave it off).
        domain_fractions: per domain name, the share of its training rows to keep (a random subset drawn with
            ``seed``); 0 holds the domain out of training and validation (its test rows stay). Unnamed domains
            keep everything. Cross-domain warm start: pre-train with the targets at 0, adapt with them at 0.01.
        vocab_domains: domain names whose training rows define the vocabulary the model knows (taxonomy
            alignment): ids the other domains show that these rows never do are mapped to 0 (out of
            vocabulary) in every batch. None: all training rows.

    Example:
        >>> from mdrec.data.synthetic import SyntheticSource
        >>> dm = MultiDomainDataModule(SyntheticSource(num_rows=1000), RandomSplit(), data_dir=tmp_dir, batch_size=64)
        >>> dm.prepare_data(); dm.setup("fit"); dm.schema.domains
        ('d0', 'd1', 'd2', 'd3')
        >>> {name: len(rows) for name, rows in dm.splits.items()}
        {'train': 800, 'val': 100, 'test': 100}
        >>> next(iter(dm.train_dataloader())).sparse.shape
        torch.Size([64, 8])
    """

    def __init__(
        self,
        source: Source,
        split: Split,
        data_dir: str,
        batch_size: int = 4096,
        eval_batch_size: int | None = None,
        seed: int = 0,
        mmap: bool | None = None,
        release_pages: bool = False,
        validate_batches: bool = False,
        domain_fractions: dict[str, float] | None = None,
        vocab_domains: list[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be a positive integer, got {batch_size}")
        bad = {d: f for d, f in (domain_fractions or {}).items() if not 0.0 <= f <= 1.0}
        if bad:
            raise ValueError(f"data.domain_fractions must be shares in [0, 1], got {bad}")
        check_dataset_id(source.dataset_id, "data.source's dataset_id")
        self.source = source
        self.split = split
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.seed = seed
        self.mmap = mmap
        self.release_pages = release_pages
        self.validate_batches = validate_batches
        self.domain_fractions = dict(domain_fractions or {})
        self.vocab_domains = list(vocab_domains) if vocab_domains is not None else None
        self.store: ColumnStore | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.id_map: torch.Tensor | None = None  # [sum V] old id -> id the model sees (taxonomy alignment)
        self.id_offsets: torch.Tensor | None = None  # [F] where each field's ids start in id_map
        self.vocab_rows = np.empty(0, dtype=np.int64)  # the training rows that define the known ids

    @property
    def prepared_dir(self) -> Path:
        return self.data_dir / f"{self.source.dataset_id}-{fingerprint(self.source)}"

    def prepare_data(self) -> None:
        """Prepare the source unless it is prepared already. One process at a time (a file lock beside the prepared
        directory): the processes of a multi-process run, or the jobs of a sweep, that start together prepare it
        once, the others wait and then read it. Prepared data is only read (its directory may be read-only)."""
        if (self.prepared_dir / SCHEMA_FILE).exists():
            return
        self.prepared_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.prepared_dir.with_name(f"{self.prepared_dir.name}.lock")):
            if not (self.prepared_dir / SCHEMA_FILE).exists():
                log.info("preparing %s into %s", self.source.dataset_id, self.prepared_dir)
                self.source.prepare(self.prepared_dir, self.data_dir / "raw")

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        mmap = self.mmap if self.mmap is not None else should_mmap(self.prepared_dir)
        self.store = ColumnStore(self.prepared_dir, mmap=mmap, release_pages=self.release_pages)
        self.splits = self.split(self.store)
        domain = self.store.column(self.schema.domain_field)
        self.vocab_rows = self._vocabulary_rows(domain)  # before domain_fractions: the full vocabulary of the sources
        if self.vocab_domains is not None:
            self.id_map = self._vocabulary_map()
            self.id_offsets = torch.tensor([0, *self.schema.vocab_sizes[:-1]]).cumsum(0)
        self._subset_domains(domain)
        sizes = {name: len(idx) for name, idx in self.splits.items()}
        for name, idx in self.splits.items():
            counts = np.bincount(domain[idx], minlength=self.schema.num_domains)
            absent = [d for d, c in zip(self.schema.domains, counts, strict=True) if c == 0]
            if absent:
                log.warning("split %r holds no rows of domain(s) %s: their %s metrics will be NaN", name, absent, name)
        if self.store.releases_pages:
            self.store.release_pages()  # the pages the splits and the counts above read
        log.info(
            "%s: %d rows, %d domains, splits %s, %s",
            self.schema.dataset_id,
            len(self.store),
            self.schema.num_domains,
            sizes,
            "memory-mapped" if mmap else "in RAM",
        )

    def _domain_ids(self, names: list[str], option: str) -> list[int]:
        unknown = sorted(set(names) - set(self.schema.domains))
        if unknown:
            raise ValueError(f"data.{option} names unknown domain(s) {unknown}; domains: {list(self.schema.domains)}")
        return [self.schema.domains.index(n) for n in names]

    def _subset_domains(self, domain: np.ndarray) -> None:
        """Apply ``domain_fractions`` to the train split (and hold fraction-0 domains out of validation)."""
        if not self.domain_fractions:
            return
        ids = self._domain_ids(list(self.domain_fractions), "domain_fractions")
        fraction = np.ones(self.schema.num_domains)
        fraction[ids] = list(self.domain_fractions.values())
        train = self.splits["train"]
        keep = np.random.default_rng((self.seed, 7)).random(len(train)) < fraction[domain[train]]
        self.splits["train"] = train[keep]
        self.splits["val"] = self.splits["val"][fraction[domain[self.splits["val"]]] > 0]
        log.info("domain_fractions %s: %d of %d training rows kept", self.domain_fractions, keep.sum(), len(train))

    def _vocabulary_rows(self, domain: np.ndarray) -> np.ndarray:
        """The training rows that define the vocabulary: those of ``vocab_domains`` (all without it)."""
        train = self.splits["train"]
        if self.vocab_domains is None:
            return train
        return train[np.isin(domain[train], self._domain_ids(self.vocab_domains, "vocab_domains"))]

    def _vocabulary_map(self) -> torch.Tensor:
        """Per field, ids seen in the ``vocab_domains``' training rows map to themselves, every other id to 0."""
        maps = []
        for field in self.schema.sparse:
            seen = np.zeros(field.vocab_size, dtype=bool)
            seen[np.asarray(self.store.column(field.name)[self.vocab_rows])] = True
            maps.append(np.where(seen, np.arange(field.vocab_size), 0))
        return torch.from_numpy(np.concatenate(maps))

    def on_before_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Map ids through the ``vocab_domains`` vocabulary (no-op without it)."""
        if self.id_map is None:
            return batch
        seq = batch.seq
        if seq is not None:
            seq_offset = self.id_offsets[self.schema.sparse_index(self.schema.sequence.vocab_field)]
            seq = torch.where(seq > 0, self.id_map[seq + seq_offset], seq)
        return replace(batch, sparse=self.id_map[batch.sparse + self.id_offsets], seq=seq)

    @property
    def schema(self) -> Schema:
        if self.store is None:
            raise RuntimeError("call prepare_data() and setup() before reading the schema")
        return self.store.schema

    def loader(self, split: str) -> BatchLoader:
        """The BatchLoader of ``split`` (train: shuffled each epoch; val/test: fixed order), this process's share of
        it when the trainer runs several (``BatchLoader.bounds``)."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; splits: {SPLIT_NAMES}")
        self.setup()
        train = split == "train"
        return BatchLoader(
            self.store,
            self.splits[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=self.seed,
            validate=self.validate_batches,
            rank=self.trainer.global_rank if self.trainer is not None else 0,
            world_size=self.trainer.world_size if self.trainer is not None else 1,
        )

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device, non_blocking=True)

    def train_dataloader(self) -> BatchLoader:
        return self.loader("train")

    def val_dataloader(self) -> BatchLoader:
        return self.loader("val")

    def test_dataloader(self) -> BatchLoader:
        return self.loader("test")

    def split_column(self, split: str, name: str) -> np.ndarray:
        """Column ``name`` restricted to the rows of ``split`` (in the split's sorted row order)."""
        self.setup()
        return np.asarray(self.store.column(name)[self.splits[split]])

    def unseen_shares(self, split: str) -> dict[str, dict[str, float]]:
        """Per sparse field and domain, the share of ``split``'s rows whose id the training rows never show.

        That is id 0 (a value missing or unseen when the vocabulary was built) or an id absent from the train
        split's ``vocab_domains`` rows (all its rows without them; before ``domain_fractions``): the rows a model
        meets with an untrained embedding. 1 - share is the coverage of the field (taxonomy alignment of a domain
        against the training vocabulary).
        """
        domain = self.split_column(split, self.schema.domain_field)
        k = self.schema.num_domains
        rows = np.maximum(np.bincount(domain, minlength=k), 1)
        shares: dict[str, dict[str, float]] = {}
        for field in self.schema.sparse:
            seen = np.zeros(field.vocab_size, dtype=bool)
            seen[np.asarray(self.store.column(field.name)[self.vocab_rows])] = True
            seen[0] = False
            unseen = ~seen[self.split_column(split, field.name)]
            share = np.bincount(domain, weights=unseen, minlength=k) / rows
            shares[field.name] = dict(zip(self.schema.domains, share.round(6).tolist(), strict=True))
        return shares


def should_mmap(directory: Path) -> bool:
    """True when the prepared columns take more than half of the memory available now."""
    size = sum(f.stat().st_size for f in (directory / COLUMNS_DIR).glob("*.npy"))
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no such query on this platform: the safe choice
        return True
    return size > available / 2
