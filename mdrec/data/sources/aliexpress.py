"""AliExpress (Tianchi 74690, the MTReclib multi-task set) from its official files, countries as domains.

The files need a Tianchi login (https://tianchi.aliyun.com/dataset/74690), so nothing is downloaded. Put the
country zips ``aliexpress_{CC}_datasets.zip`` into one directory, ``path`` (searched recursively, names in any
case); for each country, split and part, the first of these found is read:

    {cc}_user_train.csv, {cc}_item_train.csv, ... extracted CSVs
    {cc}_user_train.zip, ...                      the zips inside the country zip (each holds the CSV)
    aliexpress_{CC}_datasets.zip                  the country zip itself (zips within a zip, read in place)

Raw format (docs/datasets.md, AliExpress; MTReclib ``data/preprocess.py``): headerless CSVs. A user row (33 columns,
``user_1`` = search_id) describes one search result page, an item row (49 columns, ``item_1`` = search_id) one
item shown on it, with ``item_49`` = 0 impression, 1 click, 2 purchase. Each item row is joined to the user row
of its search_id (an inner join, as MTReclib's ``merge``: item rows without a user row are dropped and counted
in ``report.json``; a search_id repeated in a user file is an error, and so is an item file none of whose rows
has a user row: the two files do not belong together).

Features as MTReclib: 16 categorical columns, ``user_2..8, user_32, user_33, item_19, item_34, item_35,
item_36, item_40, item_41, item_42`` (its ``categorical_1..16``), and 63 numerical ones, ``user_9..31`` and the
other ``item_2..48`` (``numerical_1..63``), kept unscaled by default (already normalised in the raw files).
Labels ``click`` (item_49 >= 1) and ``conversion`` (item_49 == 2: a purchase, which implies a click, so it is
the impression-level CTCVR label). The domain is the country (default NL, ES, FR, US; one country reproduces
MTReclib's single-country setting). Vocabularies are built on the training rows.

Split: the official train and test files. MTReclib has no validation split and early-stops on the test set;
mdrec selects models on validation data only, so ``val_fraction`` of each country's training search pages
(rounded; all items of a page together, drawn with ``split_seed``) become the validation split.

Memory: item files are streamed in blocks of ``block_bytes``; user files and the parsed rows stay in memory,
and ``encode_table`` holds the whole table while it encodes (63 float32 values per row, in and out), so peak
memory grows with the item rows of the countries prepared (scripts/README.md has a measured figure per row);
prepare fewer countries on smaller machines.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mdrec.data.ingest import DENSE_SCALINGS, DenseScaling, EncodedTable, TableSpec, encode_table
from mdrec.data.schema import SPLIT_NAMES
from mdrec.data.sources.raw import (
    BLOCK_BYTES,
    KeyIndex,
    find_files,
    found_signature,
    login_advice,
    read_csv,
    stream_csv,
)

log = logging.getLogger(__name__)

URL = "https://tianchi.aliyun.com/dataset/74690"
COUNTRIES = ("NL", "ES", "FR", "US")
USER_COLUMNS = tuple(f"user_{i}" for i in range(1, 34))
ITEM_COLUMNS = tuple(f"item_{i}" for i in range(1, 50))
SEARCH = {"user": "user_1", "item": "item_1"}
LABEL = "item_49"
ITEM_CATEGORICAL = tuple(f"item_{i}" for i in (19, 34, 35, 36, 40, 41, 42))
USER_CATEGORICAL = (*(f"user_{i}" for i in range(2, 9)), "user_32", "user_33")
NUMERICAL = {
    "user": tuple(f"user_{i}" for i in range(9, 32)),
    "item": tuple(c for c in ITEM_COLUMNS[1:48] if c not in ITEM_CATEGORICAL),
}
DOMAIN = "country"
LABELS = ("click", "conversion")
PARTS = ("user", "item")
RAW_SPLITS = ("train", "test")


@dataclass(frozen=True)
class RawFile:
    """Where one raw CSV is: a file, or the member named by ``inside`` (basenames) of a zip (of a zip).

    Args:
        path: the file on disk (a CSV or a zip).
        inside: the basenames to open in turn inside it, e.g. ``("nl_user_train.zip", "nl_user_train.csv")``.
    """

    path: Path
    inside: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ":".join([str(self.path), *self.inside])

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The CSV as a binary stream (zips are read in place, never extracted)."""
        with ExitStack() as stack:
            f: BinaryIO = stack.enter_context(open(self.path, "rb"))
            where = str(self.path)
            for name in self.inside:
                archive = stack.enter_context(zipfile.ZipFile(f))
                member = next((m for m in archive.namelist() if PurePosixPath(m).name.lower() == name), None)
                if member is None:
                    raise FileNotFoundError(
                        f"{where} holds no {name} (its members: {archive.namelist()[:8]}); it is not the "
                        f"AliExpress release from {URL}: download it again"
                    )
                f = stack.enter_context(archive.open(member))
                where = f"{where}:{member}"
            yield f


def raw_names(country: str, part: str, split: str) -> dict[str, tuple[str, ...]]:
    """The files that hold one raw CSV, in order of preference: file name -> the members to open inside it."""
    stem = f"{country.lower()}_{part}_{split}"
    return {
        f"{stem}.csv": (),
        f"{stem}.zip": (f"{stem}.csv",),
        f"aliexpress_{country.lower()}_datasets.zip": (f"{stem}.zip", f"{stem}.csv"),
    }


@dataclass
class AliExpress:
    """AliExpress countries as domains, labels click and conversion (CTCVR); see the module docstring.

    Args:
        path: the directory holding the raw files (searched recursively).
        countries: country codes, in domain order (of NL, ES, FR, US, RU).
        val_fraction: share of each country's training search pages held out for validation.
        split_seed: seed of the validation draw.
        min_count: values seen fewer times in the training rows map to id 0.
        dense_scaling: ``none`` (MTReclib: the raw values are normalised already), ``minmax`` or ``standard``.
        block_bytes: bytes of item CSV parsed per block.

    Example (reads the official NL files under ``/data/aliexpress``)::

        src = AliExpress(path="/data/aliexpress", countries=["NL"])
        src.prepare(Path("data/aliexpress"), Path("data/raw"))
    """

    path: str
    countries: Sequence[str] = COUNTRIES
    val_fraction: float = 0.1
    split_seed: int = 2022
    min_count: int = 1
    dense_scaling: DenseScaling = "none"
    block_bytes: int = BLOCK_BYTES

    def __post_init__(self) -> None:
        self.countries = tuple(str(c).upper() for c in self.countries)
        if not self.countries or len(set(self.countries)) != len(self.countries):
            raise ValueError(f"AliExpress: countries {list(self.countries)} must be distinct and not empty")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"AliExpress: val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.dense_scaling not in DENSE_SCALINGS:
            raise ValueError(f"AliExpress: dense_scaling {self.dense_scaling!r} is not one of {DENSE_SCALINGS}")

    @property
    def dataset_id(self) -> str:
        return "aliexpress"

    def files(self) -> dict[tuple[str, str, str], RawFile]:
        """``{(country, part, split): RawFile}`` for every file needed.

        Raises:
            FileNotFoundError: naming every missing file, the URL and what to do.
        """
        directory = Path(self.path)
        names = {key: raw_names(*key) for key in product(self.countries, PARTS, RAW_SPLITS)}
        how = (
            f"download aliexpress_{{CC}}_datasets.zip for the countries {list(self.countries)} into {directory} "
            "(or set data.source.path to the directory that holds them; extracting them is optional)"
        )
        found = find_files(directory, {k: list(n) for k, n in names.items()}, "AliExpress", login_advice(URL, how))
        return {key: RawFile(path, names[key][path.name.lower()]) for key, path in found.items()}

    def input_signature(self) -> list[tuple[str, int, int]] | None:
        """Path, size and modification time of the raw files (None until they exist)."""
        return found_signature(lambda: (f.path for f in self.files().values()))

    def _users(self, raw: RawFile) -> pa.Table:
        types = {SEARCH["user"]: pa.string(), **dict.fromkeys(USER_CATEGORICAL, pa.string())}
        types.update(dict.fromkeys(NUMERICAL["user"], pa.float32()))
        with raw.open() as f:
            return read_csv(f, types, str(raw), USER_COLUMNS)

    def _split(self, users: RawFile, items: RawFile) -> tuple[pa.Table, dict[str, int]]:
        """One country's official split: item rows joined with their user rows, labels mapped.

        Returns:
            ``(table, counts)``: search_id, the categorical and numerical columns and the labels, and
            ``{"read": item rows in the file, "dropped": item rows without a user row}``.

        Raises:
            ValueError: when every item row lacks a user row (the files do not belong together).
        """
        user = self._users(users)
        index = KeyIndex(user[SEARCH["user"]], f"{users}, column {SEARCH['user']!r} (search_id)")
        types = {SEARCH["item"]: pa.string(), **dict.fromkeys(ITEM_CATEGORICAL, pa.string())}
        types.update(dict.fromkeys(NUMERICAL["item"], pa.float32()))
        types[LABEL] = pa.int8()
        user = user.select([*USER_CATEGORICAL, *NUMERICAL["user"]]).combine_chunks()
        parts, read, dropped = [], 0, 0
        with items.open() as f:
            for batch in stream_csv(f, types, str(items), ITEM_COLUMNS, block_bytes=self.block_bytes):
                valid = pc.is_in(batch[LABEL], value_set=pa.array([0, 1, 2], pa.int8()))
                bad = np.flatnonzero(~pc.fill_null(valid, False).to_numpy(zero_copy_only=False))
                if len(bad):
                    raise ValueError(
                        f"{items}, row {read + int(bad[0])}: {LABEL} is {batch[LABEL][int(bad[0])].as_py()!r}, not 0 "
                        "(impression), 1 (click) or 2 (purchase); the file is damaged or not AliExpress's"
                    )
                rows = index.rows(batch[SEARCH["item"]])
                found = rows >= 0
                dropped += int((~found).sum())
                read += batch.num_rows
                shared = user.take(pa.array(rows[found]))
                batch = batch.filter(pa.array(found))
                label = batch[LABEL].to_numpy()
                columns = {c: shared[c] for c in shared.column_names}
                columns.update({c: batch[c] for c in (SEARCH["item"], *ITEM_CATEGORICAL, *NUMERICAL["item"])})
                columns["click"] = pa.array(label >= 1, pa.int8())
                columns["conversion"] = pa.array(label == 2, pa.int8())
                parts.append(pa.table(columns))
        if read and dropped == read:
            raise ValueError(
                f"{items}: all {read} item rows would be dropped: none of their search_ids ({SEARCH['item']}) is in "
                f"{users} ({SEARCH['user']}); the two files do not belong together. Check that both are of the same "
                "country and split (user_train with item_train, user_test with item_test), from the same release"
            )
        return pa.concat_tables(parts), {"read": read, "dropped": dropped}

    def _validation(self, search: pa.ChunkedArray, country: str) -> np.ndarray:
        """``[n]`` bool: the rows of the search pages drawn for validation (``val_fraction`` of the pages, rounded)."""
        pages = pc.dictionary_encode(search).combine_chunks()  # [n] page codes, in order of first appearance
        n = len(pages.dictionary)
        drawn = np.zeros(n, dtype=bool)
        rng = np.random.default_rng([self.split_seed, *country.encode()])  # a stream of its own per country
        drawn[rng.permutation(n)[: round(self.val_fraction * n)]] = True
        return drawn[pages.indices.to_numpy()]

    def encode(self) -> EncodedTable:
        """Read, join and label every country's train and test files, carve validation, and encode."""
        files = self.files()
        tables, codes, counts = [], [], {}
        for country in self.countries:
            for split in RAW_SPLITS:
                table, counts[f"{country}/{split}"] = self._split(
                    files[country, "user", split], files[country, "item", split]
                )
                if split == "train":
                    val = self._validation(table[SEARCH["item"]], country)
                    code = np.where(val, SPLIT_NAMES.index("val"), SPLIT_NAMES.index("train")).astype(np.int8)
                else:
                    code = np.full(table.num_rows, SPLIT_NAMES.index("test"), dtype=np.int8)
                tables.append(table.append_column(DOMAIN, pa.repeat(pa.scalar(country), table.num_rows)))
                codes.append(code)
                log.info("AliExpress %s %s: %d rows", country, split, table.num_rows)
        split = np.concatenate(codes)
        spec = TableSpec(
            sparse=(*USER_CATEGORICAL, *ITEM_CATEGORICAL),
            domain=DOMAIN,
            labels=LABELS,
            dense=(*NUMERICAL["user"], *NUMERICAL["item"]),
            domains=self.countries,
            min_count=self.min_count,
            dense_scaling=self.dense_scaling,
        )
        table = pa.concat_tables(tables).select(spec.columns())
        encoded = encode_table(table, spec, self.dataset_id, vocab_mask=split == 0, split=split)
        encoded.report["raw"] = {
            "files": {"/".join(k): str(f) for k, f in files.items()},
            "item_rows": counts,
            "dropped_reason": "item rows whose search_id is not in the user file (inner join)",
            "val_fraction": self.val_fraction,
            "split_seed": self.split_seed,
        }
        return encoded

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory`` (the raw files are read from ``path``, not ``raw_dir``)."""
        self.encode().write(directory)
