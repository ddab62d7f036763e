"""Your own data, no code: parquet or CSV/TSV files plus a ``TableSpec`` naming each column's role.

Files are loaded with Hugging Face ``datasets.load_dataset`` (parsed once, cached as Arrow under
``raw_dir/hf``) and encoded by ``mdrec.data.ingest.encode_table``. CSV/TSV columns are read as strings and
cast by the ingest step, so ids keep their leading zeros and a bad value is reported with its column.

Give either ``data_files`` (one pool of rows; the training stage splits it) or ``train_files`` with
``val_files`` and ``test_files``. With separate files, the store gets a ``split`` column (0 train, 1 val,
2 test) and vocabularies and dense scalers are fitted on the train rows only: val/test values never seen in
training map to id 0, and their share is reported per field, domain and split (``report.json``).

Example config (``conf/data/<name>.yaml``)::

    source:
      _target_: mdrec.data.sources.tabular.TabularSource
      name: shop
      train_files: [/data/shop/train.parquet]
      test_files: [/data/shop/test.parquet]
      spec:
        _target_: mdrec.data.ingest.TableSpec
        sparse: [user_id, item_id, category]
        dense: [price]
        domain: country
        labels: [click]
        user: user_id
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from mdrec.data.ingest import EncodedTable, TableSpec, encode_table

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "csv"}
SPLITS = ("train", "validation", "test")  # split codes 0, 1, 2 (mdrec.data.schema.SPLIT_NAMES)


def _file_list(files: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if files is None:
        return None
    return (str(files),) if isinstance(files, str | Path) else tuple(str(f) for f in files)


@dataclass
class TabularSource:
    """A multi-domain data set from parquet or CSV/TSV files.

    Args:
        name: the data set id (prepared data are cached under ``<name>-<hash>``).
        spec: which column is sparse, dense, sequence, domain, label, user and time (``TableSpec``).
        data_files: files of one pool of rows (no predefined split).
        train_files: training files; with them the data keep their own split.
        val_files: validation files (required with ``train_files``: model selection uses validation data).
        test_files: test files (required with ``train_files``).
        delimiter: CSV separator; None: tab for ``.tsv``, comma otherwise. Ignored for parquet.

    Example:
        >>> spec = TableSpec(sparse=("user", "item"), domain="region", labels=("click",))
        >>> src = TabularSource("shop", spec, data_files="shop.csv")
        >>> src.prepare(Path("data/shop"), Path("data/raw"))        # doctest: +SKIP
    """

    name: str
    spec: TableSpec
    data_files: str | Sequence[str] | None = None
    train_files: str | Sequence[str] | None = None
    val_files: str | Sequence[str] | None = None
    test_files: str | Sequence[str] | None = None
    delimiter: str | None = None

    def __post_init__(self) -> None:
        for attr in ("data_files", "train_files", "val_files", "test_files"):
            setattr(self, attr, _file_list(getattr(self, attr)))
        if (self.data_files is None) == (self.train_files is None):
            raise ValueError(
                f"data set {self.name!r}: give either `data_files` (one pool of rows) or `train_files` "
                f"(with `val_files` and `test_files`), not {'both' if self.data_files else 'neither'}"
            )
        if self.train_files is not None and (self.val_files is None or self.test_files is None):
            raise ValueError(
                f"data set {self.name!r}: with `train_files`, give `val_files` and `test_files` too (model "
                "selection uses validation rows only); or give all rows as `data_files` and split them with "
                "RandomSplit, StratifiedSplit or TemporalSplit"
            )
        if self.data_files is not None and (self.val_files or self.test_files):
            raise ValueError(f"data set {self.name!r}: `val_files`/`test_files` need `train_files`, not `data_files`")
        files = self._splits()
        suffixes = {self._format(f) for group in files.values() for f in group}
        if len(suffixes) > 1:
            raise ValueError(f"data set {self.name!r}: files mix formats {sorted(suffixes)}; use one format")
        empty = [split for split, group in files.items() if not group]
        if empty:
            raise ValueError(f"data set {self.name!r}: the file list for {empty} is empty")

    @property
    def dataset_id(self) -> str:
        return self.name

    def _splits(self) -> dict[str, tuple[str, ...]]:
        """Split name -> files; a single ``train`` entry when the data have no split of their own."""
        if self.data_files is not None:
            return {"train": self.data_files}
        groups = zip(SPLITS, (self.train_files, self.val_files, self.test_files), strict=True)
        return {split: group for split, group in groups if group is not None}

    def input_signature(self) -> list[tuple[str, int, int]]:
        """Path, size and modification time of every input file (part of the cache fingerprint)."""
        paths = sorted({p for group in self._splits().values() for pattern in group for p in glob.glob(pattern)})
        return [(p, (st := os.stat(p)).st_size, st.st_mtime_ns) for p in paths]

    def _format(self, path: str) -> str:
        suffix = Path(path).suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(
                f"data set {self.name!r}: cannot tell the format of {path!r} from its extension; "
                f"use one of {sorted(FORMATS)}"
            )
        return FORMATS[suffix]

    def _load(self, files: dict[str, tuple[str, ...]], cache_dir: Path) -> datasets.DatasetDict:
        for path in (f for group in files.values() for f in group):
            if not any(ch in path for ch in "*?[") and not Path(path).is_file():
                raise FileNotFoundError(f"data set {self.name!r}: file {path!r} does not exist")
        first = next(iter(files.values()))[0]
        data_files = {split: list(group) for split, group in files.items()}
        if self._format(first) == "parquet":
            return datasets.load_dataset("parquet", data_files=data_files, cache_dir=str(cache_dir))
        delimiter = self.delimiter or ("\t" if first.lower().endswith(".tsv") else ",")
        with open(first, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter=delimiter))
        features = datasets.Features({c: datasets.Value("string") for c in header})  # ingest casts by role
        return datasets.load_dataset(
            "csv", data_files=data_files, delimiter=delimiter, features=features, cache_dir=str(cache_dir)
        )

    def encode(self, raw_dir: Path) -> EncodedTable:
        """Load the files (Arrow-cached under ``raw_dir/hf``) and encode them with ``encode_table``."""
        files = self._splits()
        loaded = self._load(files, Path(raw_dir) / "hf")
        if self.data_files is not None:
            return encode_table(loaded["train"], self.spec, self.dataset_id)
        train = loaded["train"]
        parts = []
        for split in files:
            try:
                parts.append(loaded[split].cast(train.features))
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"data set {self.name!r}: the {split} files {list(files[split])} have columns "
                    f"{loaded[split].features} that do not match the train files' {train.features} ({e})"
                ) from e
        split = np.repeat(np.array([SPLITS.index(s) for s in files], dtype=np.int8), [len(p) for p in parts])
        ds = datasets.concatenate_datasets(parts)
        return encode_table(ds, self.spec, self.dataset_id, vocab_mask=split == 0, split=split)

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory``; parsed files are cached under ``raw_dir/hf``."""
        self.encode(raw_dir).write(directory)
