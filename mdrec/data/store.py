"""Prepared data on disk: one ``.npy`` array per column beside ``schema.json``, memory-mapped on open.

Layout of a prepared directory::

    schema.json            the Schema
    columns/<name>.npy     one array per column (sparse/seq int32, dense/labels float32, domain int32)
    vocab/<field>.json     optional: the raw value of each id (index i holds id i + 1)
    report.json            optional: what the preparation did (rows, unseen-value shares, ...)
    checksums.json         the size and sha256 of each column file, as written

``ColumnStore`` checks every column file's size on open, and with ``validate`` (the default) its sha256 too: a
column truncated, emptied or modified after it was written is refused, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import mmap as _mmap
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from mdrec.data.batch import Batch
from mdrec.data.files import PLAIN_FILE_NAME, is_plain_file_name, remove_stale_temporaries, temporary_path
from mdrec.data.schema import SCHEMA_FILE, SPLIT_COLUMN, SPLIT_NAMES, Schema, seq_length_column

COLUMNS_DIR = "columns"
VOCAB_DIR = "vocab"
REPORT_FILE = "report.json"
CHECKSUMS_FILE = "checksums.json"
_CHECK_CHUNK = 1 << 20  # rows per chunk when validating memory-mapped columns


def column_dtypes(schema: Schema) -> dict[str, np.dtype]:
    """The on-disk dtype of every column of ``schema``."""
    dtypes: dict[str, np.dtype] = {}
    for name in schema.sparse_names:
        dtypes[name] = np.dtype(np.int32)
    for name in [*schema.dense, *schema.labels, *schema.oracle_columns.values()]:
        dtypes[name] = np.dtype(np.float32)
    dtypes[schema.domain_field] = np.dtype(np.int32)
    if schema.sequence is not None:
        dtypes[schema.sequence.name] = np.dtype(np.int32)
        dtypes[seq_length_column(schema.sequence.name)] = np.dtype(np.int32)
    if schema.time_column is not None:
        dtypes[schema.time_column] = np.dtype(np.int64)
    if schema.has_split_column:
        dtypes[SPLIT_COLUMN] = np.dtype(np.int8)
    return dtypes


def check_columns(
    schema: Schema,
    columns: Mapping[str, np.ndarray],
    offset: int = 0,
    after_chunk: Callable[[int, int], None] | None = None,
) -> int:
    """Check that ``columns`` hold exactly what ``schema`` says; return the row count.

    Raises ``ValueError`` naming the column, the first offending row and its value for: a missing column,
    a shape other than ``[rows]`` (``[rows, L]`` for the sequence), unequal lengths, NaN/inf in a float column,
    labels outside {0, 1}, negative ids, ids beyond the vocabulary, domain ids outside 0..K-1, split codes outside
    0..2 and zero rows.

    Args:
        schema: what the columns must hold.
        columns: one array per column (memory-mapped ones are read in chunks of rows).
        offset: the row of the whole data set that the first row of ``columns`` is (``columns`` is a chunk of it),
            so that errors name the row in the whole data set.
        after_chunk: called after each chunk of rows is checked, in row order, with the chunk's first row and one
            past its last (rows of ``columns``): a store opening adds the chunk to its checksums and, memory-mapped,
            drops the pages it read.
    """
    n = _row_count(schema, columns)
    if n == 0:
        raise ValueError(f"data set {schema.dataset_id!r} has no rows")
    _check_values(schema, columns, n, offset, after_chunk)
    return n


def _row_count(schema: Schema, columns: Mapping[str, np.ndarray]) -> int:
    """The row count of ``columns``, after checking that every column is there with its shape and length."""
    missing = [c for c in schema.columns() if c not in columns]
    if missing:
        raise ValueError(
            f"data set {schema.dataset_id!r}: column(s) {missing} named by the schema are missing "
            f"(present: {sorted(columns)}); the schema does not match the data: re-prepare it"
        )
    seq = schema.sequence
    for name in schema.columns():
        shape = np.shape(columns[name])
        width = (seq.max_len,) if seq is not None and name == seq.name else ()
        if len(shape) != 1 + len(width) or shape[1:] != width:
            expected = f"[rows, {width[0]}]" if width else "[rows]"
            raise ValueError(
                f"data set {schema.dataset_id!r}: column {name!r} has shape {shape}, expected {expected}; the schema "
                "does not match the data: re-prepare it"
            )
    lengths = {name: len(columns[name]) for name in schema.columns()}
    n = lengths[schema.domain_field]
    if any(v != n for v in lengths.values()):
        raise ValueError(f"data set {schema.dataset_id!r}: columns differ in length {lengths}")
    return n


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_RANGE = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))


def _check_values(
    schema: Schema,
    columns: Mapping[str, np.ndarray],
    n: int,
    offset: int,
    after_chunk: Callable[[int, int], None] | None,
) -> None:
    """The value checks of ``check_columns`` on ``n`` rows whose first is row ``offset`` of the data set."""
    seq = schema.sequence
    vocab = dict(zip(schema.sparse_names, schema.vocab_sizes, strict=True))
    int_ranges: dict[str, tuple[int, int, str]] = {name: (0, size - 1, "an id") for name, size in vocab.items()}
    int_ranges[schema.domain_field] = (
        0,
        schema.num_domains - 1,
        f"a domain id (domains: {list(schema.domains)})",
    )
    if seq is not None:
        int_ranges[seq.name] = (0, vocab[seq.vocab_field] - 1, f"an id of {seq.vocab_field!r}")
        int_ranges[seq_length_column(seq.name)] = (0, seq.max_len, "a sequence length")
    if schema.has_split_column:
        int_ranges[SPLIT_COLUMN] = (0, len(SPLIT_NAMES) - 1, f"a split code (0..2 = {SPLIT_NAMES})")
    if schema.time_column is not None:  # integers: a float time (NaN included) would be truncated when stored
        int_ranges[schema.time_column] = (*_INT64_RANGE, "an integer time stamp")
    for start in range(0, n, _CHECK_CHUNK):
        stop = min(n, start + _CHECK_CHUNK)
        row = offset + start  # the data set's row of the chunk's first row
        for name, (lo, hi, what) in int_ranges.items():
            _check_range(schema, name, np.asarray(columns[name][start:stop]), row, lo, hi, what)
        for name in [*schema.dense, *schema.oracle_columns.values()]:
            chunk = np.asarray(columns[name][start:stop])
            bad = ~np.isfinite(chunk) | (np.abs(chunk) > _FLOAT32_MAX)  # stored as float32: beyond its range is inf
            if bad.any():
                _raise_at(
                    schema,
                    name,
                    chunk,
                    bad,
                    row,
                    "is not a finite float32; fill or drop missing values (or rescale) before preparing",
                )
        for name in schema.labels:
            chunk = np.asarray(columns[name][start:stop])
            bad = (chunk != 0) & (chunk != 1)
            if bad.any():
                _raise_at(schema, name, chunk, bad, row, "is not a binary label (0 or 1)")
        if after_chunk is not None:
            after_chunk(start, stop)


def _check_range(schema: Schema, name: str, chunk: np.ndarray, offset: int, lo: int, hi: int, what: str) -> None:
    if not np.issubdtype(chunk.dtype, np.integer):
        raise ValueError(f"data set {schema.dataset_id!r}: column {name!r} has dtype {chunk.dtype}, expected integers")
    bad = (chunk < lo) | (chunk > hi)
    if bad.any():
        _raise_at(schema, name, chunk, bad, offset, f"is not {what} in {lo}..{hi}")


def _raise_at(schema: Schema, name: str, chunk: np.ndarray, bad: np.ndarray, offset: int, problem: str) -> None:
    bad_rows = np.flatnonzero(bad.reshape(len(chunk), -1).any(axis=1))  # a sequence column is [rows, L]
    row = int(bad_rows[0])
    raise ValueError(
        f"data set {schema.dataset_id!r}, column {name!r}, row {offset + row}: value {chunk[row].tolist()!r} {problem} "
        f"({len(bad_rows)} such row(s) in rows {offset}..{offset + len(chunk) - 1})"
    )


class StoreWriter:
    """Writes a prepared directory chunk of rows by chunk, so no more than one chunk need be in memory.

    The column files are preallocated at their full size (``np.lib.format.open_memmap``: the ``.npy`` header that
    ``np.save`` writes) in a temporary sibling of ``directory``. ``write`` checks a chunk as ``check_columns`` does,
    errors naming the row of the whole data set, casts it to the dtypes of ``column_dtypes`` and writes it after
    the rows written before, with plain file writes (nothing is mapped into this process, so its resident memory
    does not grow with the data), and adds them to the column's sha256. ``commit`` checks that all ``num_rows``
    rows were written, adds vocabularies, report, checksums and schema and renames the directory into place.
    Leaving the ``with`` block without committing (an error) removes the temporary directory: a crash never leaves
    a half-written store behind. A killed process does leave its temporary (``mdrec.data.files.temporary_path``:
    its pid is in the name); the next writer in the same parent directory removes those of processes that are
    gone. A column name that cannot name its file (``mdrec.data.files.PLAIN_FILE_NAME``) is refused before
    anything is written.

    Args:
        directory: the prepared directory to write (replaced if it exists, on commit).
        schema: the columns to write.
        num_rows: rows of the whole data set.

    Example:
        >>> with StoreWriter(tmp_dir / "toy", schema, num_rows=32) as writer:
        ...     for start in (0, 16):  # chunks: one [16] array per column, in row order
        ...         writer.write({name: column[start : start + 16] for name, column in columns.items()})
        ...     path = writer.commit(report={"rows": 32})
        >>> len(ColumnStore(path)), sorted(p.name for p in path.iterdir())
        (32, ['checksums.json', 'columns', 'report.json', 'schema.json'])
    """

    def __init__(self, directory: str | Path, schema: Schema, num_rows: int) -> None:
        self.directory = Path(directory)
        self.schema = schema
        unsafe = [c for c in schema.columns() if not is_plain_file_name(c)]
        if unsafe:
            raise ValueError(
                f"data set {schema.dataset_id!r}: column name(s) {unsafe} cannot name a file (columns/<name>.npy); "
                f"rename them: each must be {PLAIN_FILE_NAME}"
            )
        if num_rows < 1:
            raise ValueError(f"data set {schema.dataset_id!r} has no rows")
        self.num_rows = num_rows
        self.rows_written = 0
        self._dtypes = column_dtypes(schema)
        remove_stale_temporaries(self.directory.parent)  # of earlier writers that were killed
        self._tmp = temporary_path(self.directory)
        (self._tmp / COLUMNS_DIR).mkdir(parents=True)
        self._offsets: dict[str, int] = {}  # column -> byte offset of its data (the header's length)
        self._digests: dict[str, hashlib._Hash] = {}  # column -> sha256 of the bytes written so far, in file order
        try:
            for name in schema.columns():
                width = (schema.sequence.max_len,) if schema.sequence and name == schema.sequence.name else ()
                array = np.lib.format.open_memmap(
                    self._path(name), mode="w+", dtype=self._dtypes[name], shape=(num_rows, *width)
                )
                self._offsets[name] = array.offset
                del array  # unmapped: the data is written with file writes
                with open(self._path(name), "rb") as f:
                    self._digests[name] = hashlib.sha256(f.read(self._offsets[name]))  # the .npy header
        except BaseException:
            shutil.rmtree(self._tmp)
            raise

    def _path(self, name: str) -> Path:
        return self._tmp / COLUMNS_DIR / f"{name}.npy"

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp.exists():  # not committed: an error left the block
            shutil.rmtree(self._tmp)

    def write(self, columns: Mapping[str, np.ndarray]) -> None:
        """Check ``columns`` (one array per column of the schema, equal lengths) and write them as the next rows."""
        if not self._tmp.exists():
            raise RuntimeError(f"the store writer of {self.directory} is committed or closed: it takes no more rows")
        n = _row_count(self.schema, columns)
        if self.rows_written + n > self.num_rows:
            raise ValueError(
                f"data set {self.schema.dataset_id!r}: {n} more rows after {self.rows_written} exceed the "
                f"{self.num_rows} rows announced"
            )
        if n == 0:
            return
        _check_values(self.schema, columns, n, self.rows_written, None)
        for name in self.schema.columns():
            array = np.ascontiguousarray(columns[name], dtype=self._dtypes[name])
            with open(self._path(name), "r+b") as f:
                f.seek(self._offsets[name] + self.rows_written * (array.nbytes // n))
                f.write(array.data)
            self._digests[name].update(array.data)  # rows arrive in order: the digest follows the file
        self.rows_written += n

    def commit(
        self,
        vocabularies: Mapping[str, list[str]] | None = None,
        report: Mapping[str, object] | None = None,
    ) -> Path:
        """Write vocabularies, report and schema beside the columns and rename the directory into place."""
        if self.rows_written != self.num_rows:
            raise ValueError(
                f"data set {self.schema.dataset_id!r}: {self.rows_written} of the {self.num_rows} rows announced "
                "were written; the store is not committed"
            )
        tmp = self._tmp
        if vocabularies:
            (tmp / VOCAB_DIR).mkdir()
            for name, values in vocabularies.items():
                (tmp / VOCAB_DIR / f"{name}.json").write_text(json.dumps(values))
        (tmp / REPORT_FILE).write_text(json.dumps(dict(report or {}), indent=2, default=str))
        checksums = {
            name: {"bytes": self._path(name).stat().st_size, "sha256": digest.hexdigest()}
            for name, digest in self._digests.items()
        }
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(checksums, indent=2))
        self.schema.save(tmp)
        if self.directory.exists():
            shutil.rmtree(self.directory)
        os.replace(tmp, self.directory)
        return self.directory


def write_store(
    directory: str | Path,
    schema: Schema,
    columns: Mapping[str, np.ndarray],
    vocabularies: Mapping[str, list[str]] | None = None,
    report: Mapping[str, object] | None = None,
) -> Path:
    """Validate ``columns`` against ``schema`` and write a prepared directory atomically: a ``StoreWriter`` given
    all rows as one chunk (see there for the checks, the dtypes and the atomic rename)."""
    with StoreWriter(directory, schema, _row_count(schema, columns)) as writer:
        writer.write(columns)
        return writer.commit(vocabularies, report)


class ColumnStore:
    """A prepared data set opened column by column (memory-mapped by default).

    Args:
        directory: a prepared directory (see the module docstring).
        mmap: memory-map the columns (True) or read them into RAM (False).
        validate: check every value against the schema and every column file against its sha256 on open, in one
            pass over the data (the sha256 adds about 50 ms per 76 MB, 1M rows of the synthetic default). Each
            column file's size is checked either way.
        release_pages: with memory-mapped columns, drop each column's pages from this process's mapping as soon as
            a read is done with them (``release_pages()`` after each column of ``take``, after each chunk of the
            validation on open). Every page a read touches otherwise stays mapped and counts in the process's
            resident memory (RssFile): a shuffled epoch maps all of it, so RSS grows to the data's size although
            those are clean page-cache pages the kernel can reclaim. Released, they stay in the page cache (the
            next read of one is a minor fault, no disk read) and RSS stays near the anonymous memory in use.

    Example:
        >>> store = ColumnStore(write_store(tmp_dir / "toy", schema, columns))
        >>> batch = store.take(np.array([0, 5, 9]))
        >>> len(store), batch.sparse.shape, batch.domain.tolist()
        (32, torch.Size([3, 3]), [0, 2, 0])
    """

    def __init__(
        self, directory: str | Path, mmap: bool = True, validate: bool = True, release_pages: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.releases_pages = release_pages and mmap
        try:
            self.schema = Schema.load(self.directory)
        except (ValueError, KeyError, TypeError) as e:  # a malformed or edited schema.json
            raise ValueError(
                f"prepared data at {self.directory}: cannot read {SCHEMA_FILE} ({type(e).__name__}: {e}); "
                "delete the directory and prepare again"
            ) from e
        missing = [c for c in self.schema.columns() if not (self.directory / COLUMNS_DIR / f"{c}.npy").exists()]
        if missing:
            raise ValueError(
                f"prepared data at {self.directory} lacks column file(s) {missing} named by its schema; "
                "the schema does not match the data: delete the directory and prepare again"
            )
        self.columns = {c: self._load(c, mmap) for c in self.schema.columns()}
        dtypes = column_dtypes(self.schema)
        for name, col in self.columns.items():
            if col.dtype != dtypes[name]:
                raise ValueError(
                    f"prepared data at {self.directory}: column {name!r} has dtype {col.dtype}, the schema "
                    f"expects {dtypes[name]}; the schema does not match the data: prepare again"
                )
        checksums = self._checksums()
        if validate:
            self.num_rows = self._validate(checksums)
        else:
            self.num_rows = len(self.columns[self.schema.domain_field])
        s = self.schema
        self._sparse = [self.columns[n] for n in s.sparse_names]
        self._dense = [self.columns[n] for n in s.dense]
        self._labels = [self.columns[n] for n in s.labels]
        # In RAM, fields of one kind are also kept row-major ([rows, F]): a batch then reads each row's ids from
        # one place instead of F scattered ones. Memory-mapped stores gather per column.
        kinds = (self._sparse, self._dense, self._labels)
        self._blocks = None if mmap else tuple(_row_major(cols, self.num_rows) for cols in kinds)

    def _file(self, name: str) -> Path:
        return self.directory / COLUMNS_DIR / f"{name}.npy"

    def _validate(self, checksums: dict[str, dict]) -> int:
        """``check_columns``, hashing each chunk of rows while it checks them (one pass over the data), then each
        column's sha256 against ``checksums``; returns the row count."""
        digests = {}
        for name, column in self.columns.items():
            with open(self._file(name), "rb") as f:  # the .npy header: the bytes before the data
                digests[name] = hashlib.sha256(f.read(self._file(name).stat().st_size - column.nbytes))

        def after_chunk(start: int, stop: int) -> None:
            for name, digest in digests.items():
                digest.update(np.ascontiguousarray(self.columns[name][start:stop]).data)
            if self.releases_pages:
                self.release_pages()

        rows = check_columns(self.schema, self.columns, after_chunk=after_chunk)
        for name, digest in digests.items():
            if (found := digest.hexdigest()) != checksums[name]["sha256"]:
                self._changed(name, f"has sha256 {found}, {checksums[name]['sha256']} when written")
        return rows

    def _checksums(self) -> dict[str, dict]:
        """``checksums.json``, after checking each column file's size against it."""
        path = self.directory / CHECKSUMS_FILE
        try:
            checksums = json.loads(path.read_text())
            expected = {name: (int(checksums[name]["bytes"]), str(checksums[name]["sha256"])) for name in self.columns}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"prepared data at {self.directory}: cannot read the checksum of every column from {path} "
                f"({type(e).__name__}: {e}; prepared by an older mdrec?); delete the directory and prepare again"
            ) from e
        for name, (size, _) in expected.items():
            if (found := self._file(name).stat().st_size) != size:
                self._changed(name, f"has {found} bytes, {size} when written")
        return checksums

    def _changed(self, name: str, how: str) -> None:
        raise ValueError(
            f"prepared data at {self.directory}: column {name!r}, file {self._file(name)}, {how}: it was truncated, "
            f"emptied or modified after it was written; delete {self.directory} and prepare again"
        )

    def _load(self, name: str, mmap: bool) -> np.ndarray:
        """One column file, memory-mapped or read; raises naming the file when it is truncated or not an array."""
        path = self._file(name)
        try:
            return np.load(path, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(
                f"prepared data at {self.directory}: column {name!r}, file {path}, is truncated or not a numeric .npy "
                f"array ({e}); delete {self.directory} and prepare again"
            ) from e

    def __len__(self) -> int:
        return self.num_rows

    def release_pages(self) -> None:
        """Drop the pages of every memory-mapped column from this process's mapping (a no-op in RAM).

        ``madvise(MADV_DONTNEED)`` on each column's read-only shared mapping: the process's resident memory
        (RssFile) falls by those pages, which stay in the kernel's page cache; reading them again maps them again.
        """
        for col in self.columns.values():
            _drop_pages(col)

    def column(self, name: str) -> np.ndarray:
        """One column by name; raises naming the available columns."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r} in {self.directory}; columns: {sorted(self.columns)}")
        return self.columns[name]

    def vocabulary(self, field: str) -> list[str] | None:
        """The raw value of each id of ``field`` (index i holds id i + 1), or None if it was not kept."""
        path = self.directory / VOCAB_DIR / f"{field}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def report(self) -> dict:
        path = self.directory / REPORT_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def take(self, index: np.ndarray) -> Batch:
        """The rows at ``index`` as a Batch (columns gathered by fancy indexing; no per-row Python)."""
        release = self.releases_pages
        if self._blocks is not None:
            sparse, dense, labels = (block[index] for block in self._blocks)
        else:
            kinds = (self._sparse, self._dense, self._labels)
            sparse, dense, labels = (_gather(cols, index, release) for cols in kinds)
        seq = seq_lengths = None
        if self.schema.sequence is not None:
            seq = torch.from_numpy(_take(self.columns[self.schema.sequence.name], index, release).astype(np.int64))
            seq_lengths = torch.from_numpy(
                _take(self.columns[seq_length_column(self.schema.sequence.name)], index, release).astype(np.int64)
            )
        return Batch(
            sparse=torch.from_numpy(sparse).long(),
            dense=torch.from_numpy(dense),
            domain=torch.from_numpy(_take(self.columns[self.schema.domain_field], index, release).astype(np.int64)),
            labels=torch.from_numpy(labels),
            seq=seq,
            seq_lengths=seq_lengths,
        )


def _row_major(columns: list[np.ndarray], rows: int) -> np.ndarray:
    """Columns of one dtype stacked into a row-major ``[rows, len(columns)]`` array."""
    return np.stack(columns, axis=1) if columns else np.empty((rows, 0), dtype=np.float32)


def _gather(columns: list[np.ndarray], index: np.ndarray, release: bool = False) -> np.ndarray:
    """``[len(index), len(columns)]``: the rows at ``index`` of each column (``release``: see ``_take``)."""
    if not columns:
        return np.empty((len(index), 0), dtype=np.float32)
    out = np.empty((len(index), len(columns)), dtype=columns[0].dtype)
    for j, col in enumerate(columns):
        out[:, j] = _take(col, index, release)
    return out


def _take(column: np.ndarray, index: np.ndarray, release: bool) -> np.ndarray:
    """The rows at ``index`` of ``column``; ``release``: then drop the column's mapped pages (``_drop_pages``).

    Column by column, not once per batch: one batch of a few thousand random rows already touches nearly every
    page of a column (the kernel maps a whole page-cache folio, or a fault-around window of pages, per fault), so
    releasing after the batch would still let the batch map nearly all of the data.
    """
    rows = column[index]
    if release:
        _drop_pages(column)
    return rows


def _drop_pages(column: np.ndarray) -> None:
    """``madvise(MADV_DONTNEED)`` on the mapping of a memory-mapped column (``np.memmap`` keeps it in ``_mmap``);
    a no-op for an in-RAM column or where the platform has no ``madvise``."""
    mapping = getattr(column, "_mmap", None)
    if mapping is not None and not mapping.closed and hasattr(_mmap, "MADV_DONTNEED"):
        mapping.madvise(_mmap.MADV_DONTNEED)
