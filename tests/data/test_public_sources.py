"""Ali-CCP, AliExpress and KuaiRand sources on tiny files written in their exact raw layouts.

Ali-CCP: headerless CSVs whose feature lists use the \\x01 / \\x02 / \\x03 separators. AliExpress: headerless user
(33 columns) and item (49 columns) CSVs, as extracted files or nested in the country zip as released. KuaiRand: the
zenodo tar.gz (``KuaiRand-1K/data/*.csv`` with headers), read in place or extracted; downloads are monkeypatched.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import pyarrow as pa
import pytest
from omegaconf import DictConfig, OmegaConf

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.sources import aliccp, aliexpress, kuairand, raw
from mdrec.data.sources.base import Source, fingerprint
from mdrec.data.splits import PredefinedSplit, RandomSplit
from mdrec.data.store import ColumnStore
from mdrec.train.run import train
from tests.data.conftest import Served
from tests.helpers import CONF_DIR, TrainCfg


def decode(store: ColumnStore, field: str) -> list[str | None]:
    """The raw value of every row's id of ``field`` (None for id 0)."""
    vocab = store.vocabulary(field)
    return [vocab[i - 1] if i else None for i in store.column(field)]


# ---------------------------------------------------------------- raw files --------------------------------------
@pytest.mark.parametrize(("text", "names"), [(b"a,b\n", None), (b"\n\r\n", ["a", "b"])])
def test_a_file_without_rows_is_named(tmp_path: Path, text: bytes, names: list[str] | None) -> None:
    """A header-only file, or a headerless one of blank lines: Arrow reads no rows (no error of its own), which
    read_csv and stream_csv refuse, naming the file. An empty file is Arrow's error, which names it too."""
    path = tmp_path / "x.csv"
    path.write_bytes(text)
    columns = {"a": pa.string()}
    match = r"x\.csv holds no rows \(a header or blank lines at most\); the file is empty or truncated"
    with pytest.raises(ValueError, match=match):
        raw.read_csv(path, columns, str(path), names)
    with pytest.raises(ValueError, match=match):
        list(raw.stream_csv(path, columns, str(path), names))
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"x\.csv: Empty CSV file"):
        raw.read_csv(path, columns, str(path), names)


# ---------------------------------------------------------------- Ali-CCP ----------------------------------------
Entry = tuple[str, str, float]  # field, feature id, value


def feature_list(entries: list[Entry]) -> str:
    return "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in entries)


COMMON_TRAIN = {
    # user "ca" lists 109_14 twice: the last entry (901, 0.7) counts
    "ca": [("101", "11", 1.0), ("121", "5", 1.0), ("124", "1", 1.0), ("109_14", "900", 0.5), ("109_14", "901", 0.7)],
    "cb": [("101", "12", 1.0), ("121", "5", 1.0), ("124", "2", 1.0), ("109_14", "902", 0.1)],
}
# click, conversion, common_feature_index, skeleton features; 301 is the position (the domain)
SKELETON_TRAIN = [
    (1, 0, "ca", [("205", "500", 1.0), ("206", "60", 1.0), ("508", "7", 0.25), ("301", "20", 1.0)]),
    (0, 0, "cb", [("205", "500", 1.0), ("206", "61", 1.0), ("301", "10", 1.0)]),
    (0, 1, "ca", [("205", "502", 1.0), ("301", "10", 1.0)]),  # a purchase without a click: dropped
    (1, 1, "cb", [("205", "501", 1.0), ("206", "60", 1.0), ("301", "30", 1.0), ("101", "999", 1.0)]),
    (0, 0, "ca", [("205", "500", 1.0), ("301", "20", 1.0), ("508", "8", 0.75)]),
    (0, 0, "cb", [("205", "503", 1.0), ("301", "10", 1.0)]),
]
COMMON_TEST = {"ta": [("101", "11", 1.0), ("124", "1", 1.0)], "tb": [("101", "13", 1.0)]}
SKELETON_TEST = [
    (0, 0, "ta", [("205", "500", 1.0), ("301", "10", 1.0)]),
    (1, 0, "tb", [("205", "501", 1.0), ("301", "20", 1.0)]),
    (0, 1, "tb", [("205", "500", 1.0), ("301", "30", 1.0)]),  # dropped
    (1, 1, "ta", [("205", "504", 1.0), ("301", "30", 1.0)]),
    (0, 0, "tb", [("205", "500", 1.0), ("301", "20", 1.0)]),
    (0, 0, "ta", [("205", "503", 1.0), ("301", "20", 1.0)]),
    (1, 0, "ta", [("205", "500", 1.0), ("301", "10", 1.0)]),
]


def write_aliccp(directory: Path, subdirs: bool = False, skeleton_train: list | None = None) -> Path:
    for split, common, skeleton in (
        ("train", COMMON_TRAIN, skeleton_train or SKELETON_TRAIN),
        ("test", COMMON_TEST, SKELETON_TEST),
    ):
        where = directory / split if subdirs else directory
        where.mkdir(parents=True, exist_ok=True)
        lines = [f"{idx},{len(e)},{feature_list(e)}\n" for idx, e in common.items()]
        (where / f"common_features_{split}.csv").write_text("".join(lines))
        lines = [f"{r},{c},{v},{idx},{len(e)},{feature_list(e)}\n" for r, (c, v, idx, e) in enumerate(skeleton)]
        (where / f"sample_skeleton_{split}.csv").write_text("".join(lines))
    return directory


def kept(skeleton: list) -> list:
    """The skeleton rows every converter keeps: all but a purchase without a click."""
    return [r for r in skeleton if not (r[0] == 0 and r[1] == 1)]


def entries_of(row: tuple) -> dict[str, str]:
    """Field -> feature id of a skeleton row's own entries (the last one of a field)."""
    return {f: i for f, i, _ in row[3]}


def official_test_halves(n: int, seed: int) -> np.ndarray:
    """``[n]`` split codes of the official test rows: sklearn's ``train_test_split(test_size=0.5, random_state=seed)``
    puts ``permutation[:ceil(n / 2)]`` in its second half (test, 2), the rest in its first (val, 1)."""
    codes = np.ones(n, dtype=np.int8)
    codes[np.random.RandomState(seed).permutation(n)[: (n + 1) // 2]] = 2
    return codes


def test_aliccp_protocol(tmp_path: Path) -> None:
    src = aliccp.AliCCP(path=str(write_aliccp(tmp_path / "raw")), conversion=True, min_count=1, block_bytes=128)
    assert isinstance(src, Source) and src.dataset_id == "aliccp"
    src.prepare(tmp_path / "out", tmp_path / "unused")
    store = ColumnStore(tmp_path / "out")
    s, report = store.schema, store.report()
    kept_train, kept_test = kept(SKELETON_TRAIN), kept(SKELETON_TEST)
    # rows in = rows out + rows reported dropped
    assert report["raw"]["rows_read"] == {"train": len(SKELETON_TRAIN), "test": len(SKELETON_TEST)}
    dropped = {"train": len(SKELETON_TRAIN) - len(kept_train), "test": len(SKELETON_TEST) - len(kept_test)}
    assert dropped == {"train": 1, "test": 1} and {k: report["raw"]["dropped"][k] for k in dropped} == dropped
    assert len(store) == len(kept_train) + len(kept_test)
    # the 22 standard sparse fields, D<field> dense values, 301 as the domain in order of first appearance
    assert s.sparse_names == list(aliccp.FIELDS) and len(s.sparse_names) == 22
    assert s.dense == tuple(f"D{f}" for f in aliccp.DENSE_FIELDS)
    assert s.domains == ("20", "10", "30") and s.labels == ("click", "conversion") and s.user_field == "101"
    rows = kept_train + kept_test
    position = [entries_of(r)["301"] for r in rows]
    assert [s.domains[d] for d in store.column("domain")] == position
    assert report["rows_per_domain"] == dict(Counter(position))
    assert store.column("click").tolist() == [r[0] for r in rows]
    assert store.column("conversion").tolist() == [r[1] for r in rows]
    # the join: user features from the common row, item features from the skeleton row
    assert decode(store, "101") == ["11", "12", "12", "11", "12", "11", None, "11", None, "11", "11"]  # 13: unseen
    assert decode(store, "124")[:5] == ["1", "2", "2", "1", "2"]
    assert decode(store, "206")[:5] == ["60", "61", "60", None, None]
    assert decode(store, "109_14")[:5] == ["901", "902", "902", "901", "902"]  # the last entry of a field
    assert store.vocabulary("205") == ["500", "501", "503"]  # the dropped row's 502 is not in it; 504 is test only
    assert decode(store, "205")[5:] == ["500", "501", None, "500", "503", "500"]
    np.testing.assert_allclose(store.column("D109_14")[:5], [1, 0, 0, 1, 0])  # 0.7 / 0.1, min-max on train
    np.testing.assert_allclose(store.column("D508")[:5], [1 / 3, 0, 0, 1, 0], rtol=1e-6)  # absent: 0
    # official train -> train; official test halved as sklearn's train_test_split(test_size=0.5, random_state=2022)
    split = store.column("split")
    expected = official_test_halves(len(kept_test), src.split_seed)
    assert split.tolist() == [0] * len(kept_train) + expected.tolist()
    n_test = len(kept_test)
    assert report["rows_per_split"] == {"train": len(kept_train), "val": n_test // 2, "test": n_test - n_test // 2}
    assert PredefinedSplit()(store)["val"].tolist() == (len(kept_train) + np.flatnonzero(expected == 1)).tolist()
    assert report["fields"]["125"]["missing"] == 1.0  # a field no row has: all missing, reported


def test_aliccp_min_count_click_only_and_subdirs(tmp_path: Path) -> None:
    src = aliccp.AliCCP(path=str(write_aliccp(tmp_path / "raw", subdirs=True)), dense_fields=["508"], min_count=2)
    enc = src.encode()
    assert enc.schema.labels == ("click",) and enc.schema.dense == ("D508",)
    assert enc.vocabularies["205"] == ["500"]  # 501 and 503 are seen once in train: id 0
    raw_205 = [entries_of(r)["205"] for r in kept(SKELETON_TRAIN) + kept(SKELETON_TEST)]
    assert enc.columns["205"].tolist() == [int(v == "500") for v in raw_205]
    assert enc.vocabularies["101"] == ["11", "12"]
    test_205 = [v for v, code in zip(raw_205, enc.columns["split"], strict=True) if code == 2]
    unseen = enc.report["fields"]["205"]["unseen_per_split"]["test"]
    assert unseen == pytest.approx(np.mean([v != "500" for v in test_205])) and 0 < unseen < 1
    stems = ("sample_skeleton", "common_features")
    expected = sorted(str(tmp_path / "raw" / s / f"{stem}_{s}.csv") for s in ("train", "test") for stem in stems)
    assert [path for path, _, _ in src.input_signature()] == expected
    assert fingerprint(src) != fingerprint(aliccp.AliCCP(path=src.path, min_count=2))


def test_aliccp_errors(tmp_path: Path) -> None:
    missing = re.escape(f"not in {tmp_path / 'nothing'} (which does not exist):\n  sample_skeleton_train.csv\n")
    with pytest.raises(FileNotFoundError, match=rf"(?s){missing}.*needs a login.*tianchi\.aliyun\.com/dataset/408"):
        aliccp.AliCCP(path=str(tmp_path / "nothing")).encode()
    assert aliccp.AliCCP(path=str(tmp_path / "nothing")).input_signature() is None
    bad_index = [*SKELETON_TRAIN, (1, 0, "zz", [("205", "500", 1.0), ("301", "10", 1.0)])]
    src = aliccp.AliCCP(path=str(write_aliccp(tmp_path / "a", skeleton_train=bad_index)))
    with pytest.raises(ValueError, match=r"row 6: common_feature_index 'zz' is not in .*common_features_train"):
        src.encode()
    damaged = [*SKELETON_TRAIN[:2], (1, 0, "ca", [("205", "500x", 1.0)])]
    with pytest.raises(ValueError, match=r"row 2, field 205: feature id '500x' is not an integer"):
        aliccp.AliCCP(path=str(write_aliccp(tmp_path / "b", skeleton_train=damaged))).encode()
    (tmp_path / "b" / "sample_skeleton_train.csv").write_text("0,1,0,ca,1,205\x02500\n")
    with pytest.raises(ValueError, match=r"row 0: feature entry '205\\x02500' is not"):
        aliccp.AliCCP(path=str(tmp_path / "b")).encode()
    (tmp_path / "b" / "common_features_train.csv").write_text("\n")
    with pytest.raises(ValueError, match=r"common_features_train\.csv holds no rows"):
        aliccp.AliCCP(path=str(tmp_path / "b")).encode()
    with pytest.raises(ValueError, match=r"dense_fields \['999'\] are not in `fields`"):
        aliccp.AliCCP(path="x", dense_fields=["999"])


# ---------------------------------------------------------------- AliExpress -------------------------------------
def user_row(sid: int) -> list[str]:
    """33 columns: search_id, categorical user_2..8, numerical user_9..31, categorical user_32, user_33."""
    cats = [str(sid * 10 + k) for k in range(2, 9)]
    nums = [f"{sid / 10 + k / 1000:.4f}" for k in range(9, 32)]
    return [str(sid), *cats, *nums, str(sid % 2), str(sid % 3)]


def item_row(sid: int, n: int, label: int) -> list[str]:
    """49 columns: search_id, 47 features (item_19, 34-36, 40-42 categorical), label."""
    values = [str(n % 4) if i in (19, 34, 35, 36, 40, 41, 42) else f"{n / 100 + i / 10000:.4f}" for i in range(2, 49)]
    return [str(sid), *values, str(label)]


def csv_bytes(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


ITEMS_PER_PAGE = 3  # item rows of each search page


def aliexpress_files(country: str, seed: int) -> dict[str, list[list[str]]]:
    """user/item rows of train and test; train has 2 item rows of a search without a user row."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[list[str]]] = {}
    for split, searches in (("train", range(1, 11)), ("test", range(20, 24))):
        files[f"user_{split}"] = [user_row(s) for s in searches]
        items = [
            item_row(s, 10 * s + j, int(rng.choice(3, p=[0.6, 0.3, 0.1])))
            for s in searches
            for j in range(ITEMS_PER_PAGE)
        ]
        if split == "train":
            items[4:4] = [item_row(99, 990, 1), item_row(99, 991, 0)]
        files[f"item_{split}"] = items
    return files


def write_aliexpress(directory: Path) -> dict[str, dict[str, list[list[str]]]]:
    """NL as the released country zip (zips in a zip); ES user files as CSVs, item files as the inner zips."""
    directory.mkdir(parents=True)
    data = {"NL": aliexpress_files("NL", 0), "ES": aliexpress_files("ES", 1)}

    def inner_zip(name: str, rows: list[list[str]]) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{name}.csv", csv_bytes(rows))
        return out.getvalue()

    with zipfile.ZipFile(directory / "aliexpress_NL_datasets.zip", "w") as z:
        for stem, rows in data["NL"].items():
            z.writestr(f"aliexpress_NL_datasets/nl_{stem}.zip", inner_zip(f"nl_{stem}", rows))
    (directory / "AliExpress_ES").mkdir()
    for stem, rows in data["ES"].items():
        if stem.startswith("user"):
            (directory / "AliExpress_ES" / f"es_{stem}.csv").write_bytes(csv_bytes(rows))
        else:
            (directory / "AliExpress_ES" / f"es_{stem}.zip").write_bytes(inner_zip(f"es_{stem}", rows))
    return data


def test_aliexpress_protocol(tmp_path: Path) -> None:
    data = write_aliexpress(tmp_path / "raw")
    src = aliexpress.AliExpress(path=str(tmp_path / "raw"), countries=["nl", "ES"], val_fraction=0.3, block_bytes=512)
    src.prepare(tmp_path / "out", tmp_path / "unused")
    store = ColumnStore(tmp_path / "out")
    s, report = store.schema, store.report()
    assert s.domains == ("NL", "ES") and s.labels == ("click", "conversion")
    categorical = (19, 34, 35, 36, 40, 41, 42)  # MTReclib's categorical_1..16 and numerical_1..63
    assert s.sparse_names == [*(f"user_{i}" for i in (*range(2, 9), 32, 33)), *(f"item_{i}" for i in categorical)]
    assert s.dense == (
        *(f"user_{i}" for i in range(9, 32)),
        *(f"item_{i}" for i in range(2, 49) if i not in categorical),
    )
    # rows in = rows out + item rows reported dropped (search 99 has no user row); the inner join, in file order
    kept: list[tuple[str, str, dict[str, str]]] = []  # (country, official split, raw user and item columns)
    read = 0
    for country, files in data.items():
        for x in ("train", "test"):
            users = {u[0]: dict(zip(aliexpress.USER_COLUMNS, u, strict=True)) for u in files[f"user_{x}"]}
            items = files[f"item_{x}"]
            dropped = sum(r[0] not in users for r in items)
            assert report["raw"]["item_rows"][f"{country}/{x}"] == {"read": len(items), "dropped": dropped}
            joined = [users[r[0]] | dict(zip(aliexpress.ITEM_COLUMNS, r, strict=True)) for r in items if r[0] in users]
            kept += [(country, x, row) for row in joined]
            read += len(items)
    assert len(store) == len(kept) == read - 2 * len(data)  # the 2 rows of search 99 in each country's train
    assert report["rows_per_domain"] == dict(Counter(country for country, _, _ in kept))
    # labels: 0 impression, 1 click, 2 purchase -> click, conversion (CTCVR)
    label = np.array([int(row["item_49"]) for *_, row in kept])
    assert store.column("click").tolist() == (label >= 1).tolist()
    assert store.column("conversion").tolist() == (label == 2).tolist()
    # splits: official test -> test; val = round(val_fraction x pages) whole training search pages per country
    split, domain = store.column("split"), store.column(s.domain_field)
    search = np.array([int(row["item_1"]) for *_, row in kept])
    for d, country in enumerate(s.domains):
        pages = sorted({int(u[0]) for u in data[country]["user_train"]})
        val = {p for p in pages if split[(domain == d) & (search == p)][0] == 1}
        assert len(val) == round(src.val_fraction * len(pages)) == 3
        codes = [2 if x == "test" else int(int(row["item_1"]) in val) for c, x, row in kept if c == country]
        assert split[domain == d].tolist() == codes
    test_rows = sum(x == "test" for _, x, _ in kept)
    val_rows = len(s.domains) * 3 * ITEMS_PER_PAGE
    assert report["rows_per_split"] == {"train": len(kept) - val_rows - test_rows, "val": val_rows, "test": test_rows}
    assert val_rows == 18 and test_rows == 24
    # every row's ids map back to its raw values (vocabularies on the train split: other values are id 0), and its
    # dense values are the raw ones (dense_scaling none)
    for c in s.sparse_names:
        raw = [row[c] for *_, row in kept]
        known = {v for v, code in zip(raw, split, strict=True) if code == 0}
        assert decode(store, c) == [v if v in known else None for v in raw], c
    for c in s.dense:
        np.testing.assert_allclose(store.column(c), [float(row[c]) for *_, row in kept], rtol=1e-6, err_msg=c)
    files = report["raw"]["files"]
    assert files["NL/user/train"].endswith("aliexpress_NL_datasets.zip:nl_user_train.zip:nl_user_train.csv")
    assert files["ES/item/test"].endswith("es_item_test.zip:es_item_test.csv")
    assert files["ES/user/test"].endswith("AliExpress_ES/es_user_test.csv")
    # vocabularies on training rows only: test-only values of user_2 (search 20-23) are unseen
    assert report["fields"]["user_2"]["unseen_per_split"]["test"] == 1.0
    assert report["fields"]["user_2"]["unseen_per_split"]["train"] == 0.0


def test_aliexpress_errors(tmp_path: Path) -> None:
    names = "us_item_test.csv or us_item_test.zip or aliexpress_us_datasets.zip"
    missing = re.escape(f"not in {tmp_path} (searched recursively, names in any case):\n  us_user_train.csv or ")
    with pytest.raises(FileNotFoundError, match=rf"(?s){missing}.*\n  {re.escape(names)}\n.*dataset/74690"):
        aliexpress.AliExpress(path=str(tmp_path), countries=["US"]).encode()
    files = aliexpress_files("US", 0)
    files["item_test"][1][-1] = "3"
    for stem, rows in files.items():
        (tmp_path / f"us_{stem}.csv").write_bytes(csv_bytes(rows))
    with pytest.raises(ValueError, match=r"us_item_test\.csv, row 1: item_49 is 3, not 0"):
        aliexpress.AliExpress(path=str(tmp_path), countries=["US"]).encode()
    files["user_test"].append(files["user_test"][0])
    (tmp_path / "us_user_test.csv").write_bytes(csv_bytes(files["user_test"]))
    with pytest.raises(ValueError, match=r"us_user_test\.csv.*search_id.*key '20' occurs 2 times"):
        aliexpress.AliExpress(path=str(tmp_path), countries=["US"]).encode()
    with pytest.raises(ValueError, match="val_fraction"):
        aliexpress.AliExpress(path="x", val_fraction=0.0)


def test_aliexpress_item_file_matching_no_user_row_is_refused(tmp_path: Path) -> None:
    files = aliexpress_files("ES", 1)
    files["user_test"] = [user_row(s) for s in range(500, 504)]  # a test user file of other search pages
    for stem, rows in files.items():
        (tmp_path / f"es_{stem}.csv").write_bytes(csv_bytes(rows))
    src = aliexpress.AliExpress(path=str(tmp_path), countries=["ES"])
    match = (
        r"es_item_test\.csv: all 12 item rows would be dropped: .* is in .*es_user_test\.csv \(user_1\).*same country"
    )
    with pytest.raises(ValueError, match=match):
        src.encode()
    # a partial drop (train: 2 of 32 rows lack a user row) is kept and reported, not refused
    files["user_test"] = [user_row(s) for s in range(20, 23)]  # page 23 (3 item rows) has no user row
    (tmp_path / "es_user_test.csv").write_bytes(csv_bytes(files["user_test"]))
    report = src.encode().report
    assert report["raw"]["item_rows"] == {"ES/train": {"read": 32, "dropped": 2}, "ES/test": {"read": 12, "dropped": 3}}
    assert report["rows_per_split"]["test"] == 9


# ---------------------------------------------------------------- KuaiRand ---------------------------------------
LOG_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,long_view,"
    "play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"
).split(",")
USER_HEADER = ["user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author"]
USER_HEADER += ["follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range"]
USER_HEADER += ["friend_user_num", "friend_user_num_range", "register_days", "register_days_range"]
USER_HEADER += [f"onehot_feat{i}" for i in range(18)]
VIDEO_HEADER = "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
VIDEO_HEADER += "server_height,music_id,music_type,tag"
DEGREES = ("high_active", "full_active", "middle_active", "UNKNOWN")


def kuairand_files(rows_per_log: int = 60) -> dict[str, bytes]:
    """The four files of KuaiRand-1K used; user 5 has no features row, video 109 no basic row."""
    rng = np.random.default_rng(0)
    users = [
        [str(u), DEGREES[u % 4], "0", str(u % 2), "1", str(10 * u), "(0,10]", str(u), "[1,10)", "3", "[1,5)",
         str(100 + u), "61-90", *[("" if (u == 2 and i == 4) else str((u + i) % 3)) for i in range(18)]]
        for u in range(5)
    ]  # fmt: skip
    videos = [
        [str(v), "7", "NORMAL" if v % 2 else "AD", "2022-01-01", "ShortImport", "public", "5000",
         "720", "" if v == 103 else "1280", "0", "9", "11,28"]
        for v in range(100, 109)
    ]  # fmt: skip
    files = {
        "user_features_1k.csv": csv_bytes([USER_HEADER, *users]),
        "video_features_basic_1k.csv": csv_bytes([VIDEO_HEADER.split(","), *videos]),
    }
    for k, name in enumerate(kuairand.LOGS):
        rows = []
        for r in range(rows_per_log):
            u, v = int(rng.integers(0, 6)), int(rng.integers(100, 110))
            tab, click = int(rng.choice([0, 1, 2, 3, 4, 6, 8])), int(rng.random() < 0.3 + 0.4 * (v % 2))
            rows.append([u, v, 20220408 + k, 1200, 1649390000000 + 1000 * (r + k * rows_per_log), click, 0, 0, 0,
                         0, 0, 0, 3000, 5000, 0, 0, 0, 0, tab])  # fmt: skip
        files[f"{name}_1k.csv"] = csv_bytes([LOG_HEADER, *[[str(x) for x in row] for row in rows]])
    return files


def kuairand_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"README.md": b"fixture", **files}.items():
            info = tarfile.TarInfo(f"KuaiRand-1K/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def expected_kuairand(files: dict[str, bytes], logs: tuple[str, ...] = kuairand.LOGS) -> list[dict[str, str]]:
    rows = [r for name in logs for r in csv.DictReader(io.StringIO(files[f"{name}_1k.csv"].decode()))]
    return [r for r in rows if r["tab"] in {"0", "1", "2", "4", "6"} and r["user_id"] != "5" and r["video_id"] != "109"]


@pytest.fixture
def release_1k(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A fixture archive, and the 1K release whose md5 is the fixture archive's."""
    files = kuairand_files()
    archive = kuairand_archive(tmp_path / "KuaiRand-1K.tar.gz", files)
    release = dataclasses.replace(kuairand.RELEASES["1k"], md5=raw.md5_file(archive))
    monkeypatch.setitem(kuairand.RELEASES, "1k", release)
    return archive, files


def test_kuairand_protocol_from_archive(tmp_path: Path, release_1k: tuple[Path, dict[str, bytes]]) -> None:
    archive, files = release_1k
    src = kuairand.KuaiRand(path=str(archive))
    assert src.dataset_id == "kuairand1k" and src.input_signature()[0][0] == str(archive)
    src.prepare(tmp_path / "out", tmp_path / "raw")
    store = ColumnStore(tmp_path / "out")
    s, report = store.schema, store.report()
    expected = expected_kuairand(files)
    every = [r for name in kuairand.LOGS for r in csv.DictReader(io.StringIO(files[f"{name}_1k.csv"].decode()))]
    in_tabs = [r for r in every if r["tab"] in {"0", "1", "2", "4", "6"}]
    dropped = report["raw"]["dropped"]
    assert report["raw"]["rows_read"] == len(every) == 120
    assert dropped["tab_not_kept"] == len(every) - len(in_tabs)
    assert dropped["no_user_features"] == sum(r["user_id"] == "5" for r in in_tabs)
    assert dropped["no_video_features"] == sum(r["user_id"] != "5" and r["video_id"] == "109" for r in in_tabs)
    assert len(store) + sum(dropped.values()) == len(every) and len(store) == len(expected)
    assert s.domains == ("tab0", "tab1", "tab2", "tab4", "tab6") and s.labels == ("is_click",)
    counts = Counter(f"tab{r['tab']}" for r in expected)
    assert report["rows_per_domain"] == {d: counts[d] for d in s.domains}
    assert store.column("is_click").tolist() == [int(r["is_click"]) for r in expected]
    assert s.dense == kuairand.USER_DENSE and s.user_field == "user_id" and s.time_column == "time_ms"
    assert not {"play_time_ms", "duration_ms", "tag", "author_id", "music_id", "upload_dt"} & set(s.sparse_names)
    user_sparse = [c for c in USER_HEADER[1:] if c not in s.dense]  # 26 user features
    video_sparse = ["video_type", "visible_status", "server_width", "server_height"]
    assert s.sparse_names == ["user_id", "video_id", *user_sparse, *video_sparse]
    # the joins: user and video features of each row
    assert decode(store, "user_id") == [r["user_id"] for r in expected]
    assert decode(store, "user_active_degree") == [DEGREES[int(r["user_id"]) % 4] for r in expected]
    assert decode(store, "video_type") == ["NORMAL" if int(r["video_id"]) % 2 else "AD" for r in expected]
    assert decode(store, "server_height") == [None if r["video_id"] == "103" else "1280" for r in expected]
    feat4 = decode(store, "onehot_feat4")
    assert all((f is None) == (r["user_id"] == "2") for f, r in zip(feat4, expected, strict=True))  # empty -> 0
    np.testing.assert_allclose(store.column("follow_user_num"), [int(r["user_id"]) / 4 for r in expected])
    assert store.column("time_ms").tolist() == [int(r["time_ms"]) for r in expected]
    splits = RandomSplit((0.8, 0.1, 0.1), seed=2022)(store)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [
        round(0.8 * len(store)),
        round(0.9 * len(store)) - round(0.8 * len(store)),
        len(store) - round(0.9 * len(store)),
    ]


def test_kuairand_extracted_folder_and_one_log(tmp_path: Path) -> None:
    files = kuairand_files()
    folder = tmp_path / "KuaiRand-1K" / "data"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    src = kuairand.KuaiRand(path=str(tmp_path / "KuaiRand-1K"), logs=["log_standard_4_22_to_5_08"])
    enc = src.encode(tmp_path / "raw")
    assert enc.report["raw"]["layout"] == "directory"
    assert len(enc.columns["is_click"]) == len(expected_kuairand(files, ("log_standard_4_22_to_5_08",)))
    (folder / "log_standard_4_22_to_5_08_1k.csv").write_text(",".join(LOG_HEADER) + "\n")
    with pytest.raises(ValueError, match=r"log_standard_4_22_to_5_08_1k\.csv holds no rows"):
        src.encode(tmp_path / "raw")
    (folder / "user_features_1k.csv").unlink()
    missing = re.escape(f"KuaiRand: these raw files are not in {tmp_path / 'KuaiRand-1K'} (searched recursively")
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*:\n  user_features_1k\.csv\nIt is not .*zenodo"):
        src.encode(tmp_path / "raw")


def test_kuairand_archive_lacking_a_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = kuairand_files()
    del files["video_features_basic_1k.csv"]
    archive = kuairand_archive(tmp_path / "KuaiRand-1K.tar.gz", files)
    release = dataclasses.replace(kuairand.RELEASES["1k"], md5=raw.md5_file(archive))
    monkeypatch.setitem(kuairand.RELEASES, "1k", release)
    missing = re.escape(f"KuaiRand: these raw files are not in {archive}:\n  video_features_basic_1k.csv\n")
    with pytest.raises(FileNotFoundError, match=rf"{missing}It is not \(all of\) KuaiRand-1K"):
        kuairand.KuaiRand(path=str(archive)).encode(tmp_path / "raw")


def test_kuairand_download_checks_md5_and_caches(
    tmp_path: Path, release_1k: tuple[Path, dict[str, bytes]], http: Served
) -> None:
    archive, _ = release_1k
    good = archive.read_bytes()
    raw_dir = tmp_path / "raw"
    http.data = good[:-1] + b"x"
    with pytest.raises(RuntimeError, match=r"(?s)MD5 hash .* does not match .*zenodo\.org/records/10439422"):
        kuairand.KuaiRand().encode(raw_dir)
    assert not list(raw_dir.iterdir())  # nothing half-downloaded is left
    http.data = good
    enc = kuairand.KuaiRand().encode(raw_dir)
    assert enc.report["raw"]["layout"] == "archive" and (raw_dir / "KuaiRand-1K.tar.gz").read_bytes() == good
    kuairand.KuaiRand().encode(raw_dir)  # cached: no second download
    assert http.urls == [kuairand.RELEASES["1k"].url] * 2
    (raw_dir / "KuaiRand-1K.tar.gz").write_bytes(good[:100])  # a damaged cached archive is downloaded again
    kuairand.KuaiRand().encode(raw_dir)
    assert http.urls == [kuairand.RELEASES["1k"].url] * 3 and (raw_dir / "KuaiRand-1K.tar.gz").read_bytes() == good
    http.data = None
    (raw_dir / "KuaiRand-1K.tar.gz").unlink()
    advice = r"(?s)cannot get KuaiRand-1K\.tar\.gz: .*no network.* Download it from .* or set data\.source\.path"
    with pytest.raises(RuntimeError, match=advice):
        kuairand.KuaiRand().encode(raw_dir)
    (tmp_path / "other.tar.gz").write_bytes(good + b"x")
    with pytest.raises(ValueError, match=r"other\.tar\.gz has md5 .* not the published"):
        kuairand.KuaiRand(path=str(tmp_path / "other.tar.gz")).encode(raw_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kuairand.KuaiRand(path=str(tmp_path / "nowhere")).encode(raw_dir)
    with pytest.raises(ValueError, match=r"version='27k' is not one of"):
        kuairand.KuaiRand(version="27k")


# ---------------------------------------------------------------- configs ----------------------------------------
HARNESS = ("data.batch_size", "trainer.max_epochs")  # set by the tests' compose_train (helpers.py)


def leaves(node: DictConfig, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a config (a list is a leaf)."""
    out: dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, DictConfig):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize(
    ("experiment", "source", "split"),
    [
        ("aliccp", aliccp.AliCCP, PredefinedSplit),
        ("aliexpress", aliexpress.AliExpress, PredefinedSplit),
        ("kuairand1k", kuairand.KuaiRand, RandomSplit),
    ],
)
def test_experiments_compose(train_cfg: TrainCfg, experiment: str, source: type, split: type) -> None:
    """The experiment selects its data source and split, and every value its file sets reaches the composed run
    config (but those the test harness overrides); model selection is on validation AUC."""
    cfg = train_cfg([f"experiment={experiment}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, MultiDomainDataModule) and isinstance(dm.source, source) and isinstance(dm.split, split)
    settings = leaves(OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml"))
    settings = {key: value for key, value in settings.items() if key != "defaults" and key not in HARNESS}
    assert "input.embedding_dim" in settings and {key: OmegaConf.select(cfg, key) for key in settings} == settings
    assert cfg.callbacks.early_stopping.monitor == "val/auc"


def pairwise_auc(prob: np.ndarray, label: np.ndarray) -> float:
    """AUC by its definition: the share of (positive, negative) pairs the scores order right, a tie counting half."""
    pos, neg = prob[label == 1][:, None], prob[label == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_kuairand_trains_one_epoch_from_the_data_config(tmp_path: Path, train_cfg: TrainCfg) -> None:
    """Trained and tested on the rows the fixture wrote: the test split's labels and per-domain rows are the
    fixture's, and the test AUC is that of the saved predictions."""
    files = kuairand_files(rows_per_log=300)
    with tarfile.open(kuairand_archive(tmp_path / "fixture.tar.gz", files)) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    cfg = train_cfg(["data=kuairand1k", f"data.source.path={tmp_path / 'extracted'}", "trainer.max_epochs=1"])
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    store = ColumnStore(json.loads((out / "data_report.json").read_text())["prepared_dir"])
    expected = expected_kuairand(files)
    assert len(store) == len(expected)
    test = [expected[i] for i in hydra.utils.instantiate(cfg.data.split, _convert_="all")(store)["test"]]
    predictions = np.load(out / "predictions.npz")
    assert predictions["label"][:, 0].tolist() == [int(r["is_click"]) for r in test]
    tabs = Counter(f"tab{r['tab']}" for r in test)
    assert {d: metrics[f"test/rows/{d}"] for d in store.schema.domains} == {d: tabs[d] for d in store.schema.domains}
    assert metrics["test/auc"] == pytest.approx(pairwise_auc(predictions["prob"][:, 0], predictions["label"][:, 0]))


def test_aliexpress_experiment_trains_two_tasks(tmp_path: Path, train_cfg: TrainCfg) -> None:
    """Both tasks trained and tested on the official test rows the fixture wrote: labels, per-country rows and
    both AUCs as the saved predictions give them."""
    data = write_aliexpress(tmp_path / "raw")
    cfg = train_cfg(["experiment=aliexpress", f"data.source.path={tmp_path / 'raw'}", "data.source.countries=[NL,ES]"])
    cfg.trainer.max_epochs, cfg.data.batch_size = 1, 32
    metrics = train(cfg)
    predictions = np.load(Path(cfg.paths.output_dir) / "predictions.npz")
    item_49 = np.array([int(r[-1]) for c in ("NL", "ES") for r in data[c]["item_test"]])  # every one has a user row
    label = np.stack([item_49 >= 1, item_49 == 2], axis=1)
    assert predictions["label"].tolist() == label.tolist()
    assert {c: metrics[f"test/rows/{c}"] for c in ("NL", "ES")} == {c: len(data[c]["item_test"]) for c in ("NL", "ES")}
    for t, key in enumerate(("test/auc", "test/conversion_auc")):
        assert metrics[key] == pytest.approx(pairwise_auc(predictions["prob"][:, t], label[:, t])), key


def test_public_data_configs_default_paths(train_cfg: TrainCfg) -> None:
    for data in ("aliccp", "aliexpress"):
        assert Path(train_cfg([f"data={data}"]).data.source.path).parts[-2:] == ("raw", data)
    assert train_cfg(["data=kuairand1k"]).data.source.path is None  # downloaded from zenodo into data_dir/raw
