"""encode_table: vocabularies, unseen/missing shares, sequences; every bad input fails with a clear error."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mdrec.data.ingest import SequenceSpec, TableSpec, encode_sequence, encode_table, first_uncastable, window
from mdrec.data.schema import SPLIT_COLUMN, seq_length_column
from mdrec.data.store import ColumnStore


def _table(**overrides: list) -> pa.Table:
    cols = {
        "user": ["u2", "u1", "u2", "u3", None, "u1"],
        "item": [10, 2, 10, 7, 2, 99],
        "region": ["north", "south", "north", "south", "north", "south"],
        "click": [1, 0, 1, 0, 1, 1],
        "price": [1.0, 3.0, 5.0, 2.0, 4.0, 9.0],
        "ts": [5, 4, 3, 2, 1, 0],
        "hist": ["2|10", "", None, "7|2|10|99", "10", "x"],
    }
    cols.update(overrides)
    return pa.table(cols)


SPEC = TableSpec(
    sparse=("user", "item"),
    domain="region",
    labels=("click",),
    dense=("price",),
    user="user",
    time="ts",
    sequence=SequenceSpec("hist", vocab_field="item", max_len=3, delimiter="|"),
)


def test_vocab_ids_sorted_as_strings_and_zero_for_null() -> None:
    enc = encode_table(_table(), SPEC, "toy")
    assert enc.vocabularies["item"] == ["10", "2", "7", "99"]  # string order, not numeric
    assert enc.columns["item"].tolist() == [1, 2, 1, 3, 2, 4]
    assert enc.columns["user"].tolist() == [2, 1, 2, 3, 0, 1]
    assert enc.schema.vocab_sizes == [4, 5]
    assert enc.schema.domains == ("north", "south")
    assert enc.columns["region"].tolist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(enc.columns["price"], [0.0, 0.25, 0.5, 0.125, 0.375, 1.0])
    assert enc.columns["ts"].dtype == np.int64
    assert len(enc.columns["click"]) == 6  # rows in == rows out
    assert enc.report["fields"]["user"]["missing"] == pytest.approx(1 / 6)
    assert enc.report["fields"]["user"]["missing_per_domain"] == {"north": pytest.approx(1 / 3), "south": 0.0}
    assert enc.report["rows_per_domain"] == {"north": 3, "south": 3}
    assert enc.report["positive_rate"]["click"] == {
        "all": pytest.approx(4 / 6),
        "north": 1.0,
        "south": pytest.approx(1 / 3),
    }


def test_vocab_mask_makes_unseen_values_zero_and_reports_them() -> None:
    mask = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    split = np.array([0, 0, 0, 1, 2, 2], dtype=np.int8)
    enc = encode_table(_table(), SPEC, "toy", vocab_mask=mask, split=split)
    assert enc.vocabularies["item"] == ["10", "2"]
    assert enc.columns["item"].tolist() == [1, 2, 1, 0, 2, 0]  # 7 and 99 unseen in the vocabulary rows
    assert enc.columns[SPLIT_COLUMN].tolist() == split.tolist()
    assert enc.schema.has_split_column
    item = enc.report["fields"]["item"]
    assert item["unseen"] == pytest.approx(2 / 6)
    assert item["unseen_per_domain"] == {"north": 0.0, "south": pytest.approx(2 / 3)}
    assert item["unseen_per_split"] == {"train": 0.0, "val": 1.0, "test": 0.5}
    user = enc.report["fields"]["user"]  # u3 unseen (row 3), row 4 missing: not counted as unseen
    assert user["unseen"] == pytest.approx(1 / 6) and user["missing"] == pytest.approx(1 / 6)
    # dense scaling fitted on the vocabulary rows only: min 1, max 5
    np.testing.assert_allclose(enc.columns["price"], [0.0, 0.5, 1.0, 0.25, 0.75, 2.0])
    assert enc.report["rows_per_split"] == {"train": 3, "val": 1, "test": 2}


def test_min_count_and_standard_scaling() -> None:
    spec = TableSpec(
        sparse=("item",),
        domain="region",
        labels=("click",),
        dense=("price",),
        min_count=2,
        dense_scaling="standard",
    )
    enc = encode_table(_table(), spec, "toy")
    assert enc.vocabularies["item"] == ["10", "2"]
    assert enc.columns["item"].tolist() == [1, 2, 1, 0, 2, 0]
    price = np.array([1.0, 3.0, 5.0, 2.0, 4.0, 9.0])
    np.testing.assert_allclose(enc.columns["price"], (price - price.mean()) / price.std(), rtol=1e-6)


def test_sequence_keeps_most_recent_left_aligned() -> None:
    enc = encode_table(_table(), SPEC, "toy")
    seq, lengths = enc.columns["hist"], enc.columns[seq_length_column("hist")]
    # vocab: 10 -> 1, 2 -> 2, 7 -> 3, 99 -> 4; "7|2|10|99" keeps the last 3; "x" is unseen (0) but counted
    assert seq.tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 0], [2, 1, 4], [1, 0, 0], [0, 0, 0]]
    assert lengths.tolist() == [2, 0, 0, 3, 1, 1]
    assert enc.report["sequence"]["unseen"] == pytest.approx(1 / 7)


def test_list_sequence_column_and_window() -> None:
    col = pa.array([["a", "b", "c", "d"], [], None, ["d", None, "a"]])
    seq, lengths = encode_sequence(col, pa.array(["a", "b", "c"]), max_len=2, delimiter=None)
    assert seq.tolist() == [[3, 0], [0, 0], [0, 0], [0, 1]]
    assert lengths.tolist() == [2, 0, 0, 2]
    seq, lengths = window(np.array([5, 6, 7]), np.array([0, 3, 1]), np.array([3, 3, 2]), max_len=4)
    assert seq.tolist() == [[5, 6, 7, 0], [0, 0, 0, 0], [6, 0, 0, 0]] and lengths.tolist() == [3, 0, 1]


def test_written_store_round_trips(tmp_path) -> None:
    enc = encode_table(_table(), SPEC, "toy")
    enc.write(tmp_path / "toy")
    store = ColumnStore(tmp_path / "toy")
    batch = store.take(np.arange(6))
    assert batch.sparse.tolist()[0] == [2, 1] and batch.seq.shape == (6, 3)
    assert store.vocabulary("item") == ["10", "2", "7", "99"]
    assert store.report()["rows"] == 6


@pytest.mark.parametrize(
    ("overrides", "spec_changes", "match"),
    [
        (
            {"price": [1.0, float("nan"), 1.0, 1.0, 1.0, 1.0]},
            {},
            r"column 'price', row 1: value nan is not finite",
        ),
        ({"price": [1.0, 1.0, float("inf"), 1.0, 1.0, 1.0]}, {}, r"column 'price', row 2: value inf"),
        ({"price": [1.0, 1.0, 1.0, None, 1.0, 1.0]}, {}, r"column 'price', row 3: value None"),
        ({"click": [1, 0, 2, 0, 1, 1]}, {}, r"column 'click', row 2: value 2 is not a binary label"),
        ({"click": [1, 0, 1, 0, None, 1]}, {}, r"column 'click', row 4: value None is not a binary"),
        (
            {"region": ["north", "south", "east", "south", "north", "south"]},
            {"domains": ("north", "south")},
            r"column 'region', row 2: value 'east' is not one of the configured domains \['north', 'south'\]",
        ),
        (
            {"region": ["north", None, "north", "south", "north", "south"]},
            {},
            r"column 'region', row 1: value None is not one of",
        ),
        ({"ts": [1, 2, None, 3, 4, 5]}, {}, r"column 'ts', row 2: value None is missing"),
        ({"price": ["1", "x", "1", "1", "1", "1"]}, {}, r"column 'price', row 1: value 'x' cannot be read as double"),
        (
            {},
            {"dense": ("price", "weight")},
            r"\['weight'\] named in the spec are not in the data; available",
        ),
        ({"hist": [1, 2, 3, 4, 5, 6]}, {}, r"sequence column 'hist': type int64 is not a string"),
    ],
)
def test_bad_input_names_column_row_and_value(overrides: dict, spec_changes: dict, match: str) -> None:
    spec = TableSpec(**{**SPEC.__dict__, **spec_changes})
    with pytest.raises(ValueError, match=match):
        encode_table(_table(**overrides), spec, "toy")


def test_empty_input_raises() -> None:
    empty = pa.table(
        {"user": pa.array([], pa.string()), "region": pa.array([], pa.string()), "click": pa.array([], pa.int64())}
    )
    spec = TableSpec(sparse=("user",), domain="region", labels=("click",))
    with pytest.raises(ValueError, match="'toy': the input has no rows"):
        encode_table(empty, spec, "toy")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sparse": ("user", "click")}, r"column 'click' is listed as sparse and labels.*leaks the answer"),
        ({"dense": ("click",)}, r"column 'click' is listed as dense and labels"),
        ({"sparse": ("user", "region")}, r"column 'region' is listed as sparse and domain"),
        ({"user": "ts"}, r"user column 'ts' must also be a sparse column"),
        ({"dense_scaling": "log"}, r"dense_scaling 'log' is not one of"),
        ({"sequence": SequenceSpec("hist", vocab_field="ts", max_len=3)}, r"shares the vocabulary of 'ts'"),
    ],
)
def test_bad_spec_raises(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TableSpec(**{**SPEC.__dict__, **changes})


def test_first_uncastable_finds_the_first_bad_value_across_chunks() -> None:
    values = pa.chunked_array([["1", None, "2.5"], ["3", "oops", "x"]])
    assert first_uncastable(values, pa.float64()) == 4
    assert first_uncastable(pa.array(["z"]), pa.float64()) == 0


def test_a_single_name_is_one_column() -> None:
    spec = TableSpec(sparse="user", domain="region", labels="click", dense="price")
    assert (spec.sparse, spec.labels, spec.dense) == (("user",), ("click",), ("price",))
    assert encode_table(_table(), spec, "toy").schema.labels == ("click",)


def test_patterns_expand_against_the_header() -> None:
    header = ["id", "c_2", "num", "c_1", "dom", "y", "c_x"]
    spec = TableSpec(sparse=("c_[0-9]", "id", "c_*"), domain="dom", labels="y", dense=("n*",), user="c_1")
    expanded = spec.expand(header, "t.csv")
    # in header order within each pattern, each column once, explicit names where they stand
    assert expanded.sparse == ("c_2", "c_1", "id", "c_x") and expanded.dense == ("num",)
    assert TableSpec(sparse=("*",), domain="dom", labels="y", dense=("num",)).expand(header, "t.csv").sparse == (
        "id",
        "c_2",
        "c_1",
        "c_x",
    )  # a column another role names is left out of a pattern
    assert spec.expand(header, "t.csv").expand(header, "t.csv") == expanded  # no pattern left: unchanged
    with pytest.raises(ValueError, match=r"t\.csv: column\(s\) \['num'\] match both a sparse pattern"):
        TableSpec(sparse=("*",), domain="dom", labels="y", dense=("n*",)).expand(header, "t.csv")
    literal = TableSpec(sparse=("c_*", "c_?"), domain="dom", labels="y").expand(["c_*", "c_1", "dom", "y"], "t.csv")
    assert literal.sparse == ("c_*", "c_1")  # a column named like a pattern is that column
    with pytest.raises(ValueError, match=r"user column 'uid' must also be a sparse column"):
        TableSpec(sparse=("c_*",), domain="dom", labels="y", user="uid")


def test_encode_table_expands_patterns() -> None:
    spec = TableSpec(sparse=("u*", "it?m"), domain="region", labels="click")
    assert encode_table(_table(), spec, "toy").schema.sparse_names == ["user", "item"]
    with pytest.raises(ValueError, match=r"data set 'toy': the sparse pattern 'x\*' matches no column; the columns"):
        encode_table(_table(), TableSpec(sparse=("x*",), domain="region", labels="click"), "toy")
