"""Hostile inputs, property-based: a file either prepares with rows in == rows out and every value mapped as
documented, or fails with a plain ValueError naming the column or the file (a bad value: the offending column, and
its row where the error names one); a tampered store is refused on open.

Hypothesis writes the files (CSV/TSV text with unicode, quotes, separators and newlines inside fields, huge ids,
NaN/inf, bad labels and types, truncations, wrong delimiters, broken headers; parquet tables of many types)
and an oracle in plain Python says what must happen. The fixed cases of test_ingest.py, test_tabular.py and
test_schema_store.py are not repeated. Runs derandomized (the same examples every run) in about 20 s.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.ingest import EncodedTable, SequenceSpec, TableSpec, encode_table
from mdrec.data.schema import SCHEMA_FILE
from mdrec.data.sources.tabular import TabularSource
from mdrec.data.splits import PredefinedSplit, RandomSplit
from mdrec.data.store import COLUMNS_DIR, ColumnStore

settings.register_profile(
    "hostile",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
HOSTILE = settings.get_profile("hostile")


# ---------------------------------------------------------------------------------------------------------------
# The oracle: what each raw CSV cell must become


class Verdict(IntEnum):
    """What a cell allows: the file must prepare (OK), must fail (BAD), or may do either (MAYBE)."""

    OK = 0
    MAYBE = 1
    BAD = 2


def file_safe(name: str) -> bool:
    """A column name the store can use as a file name (see ``write_store``)."""
    return name not in (".", "..") and not set(name) & set("/\\\0")


def as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def label_verdict(text: str) -> Verdict:
    if text in ("0", "1", "0.0", "1.0", "1e0"):
        return Verdict.OK
    return Verdict.MAYBE if as_float(text) in (0.0, 1.0) else Verdict.BAD  # " 1": Python reads it, Arrow may not


def dense_verdict(text: str) -> Verdict:
    x = as_float(text)
    if x is None or not math.isfinite(x):
        return Verdict.BAD  # "", "nan", "inf", text: not a finite number
    return Verdict.OK if abs(x) < 1e30 and text == repr(x) else Verdict.MAYBE  # huge or oddly written


def time_verdict(text: str) -> Verdict:
    try:
        return Verdict.OK if -(2**63) <= int(text) < 2**63 and text == str(int(text)) else Verdict.BAD
    except ValueError:
        return Verdict.BAD


def domain_verdict(text: str) -> Verdict:
    return Verdict.BAD if text == "" else Verdict.OK  # a missing domain


# ---------------------------------------------------------------------------------------------------------------
# Strategies: raw cells, column names, whole tables

SPECIAL_IDS = [
    *(
        "",
        " ",
        " x ",
        "NA",
        "N/A",
        "null",
        "NULL",
        "None",
        "nan",
        "NaN",
        "#N/A",
        "<NA>",
        "true",
    ),  # in CSV only "" is missing
    *('"', '""', 'x"y', ",", "a,b", "\t", "\n", "\r", "\r\n", "\x00", "\ufeffx", "é", "日本", "🙂"),  # quoting, unicode
    *("0", "00", "007", "1.0", "1e3", str(2**64), str(-(2**63) - 1), str(10**30)),  # numbers as text
]
ID = st.one_of(
    st.sampled_from(SPECIAL_IDS),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
    st.integers(-(2**70), 2**70).map(str),
)
DOMAIN = st.one_of(st.sampled_from(["de", "fr", "NA", "0", " ", "日本", ""]), ID.filter(bool))
LABEL = st.sampled_from(["0", "1", "0.0", "1.0", "1e0", " 1", "2", "-1", "0.5", "", "nan", "inf", "yes", "true"])
DENSE = st.one_of(
    st.floats(-1e6, 1e6).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "abc", "1,5", " 1", "1e400", "-0.0"]),
)
TIME = st.one_of(st.integers(-(2**63), 2**63 - 1).map(str), st.sampled_from(["", "1.5", "x", str(2**63), "1e3"]))
VALID_LABEL = st.sampled_from(["0", "1"])
VALID_DENSE = st.floats(-1e3, 1e3).map(repr)
VALID_DOMAIN = st.sampled_from(["de", "fr", "NA", "日本", " x"])
# header names: any text but a byte order mark (a file's leading BOM is dropped; see the tabular docstring)
NAME = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\ufeff"), min_size=1, max_size=6),
    st.sampled_from(["a/b", ".", "..", "x\x00y", "a\\b", " ", "Unnamed: 0", "a.1", '"q"', "a,b"]),
)
FILE_NAME = NAME.filter(file_safe)
MOSTLY_FILE_NAME = st.one_of(FILE_NAME, NAME)  # about one name in eight cannot name a file: more tables prepare
PLAIN_NAME = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)


@dataclass
class Table:
    """A raw table: the spec, the header in file order and each row's text cells in that order."""

    spec: TableSpec
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [row[j] for row in self.rows]

    def suspects(self) -> dict[tuple[str, int | None], Verdict]:
        """The cells ``(column, row)`` and column names ``(column, None)`` the oracle does not call OK, with what
        each allows: the only places an error may blame."""
        s = self.spec
        found = {(c, None): Verdict.BAD for c in s.columns() if not file_safe(c)}
        judges = [*((c, label_verdict) for c in s.labels), *((c, dense_verdict) for c in s.dense)]
        judges += [(s.domain, domain_verdict), *([(s.time, time_verdict)] if s.time is not None else [])]
        for c, judge in judges:
            found.update({(c, i): v for i, v in enumerate(map(judge, self.column(c))) if v != Verdict.OK})
        return found

    def verdict(self) -> Verdict:
        """What the oracle requires of this table as a whole."""
        return max(self.suspects().values(), default=Verdict.OK)

    def text(self, delimiter: str, newline: str = "\r\n", bom: bool = False, blank: list[bool] | None = None) -> str:
        """The table as CSV: a field holding the delimiter, a quote, CR or LF is quoted (``csv.writer`` leaves a
        lone CR unquoted under an LF line end, which no reader takes back); blank lines after the rows that
        ``blank`` (cycled) marks."""

        def line(cells: list[str]) -> str:
            quoted = ['"' + v.replace('"', '""') + '"' if set(v) & {delimiter, '"', "\r", "\n"} else v for v in cells]
            return delimiter.join(quoted) + newline

        blank = blank or [False]
        lines = [line(self.header)] + [line(r) + newline * blank[i % len(blank)] for i, r in enumerate(self.rows)]
        return ("\ufeff" if bom else "") + "".join(lines)


@st.composite
def tables(draw: st.DrawFn, valid: bool = False, names: st.SearchStrategy[str] = NAME, min_rows: int = 1) -> Table:
    """A table with 1-2 sparse, 0-2 dense, 1-2 label columns, a domain, maybe a time and an unused column.

    Ids (sparse and unused columns) are always hostile text; unless ``valid``, up to three label, dense, domain
    or time cells are then overwritten with hostile values (bad labels, NaN, text in a number, ...).
    """
    n_sparse, n_dense, n_labels = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    has_time, has_extra = draw(st.booleans()), draw(st.booleans())
    k = n_sparse + n_dense + n_labels + 1 + has_time + has_extra
    cols = draw(st.lists(names, min_size=k, max_size=k, unique=True))
    sparse, rest = cols[:n_sparse], cols[n_sparse:]
    dense, rest = rest[:n_dense], rest[n_dense:]
    labels, rest = rest[:n_labels], rest[n_labels:]
    domain, rest = rest[0], rest[1:]
    time = rest.pop(0) if has_time else None
    scaling = draw(st.sampled_from(["minmax", "standard", "none"]))
    spec = TableSpec(sparse=sparse, domain=domain, labels=labels, dense=dense, time=time, dense_scaling=scaling)
    n = draw(st.integers(min_rows, 8))
    pools = {c: ID for c in [*sparse, *rest]}
    pools |= {c: VALID_DENSE for c in dense} | {c: VALID_LABEL for c in labels} | {domain: VALID_DOMAIN}
    hostile = {c: DENSE for c in dense} | {c: LABEL for c in labels} | {domain: DOMAIN}
    if time is not None:
        pools[time], hostile[time] = st.integers(-(2**63), 2**63 - 1).map(str), TIME
    header = list(draw(st.permutations(cols)))
    rows = [[draw(pools[c]) for c in header] for _ in range(n)]
    for _ in range(0 if valid else draw(st.integers(0, 3))):
        c = draw(st.sampled_from(sorted(hostile)))
        rows[draw(st.integers(0, n - 1))][header.index(c)] = draw(hostile[c])
    return Table(spec, header, rows)


# ---------------------------------------------------------------------------------------------------------------
# Checks shared by the properties


def assert_plain(err: BaseException) -> None:
    """``err`` is a ValueError of mdrec's (plain, or a named subclass of mdrec's), not a parser's leaking out."""
    ours = isinstance(err, ValueError) and type(err).__module__.split(".")[0] in ("builtins", "mdrec")
    assert ours, f"{type(err).__module__}.{type(err).__name__}: {err}"


def assert_clear(err: BaseException, *names: str) -> None:
    """``err`` is a ValueError of mdrec's (:func:`assert_plain`) naming one of ``names``."""
    assert_plain(err)
    assert any(n in str(err) for n in names), f"names none of {names}: {err}"


def assert_blames_a_suspect(err: BaseException, suspects: dict[tuple[str, int | None], Verdict]) -> None:
    """``err`` is a ValueError of mdrec's naming a column the oracle suspects and, where it names that column's row, a
    suspect cell (see ``Table.suspects``)."""
    assert_plain(err)
    named = {c for c, _ in suspects if repr(c) in str(err)}
    assert named, f"names none of the suspect columns {sorted({c for c, _ in suspects})}: {err}"
    rows = {(c, int(m[1])) for c in named for m in re.finditer(re.escape(f"column {c!r}, row ") + r"(\d+)", str(err))}
    assert rows <= suspects.keys(), f"blames cells {sorted(rows - suspects.keys())} the oracle calls OK: {err}"


def spec_names(spec: TableSpec) -> list[str]:
    return [repr(c) for c in spec.columns()]


def check_round_trip(table: Table, enc: EncodedTable, store: ColumnStore, files: list[str]) -> None:
    """Rows in == rows out, ids within their vocabulary and mapping back to the raw text, values as parsed."""
    s, n = table.spec, len(table.rows)
    report = enc.report
    # nothing is rejected or skipped: the rows of the input files are the prepared rows
    assert not any(word in key for key in report for word in ("reject", "drop", "skip"))
    assert report["rows"] == n == len(store) == sum(report["input_rows"].values())
    assert report["input_rows"] == {f: n for f in files}
    assert sum(report["rows_per_domain"].values()) == n
    assert store.report()["input_rows"] == report["input_rows"]
    for c in s.sparse:
        raw, ids = table.column(c), np.asarray(store.column(c))
        vocab = store.vocabulary(c)
        assert vocab == sorted({v for v in raw if v != ""})  # ids compared as strings, sorted, "" is missing
        assert store.schema.vocab_sizes[s.sparse.index(c)] == len(vocab) + 1
        assert ids.min() >= 0 and ids.max() <= len(vocab)
        assert [vocab[i - 1] if i else "" for i in ids] == raw
        assert report["fields"][c]["missing"] == pytest.approx(raw.count("") / n)
    domains = sorted(set(table.column(s.domain)))
    assert list(store.schema.domains) == domains
    assert [domains[i] for i in store.column(s.domain)] == table.column(s.domain)
    for c in s.labels:
        assert store.column(c).tolist() == [float(v) for v in table.column(c)]
    for c in s.dense:
        x = np.array([float(v) for v in table.column(c)])
        shift, scale = 0.0, 1.0  # dense_scaling "none"
        if s.dense_scaling == "minmax":
            shift, scale = x.min(), (x.max() - x.min()) or 1.0
        elif s.dense_scaling == "standard":  # only then: the square of a huge value overflows in std
            shift, scale = x.mean(), x.std() or 1.0
        np.testing.assert_allclose(store.column(c), (x - shift) / scale, rtol=1e-5, atol=1e-6)
    if s.time is not None:
        assert store.column(s.time).tolist() == [int(v) for v in table.column(s.time)]


def write(enc: EncodedTable, directory: Path) -> ColumnStore:
    """Write and open (validating every column) what ``encode`` accepted: that must not fail, but for a column
    name that cannot name a file, which only the store refuses."""
    try:
        return ColumnStore(enc.write(directory))
    except ValueError as err:
        assert "cannot name a file" in str(err), f"encode accepted what the store refuses: {err}"
        raise


def prepare_csv(tmp: Path, table: Table, text: str | bytes, suffix: str = ".csv") -> tuple[EncodedTable, ColumnStore]:
    path = tmp / f"data{suffix}"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    enc = TabularSource("hostile", table.spec, data_files=str(path)).encode(tmp / "raw")
    return enc, write(enc, tmp / "store")


# ---------------------------------------------------------------------------------------------------------------
# CSV/TSV: unicode, quotes, newlines in fields, huge ids, NaN/inf, bad labels, wrong types, BOM, blank lines


# documented mappings and past bugs, run first on every run
NA_IDS = Table(
    TableSpec(sparse=("id",), domain="d", labels=("y",)),
    ["id", "d", "y"],
    [["NA", "NA", "1"], ["null", "de", "0"], ["", "de", "1"], ["nan", "de", "0"], ["None", "NA", "1"]],
)
HUGE_DENSE = Table(
    TableSpec(sparse=("id",), domain="d", labels=("y",), dense=("x",), dense_scaling="none"),
    ["id", "d", "y", "x"],
    [["a", "de", "1", "1e+300"], [str(2**64), "de", "0", "1.0"]],
)
VALUE_IN_QUOTES = Table(
    TableSpec(sparse=("id",), domain="d", labels=("y",)), ["d", "y", "id"], [["de", "1", "a"], ["de", "0", "b,c\n"]]
)

# a data column called `split` in data without their own split: the report read it as the split codes
SPLIT_NAMED_FIELD = Table(
    TableSpec(sparse=("split", "0"), domain="d", labels=("y",)),
    ["split", "0", "y", "d"],
    [["NA", "", "0", "de"], [" x ", "", "0", "de"], ["", "", "1", "de"], [" ", "", "0", "de"]],
)
# values that differ in float64 but not in float32 (where they train): not collapsed by the min-max scale
FLOAT32_EQUAL_BULK = Table(
    TableSpec(sparse=("id",), domain="d", labels=("y",), dense=("x",)),
    ["id", "d", "y", "x"],
    [["a", "de", "0", "0.0"], ["a", "de", "1", "0.0"], ["a", "de", "0", "-1.0"], ["a", "de", "1", "-1e-128"]],
)


@settings(HOSTILE, max_examples=60)
@example(table=NA_IDS, tsv=False, newline="\n", bom=False, blank=[False])
@example(table=SPLIT_NAMED_FIELD, tsv=False, newline="\n", bom=False, blank=[False])
@example(table=FLOAT32_EQUAL_BULK, tsv=False, newline="\n", bom=False, blank=[False])
@example(table=HUGE_DENSE, tsv=True, newline="\r\n", bom=True, blank=[True])
@given(
    table=tables(names=MOSTLY_FILE_NAME),
    tsv=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    blank=st.lists(st.booleans(), min_size=1, max_size=3),
)
def test_csv_prepares_every_row_or_names_the_problem(
    table: Table, tsv: bool, newline: str, bom: bool, blank: list[bool]
) -> None:
    verdict = table.verdict()
    with tempfile.TemporaryDirectory() as tmp:
        suffix = ".tsv" if tsv else ".csv"
        path = str(Path(tmp) / f"data{suffix}")
        try:
            enc, store = prepare_csv(Path(tmp), table, table.text("\t" if tsv else ",", newline, bom, blank), suffix)
        except Exception as err:  # the property: which exceptions escape, and when
            event(f"{verdict.name} refused")
            assert verdict != Verdict.OK, f"valid table refused: {err!r}"
            assert_blames_a_suspect(err, table.suspects())
            return
        event(f"{verdict.name} prepared")
        assert verdict != Verdict.BAD, "a bad value was accepted"
        check_round_trip(table, enc, store, [path])


@st.composite
def truncations(draw: st.DrawFn) -> tuple[Table, int]:
    """A valid table and where to cut its CSV text: any byte, or often at or near a record's end or a quote."""
    table = draw(tables(valid=True, names=FILE_NAME, min_rows=2))
    full = table.text(",").encode()
    ends = [len(replace(table, rows=table.rows[:k]).text(",").encode()) for k in range(len(table.rows) + 1)]
    quotes = [i + 1 for i, byte in enumerate(full) if byte == ord('"')]  # cut inside or just after a quoted field
    near = [st.sampled_from(at).flatmap(lambda i: st.integers(i - 2, i + 1)) for at in (ends, quotes) if at]
    return table, max(0, draw(st.one_of(st.integers(0, len(full)), *near)))


@settings(HOSTILE, max_examples=50)
@given(case=truncations())
@example(case=(VALUE_IN_QUOTES, len(VALUE_IN_QUOTES.text(",")) - 4))  # the last field cut inside its quotes
def test_truncated_csv_never_loses_or_fills_rows(case: tuple[Table, int]) -> None:
    """A file cut at any byte (mid-row, mid-quote, mid-character, in the header, to nothing): either the complete
    records prepare, each with every field, or the error names the file or a column."""
    table, cut = case
    data = table.text(",").encode()[:cut]
    try:  # the oracle: what Python's csv module makes of the truncated bytes
        records = [r for r in csv.reader(io.StringIO(data.decode(), newline=""), strict=True) if r]
        complete = bool(records) and records[0] == table.header and all(len(r) == len(table.header) for r in records)
        cut_table = Table(table.spec, table.header, records[1:]) if complete else None
    except (UnicodeDecodeError, csv.Error):
        cut_table = None
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "data.csv")
        try:
            enc, store = prepare_csv(Path(tmp), table, data)
        except Exception as err:
            ok = cut_table is not None and cut_table.rows and cut_table.verdict() == Verdict.OK
            event("refused")
            assert not ok, f"complete records refused: {err!r}"
            assert_clear(err, *spec_names(table.spec), repr(path))
            return
        event("prepared")
        assert cut_table is not None, "a truncated record was accepted"
        assert cut_table.verdict() != Verdict.BAD, "a bad value was accepted"
        check_round_trip(cut_table, enc, store, [path])


@settings(HOSTILE, max_examples=20)
@given(table=tables(valid=True, names=FILE_NAME, min_rows=3))
def test_split_files_map_unseen_values_to_zero(table: Table) -> None:
    """Train/val/test files: vocabularies come from the train rows only; a val/test value never seen there is id 0
    (not a dropped row), and its share is reported per split."""
    parts = np.array_split(np.arange(len(table.rows)), 3)
    spec = replace(table.spec, dense_scaling="none")  # minmax fitted on train rows could overflow on a val row
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, part in zip(("train", "val", "test"), parts, strict=True):
            files[f"{name}_files"] = str(Path(tmp) / f"{name}.csv")
            Path(files[f"{name}_files"]).write_text(
                Table(spec, table.header, [table.rows[i] for i in part]).text(","), newline=""
            )
        try:  # tiny tables repeat rows across files: allowed here (tests/reliability/test_data_inputs.py checks it)
            enc = TabularSource("hostile", spec, **files, max_train_overlap=1.0).encode(Path(tmp) / "raw")
        except ValueError as err:  # a reserved column name, or a val/test domain the train rows lack (domains: null)
            train_domains = {table.column(spec.domain)[i] for i in parts[0]}
            assert ("reserved for the split codes" in str(err) and "split" in spec.columns()) or (
                "is not one of the domains of the training rows" in str(err)
                and set(table.column(spec.domain)) > train_domains
            ), err
            return
        store = write(enc, Path(tmp) / "store")
    split = np.repeat([0, 1, 2], [len(p) for p in parts])
    assert store.column("split").tolist() == split.tolist()
    assert enc.report["input_rows"] == {f: len(p) for f, p in zip(files.values(), parts, strict=True)}
    assert enc.report["rows_per_split"] == dict(zip(("train", "val", "test"), map(len, parts), strict=True))
    for c in spec.sparse:
        raw = table.column(c)
        vocab = sorted({raw[i] for i in parts[0] if raw[i] != ""})
        assert enc.vocabularies[c] == vocab
        expected = [vocab.index(v) + 1 if v in vocab else 0 for v in raw]
        assert enc.columns[c].tolist() == expected
        unseen = [v != "" and v not in vocab for v in raw]
        for k, name in enumerate(("train", "val", "test")):
            share = enc.report["fields"][c]["unseen_per_split"][name]
            assert share == pytest.approx(np.mean([unseen[i] for i in parts[k]]))


@settings(HOSTILE, max_examples=15)
@given(table=tables(valid=True, names=PLAIN_NAME), tsv_as_csv=st.booleans(), bad=st.sampled_from(["", "ab", '"', "\n"]))
def test_wrong_delimiter_is_named(table: Table, tsv_as_csv: bool, bad: str) -> None:
    text = table.text("\t" if tsv_as_csv else ",")
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(ValueError, match="set `delimiter`") as info:
        prepare_csv(Path(tmp), table, text, ".csv" if tsv_as_csv else ".tsv")
    assert_clear(info.value, "data.csv" if tsv_as_csv else "data.tsv")
    with pytest.raises(ValueError, match=re.escape(f"delimiter {bad!r} must be one character")):
        TabularSource("hostile", table.spec, data_files="data.csv", delimiter=bad)


@settings(HOSTILE, max_examples=25)
@given(table=tables(valid=True, names=FILE_NAME), data=st.data())
def test_missing_or_duplicated_header_columns_are_named(table: Table, data: st.DataObject) -> None:
    column = data.draw(st.sampled_from(table.spec.columns()))
    j = table.header.index(column)
    if data.draw(st.booleans(), label="duplicate"):  # the column twice: which one is meant?
        broken = Table(table.spec, [*table.header, column], [[*row, row[j]] for row in table.rows])
        match = "more than once"
    else:
        keep = [i for i in range(len(table.header)) if i != j]
        broken = Table(table.spec, [table.header[i] for i in keep], [[row[i] for i in keep] for row in table.rows])
        match = "not in the data"
    with tempfile.TemporaryDirectory() as tmp, pytest.raises(ValueError, match=match) as info:
        prepare_csv(Path(tmp), broken, broken.text(","))
    assert repr(column) in str(info.value) and "data.csv" in str(info.value)


@settings(HOSTILE, max_examples=15)
@given(table=tables(valid=True, names=FILE_NAME), bom=st.booleans())
def test_header_only_and_empty_files_are_named(table: Table, bom: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for text, match in ((Table(table.spec, table.header, []).text(",", bom=bom), "hold no rows"), ("", "Empty")):
            with pytest.raises(ValueError, match=match) as info:
                prepare_csv(Path(tmp), table, text)
            assert_clear(info.value, "data.csv")


def test_a_file_edited_in_place_is_parsed_again(tmp_path: Path) -> None:
    """The parsed copy of a file under ``raw_dir/arrow`` is reused only while the file's size and modification time
    are unchanged: a file edited in place, to the same size, is parsed again, never served stale."""
    path = tmp_path / "data.csv"
    path.write_text("id,d,y\na,de,1\n")
    source = TabularSource("hostile", TableSpec(sparse=("id",), domain="d", labels=("y",)), data_files=str(path))
    assert source.encode(tmp_path / "raw").vocabularies["id"] == ["a"]
    mtime = path.stat().st_mtime_ns
    path.write_text("id,d,y\nb,de,1\n")
    os.utime(path, ns=(mtime + 1, mtime + 1))
    assert source.encode(tmp_path / "raw").vocabularies["id"] == ["b"]


@settings(HOSTILE, max_examples=10)
@given(table=tables(valid=True, names=FILE_NAME, min_rows=3), data=st.data())
def test_a_column_named_like_the_split_column_is_refused(table: Table, data: st.DataObject) -> None:
    """With train/val/test files the store adds a ``split`` column: a data column of that name is refused (it was
    silently overwritten by the split codes, or crashed the report as the domain)."""
    assume("split" not in table.header)
    column = data.draw(st.sampled_from(table.spec.columns()))
    s, named = table.spec, lambda c: "split" if c == column else c
    spec = replace(
        s,
        sparse=[named(c) for c in s.sparse],
        dense=[named(c) for c in s.dense],
        labels=[named(c) for c in s.labels],
        domain=named(s.domain),
        time=None if s.time is None else named(s.time),
        dense_scaling="none",  # fitted on train rows only, minmax could overflow on a val row: another error
    )
    renamed = Table(spec, [named(c) for c in table.header], table.rows)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for name, part in zip(("train", "val", "test"), np.array_split(np.arange(len(table.rows)), 3), strict=True):
            files[f"{name}_files"] = str(Path(tmp) / f"{name}.csv")
            Path(files[f"{name}_files"]).write_text(
                replace(renamed, rows=[table.rows[i] for i in part]).text(","), newline=""
            )
        with pytest.raises(ValueError, match="column 'split' is reserved for the split codes.*rename it"):
            TabularSource("hostile", spec, **files).prepare(Path(tmp) / "store", Path(tmp) / "raw")
        assert not (Path(tmp) / "store").exists()


def test_a_column_named_like_a_sequence_length_is_refused() -> None:
    """The sequence's lengths go to ``<column>__length``: a data column of that name was silently overwritten."""
    with pytest.raises(ValueError, match="column 'h__length' is reserved for the lengths of sequence 'h'"):
        TableSpec(sparse=("h__length",), domain="d", labels=("click",), sequence=SequenceSpec("h", "h__length", 2))


# ---------------------------------------------------------------------------------------------------------------
# A label (or the domain, or the time) used as a feature


@settings(HOSTILE, max_examples=40)
@given(table=tables(), data=st.data())
def test_a_column_in_two_roles_is_refused(table: Table, data: st.DataObject) -> None:
    s = table.spec
    leaked = data.draw(st.sampled_from([*s.labels, s.domain, *([s.time] if s.time else [])]))
    role = data.draw(st.sampled_from(["sparse", "dense"]))
    with pytest.raises(ValueError, match="Each column may play one role") as info:
        replace(s, **{role: (*getattr(s, role), leaked)})
    assert f"column {leaked!r} is listed as {role} and" in str(info.value)
    if leaked in s.labels:
        assert "leaks the answer" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Parquet: ids of every Arrow type (huge, negative, NaN, null, unicode, lists), bad dense and label values


class Kind(IntEnum):
    """How a parquet id column is typed (a LIST cannot be an id)."""

    STRING = 0
    LARGE_STRING = 1
    DICTIONARY = 2
    INT64 = 3
    UINT64 = 4
    FLOAT64 = 5
    BOOL = 6
    LIST = 7


def id_column(kind: Kind, n: int) -> st.SearchStrategy[list]:
    value = {
        Kind.STRING: ID,
        Kind.LARGE_STRING: ID,
        Kind.DICTIONARY: st.sampled_from(["a", "b", "", "NA"]),
        Kind.INT64: st.integers(-(2**63), 2**63 - 1),
        Kind.UINT64: st.integers(0, 2**64 - 1),
        Kind.FLOAT64: st.one_of(st.just(math.nan), st.floats(allow_nan=True, allow_infinity=True)),
        Kind.BOOL: st.booleans(),
        Kind.LIST: st.lists(st.integers(0, 9), max_size=2),
    }[kind]
    return st.lists(st.one_of(st.none(), value), min_size=n, max_size=n)


def arrow_column(kind: Kind, values: list) -> pa.Array:
    types = {
        Kind.STRING: pa.string(),
        Kind.LARGE_STRING: pa.large_string(),
        Kind.INT64: pa.int64(),
        Kind.UINT64: pa.uint64(),
        Kind.FLOAT64: pa.float64(),
        Kind.BOOL: pa.bool_(),
        Kind.LIST: pa.list_(pa.int64()),
    }
    if kind == Kind.DICTIONARY:
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, types[kind])


def id_key(v: object) -> str | None:
    """The raw value's identity as the ingest compares it; None: missing (null or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return repr(v) if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


@st.composite
def parquet_tables(draw: st.DrawFn) -> tuple[pa.Table, TableSpec, Verdict]:
    """Ids of 1-3 columns of any Kind; the domain, label and dense columns are hostile one time in three."""
    n = draw(st.integers(1, 8))
    kinds = draw(st.lists(st.sampled_from(list(Kind)), min_size=1, max_size=3))
    cols = {f"id{j}": arrow_column(k, draw(id_column(k, n))) for j, k in enumerate(kinds)}

    def values(valid: st.SearchStrategy, hostile: st.SearchStrategy) -> list:
        pool = st.one_of(valid, hostile) if draw(st.sampled_from([False, False, True])) else valid
        return draw(st.lists(pool, min_size=n, max_size=n))

    domain = values(st.sampled_from(["a", "b", "日本", ""]), st.none())
    cols["domain"] = pa.array(domain, pa.string())
    label = values(st.sampled_from([0, 1]), st.sampled_from([2, -1, None, math.nan]))
    cols["click"] = pa.array(label, pa.float64() if math.nan in label else pa.int64())
    dense = values(st.floats(-1e3, 1e3), st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
    cols["price"] = pa.array(dense, pa.float64())
    spec = TableSpec(sparse=[c for c in cols if c.startswith("id")], domain="domain", labels=["click"], dense=["price"])
    bad = (
        Kind.LIST in kinds
        or None in domain
        or any(v not in (0, 1) for v in label)
        or any(v is None or not math.isfinite(v) for v in dense)
    )
    moderate = all(abs(v) <= 1e3 for v in dense if v is not None)
    return pa.table(cols), spec, Verdict.BAD if bad else Verdict.OK if moderate else Verdict.MAYBE


NAN_AND_HUGE_IDS = pa.table(
    {
        "f": pa.array([1.5, math.nan, None, -0.0, 0.0], pa.float64()),
        "u": pa.array([2**64 - 1, 0, None, 2**63, 1], pa.uint64()),
        "domain": ["a", "a", "b", "b", "日本"],
        "click": [0, 1, 0, 1, 1],
        "price": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
)


@settings(HOSTILE, max_examples=50)
@example(case=(NAN_AND_HUGE_IDS, TableSpec(("f", "u"), "domain", ("click",), ("price",)), Verdict.OK))
@given(case=parquet_tables())
def test_parquet_ids_of_any_type_round_trip_or_fail_clearly(case: tuple[pa.Table, TableSpec, Verdict]) -> None:
    table, spec, verdict = case
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "data.parquet")
        pq.write_table(table, path)
        try:
            enc = TabularSource("hostile", spec, data_files=path).encode(Path(tmp) / "raw")
            write(enc, Path(tmp) / "store")
        except Exception as err:
            event(f"{verdict.name} refused")
            assert verdict != Verdict.OK, f"valid table refused: {err!r}"
            assert_clear(err, *spec_names(spec), repr(path))
            return
    event(f"{verdict.name} prepared")
    assert verdict != Verdict.BAD, "a bad value was accepted"
    assert enc.report["rows"] == table.num_rows and enc.report["input_rows"] == {path: table.num_rows}
    for c in spec.sparse:
        keys = [id_key(v) for v in table[c].to_pylist()]
        ids, vocab = enc.columns[c], enc.vocabularies[c]
        assert ids.min() >= 0 and ids.max() <= len(vocab) == len({k for k in keys if k is not None})
        assert all((i == 0) == (k is None) for i, k in zip(ids, keys, strict=True))  # null and NaN: missing
        by_key = dict(zip(keys, ids, strict=True))
        assert all(by_key[k] == i for k, i in zip(keys, ids, strict=True))  # one value, one id, and the converse:
        assert len(set(by_key.values())) == len(by_key)
        if pa.types.is_integer(table[c].type) or pa.types.is_string(table[c].type):
            assert all(vocab[i - 1] == k for i, k in zip(ids, keys, strict=True) if i)  # the id names the value


@settings(HOSTILE, max_examples=20)
@given(case=parquet_tables(), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_parquet_is_named(case: tuple[pa.Table, TableSpec, Verdict], cut: float) -> None:
    table, spec, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        pq.write_table(table, path)
        data = path.read_bytes()
        path.write_bytes(data[: int(cut * len(data))])
        with pytest.raises(ValueError, match="cannot read it as parquet") as info:
            TabularSource("hostile", spec, data_files=str(path)).encode(Path(tmp) / "raw")
        assert_clear(info.value, repr(str(path)))


# ---------------------------------------------------------------------------------------------------------------
# The load path: tampered stores are refused on open; a good store serves every row once per epoch


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared store with sparse, dense, label, domain, time and split columns."""
    rows = 40
    rng = np.random.default_rng(0)
    raw = pa.table(
        {
            "user": [f"u{i}" for i in rng.integers(0, 9, rows)],
            "item": rng.integers(0, 5, rows),
            "price": rng.random(rows),
            "region": rng.choice(["north", "south"], rows),
            "click": rng.integers(0, 2, rows),
            "ts": np.arange(rows),
        }
    )
    spec = TableSpec(sparse=("user", "item"), domain="region", labels=("click",), dense=("price",), time="ts")
    split = (np.arange(rows) % 3).astype(np.int8)
    enc = encode_table(raw, spec, "good", vocab_mask=split == 0, split=split)
    return enc.write(tmp_path_factory.mktemp("good") / "store")


TAMPERS = ("truncate", "garbage", "dtype", "shape", "out_of_range", "schema_vocab", "schema_json", "schema_key")


@settings(HOSTILE, max_examples=60)
@given(tamper=st.sampled_from(TAMPERS), mmap=st.booleans(), data=st.data())
def test_tampered_store_is_refused_on_open(good_store: Path, tamper: str, mmap: bool, data: st.DataObject) -> None:
    schema = ColumnStore(good_store).schema
    column = data.draw(st.sampled_from(schema.columns()), label="column")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(good_store, store)
        npy = store / COLUMNS_DIR / f"{column}.npy"
        values = np.load(npy)
        names = [repr(column), npy.name]  # what the error must name
        if tamper == "truncate":
            size = npy.stat().st_size
            npy.write_bytes(npy.read_bytes()[: data.draw(st.integers(0, size - 1), label="size")])
        elif tamper == "garbage":
            npy.write_bytes(data.draw(st.binary(max_size=300), label="bytes"))
        elif tamper == "dtype":
            dtypes = [np.dtype(t) for t in (np.float64, np.float32, np.int64, np.int16, np.uint32, np.bool_)]
            np.save(npy, values.astype(data.draw(st.sampled_from([t for t in dtypes if t != values.dtype]))))
        elif tamper == "shape":
            np.save(npy, data.draw(st.sampled_from([values[:-1], values[:, None], values[:1].reshape(())])))
        elif tamper == "out_of_range":  # any int64 timestamp is valid: every other column has a range
            column = data.draw(st.sampled_from([c for c in schema.columns() if c != schema.time_column]))
            npy = store / COLUMNS_DIR / f"{column}.npy"
            values = np.load(npy)
            row = data.draw(st.integers(0, len(values) - 1), label="row")
            floats = [np.nan, np.inf, -np.inf, 2.0, -1.0, 0.5] if column in schema.labels else [np.nan, np.inf]
            out = {np.dtype(np.float32): st.sampled_from(floats), np.dtype(np.int8): st.sampled_from([-1, 3, 127])}
            ints = st.one_of(st.integers(-(2**31), -1), st.integers(10**4, 2**31 - 1))
            values[row] = data.draw(out.get(values.dtype, ints), label="value")
            np.save(npy, values)
            names = [f"column {column!r}, row {row}: value"]
        elif tamper == "schema_vocab":  # a vocabulary edited smaller than the ids the data hold
            obj = json.loads((store / SCHEMA_FILE).read_text())
            j = data.draw(st.integers(0, len(obj["sparse"]) - 1), label="field")
            field = obj["sparse"][j]
            top = int(np.load(store / COLUMNS_DIR / f"{field['name']}.npy").max())
            field["vocab_size"] = data.draw(st.integers(-2, top), label="vocab_size")
            (store / SCHEMA_FILE).write_text(json.dumps(obj))
            names = [repr(field["name"])]
        elif tamper == "schema_json":
            (store / SCHEMA_FILE).write_bytes(data.draw(st.binary(max_size=60), label="schema"))
            names = [SCHEMA_FILE]
        else:  # a required key of schema.json removed or given a wrong type
            obj = json.loads((store / SCHEMA_FILE).read_text())
            key = data.draw(st.sampled_from(["version", "dataset_id", "sparse", "domains", "labels", "domain_field"]))
            if data.draw(st.booleans(), label="delete"):
                del obj[key]
            else:
                obj[key] = data.draw(st.sampled_from([None, 7, [], {}, [1, 2]]), label="value")
            (store / SCHEMA_FILE).write_text(json.dumps(obj))
            names = [SCHEMA_FILE, str(store), "'good'"]
        try:
            opened = ColumnStore(store, mmap=mmap)
        except Exception as err:
            event(f"{tamper} refused")
            assert_clear(err, *names)
            return
        event(f"{tamper} opened")
        # what opened must serve well-formed batches (e.g. a schema key given a harmless value)
        assert tamper == "schema_key", f"{tamper} of {column!r} was not detected"
        opened.take(np.arange(len(opened))).validate(opened.schema.num_domains, opened.schema.vocab_sizes)


@settings(HOSTILE, max_examples=12)
@given(
    table=tables(valid=True, names=FILE_NAME, min_rows=5),
    own_split=st.booleans(),
    batch_size=st.integers(1, 7),
    seed=st.integers(0, 9),
)
def test_datamodule_serves_every_row_once_per_epoch(table: Table, own_split: bool, batch_size: int, seed: int) -> None:
    """Hostile but valid files -> DataModule: each split's loader serves each of its rows exactly once per epoch,
    and the splits partition the file's rows."""
    # a dense column holding the row number identifies each served row (dense_scaling "none" keeps it exact)
    assume("row#" not in table.header)
    spec = replace(table.spec, dense=(*table.spec.dense, "row#"), dense_scaling="none", time=None)
    if own_split:  # with `domains: null` a val/test domain the train file lacks is refused: list them all
        spec = replace(spec, domains=sorted(set(table.column(spec.domain))))
    header = [*table.header, "row#"]
    rows = [[*row, str(i)] for i, row in enumerate(table.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        parts = np.array_split(np.arange(len(rows)), 3) if own_split else [np.arange(len(rows))]
        for name, part in zip(("train", "val", "test"), parts, strict=False):
            files[name] = Path(tmp) / f"{name}.csv"
            files[name].write_text(Table(spec, header, [rows[i] for i in part]).text(","), newline="")
        if own_split:
            paths = {f"{name}_files": str(path) for name, path in files.items()}
            source = TabularSource("hostile", spec, **paths)
        else:
            source = TabularSource("hostile", spec, data_files=str(files["train"]))
        split = PredefinedSplit() if own_split else RandomSplit((0.6, 0.2, 0.2), seed=seed)
        dm = MultiDomainDataModule(source, split, data_dir=tmp, batch_size=batch_size, eval_batch_size=batch_size)
        dm.prepare_data()
        dm.setup()
        column = len(table.spec.dense)  # the row-number column's place in Batch.dense
        served = {}
        for name in ("train", "val", "test"):
            loader = dm.loader(name)
            for epoch in (0, 1):
                loader.sampler.set_epoch(epoch)
                batches = [b.validate(dm.schema.num_domains, dm.schema.vocab_sizes) for b in loader]
                assert all(b.size <= batch_size for b in batches)
                got = np.concatenate([b.dense[:, column].numpy() for b in batches]).astype(np.int64)
                assert np.array_equal(np.sort(got), np.sort(dm.split_column(name, "row#").astype(np.int64)))
            served[name] = got
        everything = np.concatenate(list(served.values()))
        assert np.array_equal(np.sort(everything), np.arange(len(rows)))  # a partition: each row once overall
