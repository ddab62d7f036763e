"""Raw-file helpers shared by the data sources: checked downloads (``pooch``), finding files, CSV parsing, key joins.

Everything is vectorised: CSV files are parsed by Arrow's multi-threaded reader (a whole file, or streamed in
blocks of ``block_bytes`` so a file larger than memory never sits in memory as text), and joins are hash lookups
(``pyarrow.compute.index_in``), never a Python loop per row.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import pooch
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mdrec.data.files import remove_stale_temporaries, temporary_path

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 10.0  # seconds a download may wait for data (per read, not for the whole transfer)
BLOCK_BYTES = 64 << 20  # bytes of CSV text parsed per streamed block
_COPY_BYTES = 1 << 20  # bytes per read while downloading

CsvSource = str | Path | BinaryIO
K = TypeVar("K")  # the keys a source names its raw files by


def md5_file(path: Path) -> str:
    """Hex md5 of a file, read in chunks (no whole-file copy in memory)."""
    return pooch.file_hash(str(path), alg="md5")


def is_cached(target: Path, md5: str) -> bool:
    """Whether ``target`` holds an earlier download: it exists and its md5 is ``md5``.

    A file whose md5 differs (a damaged download, another release) is logged and ignored; ``download`` replaces it.
    """
    if not target.exists():
        return False
    if (found := md5_file(target)) == md5:
        return True
    log.warning("%s: md5 %s is not the expected %s; ignoring it", target, found, md5)
    return False


def download(url: str, target: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """``url`` into ``target`` through ``pooch.retrieve``, its md5 checked; a ``target`` already there with that md5
    (``is_cached``) is returned as it is, one with another md5 is downloaded again.

    pooch downloads into a folder of its own, ``mdrec.data.files.temporary_path(target)``, checks the md5 and the
    file is renamed onto ``target``; the folder is deleted whatever happens (those of killed downloads are removed
    first), so nothing is left at ``target`` unless its md5 matches.

    Raises:
        OSError: the download failed (``requests``' errors and timeouts are ``OSError``\\ s).
        ValueError: the md5 of the downloaded bytes is not ``md5``, naming ``url``.
    """
    if is_cached(target, md5):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    part = temporary_path(target)
    downloader = pooch.HTTPDownloader(progressbar=False, chunk_size=_COPY_BYTES, timeout=timeout)
    try:
        path = pooch.retrieve(url, known_hash=f"md5:{md5}", fname=target.name, path=part, downloader=downloader)
        Path(path).replace(target)
    except ValueError as e:
        raise ValueError(f"{url}: {e}") from e
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return target


def _csv_options(
    columns: Mapping[str, pa.DataType],
    names: Sequence[str] | None,
    delimiter: str,
    quoted: bool,
    empty_as_null: bool,
    encoding: str,
    skip_rows: int,
    block_bytes: int | None,
) -> dict:
    read = pacsv.ReadOptions(
        column_names=None if names is None else list(names),
        skip_rows=skip_rows,
        encoding=encoding,
        **({} if block_bytes is None else {"block_size": block_bytes}),
    )
    return {
        "read_options": read,
        "parse_options": pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False),
        "convert_options": pacsv.ConvertOptions(
            column_types=dict(columns), include_columns=list(columns), strings_can_be_null=empty_as_null
        ),
    }


@contextmanager
def _format_errors(what: str, block_bytes: int | None) -> Iterator[None]:
    """Arrow's parse errors inside the block as ValueErrors naming ``what`` (a line longer than a streamed block,
    ``block_bytes``, gets its own advice)."""
    try:
        yield
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        if block_bytes is not None and "straddl" in str(e):
            raise ValueError(f"{what}: a line is longer than block_bytes={block_bytes}; raise block_bytes") from e
        raise ValueError(
            f"{what}: {e}. The file is not in the raw format this source reads (a damaged or partial download, "
            "or a different release); download it again"
        ) from e


def read_csv(
    source: CsvSource,
    columns: Mapping[str, pa.DataType],
    what: str,
    names: Sequence[str] | None = None,
    delimiter: str = ",",
    quoted: bool = False,
    empty_as_null: bool = False,
    encoding: str = "utf8",
    skip_rows: int = 0,
) -> pa.Table:
    """A whole CSV file as a table of ``columns`` (in that order, with those types).

    Args:
        source: a path or a binary file object.
        columns: column name -> Arrow type, for the columns to keep.
        what: names the file in error messages.
        names: every column of a headerless file, in order; None: the file's header names them.
        delimiter: field separator.
        quoted: honour ``"`` quoting (off: a quote is an ordinary character).
        empty_as_null: an empty string field is missing (null) rather than the value ``""``.
        encoding: text encoding.
        skip_rows: lines skipped before the header (or the data, for a headerless file).

    Raises:
        ValueError: naming ``what`` and Arrow's reason (wrong column count, a value of the wrong type, ...), or
            saying the file holds no rows.
    """
    options = _csv_options(columns, names, delimiter, quoted, empty_as_null, encoding, skip_rows, None)
    with _format_errors(what, None):
        table = pacsv.read_csv(source, **options)
    _check_rows(table.num_rows, what)
    return table


def stream_csv(
    source: CsvSource,
    columns: Mapping[str, pa.DataType],
    what: str,
    names: Sequence[str] | None = None,
    delimiter: str = ",",
    quoted: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[pa.RecordBatch]:
    """The CSV file as record batches of about ``block_bytes`` of text each; arguments as ``read_csv``.

    A line longer than ``block_bytes`` is an error (Arrow's "straddling" message): raise ``block_bytes``. A file
    without rows is an error once the stream ends, as in ``read_csv``.
    """
    options = _csv_options(columns, names, delimiter, quoted, False, "utf8", 0, block_bytes)
    rows = 0
    with _format_errors(what, block_bytes):
        for batch in pacsv.open_csv(source, **options):
            rows += batch.num_rows
            yield batch
    _check_rows(rows, what)


def _check_rows(rows: int, what: str) -> None:
    """Raise unless the file ``what`` held rows (Arrow reads a header-only or blank file as no rows)."""
    if not rows:
        raise ValueError(
            f"{what} holds no rows (a header or blank lines at most); the file is empty or truncated: download or "
            "extract it again"
        )


class KeyIndex:
    """The unique keys of one table's rows, to join other rows onto that table (a hash lookup, no loop).

    Args:
        keys: ``[m]`` the key of each row of the table joined onto.
        what: names the table and its key column in error messages.

    Raises:
        ValueError: a key occurs more than once (a join on it would be ambiguous), naming the key.

    Example:
        >>> index = KeyIndex(pa.array(["a", "b"]), "users.csv, column 'user'")
        >>> index.rows(pa.array(["b", "z", "a"])).tolist()
        [1, -1, 0]
    """

    def __init__(self, keys: pa.Array | pa.ChunkedArray, what: str) -> None:
        self.keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        counts = pc.value_counts(self.keys)
        repeated = pc.greater(counts.field("counts"), 1)
        if pc.any(repeated).as_py():
            first = counts.filter(repeated)[0]
            raise ValueError(
                f"{what}: key {first['values'].as_py()!r} occurs {first['counts'].as_py()} times "
                f"({pc.sum(repeated).as_py()} repeated key(s)); each key must name one row, so the file is "
                "damaged or not from this data set"
            )

    def rows(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """``[n]`` int64: the row holding each of ``keys``, -1 where no row does."""
        found = pc.index_in(keys, value_set=self.keys)
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def file_signature(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """Path, size and modification time of each file (a source's ``input_signature``)."""
    return [(str(p), (st := os.stat(p)).st_size, st.st_mtime_ns) for p in paths]


def found_signature(find: Callable[[], Iterable[Path]]) -> list[tuple[str, int, int]] | None:
    """``file_signature`` of the raw files ``find()`` returns, in path order; None while they are missing (``find``
    raises ``FileNotFoundError``)."""
    try:
        paths = sorted(set(find()))
    except FileNotFoundError:
        return None
    return file_signature(paths)


def find_files(directory: Path, wanted: Mapping[K, Sequence[str]], dataset: str, advice: str) -> dict[K, Path]:
    """For each key of ``wanted``, the first of its file names found under ``directory``.

    The search is recursive and ignores the case of names; a name found more than once is its first path in sorted
    order (so ``<directory>/x.csv`` comes before ``<directory>/train/x.csv``).

    Args:
        directory: where the raw files are.
        wanted: key -> the names of the files that serve it, in order of preference.
        dataset: the data set's name (for the error).
        advice: what to download and where to put it (for the error).

    Raises:
        FileNotFoundError: ``missing_files``, listing the names of every key that has none.
    """
    by_name: dict[str, Path] = {}
    for path in sorted(directory.rglob("*")):  # nothing when the directory does not exist
        if path.is_file():
            by_name.setdefault(path.name.lower(), path)
    found: dict[K, Path] = {}
    missing: list[str] = []
    for key, names in wanted.items():
        hit = next((by_name[n.lower()] for n in names if n.lower() in by_name), None)
        if hit is None:
            missing.append(" or ".join(names))
        else:
            found[key] = hit
    if missing:
        searched = "searched recursively, names in any case" if directory.is_dir() else "which does not exist"
        raise missing_files(dataset, f"{directory} ({searched})", missing, advice)
    return found


def missing_files(dataset: str, where: str, missing: Sequence[str], advice: str) -> FileNotFoundError:
    """The error for raw files not found ``where`` (a directory or an archive).

    Args:
        dataset: the data set's name.
        where: the directory or archive searched.
        missing: the files looked for (each a name, or names that serve alike).
        advice: what to download and where to put it.
    """
    listed = "".join(f"\n  {m}" for m in missing)
    return FileNotFoundError(f"{dataset}: these raw files are not in {where}:{listed}\n{advice}")


def login_advice(url: str, how: str) -> str:
    """``missing_files``' advice for raw files that cannot be downloaded (the host needs a login).

    Args:
        url: where to get the files.
        how: what to download and where to put it.
    """
    return (
        f"The host needs a login, so mdrec cannot download them. Download them from {url}: {how}; then prepare again."
    )
