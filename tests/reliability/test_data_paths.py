"""Where data preparation writes: never outside ``data_dir`` (a data set name is a plain file name), and the
temporaries a killed preparation leaves are removed by the next one, unless their process is alive."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.ingest import TableSpec
from mdrec.data.sources.tabular import TabularSource
from mdrec.data.splits import PredefinedSplit, RandomSplit
from mdrec.data.store import StoreWriter
from mdrec.data.synthetic import SyntheticSource

CSV = "user,region,click\nu1,de,1\nu2,fr,0\nu1,de,0\nu3,fr,1\n"
SPEC = TableSpec(sparse=("user",), domain="region", labels=("click",))
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # the host key temporaries carry


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", "..", "", "x\x00y", "ABSOLUTE"])
def test_a_data_set_name_that_is_a_path_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "d.csv").write_text(CSV)
    data_dir = tmp_path / "work" / "data"
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"data\.source\.name .* cannot name the prepared data") as info:
        source = TabularSource(name, SPEC, data_files=str(tmp_path / "files" / "d.csv"))
        MultiDomainDataModule(source, RandomSplit(), data_dir=str(data_dir)).prepare_data()
    assert repr(name) in str(info.value) and "plain file name" in str(info.value)
    assert tree(tmp_path) == before  # nothing written, inside data_dir or out


def test_any_source_whose_id_is_a_path_is_refused(tmp_path: Path) -> None:
    @dataclass
    class Escaping(SyntheticSource):
        @property
        def dataset_id(self) -> str:
            return "../escaped"

    with pytest.raises(ValueError, match=r"dataset_id '\.\./escaped' cannot name the prepared data"):
        MultiDomainDataModule(Escaping(num_rows=200), RandomSplit(), data_dir=str(tmp_path / "data")).prepare_data()
    assert tree(tmp_path) == []


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temporary(directory: Path, target: str, pid: int, host: str = HOST, is_dir: bool = True) -> Path:
    """A temporary named as the data layer names them: ``.<target>.tmp-<pid>-<host key>-<random>``."""
    path = directory / f".{target}.tmp-{pid}-{host}-0123abcd"
    if is_dir:
        (path / "columns").mkdir(parents=True)
        (path / "columns" / "click.npy").write_bytes(b"half written")
    else:
        path.write_bytes(b"half parsed")
    return path


def test_a_killed_preparations_temporaries_are_removed_by_the_next_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    dm = MultiDomainDataModule(SyntheticSource(num_rows=500), RandomSplit(), data_dir=str(data_dir))
    target = dm.prepared_dir.name
    stale = temporary(data_dir, target, dead_pid())
    live = temporary(data_dir, target, os.getpid())  # a preparation still running: kept
    elsewhere = temporary(data_dir, target, dead_pid(), host="ffffffff")  # another host's (shared disk): kept
    dm.prepare_data()
    assert not stale.exists()
    assert live.exists() and elsewhere.exists()
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([target, f"{target}.lock", live.name, elsewhere.name])


def test_a_killed_parse_of_a_csv_file_is_removed_by_the_next_preparation(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):  # distinct rows in each file
        (tmp_path / f"{split}.csv").write_text(CSV.replace("\nu", f"\n{split}-u"))
    source = TabularSource(
        "shop",
        SPEC,
        train_files=str(tmp_path / "train.csv"),
        val_files=str(tmp_path / "val.csv"),
        test_files=str(tmp_path / "test.csv"),
    )
    cache = tmp_path / "data" / "raw" / "arrow"
    cache.mkdir(parents=True)
    stale = temporary(cache, "train.csv-0123456789abcdef.arrow", dead_pid(), is_dir=False)
    live = temporary(cache, "val.csv-0123456789abcdef.arrow", os.getpid(), is_dir=False)
    MultiDomainDataModule(source, PredefinedSplit(), data_dir=str(tmp_path / "data")).prepare_data()
    assert not stale.exists() and live.exists()
    assert len([p for p in cache.iterdir() if p.suffix == ".arrow"]) == 3  # the three parsed files, cached


def test_a_store_being_written_is_a_temporary_named_with_its_pid_and_host(tmp_path: Path) -> None:
    """What a kill would leave is what the next preparation recognises: the writer's own temporary."""
    source = SyntheticSource(num_rows=100)
    with StoreWriter(tmp_path / "synthetic-0a1b", source.schema(), num_rows=100) as writer:
        (temp,) = [p.name for p in tmp_path.iterdir()]
        assert re.fullmatch(rf"\.synthetic-0a1b\.tmp-{os.getpid()}-{HOST}-[0-9a-f]{{8}}", temp)
        writer.write(source.generate())
        writer.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-0a1b"]
