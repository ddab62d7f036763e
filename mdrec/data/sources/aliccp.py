"""Ali-CCP (Alibaba Click and Conversion Prediction, the ESMM data set) from its official Tianchi files.

The files need a Tianchi login (https://tianchi.aliyun.com/dataset/408), so nothing is downloaded: extract
``sample_train.tar.gz`` and ``sample_test.tar.gz`` into one directory, ``path`` (searched recursively, names in
any case), e.g. either of::

    <path>/sample_skeleton_train.csv  common_features_train.csv  sample_skeleton_test.csv  common_features_test.csv
    <path>/train/sample_skeleton_train.csv ...  <path>/test/sample_skeleton_test.csv ...      (Merlin's layout)

Raw format (docs/datasets.md, Ali-CCP): a ``sample_skeleton_*.csv`` row is ``sample_id, click, conversion,
common_feature_index, feature_num, feature_list``, a ``common_features_*.csv`` row ``common_feature_index,
feature_num, feature_list``. A feature list joins entries with ``\\x01``; an entry is ``field \\x02 feature_id
\\x03 value``. An impression has the features of its skeleton row and of the common row (the user's) its
``common_feature_index`` names; a skeleton row whose index is not in the common file is an error.

The defaults reproduce the preprocessing of AITM -> torch-rechub / HAMUR / Scenario-Wise-Rec:

- rows with click = 0 and conversion = 1 are dropped and counted (``report.json``, ``raw.dropped``);
- 22 sparse fields hold the feature id. A field listed more than once in a row keeps its last entry, and a
  common feature wins over a skeleton one of the same field, as the converters' ``dict`` updates do;
- dense ``D<field>`` for ``109_14, 110_14, 127_14, 150_14, 508, 509, 702, 853``: the ``\\x03`` value, 0 where the
  row lacks the field, min-max scaled (fitted on train; Scenario-Wise-Rec fits on all rows);
- field 301 (position) names the domain: 3 domains, numbered in order of first appearance in the train file,
  as Scenario-Wise-Rec's vocabulary numbers them (its D0 / D1 / D2: 32.2M / 0.64M / 52.4M rows). It is not a sparse
  field as well, because mdrec hands the domain to the model separately; ``input.domain_as_feature=true``
  (or adding ``"301"`` to ``fields``) feeds it as a feature the way Scenario-Wise-Rec does;
- vocabularies on the official train rows; values seen fewer than ``min_count`` = 10 times map to id 0;
- label ``click`` (HAMUR and Scenario-Wise-Rec train CTR only); ``conversion=True`` adds ``conversion``, the
  impression-level purchase label (= CTCVR, ESMM's second task);
- split: official train -> train; the official test is halved exactly as Scenario-Wise-Rec's
  ``train_test_split(test, test_size=0.5, random_state=2022)`` halves it: with
  ``p = numpy.random.RandomState(split_seed).permutation(n)``, rows ``p[:ceil(n / 2)]`` are test, the rest val.

Memory: files are streamed in blocks of ``block_bytes`` and each block is parsed column-wise by Arrow kernels
(split, regex extraction, hash lookups) and numpy, never per row in Python. The parsed common features (one row
per user) and the compact parsed impressions stay in memory, and ``encode_table`` holds the whole table while it
encodes, so peak memory grows with the number of impressions (scripts/README.md has a measured figure per
impression). Prepare it once on a machine with that much memory; the prepared store is memory-mapped and trains
anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mdrec.data.ingest import EncodedTable, TableSpec, encode_table, first_uncastable
from mdrec.data.schema import SPLIT_NAMES
from mdrec.data.sources.raw import BLOCK_BYTES, KeyIndex, find_files, found_signature, login_advice, stream_csv

log = logging.getLogger(__name__)

URL = "https://tianchi.aliyun.com/dataset/408"
FIELDS = (
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "205",
    "206",
    "207",
    "210",
    "216",
    "508",
    "509",
    "702",
    "853",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
)
DENSE_FIELDS = ("109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853")
DOMAIN_FIELD = "301"
DOMAIN = "domain"
LABELS = ("click", "conversion")
SKELETON_COLUMNS = ("sample_id", "click", "conversion", "common_feature_index", "feature_num", "feature_list")
COMMON_COLUMNS = ("common_feature_index", "feature_num", "feature_list")
INDEX = "common_feature_index"
RAW_FILES = {"skeleton": "sample_skeleton", "common": "common_features"}  # kind -> file stem (+ _<split>.csv)
# one feature-list entry: field \x02 feature id \x03 value
ENTRY = "^(?P<field>[^\x02]*)\x02(?P<feature>[^\x03]*)\x03(?P<value>.*)$"


def dense_name(field: str) -> str:
    """The dense column of a field's ``\\x03`` value (``D<field>``, as in the AITM preprocessing)."""
    return f"D{field}"


def parse_feature_lists(
    lists: pa.Array, fields: Sequence[str], dense: Sequence[str], what: str, first_row: int = 0
) -> dict[str, pa.Array]:
    """Each row's feature id of every field in ``fields``, and the value of every field in ``dense``.

    Column-wise: the lists are split into one flat array of entries, parsed by one regex kernel, and each
    (row, field) takes its last entry through a stable sort of the entries by (row, field).

    Args:
        lists: ``[n]`` feature lists (``field\\x02id\\x03value`` entries joined by ``\\x01``).
        fields: the F field ids kept (other fields are skipped).
        dense: fields of ``fields`` whose value is kept too.
        what: names the file in error messages.
        first_row: file row of ``lists[0]`` (for error messages).

    Returns:
        ``{field: [n] int64 feature ids}`` and ``{D<field>: [n] float32 values}``; null where a row lacks the
        field.

    Raises:
        ValueError: naming the file row and the entry, for an entry that is not ``field\\x02id\\x03value``, a
            feature id that is not an integer or a value that is not a number.
    """
    n, f = len(lists), len(fields)
    entries = pc.split_pattern(lists, "\x01")
    flat = pc.list_flatten(entries)  # [M] every entry of every row
    row = pc.list_parent_indices(entries).to_numpy()  # [M] the row of each entry
    parts = pc.extract_regex(flat, ENTRY)  # [M] {field, feature, value}; null where malformed
    malformed = np.flatnonzero(pc.and_(pc.is_null(parts), pc.not_equal(flat, "")).to_numpy(zero_copy_only=False))
    if len(malformed):
        i = int(malformed[0])
        raise ValueError(
            f"{what}, row {first_row + int(row[i])}: feature entry {flat[i].as_py()!r} is not "
            f"'field\\x02feature_id\\x03value' ({len(malformed)} such entries in this block); the file is damaged"
        )
    slot_of = pc.index_in(parts.field("field"), value_set=pa.array(list(fields), pa.string()))
    field = pc.fill_null(slot_of, -1).to_numpy(zero_copy_only=False)  # [M] index in `fields`, -1: not kept
    kept = np.flatnonzero(field >= 0)  # [M'] kept entries, in file order
    key = row[kept] * f + field[kept]  # [M'] (row, field) of each kept entry
    order = np.argsort(key, kind="stable")  # file order within each (row, field)
    sorted_key = key[order]
    last = np.r_[sorted_key[1:] != sorted_key[:-1], True]  # the last entry of each (row, field)
    entry = np.full(n * f, -1, dtype=np.int64)  # [n * F] the entry each (row, field) takes, -1: none
    entry[sorted_key[last]] = kept[order[last]]
    entry = entry.reshape(n, f)
    out: dict[str, pa.Array] = {}
    for j, name in enumerate(fields):
        take = pa.array(entry[:, j], mask=entry[:, j] < 0)
        out[name] = _cast(parts.field("feature").take(take), pa.int64(), what, name, "feature id", first_row)
        if name in dense:
            out[dense_name(name)] = _cast(parts.field("value").take(take), pa.float32(), what, name, "value", first_row)
    return out


def _cast(values: pa.Array, dtype: pa.DataType, what: str, field: str, kind: str, first_row: int) -> pa.Array:
    try:
        return values.cast(dtype)
    except pa.ArrowInvalid as e:
        bad = first_uncastable(values, dtype)
        raise ValueError(
            f"{what}, row {first_row + bad}, field {field}: {kind} {values[bad].as_py()!r} is not "
            f"{'an integer' if dtype == pa.int64() else 'a number'} ({e}); the file is damaged"
        ) from e


@dataclass
class AliCCP:
    """Ali-CCP from the official files: 3 domains by position (field 301); see the module docstring.

    Args:
        path: the directory holding the four CSV files (searched recursively: ``train/`` and ``test/`` may hold them).
        fields: sparse fields (feature ids), in ``Batch.sparse`` order.
        dense_fields: fields whose ``\\x03`` value becomes the dense column ``D<field>``; ``[]`` for none.
        domains: raw feature ids of field 301 in domain order; None: order of first appearance in the train file.
        conversion: add the ``conversion`` label (impression-level purchase: CTCVR) after ``click``.
        min_count: values seen fewer times in the train rows map to id 0.
        split_seed: seed of the val/test halving of the official test file.
        block_bytes: bytes of CSV parsed per block (the parse's working memory is a few times this).

    Example (reads the official files under ``/data/aliccp``, some 85M impressions)::

        src = AliCCP(path="/data/aliccp", conversion=True)
        src.prepare(Path("data/aliccp"), Path("data/raw"))
    """

    path: str
    fields: Sequence[str] = FIELDS
    dense_fields: Sequence[str] = DENSE_FIELDS
    domains: Sequence[str] | None = None
    conversion: bool = False
    min_count: int = 10
    split_seed: int = 2022
    block_bytes: int = BLOCK_BYTES

    def __post_init__(self) -> None:
        # Hydra hands lists over as ListConfig and YAML reads 101 as an int: strings, frozen, for the fingerprint
        self.fields = tuple(str(f) for f in self.fields)
        self.dense_fields = tuple(str(f) for f in self.dense_fields)
        if self.domains is not None:
            self.domains = tuple(str(d) for d in self.domains)
        if not self.fields:
            raise ValueError("Ali-CCP: `fields` is empty; keep at least one sparse field (default: the 22 standard)")
        extra = sorted(set(self.dense_fields) - set(self.fields))
        if extra:
            raise ValueError(f"Ali-CCP: dense_fields {extra} are not in `fields` {list(self.fields)}; add them there")

    @property
    def dataset_id(self) -> str:
        return "aliccp"

    def files(self) -> dict[str, dict[str, Path]]:
        """``{split: {"skeleton": path, "common": path}}`` for the official train and test files.

        Raises:
            FileNotFoundError: naming every missing file, the URL and what to do.
        """
        directory = Path(self.path)
        wanted = {(s, kind): [f"{stem}_{s}.csv"] for s in ("train", "test") for kind, stem in RAW_FILES.items()}
        how = (
            f"download sample_train.tar.gz and sample_test.tar.gz and extract both into {directory} "
            "(or set data.source.path to the directory that holds the extracted csv files)"
        )
        found = find_files(directory, wanted, "Ali-CCP", login_advice(URL, how))
        return {s: {kind: found[s, kind] for kind in RAW_FILES} for s in ("train", "test")}

    def input_signature(self) -> list[tuple[str, int, int]] | None:
        """Path, size and modification time of the raw files (None until they exist)."""
        return found_signature(lambda: (p for split in self.files().values() for p in split.values()))

    def _wanted(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.fields, DOMAIN_FIELD]))  # fields and the domain field, once each

    def _common(self, path: Path) -> pa.Table:
        """The common file as ``[users]`` rows: index, then each wanted field's id and each dense value."""
        parts, offset = [], 0
        for batch in stream_csv(
            path,
            {INDEX: pa.string(), "feature_list": pa.string()},
            str(path),
            COMMON_COLUMNS,
            block_bytes=self.block_bytes,
        ):
            parsed = parse_feature_lists(batch["feature_list"], self._wanted(), self.dense_fields, str(path), offset)
            parts.append(pa.table({INDEX: batch[INDEX], **parsed}))
            offset += batch.num_rows
        return pa.concat_tables(parts).combine_chunks()  # one chunk: every skeleton block takes rows from it

    def _impressions(self, skeleton: Path, common_path: Path) -> tuple[pa.Table, dict[str, int]]:
        """One split's impressions joined with their common features; click = 0 & conversion = 1 rows dropped.

        Returns:
            ``(table, counts)``: the columns of ``fields``, ``D<field>``, ``domain`` (raw 301 id) and the labels,
            and ``{"read": rows in the file, "dropped": rows dropped}``.
        """
        common = self._common(common_path)
        index = KeyIndex(common[INDEX], f"{common_path}, column {INDEX!r}")
        types = {"click": pa.int8(), "conversion": pa.int8(), INDEX: pa.string(), "feature_list": pa.string()}
        parts, read, dropped = [], 0, 0
        for batch in stream_csv(skeleton, types, str(skeleton), SKELETON_COLUMNS, block_bytes=self.block_bytes):
            click, conv = (batch[c].to_numpy(zero_copy_only=False) for c in LABELS)
            for name, y in (("click", click), ("conversion", conv)):
                bad = np.flatnonzero((y != 0) & (y != 1))
                if len(bad):
                    raise ValueError(
                        f"{skeleton}, row {read + int(bad[0])}: {name} is {int(y[bad[0]])}, not 0 or 1; the file is "
                        "damaged or not Ali-CCP's"
                    )
            keep = ~((click == 0) & (conv == 1))  # a purchase without a click: dropped by every converter
            dropped += int((~keep).sum())
            rows = np.flatnonzero(keep)
            batch = batch.filter(pa.array(keep))
            user = index.rows(batch[INDEX])
            lost = np.flatnonzero(user < 0)
            if len(lost):
                raise ValueError(
                    f"{skeleton}, row {read + int(rows[lost[0]])}: common_feature_index "
                    f"{batch[INDEX][int(lost[0])].as_py()!r} is not in {common_path} ({len(lost)} such rows in this "
                    "block); the skeleton and common files do not belong together (train with train, test with test)"
                )
            parsed = parse_feature_lists(batch["feature_list"], self._wanted(), self.dense_fields, str(skeleton), read)
            shared = common.select(list(parsed)).take(pa.array(user))
            columns = {c: pc.coalesce(shared[c], parsed[c]) for c in parsed}  # the common feature wins
            table = {f: columns[f] for f in self.fields}
            table.update({dense_name(f): pc.fill_null(columns[dense_name(f)], 0.0) for f in self.dense_fields})
            table[DOMAIN] = columns[DOMAIN_FIELD]
            table.update({c: batch[c] for c in LABELS})
            parts.append(pa.table(table))
            read += len(click)
        return pa.concat_tables(parts), {"read": read, "dropped": dropped}

    def encode(self) -> EncodedTable:
        """Parse, join and filter both official files, assign domains and splits, and encode."""
        files = self.files()
        train, train_counts = self._impressions(files["train"]["skeleton"], files["train"]["common"])
        test, test_counts = self._impressions(files["test"]["skeleton"], files["test"]["common"])
        log.info("Ali-CCP parsed: %d train and %d test impressions", train.num_rows, test.num_rows)
        n_test = test.num_rows
        permutation = np.random.RandomState(self.split_seed).permutation(n_test)  # as sklearn's train_test_split
        test_code = np.full(n_test, SPLIT_NAMES.index("val"), dtype=np.int8)
        test_code[permutation[: -(-n_test // 2)]] = SPLIT_NAMES.index("test")
        split = np.concatenate([np.zeros(train.num_rows, dtype=np.int8), test_code])
        domains = self.domains
        if domains is None:  # pc.unique keeps the order of first appearance
            domains = tuple(str(d) for d in pc.unique(train[DOMAIN]).drop_null().to_pylist())
        table = pa.concat_tables([train, test])
        labels = LABELS if self.conversion else LABELS[:1]
        spec = TableSpec(
            sparse=self.fields,
            domain=DOMAIN,
            labels=labels,
            dense=tuple(dense_name(f) for f in self.dense_fields),
            domains=domains,
            user="101" if "101" in self.fields else None,
            min_count=self.min_count,
            dense_scaling="minmax",
        )
        table = table.select(spec.columns())
        encoded = encode_table(table, spec, self.dataset_id, vocab_mask=split == 0, split=split)
        encoded.report["raw"] = {
            "files": {s: {k: str(p) for k, p in f.items()} for s, f in files.items()},
            "rows_read": {"train": train_counts["read"], "test": test_counts["read"]},
            "dropped": {
                "reason": "click = 0 and conversion = 1",
                "train": train_counts["dropped"],
                "test": test_counts["dropped"],
            },
            "domain_field": DOMAIN_FIELD,
            "min_count": self.min_count,
            "split_seed": self.split_seed,
        }
        return encoded

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory`` (the raw files are read from ``path``, not ``raw_dir``)."""
        self.encode().write(directory)
