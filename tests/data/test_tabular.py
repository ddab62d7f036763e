"""TabularSource: CSV/TSV/parquet files + a TableSpec -> prepared store, with and without own splits."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mdrec.data.ingest import SequenceSpec, TableSpec
from mdrec.data.schema import SPLIT_COLUMN, seq_length_column
from mdrec.data.sources import tabular
from mdrec.data.sources.base import Source, fingerprint
from mdrec.data.sources.tabular import TabularSource
from mdrec.data.store import ColumnStore
from mdrec.train.typecheck import check_types
from tests.helpers import compose_train

CSV = """user,zip,country,price,click,ts,history
u1,02134,de,1.5,1,100,a|b
u2,90210,fr,2.5,0,101,
u1,02134,de,3.5,1,102,b|c|a
u3,10001,fr,0.5,0,103,c
"""
SPEC = TableSpec(sparse=("user", "zip"), domain="country", labels=("click",), dense=("price",), user="user", time="ts")


def test_csv_pool(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(CSV)
    src = TabularSource("shop", SPEC, data_files=str(tmp_path / "d.csv"))
    assert isinstance(src, Source) and src.dataset_id == "shop"
    src.prepare(tmp_path / "out", tmp_path / "raw")
    store = ColumnStore(tmp_path / "out")
    assert not store.schema.has_split_column
    assert store.vocabulary("zip") == ["02134", "10001", "90210"]  # read as strings: leading zero kept
    assert store.column("zip").tolist() == [1, 3, 1, 2]
    assert store.schema.domains == ("de", "fr") and store.column("country").tolist() == [0, 1, 0, 1]
    assert store.column("click").tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(store.column("price"), [1 / 3, 2 / 3, 1.0, 0.0], rtol=1e-6)
    assert store.column("ts").tolist() == [100, 101, 102, 103]
    assert (tmp_path / "raw" / "arrow").is_dir()  # Arrow cache of the parsed files


def test_tsv_with_delimited_sequence(tmp_path: Path) -> None:
    (tmp_path / "d.tsv").write_text(CSV.replace(",", "\t"))
    spec = TableSpec(
        sparse=("user", "zip"),
        domain="country",
        labels=("click",),
        sequence=SequenceSpec("history", vocab_field="user", max_len=2, delimiter="|"),
    )
    enc = TabularSource("shop", spec, data_files=[str(tmp_path / "d.tsv")]).encode(tmp_path / "raw")
    # the history shares user's vocabulary (u1, u2, u3): every history value is unseen there
    assert enc.columns["history"].tolist() == [[0, 0], [0, 0], [0, 0], [0, 0]]
    assert enc.columns[seq_length_column("history")].tolist() == [2, 0, 2, 1]
    assert enc.report["sequence"]["unseen"] == 1.0


def test_custom_delimiter(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text(CSV.replace(",", ";"))
    enc = TabularSource("shop", SPEC, data_files=str(tmp_path / "d.txt"), delimiter=";").encode(tmp_path / "raw")
    assert enc.columns["user"].tolist() == [1, 2, 1, 3]


def test_parquet_splits_fit_vocab_on_train_and_report_unseen(tmp_path: Path) -> None:
    def write(name: str, users: list[str], country: list[str], click: list[int]) -> str:
        path = tmp_path / f"{name}.parquet"
        n = len(users)
        pq.write_table(
            pa.table(
                {
                    "user": users,
                    "zip": ["1"] * n,
                    "country": country,
                    "price": [1.0] * n,
                    "click": click,
                    "ts": list(range(n)),
                }
            ),
            path,
        )
        return str(path)

    src = TabularSource(
        "shop",
        SPEC,
        train_files=[write("train", ["u1", "u2", "u1"], ["de", "fr", "de"], [1, 0, 1])],
        val_files=write("val", ["u1", "u9"], ["de", "fr"], [0, 1]),
        test_files=write("test", ["u8", "u8", "u2"], ["de", "de", "fr"], [1, 1, 0]),
    )
    src.prepare(tmp_path / "out", tmp_path / "raw")
    store = ColumnStore(tmp_path / "out")
    assert store.schema.has_split_column
    assert store.column(SPLIT_COLUMN).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert store.vocabulary("user") == ["u1", "u2"]
    assert store.column("user").tolist() == [1, 2, 1, 1, 0, 0, 0, 2]
    user = store.report()["fields"]["user"]
    assert user["unseen_per_split"] == {"train": 0.0, "val": 0.5, "test": pytest.approx(2 / 3)}
    assert user["unseen_per_domain"] == {"de": pytest.approx(2 / 5), "fr": pytest.approx(1 / 3)}
    assert store.report()["rows_per_split"] == {"train": 3, "val": 2, "test": 3}


def test_hydra_config_instantiates(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(CSV)
    cfg = OmegaConf.create(
        {
            "_target_": "mdrec.data.sources.tabular.TabularSource",
            "name": "shop",
            "data_files": [str(tmp_path / "d.csv")],
            "spec": {
                "_target_": "mdrec.data.ingest.TableSpec",
                "sparse": ["user", "zip"],
                "domain": "country",
                "labels": ["click"],
                "dense": ["price"],
                "sequence": {
                    "_target_": "mdrec.data.ingest.SequenceSpec",
                    "column": "history",
                    "vocab_field": "zip",
                    "max_len": 3,
                    "delimiter": "|",
                },
            },
        }
    )
    src = instantiate(cfg)
    assert src.spec.sparse == ("user", "zip") and src.data_files == (str(tmp_path / "d.csv"),)
    assert fingerprint(src) == fingerprint(
        TabularSource(
            "shop",
            TableSpec(
                sparse=("user", "zip"),
                domain="country",
                labels=("click",),
                dense=("price",),
                sequence=SequenceSpec("history", "zip", 3, "|"),
            ),
            data_files=str(tmp_path / "d.csv"),
        )
    )
    assert len(src.encode(tmp_path / "raw").columns["user"]) == 4


def test_csv_bad_values_name_column_and_row(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(CSV.replace("2.5", ""))
    src = TabularSource("shop", SPEC, data_files=str(tmp_path / "d.csv"))
    with pytest.raises(ValueError, match=r"column 'price', row 1: value None is not finite"):
        src.encode(tmp_path / "raw")
    (tmp_path / "e.csv").write_text(CSV.replace("u3,10001,fr,0.5,0", "u3,10001,fr,0.5,yes"))
    with pytest.raises(ValueError, match=r"column 'click', row 3: value 'yes' cannot be read as double"):
        TabularSource("shop", SPEC, data_files=str(tmp_path / "e.csv")).encode(tmp_path / "raw")
    spec = TableSpec(sparse=("user", "item"), domain="country", labels=("click",))
    with pytest.raises(
        ValueError,
        match=r"\['item'\] named in the spec are not in the data; available columns: "
        r"\['user', 'zip', 'country'",
    ):
        TabularSource("shop", spec, data_files=str(tmp_path / "d.csv")).encode(tmp_path / "raw")


@pytest.mark.parametrize(
    ("files", "error", "match"),
    [
        ({}, ValueError, "give either `data_files`.*not neither"),
        ({"data_files": "a.csv", "train_files": "b.csv"}, ValueError, "not both"),
        ({"data_files": "a.csv", "test_files": "b.csv"}, ValueError, "need `train_files`"),
        ({"data_files": "a.json"}, ValueError, r"cannot tell the format of 'a.json'"),
        (
            {"train_files": "a.csv", "val_files": "v.csv", "test_files": "b.parquet"},
            ValueError,
            r"mix formats \['csv', 'parquet'\]",
        ),
        (
            {"train_files": [], "val_files": "v.csv", "test_files": "t.csv"},
            ValueError,
            r"file list for \['train'\] is empty",
        ),
        ({"train_files": "a.csv", "test_files": "t.csv"}, ValueError, r"give `val_files` and `test_files` too"),
    ],
)
def test_bad_file_config(files: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TabularSource("shop", SPEC, **files)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TabularSource("shop", SPEC, data_files=str(tmp_path / "nope.csv")).encode(tmp_path / "raw")


def test_glob_overlapping_other_splits_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name, rows in (
        ("train", CSV.splitlines()[1:3]),
        ("val", CSV.splitlines()[3:4]),
        ("test", CSV.splitlines()[4:]),
    ):
        (tmp_path / "d" / f"{name}.csv").write_text("\n".join([CSV.splitlines()[0], *rows]) + "\n")
    d = tmp_path / "d"
    src = TabularSource(
        "shop", SPEC, train_files=str(d / "*.csv"), val_files=str(d / "val.csv"), test_files=str(d / "test.csv")
    )
    with pytest.raises(ValueError, match=r"listed more than once") as info:
        src.encode(tmp_path / "raw")
    message = str(info.value)
    assert f"{str(d.resolve() / 'val.csv')!r} (2 times, by train_files and val_files)" in message
    assert f"{str(d.resolve() / 'test.csv')!r} (2 times, by train_files and test_files)" in message
    assert "train.csv" not in message and "narrow the glob pattern" in message
    # the narrowed pattern reads each file once: 2 + 1 + 1 rows
    src = TabularSource(
        "shop", SPEC, train_files=str(d / "tr*.csv"), val_files=str(d / "val.csv"), test_files=str(d / "test.csv")
    )
    enc = src.encode(tmp_path / "raw")
    assert enc.columns[SPLIT_COLUMN].tolist() == [0, 0, 1, 2]
    assert sum(enc.report["input_rows"].values()) == 4


def test_file_listed_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(CSV)
    same = [str(tmp_path / "d.csv"), str(tmp_path / "sub" / ".." / "d.csv")]  # one file, two spellings
    (tmp_path / "sub").mkdir()
    src = TabularSource("shop", SPEC, data_files=same)
    with pytest.raises(ValueError, match=r"'.*d\.csv' \(2 times, by data_files\)\. List each file once"):
        src.encode(tmp_path / "raw")
    assert len(TabularSource("shop", SPEC, data_files=same[:1]).encode(tmp_path / "raw").columns["click"]) == 4


WIDE_CSV = """user,cat_b,num_x,region,cat_a,click,note
u1,x,1.0,de,p,1,a
u2,y,2.0,fr,q,0,b
u1,x,3.0,de,q,1,c
"""


def test_single_names_and_patterns_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(WIDE_CSV)
    cfg = compose_train(
        tmp_path,
        [
            "data=tabular",
            "data.source.name=shop",
            f"data.source.data_files=[{tmp_path / 'd.csv'}]",
            "data.source.spec.sparse=[user,cat_*]",
            "data.source.spec.dense=num_*",
            "data.source.spec.domain=region",
            "data.source.spec.labels=click",
            "data.source.spec.user=user",
        ],
    )
    check_types(cfg)  # a single name where a list is expected is accepted
    src = instantiate(cfg.data.source)
    assert src.spec.labels == ("click",) and src.spec.dense == ("num_*",)  # one column, not one per character
    enc = src.encode(tmp_path / "raw")
    assert enc.schema.sparse_names == ["user", "cat_b", "cat_a"]  # patterns expand in the file's column order
    assert enc.schema.dense == ("num_x",) and enc.schema.labels == ("click",)
    assert enc.columns["cat_a"].tolist() == [1, 2, 2] and enc.schema.user_field == "user"


def test_a_pattern_matching_nothing_names_it_and_lists_the_header(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text(WIDE_CSV)
    spec = TableSpec(sparse=("user", "feat_*"), domain="region", labels="click")
    header = "['user', 'cat_b', 'num_x', 'region', 'cat_a', 'click', 'note']"
    match = rf"file '.*d\.csv': the sparse pattern 'feat_\*' matches no column; the columns are {re.escape(header)}"
    with pytest.raises(ValueError, match=match):
        TabularSource("shop", spec, data_files=str(tmp_path / "d.csv")).encode(tmp_path / "raw")


def test_patterns_that_match_other_columns_in_another_file_are_refused_in_either_order(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(WIDE_CSV)
    lines = WIDE_CSV.splitlines()  # b.csv: the same rows and one more column, cat_c, that cat_* matches
    (tmp_path / "b.csv").write_text("\n".join(f"{line},{'cat_c' if i == 0 else 'x'}" for i, line in enumerate(lines)))
    spec = TableSpec(sparse=("user", "cat_*"), domain="region", labels="click")
    for files in (["a.csv", "b.csv"], ["b.csv", "a.csv"]):
        paths = [str(tmp_path / f) for f in files]
        with pytest.raises(ValueError, match=r"give sparse .* in '.*' but sparse .* give every file the same columns"):
            TabularSource("shop", spec, data_files=paths).encode(tmp_path / "raw")


def test_parquet_files_of_other_types_are_cast_or_refused(tmp_path: Path) -> None:
    table = {"user": ["u1", "u2"], "country": ["de", "fr"], "click": [1, 0], "price": [1.5, 2.5]}
    pq.write_table(pa.table(table), tmp_path / "a.parquet")
    pq.write_table(pa.table({**table, "price": [1, 2]}), tmp_path / "b.parquet")  # int64: cast to double
    spec = TableSpec(sparse="user", domain="country", labels="click", dense="price")
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    enc = TabularSource("shop", spec, data_files=files).encode(tmp_path / "raw")
    np.testing.assert_allclose(enc.columns["price"], [0.5 / 1.5, 1.5 / 1.5, 0.0, 1 / 1.5], rtol=1e-6)
    pq.write_table(pa.table({**table, "price": ["cheap", "dear"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"file '.*c\.parquet' has columns \(.*price: string.*\) that cannot be read"):
        TabularSource("shop", spec, data_files=[*files, str(tmp_path / "c.parquet")]).encode(tmp_path / "raw")


def test_the_example_files_prepare_with_the_readme_spec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tabular.main(["--example", str(tmp_path / "shop"), "--rows", "1000"])
    files = {split: tmp_path / "shop" / f"{split}.csv" for split in ("train", "val", "test")}
    assert capsys.readouterr().out.split() == [str(p) for p in files.values()]
    spec = TableSpec(sparse=("user", "item", "cat_*"), domain="region", labels="click", dense="price", user="user")
    src = TabularSource(
        "shop", spec, train_files=str(files["train"]), val_files=str(files["val"]), test_files=str(files["test"])
    )
    enc = src.encode(tmp_path / "raw")
    assert enc.schema.sparse_names == ["user", "item", "cat_a", "cat_b", "cat_c"]
    assert enc.schema.domains == ("north", "south", "west")
    assert enc.report["rows_per_split"] == {"train": 800, "val": 100, "test": 100}
    assert 0.05 < enc.columns["click"].mean() < 0.95
