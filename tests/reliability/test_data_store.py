"""A prepared store whose column files changed after they were written (truncated, emptied, extended, edited to
other valid values) is refused on open, naming the file and saying to prepare again."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.splits import RandomSplit
from mdrec.data.store import ColumnStore, write_store
from mdrec.data.synthetic import SyntheticSource
from tests.helpers import toy_columns, toy_schema

SCHEMA = toy_schema()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-8])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def extend(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 16)


def swap_rows(path: Path) -> None:
    """Other values, each still valid: rows 0 and 1 of the column exchanged (same size, same value range)."""
    values = np.load(path)
    values[[0, 1]] = values[[1, 0]]
    np.save(path, values)


def flip_label(path: Path) -> None:
    values = np.load(path)
    values[3] = 1 - values[3]
    np.save(path, values)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return write_store(tmp_path / "toy", SCHEMA, toy_columns())


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize(
    ("column", "change"),
    [("click", truncate), ("age", empty), ("user_id", extend), ("movie_id", swap_rows), ("click", flip_label)],
)
def test_a_changed_column_file_is_refused_naming_it(
    store_dir: Path, column: str, change: Callable[[Path], None], mmap: bool
) -> None:
    path = store_dir / "columns" / f"{column}.npy"
    before, size = np.load(path), path.stat().st_size
    change(path)
    if change in (swap_rows, flip_label):  # same size, other values that each pass the value checks
        assert path.stat().st_size == size and not np.array_equal(np.load(path), before)
    with pytest.raises(ValueError) as info:
        ColumnStore(store_dir, mmap=mmap)
    message = str(info.value)
    assert str(path) in message and f"column {column!r}" in message
    assert f"delete {store_dir} and prepare again" in message


def test_without_validation_sizes_are_still_checked_but_not_contents(store_dir: Path) -> None:
    """``validate=False`` (the benchmarks' fast open) skips the full pass, the sha256 included; sizes stay checked."""
    swap_rows(store_dir / "columns" / "movie_id.npy")
    assert len(ColumnStore(store_dir, validate=False)) == 32
    extend(store_dir / "columns" / "genre.npy")
    with pytest.raises(ValueError, match=r"column 'genre', file .*genre\.npy, has 272 bytes, 256 when written"):
        ColumnStore(store_dir, validate=False)


def test_checksums_are_the_files_sha256_and_are_required(store_dir: Path) -> None:
    checksums = json.loads((store_dir / "checksums.json").read_text())
    assert sorted(checksums) == sorted(SCHEMA.columns())
    for name, entry in checksums.items():
        data = (store_dir / "columns" / f"{name}.npy").read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (store_dir / "checksums.json").unlink()
    with pytest.raises(ValueError, match=r"checksum of every column .*checksums\.json.*delete the directory"):
        ColumnStore(store_dir)


def test_the_datamodule_refuses_a_prepared_column_edited_on_disk(tmp_path: Path) -> None:
    dm = MultiDomainDataModule(SyntheticSource(num_rows=3000), RandomSplit(), data_dir=str(tmp_path))
    dm.prepare_data()
    copy = tmp_path / "copy"
    shutil.copytree(dm.prepared_dir, copy)
    flip_label(dm.prepared_dir / "columns" / "click.npy")
    with pytest.raises(ValueError, match=r"column 'click', file .*click\.npy, has sha256 [0-9a-f]{64}, [0-9a-f]{64}"):
        dm.setup()
    assert len(ColumnStore(copy)) == 3000  # the untouched copy opens
