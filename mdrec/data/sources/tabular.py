"""Your own data, no code: parquet or CSV/TSV files plus a ``TableSpec`` naming each column's role.

Files are loaded with Hugging Face ``datasets.load_dataset`` (parsed once, cached as Arrow under
``raw_dir/hf``) and encoded by ``mdrec.data.ingest.encode_table``. Only the spec's columns are read. CSV/TSV
columns are read as strings and cast by the ingest step, so ids keep their leading zeros and a bad value is
reported with its column. In CSV/TSV an empty field (quoted or not) is missing (id 0, a NaN dense value); every
other text is a value: ``NA``, ``null`` and ``nan`` are ids like any other. Files are UTF-8 (a leading byte
order mark is skipped); blank lines are skipped.

Every file is checked before it is parsed, and the errors name the file: an empty or unreadable file, a
truncated parquet file, a CSV row with more or fewer fields than the header (a truncated file, a value holding
the delimiter unquoted, the wrong ``delimiter``), a spec column missing from a header or named there twice.
Nothing is dropped: ``report.json`` lists ``input_rows`` per file, and their sum is the prepared ``rows``.

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

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mdrec.data.ingest import EncodedTable, TableSpec, encode_table
from mdrec.data.sources.raw import file_signature

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
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise ValueError(f"data set {self.name!r}: delimiter {self.delimiter!r} must be one character, not a quote")
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
        return file_signature([Path(p) for p in paths])

    def _format(self, path: str) -> str:
        suffix = Path(path).suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(
                f"data set {self.name!r}: cannot tell the format of {path!r} from its extension; "
                f"use one of {sorted(FORMATS)}"
            )
        return FORMATS[suffix]

    def _delimiter(self, path: str) -> str:
        return self.delimiter or ("\t" if path.lower().endswith(".tsv") else ",")

    def _paths(self, pattern: str) -> list[str]:
        """The files a path or glob pattern names; raises if there are none."""
        paths = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not paths or not Path(paths[0]).is_file():
            raise FileNotFoundError(f"data set {self.name!r}: file {pattern!r} does not exist")
        return paths

    def _inspect(self, path: str, delimiter: str) -> int:
        """Check that ``path`` is readable and has each spec column once; return its number of rows.

        A CSV/TSV file is parsed here once with Arrow, which refuses a row with more or fewer fields than the
        header (the CSV parser of ``datasets`` would fill the missing fields with nulls).
        """
        where = f"data set {self.name!r}, file {path!r}"
        if self._format(path) == "parquet":
            try:
                meta = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{where}: cannot read it as parquet ({e}); is it complete? Export it again") from e
            self._check_header(where, meta.schema_arrow.names, "")
            return meta.metadata.num_rows
        used = self.spec.columns()
        options = {
            "parse_options": pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            "read_options": pacsv.ReadOptions(use_threads=False),  # errors then name the row
        }
        try:
            self._check_header(where, pacsv.open_csv(path, **options).schema.names, delimiter)
            convert = pacsv.ConvertOptions(include_columns=used, column_types=dict.fromkeys(used, pa.string()))
            return sum(batch.num_rows for batch in pacsv.open_csv(path, convert_options=convert, **options))
        except (pa.ArrowException, OSError) as e:
            raise ValueError(
                f"{where}: cannot read it as CSV ({e}). It must be UTF-8 text, a header row, then rows of as many "
                f"fields separated by {delimiter!r} (set `delimiter` for another separator); a row with too many or "
                "too few fields comes from a truncated file or a value holding the separator without quotes"
            ) from e

    def _check_header(self, where: str, names: list[str], delimiter: str) -> None:
        """Raise unless the header ``names`` every spec column exactly once."""
        missing = [c for c in self.spec.columns() if c not in names]
        if missing:
            hint = f" (split at {delimiter!r}: set `delimiter` if the file uses another separator)" if delimiter else ""
            raise ValueError(
                f"{where}: column(s) {missing} named in the spec are not in the data; available columns: {names}{hint}"
            )
        twice = sorted({c for c in self.spec.columns() if names.count(c) > 1})
        if twice:
            raise ValueError(f"{where}: the header names column(s) {twice} more than once; rename or drop the copies")

    def _load(self, files: dict[str, tuple[str, ...]], cache_dir: Path) -> tuple[datasets.DatasetDict, dict[str, int]]:
        """Check every file, then parse them (Arrow-cached under ``cache_dir``); also return each file's rows."""
        paths = {split: [p for pattern in group for p in self._paths(pattern)] for split, group in files.items()}
        first = next(iter(paths.values()))[0]
        delimiter = self._delimiter(first)
        rows = {p: self._inspect(p, delimiter) for group in paths.values() for p in group}
        data_files = {split: [p for p in group if rows[p]] for split, group in paths.items()}
        for split, group in data_files.items():
            if not group:
                raise ValueError(
                    f"data set {self.name!r}: the {split} file(s) {paths[split]} hold no rows, a header only"
                )
        columns = self.spec.columns()
        builder = self._format(first)
        if builder == "parquet":
            options: dict = {"columns": columns}
        else:  # every spec column as text (ingest casts by role); only an empty field is missing
            features = datasets.Features({c: datasets.Value("string") for c in columns})
            options = {"delimiter": delimiter, "usecols": columns, "features": features}
            options |= {"keep_default_na": False, "na_values": [""]}
        try:
            loaded = datasets.load_dataset(builder, data_files=data_files, cache_dir=str(cache_dir), **options)
        except datasets.exceptions.DatasetGenerationError as e:
            raise ValueError(f"data set {self.name!r}: cannot parse {sorted(rows)} ({e.__cause__ or e})") from e
        for split, group in data_files.items():
            expected = sum(rows[p] for p in group)
            if loaded[split].num_rows != expected:
                raise ValueError(
                    f"data set {self.name!r}: parsing {group} gave {loaded[split].num_rows} rows where a first "
                    f"read counted {expected}; check the files' quoting"
                )
        return loaded, rows

    def encode(self, raw_dir: Path) -> EncodedTable:
        """Load the files (Arrow-cached under ``raw_dir/hf``) and encode them with ``encode_table``."""
        files = self._splits()
        loaded, rows = self._load(files, Path(raw_dir) / "hf")
        if self.data_files is not None:
            encoded = encode_table(loaded["train"], self.spec, self.dataset_id)
        else:
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
            encoded = encode_table(ds, self.spec, self.dataset_id, vocab_mask=split == 0, split=split)
        encoded.report["input_rows"] = rows
        return encoded

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory``; parsed files are cached under ``raw_dir/hf``."""
        self.encode(raw_dir).write(directory)
