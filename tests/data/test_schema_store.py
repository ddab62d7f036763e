"""Schema, column store and Batch: round trips and every bad input named in the error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SequenceField, SparseField
from mdrec.data.store import COLUMNS_DIR, ColumnStore, StoreWriter, write_store


def toy_schema(**changes: object) -> Schema:
    args = dict(
        dataset_id="toy",
        sparse=(SparseField("user", 5), SparseField("item", 4)),
        dense=("age",),
        domain_field="region",
        domains=("north", "south"),
        labels=("click",),
        user_field="user",
    )
    args.update(changes)
    return Schema(**args)


def toy_columns() -> dict[str, np.ndarray]:
    return {
        "user": np.array([1, 2, 3, 4, 0]),
        "item": np.array([1, 2, 3, 1, 2]),
        "age": np.array([0.1, 0.2, 0.3, 0.4, 0.5]),
        "region": np.array([0, 1, 0, 1, 1]),
        "click": np.array([0, 1, 1, 0, 1]),
    }


def test_schema_round_trip(tmp_path: Path) -> None:
    schema = toy_schema(sequence=SequenceField("hist", "item", 3), time_column="ts", oracle_columns={"click": "p"})
    schema.save(tmp_path)
    assert Schema.load(tmp_path) == schema


def test_label_used_as_feature_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['click'\].*more than once.*leak"):
        toy_schema(dense=("age", "click"))


def test_schema_rejects_unknown_user_field() -> None:
    with pytest.raises(ValueError, match="user_field 'nobody'"):
        toy_schema(user_field="nobody")


def test_store_round_trip(tmp_path: Path) -> None:
    write_store(tmp_path / "s", toy_schema(), toy_columns(), vocabularies={"user": ["a", "b", "c", "d"]})
    store = ColumnStore(tmp_path / "s")
    assert len(store) == 5 and store.vocabulary("user") == ["a", "b", "c", "d"]
    batch = store.take(np.array([1, 3]))
    batch.validate(num_domains=2, vocab_sizes=[5, 4])
    assert batch.sparse.dtype == torch.int64 and batch.sparse.tolist() == [[2, 2], [4, 1]]
    assert batch.dense.dtype == torch.float32 and batch.labels.tolist() == [[1.0], [0.0]]
    assert batch.domain.tolist() == [1, 1]


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("age", [0.1, np.nan, 0.3, 0.4, 0.5], r"column 'age', row 1: value nan is not a finite float32"),
        ("age", [0.1, 0.2, np.inf, 0.4, 0.5], r"column 'age', row 2: value inf is not a finite float32"),
        ("age", [0.1, 0.2, 0.3, -1e39, 0.5], r"column 'age', row 3: value -1e\+39 is not a finite float32"),
        ("click", [0, 1, 2, 0, 1], r"column 'click', row 2: value 2.0 is not a binary label"),
        ("user", [1, -3, 3, 4, 0], r"column 'user', row 1: value -3 is not an id in 0..4"),
        ("item", [1, 2, 9, 1, 2], r"column 'item', row 2: value 9 is not an id in 0..3"),
        ("region", [0, 1, 0, 2, 1], r"column 'region', row 3: value 2 is not a domain id .*north"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, column: str, values: list, message: str) -> None:
    cols = toy_columns()
    cols[column] = np.array(values, dtype=np.float64 if column in ("age", "click") else np.int64)
    with pytest.raises(ValueError, match=message):
        write_store(tmp_path / "s", toy_schema(), cols)
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_time_stamps_must_be_integers(tmp_path: Path) -> None:
    """A float time column (NaN included) would be truncated to int64 when stored, the NaN row sorted first."""
    cols = {**toy_columns(), "ts": np.array([1.5, np.nan, 3.0, 4.0, 5.0])}
    with pytest.raises(ValueError, match=r"column 'ts' has dtype float64, expected integers"):
        write_store(tmp_path / "s", toy_schema(time_column="ts"), cols)
    write_store(tmp_path / "s", toy_schema(time_column="ts"), {**cols, "ts": np.arange(5) * 10})
    assert ColumnStore(tmp_path / "s").column("ts").tolist() == [0, 10, 20, 30, 40]


def test_vocabularies_beyond_int32_are_refused() -> None:
    with pytest.raises(ValueError, match=r"sparse field 'user' has vocab_size 4294967296; .*int32"):
        toy_schema(sparse=(SparseField("user", 2**32), SparseField("item", 4)))


def test_missing_column_is_named(tmp_path: Path) -> None:
    cols = toy_columns()
    del cols["item"]
    with pytest.raises(ValueError, match=r"column\(s\) \['item'\] named by the schema are missing"):
        write_store(tmp_path / "s", toy_schema(), cols)


def test_empty_and_ragged_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no rows"):
        write_store(tmp_path / "s", toy_schema(), {k: v[:0] for k, v in toy_columns().items()})
    cols = toy_columns()
    cols["age"] = cols["age"][:3]
    with pytest.raises(ValueError, match="columns differ in length"):
        write_store(tmp_path / "s", toy_schema(), cols)


def test_writer_in_chunks_equals_write_store(tmp_path: Path) -> None:
    cols = toy_columns()
    write_store(tmp_path / "whole", toy_schema(), cols)
    with StoreWriter(tmp_path / "chunks", toy_schema(), num_rows=5) as writer:
        for start, stop in [(0, 2), (2, 2), (2, 5)]:  # an empty chunk is no rows
            writer.write({k: v[start:stop] for k, v in cols.items()})
        writer.commit(report={"rows": 5})
    for name in cols:  # byte for byte: the same .npy header and data
        assert (tmp_path / "chunks" / COLUMNS_DIR / f"{name}.npy").read_bytes() == (
            tmp_path / "whole" / COLUMNS_DIR / f"{name}.npy"
        ).read_bytes()
    assert ColumnStore(tmp_path / "chunks").report() == {"rows": 5}


def test_writer_refuses_a_bad_chunk_naming_the_global_row(tmp_path: Path) -> None:
    cols = toy_columns()
    cols["item"][3] = 9  # row 3 of the data set: row 1 of the second chunk
    with pytest.raises(ValueError, match=r"column 'item', row 3: value 9 is not an id in 0..3"):
        with StoreWriter(tmp_path / "s", toy_schema(), num_rows=5) as writer:
            writer.write({k: v[:2] for k, v in cols.items()})
            writer.write({k: v[2:] for k, v in cols.items()})
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary directory left
    with pytest.raises(ValueError, match="3 more rows after 2 exceed the 4 rows announced"):
        with StoreWriter(tmp_path / "s", toy_schema(), num_rows=4) as writer:
            writer.write({k: v[:2] for k, v in toy_columns().items()})
            writer.write({k: v[2:] for k, v in toy_columns().items()})
    with pytest.raises(ValueError, match="2 of the 5 rows announced were written"):
        with StoreWriter(tmp_path / "s", toy_schema(), num_rows=5) as writer:
            writer.write({k: v[:2] for k, v in toy_columns().items()})
            writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_schema_that_does_not_match_the_data(tmp_path: Path) -> None:
    write_store(tmp_path / "s", toy_schema(), toy_columns())
    # a schema edited to a smaller vocabulary than the data holds
    obj = json.loads((tmp_path / "s" / "schema.json").read_text())
    obj["sparse"][0]["vocab_size"] = 3
    (tmp_path / "s" / "schema.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"column 'user', row 2: value 3 is not an id in 0..2"):
        ColumnStore(tmp_path / "s")
    # a column file that the schema names is gone
    obj["sparse"][0]["vocab_size"] = 5
    (tmp_path / "s" / "schema.json").write_text(json.dumps(obj))
    (tmp_path / "s" / COLUMNS_DIR / "item.npy").unlink()
    with pytest.raises(ValueError, match=r"lacks column file\(s\) \['item'\]"):
        ColumnStore(tmp_path / "s")


def test_column_with_wrong_dtype(tmp_path: Path) -> None:
    write_store(tmp_path / "s", toy_schema(), toy_columns())
    np.save(tmp_path / "s" / COLUMNS_DIR / "user.npy", np.array([0.5] * 5))
    with pytest.raises(ValueError, match="column 'user' has dtype float64, the schema expects int32"):
        ColumnStore(tmp_path / "s")


def test_batch_moves_and_validates() -> None:
    b = Batch(torch.tensor([[1, 2]]), torch.zeros(1, 1), torch.tensor([0]), torch.ones(1, 1), weight=torch.ones(1))
    moved = b.to(torch.device("cpu"))
    assert moved.weight is not None and moved.size == 1
    with pytest.raises(ValueError, match="Batch.domain holds id 3, outside 0..1"):
        Batch(torch.tensor([[1, 2]]), torch.zeros(1, 1), torch.tensor([3]), torch.ones(1, 1)).validate(num_domains=2)
    with pytest.raises(ValueError, match="negative id"):
        Batch(torch.tensor([[-1, 2]]), torch.zeros(1, 1), torch.tensor([0]), torch.ones(1, 1)).validate()
    with pytest.raises(ValueError, match=r"Batch.sparse\[:, 1\] holds id 7 >= vocab_size 4"):
        Batch(torch.tensor([[1, 7]]), torch.zeros(1, 1), torch.tensor([0]), torch.ones(1, 1)).validate(
            vocab_sizes=[5, 4]
        )
    with pytest.raises(ValueError, match="Batch.dense: expected torch.float32"):
        Batch(
            torch.tensor([[1, 2]]),
            torch.zeros(1, 1, dtype=torch.float64),
            torch.tensor([0]),
            torch.ones(1, 1),
        ).validate()
