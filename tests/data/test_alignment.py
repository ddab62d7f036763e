"""Encoding new files with a run's encoding (mdrec.data.alignment): ids, mapping files, coverage, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from mdrec.data.alignment import (
    AlignedSource,
    AlignmentError,
    DuplicateTargetValuesError,
    Encoding,
    MissingSchemaColumnsError,
    UnknownSourceValuesError,
    read_mapping,
)
from mdrec.data.store import ColumnStore
from mdrec.rundir import RunDir
from tests.helpers import toy_schema

HEADER = "user_id,movie_id,genre,age,domain,click\n"


def toy_encoding(unseen: dict[str, list[int]] | None = None) -> Encoding:
    """The toy schema's encoding: user ids u1..u9, movies m1..m19, genres g1..g4; age scaled as (x - 10) / 2."""
    vocabularies = {
        "user_id": [f"u{i}" for i in range(1, 10)],
        "movie_id": [f"m{i}" for i in range(1, 20)],
        "genre": [f"g{i}" for i in range(1, 5)],
    }
    return Encoding(toy_schema(), vocabularies, unseen or {}, "minmax", {"age": (10.0, 2.0)})


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def partner_files(tmp_path: Path) -> dict[str, str]:
    """Train/val/test files of a new domain ``p`` (genres in the partner's codes A..D) and one row of ``d1``."""
    rows = [
        "u1,m3,A,14,p,1",
        "u2,m99,B,12,p,0",
        "u3,m4,C,10,p,1",
        "u4,m5,Z,11,p,0",
        "u5,m6,,16,p,1",
        "u6,m7,g1,12,d1,0",
    ]
    return {
        "train_files": write(tmp_path / "train.csv", HEADER + "\n".join(rows) + "\n"),
        "val_files": write(tmp_path / "val.csv", HEADER + "\n".join(rows[:2]) + "\n"),
        "test_files": write(tmp_path / "test.csv", HEADER + "\n".join(rows[2:4]) + "\n"),
    }


def toy_run(directory: Path, encoding: Encoding) -> Path:
    """A run directory with ``encoding`` and the domains it trained (data_report.json), nothing else."""
    encoding.save(directory)
    RunDir(directory).write_json(RunDir.DATA_REPORT, {"domains": list(encoding.schema.domains)})
    return directory


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return toy_run(tmp_path / "run", toy_encoding({"movie_id": [4]}))


def test_new_files_get_the_runs_ids_through_the_mapping_and_its_scalers(run: Path, tmp_path: Path) -> None:
    mapping = write(tmp_path / "genre.csv", "target_value,source_value\nA,g2\nB,g1\nC,g4\ng1,g3\n")
    source = AlignedSource(
        "partner", str(run), max_train_overlap=1.0, mappings={"genre": mapping}, **partner_files(tmp_path)
    )
    source.prepare(tmp_path / "store", tmp_path / "raw")
    store = ColumnStore(tmp_path / "store")
    assert store.schema.domains == ("d0", "d1", "d2", "p")  # the run's domains keep their ids, the new one is 3
    assert store.schema.vocab_sizes == toy_schema().vocab_sizes
    train = np.asarray(store.column("split")) == 0
    assert np.asarray(store.column("domain"))[train].tolist() == [3, 3, 3, 3, 3, 1]
    # u1..u6 -> 1..6; m3 exact, m99 unknown, m4 unseen by the run (0), m5..m7 exact
    assert np.asarray(store.column("user_id"))[train].tolist() == [1, 2, 3, 4, 5, 6]
    assert np.asarray(store.column("movie_id"))[train].tolist() == [3, 0, 0, 5, 6, 7]
    # A -> g2, B -> g1, C -> g4, Z unmapped and unknown, missing, and g1 remapped to g3 (the mapping wins)
    assert np.asarray(store.column("genre"))[train].tolist() == [2, 1, 4, 0, 0, 3]
    assert np.asarray(store.column("age"))[train].tolist() == [2.0, 1.0, 0.0, 0.5, 3.0, 1.0]  # (x - 10) / 2
    assert store.vocabulary("genre") == ["g1", "g2", "g3", "g4"]  # the run's, so the store encodes as the run
    report = store.report()["alignment"]
    assert report["new_domains"] == ["p"] and report["train_rows"] == {"p": 5}
    genre = report["coverage"]["p"]["genre"]  # the 5 training rows of p: A, B, C mapped, Z unknown, one missing
    assert genre["rows"] == pytest.approx({"exact": 0.0, "mapped": 0.6, "unknown": 0.2, "missing": 0.2})
    assert genre["values"] == pytest.approx({"exact": 0.0, "mapped": 0.75, "unknown": 0.25})
    assert genre["coverage"] == pytest.approx(0.75)  # 3 of the 4 rows with a value
    movie = report["coverage"]["p"]["movie_id"]  # m3, m5, m6 exact; m99 unknown; m4 unseen by the run: unknown
    assert movie["rows"] == pytest.approx({"exact": 0.6, "mapped": 0.0, "unknown": 0.4, "missing": 0.0})


def test_partner_codes_that_match_nothing_reach_full_coverage_with_a_mapping(tmp_path: Path) -> None:
    run = toy_run(tmp_path / "run", toy_encoding())
    codes = [f"P{i:03d}" for i in range(1, 20)]
    rows = [f"u{1 + i % 9},{codes[i % 19]},g1,12,p,{i % 2}" for i in range(200)]
    files = {
        "train_files": write(tmp_path / "train.csv", HEADER + "\n".join(rows[:160]) + "\n"),
        "val_files": write(tmp_path / "val.csv", HEADER + "\n".join(rows[160:180]) + "\n"),
        "test_files": write(tmp_path / "test.csv", HEADER + "\n".join(rows[180:]) + "\n"),
    }
    mapping = write(
        tmp_path / "movie.csv", "target_value,source_value\n" + "".join(f"P{i:03d},m{i}\n" for i in range(1, 20))
    )
    coverage = {}
    for name, mappings in (("plain", {}), ("mapped", {"movie_id": mapping})):
        source = AlignedSource(name, str(run), mappings=mappings, **files)
        source.prepare(tmp_path / name, tmp_path / "raw")
        coverage[name] = ColumnStore(tmp_path / name).report()["alignment"]["coverage"]["p"]["movie_id"]
    assert coverage["plain"]["coverage"] == 0.0 and coverage["plain"]["rows"]["unknown"] == 1.0
    assert coverage["mapped"]["coverage"] == 1.0 and coverage["mapped"]["rows"]["mapped"] == 1.0
    assert coverage["mapped"]["values"] == {"exact": 0.0, "mapped": 1.0, "unknown": 0.0}


def test_bad_mapping_files_are_named_errors(tmp_path: Path) -> None:
    encoding = toy_encoding()
    unknown = write(tmp_path / "unknown.csv", "target_value,source_value\nA,g1\nB,g7\nC,7\n")
    with pytest.raises(
        UnknownSourceValuesError,
        match=r"unknown.csv of field 'genre': 2 source value\(s\).*'g7' \(row 2\), '7' \(row 3\)",
    ):
        read_mapping(unknown, "genre", encoding)
    twice = write(tmp_path / "twice.csv", "target_value,source_value\n\nA,g1\nB,g2\n\nA,g3\n")  # blank lines
    with pytest.raises(
        DuplicateTargetValuesError, match=r"twice.csv of field 'genre' maps 1 target value.*'A' in rows \[1, 3\]"
    ):
        read_mapping(twice, "genre", encoding)
    columns = write(tmp_path / "columns.csv", "partner,source\nA,g1\n")
    with pytest.raises(AlignmentError, match=r"has the columns \['partner', 'source'\]; it must have exactly"):
        read_mapping(columns, "genre", encoding)
    with pytest.raises(AlignmentError, match=r"'age', which is not a sparse field"):
        read_mapping(columns, "age", encoding)
    assert read_mapping(write(tmp_path / "ok.csv", "target_value,source_value\n7,g1\n"), "genre", encoding) == {
        "7": "g1"
    }


def test_new_files_missing_a_schema_column_are_refused_naming_it(run: Path, tmp_path: Path) -> None:
    text = "user_id,movie_id,age,domain,click\nu1,m3,14,p,1\n"
    files = {f"{split}_files": write(tmp_path / f"{split}.csv", text) for split in ("train", "val", "test")}
    source = AlignedSource("partner", str(run), max_train_overlap=1.0, **files)
    with pytest.raises(
        MissingSchemaColumnsError, match=r"train.csv.*\['genre'\].*every column of the schema of the run"
    ):
        source.prepare(tmp_path / "store", tmp_path / "raw")


def test_an_edited_encoding_is_refused_naming_the_file(run: Path) -> None:
    path = RunDir(run).file(RunDir.ENCODING)
    assert Encoding.of_run(run) == toy_encoding({"movie_id": [4]})
    value = json.loads(path.read_text())
    value["vocabularies"]["genre"] = ["g1"]  # 1 value for 4 ids
    path.write_text(json.dumps(value))
    with pytest.raises(ValueError, match=r"encoding.json is corrupted"):  # the checksum catches it first
        Encoding.of_run(run)
    Path(f"{path}.sha256").unlink()
    with pytest.raises(ValueError, match=r"encoding.json has no checksum"):  # every encoding.json is written with one
        Encoding.of_run(run)
    with pytest.raises(ValueError, match=r"the vocabulary of 'genre' is not a list of 4 distinct strings"):
        Encoding.from_json(value, path)


def test_a_malformed_or_reordered_encoding_is_refused(run: Path) -> None:
    good = toy_encoding().to_json()
    domains = list(toy_schema().domains)
    cases = [
        (lambda v: v["schema"].update(domains=[domains[0], *domains]), "are not a list of distinct names"),
        (lambda v: v["schema"].update(domains="".join(domains)), "are not a list of distinct names"),
        (lambda v: v["schema"].update(oracle_columns=["x"]), "its schema does not read"),
        (lambda v: v["schema"]["sparse"][0].update(vocab_size=10.0), "are not positive integers"),
        (lambda v: v["vocabularies"]["user_id"].__setitem__(1, "u1"), "9 distinct strings"),
    ]
    for edit, message in cases:
        value = json.loads(json.dumps(good))
        edit(value)
        with pytest.raises(ValueError, match=message):
            Encoding.from_json(value, Path("encoding.json"))
    # a domain order other than the run's: rows would run through another domain's adapter
    swapped = toy_encoding()
    schema = dataclasses.replace(swapped.schema, domains=tuple(reversed(domains)))
    dataclasses.replace(swapped, schema=schema).save(run)
    with pytest.raises(ValueError, match=r"but the run trained"):
        Encoding.of_run(run)
