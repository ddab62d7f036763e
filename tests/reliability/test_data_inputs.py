"""Input files that used to prepare silently into wrong data, or not at all: a dense outlier that collapses its column,
val/test files that repeat the train rows, a domain only the test file shows, compressed CSV/TSV."""

from __future__ import annotations

import bz2
import gzip
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from omegaconf import OmegaConf

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.ingest import TableSpec
from mdrec.data.sources.tabular import TabularSource
from mdrec.data.splits import PredefinedSplit
from mdrec.data.store import ColumnStore

ROOT = Path(__file__).resolve().parents[2]
SPEC = TableSpec(sparse=("user", "item"), domain="region", labels=("click",), dense=("price",), time="ts")
HEADER = "user,item,region,price,click,ts\n"


def rows_csv(
    start: int, n: int, price: list[str] | None = None, region: list[str] | None = None, flip: bool = False
) -> str:
    """``n`` distinct rows (time stamps ``start`` ..): regions ``de``/``fr`` and prices 1 .. 100 unless given;
    ``flip``: the other label."""
    i = np.arange(start, start + n)
    price = price or [str(k % 100 + 1) for k in i]
    region = region or ["de" if k % 3 else "fr" for k in i]
    return "".join(f"u{k % 17},{k % 11},{region[j]},{price[j]},{(k + flip) % 2},{k}\n" for j, k in enumerate(i))


def write(path: Path, body: str) -> str:
    path.write_text(HEADER + body)
    return str(path)


def split_source(tmp_path: Path, train: str, val: str, test: str, **options: object) -> TabularSource:
    files = {
        name: write(tmp_path / f"{name}.csv", body) for name, body in (("train", train), ("val", val), ("test", test))
    }
    return TabularSource(
        "shop", SPEC, train_files=files["train"], val_files=files["val"], test_files=files["test"], **options
    )


# ---------------------------------------------------------------------------------------------------------------
# 1. a dense value that would collapse its column under scaling


@pytest.mark.parametrize(
    ("scaling", "outlier"), [("minmax", "1e300"), ("minmax", "-1e12"), ("standard", "1e20"), ("standard", "1e300")]
)
def test_a_dense_outlier_that_would_collapse_the_column_is_refused(tmp_path: Path, scaling: str, outlier: str) -> None:
    """Prices 1..100 and one huge value: minmax would scale the others to within 1e-10 of each other (0.0 for 1e300);
    refused, naming the column, the row (and its file) and the value, saying to clip or log-transform."""
    price = [str(k % 100 + 1) for k in range(300)]
    price[157] = outlier
    path = write(tmp_path / "shop.csv", rows_csv(0, 300, price))
    source = TabularSource("shop", replace(SPEC, dense_scaling=scaling), data_files=path)
    with pytest.raises(ValueError) as info:
        source.encode(tmp_path / "raw")
    message = str(info.value)
    assert f"column 'price', row 157: value {outlier!r}" in message and f"row 157 of file {path!r}" in message
    assert re.search(r"clip|log", message), message
    if outlier != "1e300" or scaling == "minmax":  # standard on 1e300: its square overflows, named as such
        assert "float32 resolution" in message and "clip the column" in message and "log-transform" in message


@pytest.mark.parametrize(
    "values",
    [
        np.exp(np.random.default_rng(0).normal(0, 3, 5000)),  # log-normal, sigma 3: max / 99th percentile ~ 60
        np.r_[np.arange(1.0, 101.0).repeat(10), 1e5],  # an outlier 1000 x the others: a spread of 1e-3 is kept
        np.r_[np.zeros(990), np.full(10, 1e9)],  # mostly constant: nothing to collapse
        np.linspace(1e39, 5e39, 1000),  # beyond float32's range raw, [0, 1] scaled: nothing to collapse
        np.r_[np.zeros(500), np.full(499, -1e-128), -1.0],  # a bulk only float64 tells apart: not collapsed by scaling
    ],
)
def test_wide_but_sound_dense_columns_are_kept_and_scaled_exactly(tmp_path: Path, values: np.ndarray) -> None:
    n = len(values)
    path = write(tmp_path / "shop.csv", rows_csv(0, n, [repr(float(v)) for v in values]))
    store_dir = tmp_path / "store"
    TabularSource("shop", SPEC, data_files=path).prepare(store_dir, tmp_path / "raw")
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(ColumnStore(store_dir).column("price"), expected.astype(np.float32), rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# 2. val/test files that repeat the train rows


def test_a_test_file_that_copies_the_train_file_is_refused(tmp_path: Path) -> None:
    source = split_source(tmp_path, rows_csv(0, 200), rows_csv(200, 50), rows_csv(0, 200))
    with pytest.raises(ValueError) as info:
        MultiDomainDataModule(source, PredefinedSplit(), data_dir=str(tmp_path / "data")).prepare_data()
    message = str(info.value)
    assert "100.0% of the test rows (200 of 200" in message and "max_train_overlap = 0.5" in message
    assert repr(str(tmp_path / "test.csv")) in message and repr(str(tmp_path / "train.csv")) in message
    dm = MultiDomainDataModule(source, PredefinedSplit(), data_dir=str(tmp_path / "data"))
    assert not dm.prepared_dir.exists()  # nothing prepared


def test_shared_rows_are_reported_warned_about_and_refused_above_the_threshold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # test: 30 rows copied from train, 10 rows equal to a train row but for the label (not shared: whole rows are
    # compared), 60 new rows; val: 1 of 50 rows copied (2 %, also warned about)
    train = rows_csv(0, 200)
    test = rows_csv(0, 30) + rows_csv(100, 10, flip=True) + rows_csv(1000, 60)
    val = rows_csv(150, 1) + rows_csv(2000, 49)
    source = split_source(tmp_path, train, val, test)
    with caplog.at_level(logging.WARNING):
        dm = MultiDomainDataModule(source, PredefinedSplit(), data_dir=str(tmp_path / "data"))
        dm.prepare_data()
    dm.setup()
    val_path, test_path = str(tmp_path / "val.csv"), str(tmp_path / "test.csv")
    assert dm.store.report()["rows_also_in_train"] == {
        "val": pytest.approx(0.02),
        "test": pytest.approx(0.3),
        "files": {val_path: pytest.approx(0.02), test_path: pytest.approx(0.3)},
    }
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "also appear" in r.getMessage()
    ]
    assert len(warned) == 2 and "2.0% of the val rows (1 of 50" in warned[0] and "30.0% of the test rows" in warned[1]
    strict = split_source(tmp_path, train, val, test, max_train_overlap=0.25)
    with pytest.raises(ValueError, match=r"30\.0% of the test rows \(30 of 100; per file: .*test\.csv' \(30\.0%\)\)"):
        strict.encode(tmp_path / "raw")


def test_the_threshold_is_in_the_tabular_config() -> None:
    conf = OmegaConf.load(ROOT / "mdrec" / "conf" / "data" / "tabular.yaml")
    assert conf.source.max_train_overlap == 0.5
    with pytest.raises(ValueError, match="max_train_overlap 1.5 must be a share in"):
        TabularSource("shop", SPEC, data_files="x.csv", max_train_overlap=1.5)


# ---------------------------------------------------------------------------------------------------------------
# 4. a domain only val/test rows show


def test_a_domain_seen_only_in_test_is_refused_naming_it_and_its_file(tmp_path: Path) -> None:
    regions = ["de", "it", "fr", "de"]
    source = split_source(tmp_path, rows_csv(0, 30), rows_csv(100, 10), rows_csv(200, 4, region=regions))
    test_path = str(tmp_path / "test.csv")
    with pytest.raises(ValueError) as info:
        source.encode(tmp_path / "raw")
    message = str(info.value)
    assert "column 'region', row 41: value 'it' is not one of the domains of the training rows" in message
    assert f"row 41 is row 1 of file {test_path!r}" in message
    assert "list every domain in `domains`" in message
    # listed, the domain is prepared (with no training rows)
    spec = replace(SPEC, domains=("de", "fr", "it"))
    listed = TabularSource("shop", spec, **{k: getattr(source, k) for k in ("train_files", "val_files", "test_files")})
    enc = listed.encode(tmp_path / "raw")
    assert enc.schema.domains == ("de", "fr", "it")
    assert enc.report["rows_per_domain"]["it"] == 1 and enc.columns["region"][41] == 2


# ---------------------------------------------------------------------------------------------------------------
# 5. compressed CSV/TSV


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "zst": lambda b: pa.compress(b, "zstd", asbytes=True)}


@pytest.mark.parametrize(("kind", "compression"), [("csv", "gz"), ("tsv", "gz"), ("csv", "bz2"), ("txt", "zst")])
def test_compressed_csv_and_tsv_read_as_the_plain_file(tmp_path: Path, kind: str, compression: str) -> None:
    text = HEADER + rows_csv(0, 40)
    if kind == "tsv":
        text = text.replace(",", "\t")
    plain, packed = tmp_path / f"plain.{kind}", tmp_path / f"packed.{kind}.{compression}"
    plain.write_text(text)
    packed.write_bytes(COMPRESS[compression](text.encode()))
    expected = TabularSource("shop", SPEC, data_files=str(plain)).encode(tmp_path / "raw")
    got = TabularSource("shop", SPEC, data_files=str(packed)).encode(tmp_path / "raw")
    assert got.report["input_rows"] == {str(packed): 40}
    assert got.columns.keys() == expected.columns.keys()
    for name, column in expected.columns.items():
        np.testing.assert_array_equal(got.columns[name], column)


def test_a_truncated_gzip_file_is_named(tmp_path: Path) -> None:
    packed = tmp_path / "shop.csv.gz"
    packed.write_bytes(gzip.compress((HEADER + rows_csv(0, 5000)).encode())[:2000])
    with pytest.raises(ValueError, match=r"shop\.csv\.gz'.*gzip-compressed as its extension says \(is it complete\?\)"):
        TabularSource("shop", SPEC, data_files=str(packed)).encode(tmp_path / "raw")
