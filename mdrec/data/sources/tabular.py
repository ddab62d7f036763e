"""Your own data, no code: parquet or CSV/TSV files plus a ``TableSpec`` naming each column's role.

Each file is parsed once, by Arrow, into an Arrow IPC file under ``raw_dir/arrow`` (reused while the file's size
and modification time are unchanged), memory-mapped as a ``pyarrow.Table`` and encoded by
``mdrec.data.ingest.encode_table``. Only the spec's columns are kept. CSV/TSV columns are read as strings and
cast by the ingest step, so ids keep their leading zeros and a bad value is reported with its column. In CSV/TSV
an empty field (quoted or not) is missing (id 0, a NaN dense value); every other text is a value: ``NA``,
``null`` and ``nan`` are ids like any other. Files are UTF-8 (a leading byte order mark is skipped); blank
lines are skipped. Every file is cast to the column types of the first (parquet files may differ). A CSV/TSV/TXT
file may be compressed whole, named by its extension: ``.csv.gz``, ``.tsv.bz2``, ``.txt.zst`` (gzip, bzip2,
zstandard), read as a stream.

Every file is checked as it is parsed, and the errors name the file: an empty or unreadable file, a truncated
parquet or compressed file, a CSV row with more or fewer fields than the header (a truncated file, a value holding the
delimiter unquoted, the wrong ``delimiter``), a CSV file that ends inside a quoted value (a truncated file), a
spec column missing from a header or named there twice, a file listed more than once (within or across
splits, after glob patterns are expanded). Nothing is dropped: ``report.json`` lists
``input_rows`` per file, and their sum is the prepared ``rows``.

Give either ``data_files`` (one pool of rows; the training stage splits it) or ``train_files`` with
``val_files`` and ``test_files``. With separate files, the store gets a ``split`` column (0 train, 1 val,
2 test) and vocabularies and dense scalers are fitted on the train rows only: val/test values never seen in
training map to id 0, and their share is reported per field, domain and split (``report.json``).

Example config (``mdrec/conf/data/<name>.yaml``)::

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

import argparse
import glob
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mdrec.data.files import check_dataset_id, remove_stale_temporaries, temporary_path
from mdrec.data.ingest import EncodedTable, Fitted, TableSpec, encode_table, row_hashes
from mdrec.data.sources.raw import file_signature

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".txt": "csv"}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}  # a CSV/TSV file compressed whole: data.csv.gz
SPLITS = ("train", "validation", "test")  # split codes 0, 1, 2 (mdrec.data.schema.SPLIT_NAMES)
WARN_TRAIN_OVERLAP = 0.01  # above this share of val or test rows also in the train files, preparing warns

log = logging.getLogger(__name__)


class MissingColumnsError(ValueError):
    """A file lacks columns the spec names (the error names the file, the columns and those it has)."""


@dataclass
class RawRows:
    """The rows of every file, parsed, in file order: ``rows``, the spec with its column patterns expanded against
    the first file's header (``spec``), the rows of each file (``input_rows``), the split code of each file
    (``file_splits``: 0 train, 1 validation, 2 test) and of each row (``split [rows]`` int8); both None for
    ``data_files``."""

    rows: pa.Table
    spec: TableSpec
    input_rows: dict[str, int]
    file_splits: list[int] | None
    split: np.ndarray | None


def _file_list(files: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if files is None:
        return None
    return (str(files),) if isinstance(files, str | Path) else tuple(str(f) for f in files)


_GUARD = "\x00"  # the value of every field of the guard row appended to a CSV file (see _unguarded)


def _suffixes(path: str) -> tuple[str, str | None]:
    """The format suffix of ``path`` in lower case and its compression (None: none), e.g. ``('.csv', 'gzip')`` for
    ``x.CSV.gz``."""
    name = Path(path).name.lower()
    compression = COMPRESSIONS.get(Path(name).suffix)
    return Path(Path(name).stem if compression else name).suffix, compression


class _Appended(io.RawIOBase):
    """The bytes of the stream ``head``, then ``tail``."""

    def __init__(self, head: BinaryIO, tail: bytes) -> None:
        self._parts: list[BinaryIO] = [head, io.BytesIO(tail)]  # each closed when read to its end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:
        while self._parts:
            if n := self._parts[0].readinto(buffer):
                return n
            self._parts.pop(0).close()
        return 0


def _csv_options(delimiter: str) -> dict:
    """How every CSV/TSV file is split into rows and fields: one thread (so errors name the row), quoted values may
    hold line breaks."""
    return {
        "parse_options": pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        "read_options": pacsv.ReadOptions(use_threads=False),
    }


def _open(path: str) -> pa.NativeFile:
    """The bytes of the file ``path``, decompressed when its extension names a compression (``COMPRESSIONS``)."""
    return pa.input_stream(path, compression=_suffixes(path)[1])


def _unguarded(batches: Iterable[pa.RecordBatch], columns: list[str], where: str) -> Iterator[pa.RecordBatch]:
    """``columns`` of the rows of a CSV file read with a guard row of ``_GUARD`` values appended, less that row.

    Arrow closes a quoted value that the end of the file leaves open, which a truncated file does: the guard row
    then becomes part of that value, and its absence is the error.
    """
    held = None  # the last batch with rows, held back until the next one shows it is not the last
    for batch in batches:
        if batch.num_rows:
            if held is not None:
                yield held.select(columns)
            held = batch
    if held is None or held.column(held.num_columns - 1)[-1].as_py() != _GUARD:
        raise ValueError(
            f"{where}: the file ends inside a quoted value (it is truncated, or a quote is not closed); export it again"
        )
    yield held.slice(0, held.num_rows - 1).select(columns)


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
        delimiter: CSV separator; None: tab for ``.tsv`` (``.tsv.gz``, ...), comma otherwise. Ignored for parquet.
        max_train_overlap: with ``train_files``, the largest share of the val rows, and of the test rows, that may
            also appear whole (every spec column equal) in the train files; above it preparing is refused, naming
            the files and the share (above 1 % it warns). The shares are in ``report.json``
            (``rows_also_in_train``). 1.0 accepts any.

    Example:
        >>> csv = tmp_dir / "shop.csv"
        >>> _ = csv.write_text("user,item,region,click\\nu1,7,north,1\\nu2,8,south,0\\nu1,9,north,0\\n")
        >>> spec = TableSpec(sparse=("user", "item"), domain="region", labels=("click",))
        >>> src = TabularSource("shop", spec, data_files=str(csv))
        >>> src.prepare(tmp_dir / "shop", tmp_dir / "raw")
        >>> json.loads((tmp_dir / "shop" / "report.json").read_text())["rows_per_domain"]
        {'north': 2, 'south': 1}
    """

    name: str
    spec: TableSpec
    data_files: str | Sequence[str] | None = None
    train_files: str | Sequence[str] | None = None
    val_files: str | Sequence[str] | None = None
    test_files: str | Sequence[str] | None = None
    delimiter: str | None = None
    max_train_overlap: float = 0.5

    def __post_init__(self) -> None:
        check_dataset_id(self.name, "data.source.name")
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
        if not 0.0 <= self.max_train_overlap <= 1.0:
            raise ValueError(
                f"data set {self.name!r}: max_train_overlap {self.max_train_overlap!r} must be a share in [0, 1]"
            )
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise ValueError(f"data set {self.name!r}: delimiter {self.delimiter!r} must be one character, not a quote")
        nul = [c for c in self.spec.columns() if "\x00" in c]
        if nul:
            raise ValueError(f"data set {self.name!r}: column name(s) {nul} hold a NUL character; rename them")
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
        suffix, compression = _suffixes(path)
        if FORMATS.get(suffix) is None or (compression is not None and FORMATS[suffix] == "parquet"):
            raise ValueError(
                f"data set {self.name!r}: cannot tell the format of {path!r} from its extension; use one of "
                f"{sorted(FORMATS)}, CSV/TSV/TXT optionally compressed as {sorted(COMPRESSIONS)} (e.g. data.csv.gz; "
                "parquet compresses its own columns)"
            )
        return FORMATS[suffix]

    def _delimiter(self, path: str) -> str:
        return self.delimiter or ("\t" if _suffixes(path)[0] == ".tsv" else ",")

    def _paths(self, pattern: str) -> list[str]:
        """The files a path or glob pattern names; raises if there are none."""
        paths = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not paths or not Path(paths[0]).is_file():
            raise FileNotFoundError(f"data set {self.name!r}: file {pattern!r} does not exist")
        return paths

    def _read(self, path: str, delimiter: str, columns: list[str], cache_dir: Path) -> pa.Table:
        """``columns`` of one file, memory-mapped from the Arrow copy under ``cache_dir`` that one parse writes (and
        later runs reuse while the file's size and modification time are unchanged)."""
        key = json.dumps([file_signature([Path(path)]), delimiter, columns])
        arrow = cache_dir / f"{Path(path).name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.arrow"
        if not arrow.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            part = temporary_path(arrow)
            try:
                with self._errors(path, delimiter):
                    batches = self._batches(path, delimiter, columns)
                    with pa.ipc.new_stream(part, batches.schema) as out:
                        for batch in batches:
                            out.write_batch(batch)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            part.replace(arrow)
        return pa.ipc.open_stream(pa.memory_map(str(arrow))).read_all()  # buffers point into the mapped file

    def _header(self, path: str, delimiter: str) -> list[str]:
        """The column names of ``path`` (a CSV/TSV file's first line, parsed as the rows are)."""
        if self._format(path) == "parquet":
            return pq.read_schema(path).names
        with _open(path) as stream:
            return pacsv.open_csv(stream, **_csv_options(delimiter)).schema.names  # parses the first block only

    def _batches(self, path: str, delimiter: str, columns: list[str]) -> pa.RecordBatchReader:
        """``columns`` of ``path``, once its header is checked.

        A CSV/TSV file is parsed by Arrow, one thread (so errors name the row): a row with more or fewer fields than
        the header is refused, every column is read as text (so text that is not UTF-8 is refused, in any column)
        and only an empty field is missing.
        """
        where = f"data set {self.name!r}, file {path!r}"
        if self._format(path) == "parquet":
            file = pq.ParquetFile(path)
            self._check_header(where, file.schema_arrow.names, "", columns)
            schema = pa.schema([file.schema_arrow.field(c) for c in columns])
            return pa.RecordBatchReader.from_batches(schema, file.iter_batches(columns=columns))
        header = self._header(path, delimiter)
        self._check_header(where, header, delimiter, columns)
        text = pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=True, null_values=[""]
        )
        guard = "\n" + delimiter.join([_GUARD] * len(header)) + "\n"
        reader = pacsv.open_csv(_Appended(_open(path), guard.encode()), convert_options=text, **_csv_options(delimiter))
        schema = pa.schema([(c, pa.string()) for c in columns])
        return pa.RecordBatchReader.from_batches(schema, _unguarded(reader, columns, where))

    @contextmanager
    def _errors(self, path: str, delimiter: str) -> Iterator[None]:
        """Arrow's errors reading ``path`` as a ValueError naming the file and saying what its format must be."""
        try:
            yield
        except (pa.ArrowException, OSError) as e:
            where = f"data set {self.name!r}, file {path!r}"
            if self._format(path) == "parquet":
                raise ValueError(f"{where}: cannot read it as parquet ({e}); is it complete? Export it again") from e
            compression = _suffixes(path)[1]
            compressed = f", {compression}-compressed as its extension says (is it complete?)" if compression else ""
            raise ValueError(
                f"{where}: cannot read it as CSV ({e}). It must be UTF-8 text{compressed}, a header row, then rows of "
                f"as many fields separated by {delimiter!r} (set `delimiter` for another separator); a row with too "
                "many or too few fields comes from a truncated file or a value holding the separator without quotes"
            ) from e

    def _check_header(self, where: str, names: list[str], delimiter: str, columns: list[str]) -> None:
        """Raise unless the header ``names`` each of ``columns`` exactly once."""
        missing = [c for c in columns if c not in names]
        if missing:
            hint = f" (split at {delimiter!r}: set `delimiter` if the file uses another separator)" if delimiter else ""
            raise MissingColumnsError(
                f"{where}: column(s) {missing} named in the spec are not in the data; available columns: {names}{hint}"
            )
        twice = sorted({c for c in columns if names.count(c) > 1})
        if twice:
            raise ValueError(f"{where}: the header names column(s) {twice} more than once; rename or drop the copies")

    def _check_distinct(self, files: list[tuple[str, str]]) -> None:
        """Raise if a file (compared by resolved path) comes more than once from the expanded file lists."""
        options = {"train": "train_files", "validation": "val_files", "test": "test_files"}
        seen: dict[Path, list[str]] = {}
        for split, path in files:
            option = "data_files" if self.data_files is not None else options[split]
            seen.setdefault(Path(path).resolve(), []).append(option)
        twice = [
            f"{str(path)!r} ({len(listed)} times, by {' and '.join(dict.fromkeys(listed))})"
            for path, listed in seen.items()
            if len(listed) > 1
        ]
        if twice:
            raise ValueError(
                f"data set {self.name!r}: file(s) listed more than once, so their rows would be read more than once: "
                f"{'; '.join(twice)}. List each file once: remove the repeat, or narrow the glob pattern that also "
                "matches it (e.g. `train/*.csv`, not `*.csv`, when the val/test files lie beside the train files)"
            )

    def _cast(self, part: pa.Table, path: str, schema: pa.Schema, first: str) -> pa.Table:
        """``part``, read from ``path``, with the column types of the first file, ``first`` (``schema``)."""
        if part.schema.equals(schema):
            return part
        try:
            return part.cast(schema)
        except (pa.ArrowException, ValueError, TypeError) as e:
            theirs = ", ".join(f"{f.name}: {f.type}" for f in part.schema)
            ours = ", ".join(f"{f.name}: {f.type}" for f in schema)
            raise ValueError(
                f"data set {self.name!r}: file {path!r} has columns ({theirs}) that cannot be read as those of "
                f"{first!r}, ({ours}) ({e}); give every file the same column types"
            ) from e

    def read(self, raw_dir: Path) -> RawRows:
        """Parse every file once (Arrow-cached under ``raw_dir/arrow``; later calls read the cache)."""
        remove_stale_temporaries(Path(raw_dir) / "arrow")  # parses of earlier runs that were killed
        groups = self._splits()
        files = [(split, p) for split, group in groups.items() for pattern in group for p in self._paths(pattern)]
        self._check_distinct(files)
        first = files[0][1]
        delimiter = self._delimiter(first)
        with self._errors(first, delimiter):
            spec = self.spec.expand(self._header(first, delimiter), f"data set {self.name!r}, file {first!r}")
        if spec != self.spec:  # patterns: every file must give them the same columns, whatever the files' order
            for _, path in files[1:]:
                with self._errors(path, delimiter):
                    other = self.spec.expand(self._header(path, delimiter), f"data set {self.name!r}, file {path!r}")
                if other != spec:
                    raise ValueError(
                        f"data set {self.name!r}: the column patterns {list(self.spec.sparse)} / "
                        f"{list(self.spec.dense)} give sparse {list(other.sparse)} and dense {list(other.dense)} in "
                        f"{path!r} but sparse {list(spec.sparse)} and dense {list(spec.dense)} in {first!r}: give "
                        "every file the same columns, or name the columns instead of matching them"
                    )
        columns = spec.columns()
        parts = [self._read(p, delimiter, columns, Path(raw_dir) / "arrow") for _, p in files]
        for split in groups:
            if not sum(len(part) for (s, _), part in zip(files, parts, strict=True) if s == split):
                group = [p for s, p in files if s == split]
                raise ValueError(f"data set {self.name!r}: the {split} file(s) {group} hold no rows, a header only")
        parts = [self._cast(part, path, parts[0].schema, first) for (_, path), part in zip(files, parts, strict=True)]
        table = pa.concat_tables(parts)
        input_rows = {path: len(part) for (_, path), part in zip(files, parts, strict=True)}
        if self.data_files is not None:
            return RawRows(table, spec, input_rows, None, None)
        codes = [SPLITS.index(s) for s, _ in files]
        split = np.repeat(np.array(codes, dtype=np.int8), [len(part) for part in parts])
        return RawRows(table, spec, input_rows, codes, split)

    def encode(self, raw_dir: Path, fitted: Fitted | None = None) -> EncodedTable:
        """Parse every file once (:meth:`read`) and encode them (:meth:`encode_rows`)."""
        return self.encode_rows(self.read(raw_dir), fitted)

    def encode_rows(self, raw: RawRows, fitted: Fitted | None = None) -> EncodedTable:
        """Encode the parsed files ``raw`` with ``encode_table`` (with ``fitted``: the vocabularies, scalers and known
        domains of an earlier preparation, ``mdrec.data.ingest.Fitted``)."""
        if raw.split is None or raw.file_splits is None:
            encoded = encode_table(raw.rows, raw.spec, self.dataset_id, input_rows=raw.input_rows, fitted=fitted)
        else:
            encoded = encode_table(
                raw.rows,
                raw.spec,
                self.dataset_id,
                vocab_mask=raw.split == 0,
                split=raw.split,
                input_rows=raw.input_rows,
                fitted=fitted,
            )
            encoded.report["rows_also_in_train"] = self._check_overlap(raw)
        encoded.report["input_rows"] = raw.input_rows
        return encoded

    def _check_overlap(self, raw: RawRows) -> dict:
        """The share of the validation and of the test rows (and of each of their files) that also appear whole in
        the train files (``row_hashes``) of ``raw``, the files with their own split; warns above
        ``WARN_TRAIN_OVERLAP``, raises above ``max_train_overlap``."""
        table, codes, input_rows, split = raw.rows, raw.file_splits, raw.input_rows, raw.split
        hashes = row_hashes(table, table.column_names)
        in_train = np.isin(hashes, hashes[split == 0])
        file_of_row = np.repeat(np.arange(len(codes)), list(input_rows.values()))
        per_file = np.bincount(file_of_row, weights=in_train, minlength=len(codes)) / list(input_rows.values())
        files = list(zip(input_rows, codes, per_file.tolist(), strict=True))  # (path, split code, share)
        shares = {name: float(in_train[split == code].mean()) for code, name in ((1, "val"), (2, "test"))}
        report = {**shares, "files": {path: share for path, code, share in files if code != 0}}
        for code, name in ((1, "val"), (2, "test")):
            if shares[name] <= WARN_TRAIN_OVERLAP:
                continue
            shared, rows = int(in_train[split == code].sum()), int((split == code).sum())
            listed = ", ".join(f"{path!r} ({share:.1%})" for path, c, share in files if c == code)
            what = (
                f"data set {self.name!r}: {shares[name]:.1%} of the {name} rows ({shared} of {rows}; per file: "
                f"{listed}) also appear, every spec column equal, in the train file(s) "
                f"{[path for path, c, _ in files if c == 0]}"
            )
            if shares[name] > self.max_train_overlap:
                raise ValueError(
                    f"{what}: above max_train_overlap = {self.max_train_overlap}, so {name} metrics would measure "
                    f"memorised rows. Give {name} files that do not repeat the training rows (is one a copy of a "
                    "train file?), or raise `max_train_overlap` (1.0 accepts any) if the repeats are genuine (few "
                    "low-cardinality columns, no time column)"
                )
            log.warning("%s: its metrics partly measure memorised rows", what)
        return report

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory``; parsed files are cached under ``raw_dir/arrow``."""
        self.encode(raw_dir).write(directory)


EXAMPLE_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}  # shares of the example's rows per file


def write_example(directory: Path, rows: int = 5000, seed: int = 0) -> dict[str, Path]:
    """Write a toy shop log as ``train.csv``, ``val.csv`` and ``test.csv`` (80/10/10 of ``rows``) into ``directory``,
    to try ``data=tabular`` on (README, Your own files).

    Columns: ``user`` (300 users), ``item`` (200 items), ``cat_a``, ``cat_b``, ``cat_c`` (item categories), ``price``,
    ``region`` (the domain: north, south, west, 50/30/20 % of the rows) and ``click``, drawn with a probability that
    depends on the item, its ``cat_a``, the region and the price.

    Returns:
        split name -> the file written.
    """
    rng = np.random.default_rng(seed)
    item = rng.integers(0, 200, rows)
    cats = {name: rng.integers(0, size, 200) for name, size in (("cat_a", 8), ("cat_b", 20), ("cat_c", 50))}
    region = rng.choice(3, rows, p=[0.5, 0.3, 0.2])
    price = np.round(rng.lognormal(3.0, 0.5, 200), 2)
    logit = rng.normal(0, 1, 200)[item] + rng.normal(0, 0.5, (3, 8))[region, cats["cat_a"][item]]
    logit += np.array([-1.0, -0.5, 0.0])[region] - 0.5 * (np.log(price[item]) - 3.0)
    table = pa.table(
        {
            "user": np.char.add("u", rng.integers(0, 300, rows).astype(str)),
            "item": item,
            **{name: np.char.add(name[-1], values[item].astype(str)) for name, values in cats.items()},
            "price": price[item],
            "region": np.array(["north", "south", "west"])[region],
            "click": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8),
        }
    )
    directory.mkdir(parents=True, exist_ok=True)
    ends = np.round(np.cumsum(list(EXAMPLE_SPLITS.values())) * rows).astype(int)
    files = {}
    for (split, end), start in zip(zip(EXAMPLE_SPLITS, ends, strict=True), [0, *ends[:-1]], strict=True):
        files[split] = directory / f"{split}.csv"
        pacsv.write_csv(table.slice(start, end - start), files[split])
    return files


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mdrec.data.sources.tabular --example DIR``: write the example files (``write_example``)."""
    parser = argparse.ArgumentParser(description="Write example train/val/test CSV files for data=tabular.")
    parser.add_argument("--example", type=Path, required=True, metavar="DIR", help="the folder to write them into")
    parser.add_argument("--rows", type=int, default=5000, help="rows in all (80/10/10 %% per file)")
    args = parser.parse_args(argv)
    for path in write_example(args.example, args.rows).values():
        print(path)


if __name__ == "__main__":
    main()
