"""Ingest: a raw Arrow table (``pyarrow.Table``) -> prepared, validated columns.

Every source ends here, so every data set gets the same vocabulary rules, the same checks and the same report:

- **Vocabularies** are built from the *vocabulary rows* (all rows, or the train rows when a source comes
  with its own split): ids 1..V in sorted order of the value as a string (deterministic), values rarer than
  ``min_count`` left out. Id 0 means missing (null) or out of vocabulary.
- **Ids are compared as strings**, exactly as Arrow casts them: ``7`` and ``"7"`` are one value, ``" 7"``,
  ``"07"`` and ``"7.0"`` are others; a float ``1.0`` reads ``"1"``. Any integer fits (uint64, decimal, or text
  in a string column). Null and NaN are missing (id 0); the empty string ``""`` is a value of its own here
  (``TabularSource`` reads an empty CSV field as missing).
- **Nothing is dropped silently**: rows in == rows out. Values outside the vocabulary become 0 and their
  share is reported per field, per domain and per split (the taxonomy-alignment coverage: docs/architecture.md,
  Vocabularies, id 0 and coverage), next to the share of missing values.
- **Bad input fails loudly**, naming the column, the row (and its file, when the source names the files) and
  the value: missing columns, NaN/inf/null in a dense feature (or a value float32 cannot hold once scaled),
  a dense value so far from the others that scaling would collapse them (below), labels outside {0, 1} (NaN
  and null included), a missing timestamp, a domain value outside the configured domains (or missing; with
  ``domains=None`` the domains are those of the vocabulary rows, so a domain only val/test rows show is
  refused), a column in two roles (a label used as a feature) or named like a column the store adds
  (``split``, ``<sequence>__length``), no rows. A column whose type cannot be read in its role (text in a
  numeric column, a list as an id) fails naming the column.
- **Dense scaling never collapses a column**: ``minmax`` and ``standard`` divide by a scale fitted on the
  vocabulary rows; when one value (say 1e300 among prices of 1 to 100) makes that scale so large that the rows
  between the 1st and 99th percentiles would differ by less than float32 resolution once scaled (their spread
  below ``eps`` = 2**-23 of the scale), they would all train as one value, so the most extreme value is refused,
  naming its row: clip the column or log-transform it before preparing.

Encoding runs over slices of ``_ENCODE_BATCH_ROWS`` rows of the table (bounding the temporaries):
``pyarrow.compute.index_in`` against the vocabulary, +1, null -> 0. No Python runs per value.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mdrec.data.schema import SPLIT_COLUMN, SPLIT_NAMES, Schema, SequenceField, SparseField, seq_length_column
from mdrec.data.store import write_store

DenseScaling = Literal["minmax", "standard", "none"]
DENSE_SCALINGS = get_args(DenseScaling)
COLLAPSE_TAIL = 0.01  # share of the fitted rows at each end left out of the bulk whose scaled spread is checked
_FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 2**-23: float32 resolution relative to a value
_ENCODE_BATCH_ROWS = 1 << 17  # rows per slice encoded at once


@dataclass(frozen=True)
class SequenceSpec:
    """A column holding, per row, a list of raw ids in chronological order (oldest first).

    The column is either an Arrow list column or a string column of ids joined by ``delimiter``. Null, NaN and
    empty elements are skipped. The most recent ``max_len`` ids are kept, in their original order,
    left-aligned and 0-padded; their count goes to the ``<column>__length`` column.

    Args:
        column: name of the list (or delimited string) column.
        vocab_field: the sparse field whose vocabulary (and embedding table) the ids share.
        max_len: L, the padded length (>= 1).
        delimiter: separator of a string column; None for a list column.

    Example:
        >>> SequenceSpec("history", vocab_field="item", max_len=20, delimiter="|").max_len
        20
    """

    column: str
    vocab_field: str
    max_len: int
    delimiter: str | None = None

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"sequence {self.column!r}: max_len must be >= 1, got {self.max_len}")
        if self.delimiter == "":
            raise ValueError(f"sequence {self.column!r}: delimiter is '' ; give a separator or None for list columns")


@dataclass(frozen=True)
class TableSpec:
    """Which raw column plays which role, and how values are encoded.

    ``sparse`` and ``dense`` may hold glob patterns (``*``, ``?``, ``[...]``, as ``fnmatch``): ``expand`` replaces each
    with the columns of the data that it matches (in the data's column order), less those that another role names
    explicitly; ``encode_table`` expands before anything else. An entry that is the name of a column of the data is
    that column, whatever characters it holds. A single column name may be given as a string (``labels="click"``).

    Args:
        sparse: categorical columns (any type; compared as strings), in ``Batch.sparse`` order; or patterns.
        domain: the column whose value names a row's domain.
        labels: binary label columns (values 0/1, bool or numeric), click first (names: never expanded).
        dense: float columns, in ``Batch.dense`` order; scaled with ``dense_scaling``; or patterns.
        domains: domain values in id order; None: the sorted unique values (as strings) of ``domain`` in the
            vocabulary rows (the train rows, when the data come with their own split).
        user: sparse column that identifies a user (GAUC groups by it), or None.
        time: integer timestamp column kept for temporal splits, or None.
        sequence: an id-list feature sharing a sparse field's vocabulary, or None.
        min_count: values seen fewer times in the vocabulary rows map to 0.
        dense_scaling: ``minmax`` (to [0, 1]), ``standard`` (zero mean, unit variance) or ``none``; fitted on
            the vocabulary rows.

    Example:
        >>> spec = TableSpec(sparse=("user", "item"), domain="region", labels="click", dense=("price",))
        >>> spec.columns()
        ['user', 'item', 'price', 'region', 'click']
        >>> TableSpec(sparse=("user", "cat_*"), domain="region", labels="click").expand(
        ...     ["user", "cat_b", "region", "cat_a", "click"], "shop.csv"
        ... ).sparse
        ('user', 'cat_b', 'cat_a')
    """

    sparse: str | Sequence[str]
    domain: str
    labels: str | Sequence[str]
    dense: str | Sequence[str] = ()
    domains: Sequence[str] | None = None
    user: str | None = None
    time: str | None = None
    sequence: SequenceSpec | None = None
    min_count: int = 1
    dense_scaling: DenseScaling = "minmax"

    def __post_init__(self) -> None:
        # Hydra hands lists over as ListConfig: freeze them so the spec hashes and fingerprints stably; a single name
        # given as a string is one column, not one per character.
        for name in ("sparse", "labels", "dense"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(str(c) for c in value))
        if self.domains is not None:
            object.__setattr__(self, "domains", tuple(str(d) for d in self.domains))
        roles: dict[str, list[str]] = {}
        for role, cols in (
            ("sparse", self.sparse),
            ("dense", self.dense),
            ("labels", self.labels),
            ("domain", (self.domain,)),
            ("sequence", () if self.sequence is None else (self.sequence.column,)),
            ("time", () if self.time is None else (self.time,)),
        ):
            for c in cols:
                roles.setdefault(c, []).append(role)
        clashes = {c: r for c, r in roles.items() if len(r) > 1}
        if clashes:
            detail = "; ".join(f"column {c!r} is listed as {' and '.join(r)}" for c, r in clashes.items())
            raise ValueError(
                f"{detail}. Each column may play one role: a label used as a feature leaks the answer "
                "into the model, and the domain is given to the model separately. Remove it from all but "
                "one role."
            )
        if self.user is not None and not _listed(self.user, self.sparse):
            raise ValueError(f"user column {self.user!r} must also be a sparse column (sparse: {list(self.sparse)})")
        if self.sequence is not None and seq_length_column(self.sequence.column) in self.columns():
            raise ValueError(
                f"column {seq_length_column(self.sequence.column)!r} is reserved for the lengths of sequence "
                f"{self.sequence.column!r}; rename it"
            )
        if self.sequence is not None and not _listed(self.sequence.vocab_field, self.sparse):
            raise ValueError(
                f"sequence {self.sequence.column!r} shares the vocabulary of {self.sequence.vocab_field!r}, "
                f"which is not a sparse column (sparse: {list(self.sparse)})"
            )
        if self.dense_scaling not in DENSE_SCALINGS:
            raise ValueError(f"dense_scaling {self.dense_scaling!r} is not one of {DENSE_SCALINGS}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.domains is not None and len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains {list(self.domains)} name a domain more than once")

    def expand(self, header: Sequence[str], where: str) -> TableSpec:
        """This spec with each pattern of ``sparse`` and ``dense`` replaced by the columns of ``header`` it matches,
        in ``header`` order, less the columns named explicitly in any role (within a role, a column matched twice
        comes once). An entry that ``header`` holds is a name, not a pattern.

        Args:
            header: the data's column names.
            where: names the data (a file) in the errors.

        Raises:
            ValueError: a pattern matches no column (naming it and listing ``header``), or a column is matched by a
                sparse and a dense pattern.
        """
        present = set(header)
        if all(c in present or not is_pattern(c) for c in (*self.sparse, *self.dense)):
            return self
        named = {c for c in self.columns() if c in present or not is_pattern(c)}

        def names(columns: Sequence[str], role: str) -> tuple[str, ...]:
            out: dict[str, None] = {}  # ordered, once each
            for c in columns:
                if c in present or not is_pattern(c):
                    out[c] = None
                    continue
                matched = [h for h in header if fnmatch.fnmatchcase(h, c)]
                if not matched:
                    raise ValueError(
                        f"{where}: the {role} pattern {c!r} matches no column; the columns are {list(header)}"
                    )
                out.update(dict.fromkeys(h for h in matched if h not in named))
            return tuple(out)

        sparse, dense = names(self.sparse, "sparse"), names(self.dense, "dense")
        both = [c for c in sparse if c in dense]
        if both:
            raise ValueError(
                f"{where}: column(s) {both} match both a sparse pattern ({list(self.sparse)}) and a dense one "
                f"({list(self.dense)}); narrow a pattern, or name the column in one role"
            )
        return dataclasses.replace(self, sparse=sparse, dense=dense)

    def columns(self) -> list[str]:
        """Every raw column the spec reads (patterns as they are: ``expand`` first)."""
        cols = [*self.sparse, *self.dense, self.domain, *self.labels]
        if self.time is not None:
            cols.append(self.time)
        if self.sequence is not None:
            cols.append(self.sequence.column)
        return cols


def is_pattern(name: str) -> bool:
    """Whether a column entry of a ``TableSpec`` is a glob pattern (holds ``*``, ``?`` or ``[``)."""
    return any(ch in name for ch in "*?[")


def _listed(column: str, columns: Sequence[str]) -> bool:
    """Whether ``columns`` names ``column``, or holds a pattern that matches it."""
    return any(c == column or (is_pattern(c) and fnmatch.fnmatchcase(column, c)) for c in columns)


@dataclass(frozen=True)
class Fitted:
    """Vocabularies, lookups, dense scalers and domains fitted before (by the preparation of the data a model was
    trained on), which ``encode_table`` uses instead of fitting its own on the vocabulary rows: encoded with them, new
    rows mean to that model what its own rows meant (``mdrec.data.alignment`` builds one from a run directory).

    Args:
        vocabularies: per sparse field, the raw value of each id (index i holds id i + 1): written with the store,
            and the schema's vocabulary size is its length + 1.
        lookups: per sparse field, ``(values [M] string array, ids [M] int)``: the raw values that encode to an id,
            and that id; any other value (and null) is id 0. The vocabulary's values, less ids to treat as unknown,
            plus aliases (a taxonomy mapping: a partner's code -> the id of the source value it means).
        scalers: per dense column, ``(shift, scale)``: a value x becomes ``(x - shift) / scale``.
        domains: the domains that keep their ids ``0..K-1``; the data's other domains get ``K, K + 1, ...`` in the
            order of ``spec.domains`` (None: sorted, as found in the vocabulary rows).
    """

    vocabularies: Mapping[str, Sequence[str]]
    lookups: Mapping[str, tuple[pa.Array, np.ndarray]]
    scalers: Mapping[str, tuple[float, float]]
    domains: Sequence[str]


@dataclass
class EncodedTable:
    """Prepared columns with their schema, vocabularies and preparation report.

    Args:
        schema: the Schema of ``columns``.
        columns: one numpy array per column of ``schema.columns()`` (sequence ``[rows, L]``, others
            ``[rows]``).
        vocabularies: per sparse field, the raw value of each id (index i holds id i + 1).
        report: what the preparation did (rows, per-domain counts and positive rates, unseen/missing shares).

    Example:
        >>> table = pa.table(
        ...     {"user": ["u1", "u2", "u1"], "item": [7, 8, 9], "region": ["n", "s", "n"], "click": [1, 0, 0]}
        ... )
        >>> spec = TableSpec(sparse=("user", "item"), domain="region", labels=("click",))
        >>> enc = encode_table(table, spec, "toy")
        >>> enc.schema.vocab_sizes, enc.schema.domains, enc.columns["user"].tolist(), enc.vocabularies["user"]
        ([3, 4], ('n', 's'), [1, 2, 1], ['u1', 'u2'])
        >>> enc.write(tmp_dir / "toy").name
        'toy'
    """

    schema: Schema
    columns: dict[str, np.ndarray]
    vocabularies: dict[str, list[str]]
    report: dict = field(default_factory=dict)

    def write(self, directory: str | Path) -> Path:
        """Validate and write the store atomically (``mdrec.data.store.write_store``)."""
        return write_store(directory, self.schema, self.columns, self.vocabularies, self.report)


@dataclass
class _Encoder:
    """Raw Arrow rows -> encoded Arrow rows (all vectorised), applied to one slice of the table at a time."""

    vocabs: dict[str, pa.Array]
    ids: dict[str, np.ndarray]  # per field with a fitted lookup: [1 + M] the id of each lookup position (0: unknown)
    domain: str
    domain_values: pa.Array
    labels: tuple[str, ...]
    dense: dict[str, tuple[float, float]]  # column -> (shift, scale)
    time: str | None
    sequence: SequenceSpec | None

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, pa.Array] = {c: pa.array(self._ids(c, encode_ids(batch[c], v))) for c, v in self.vocabs.items()}
        for c, (shift, scale) in self.dense.items():
            x = _to_numpy(batch[c], pa.float64())
            out[c] = pa.array(((x - shift) / scale).astype(np.float32))
        out[self.domain] = pc.index_in(batch[self.domain].cast(pa.string()), value_set=self.domain_values).cast(
            pa.int32()
        )
        for c in self.labels:
            out[c] = pa.array(_to_numpy(batch[c], pa.float64()).astype(np.float32))
        if self.time is not None:
            out[self.time] = batch[self.time].cast(pa.int64())
        if self.sequence is not None:
            s = self.sequence
            seq, lengths = encode_sequence(batch[s.column], self.vocabs[s.vocab_field], s.max_len, s.delimiter)
            seq = self._ids(s.vocab_field, seq)
            out[s.column] = pa.FixedSizeListArray.from_arrays(pa.array(seq.reshape(-1)), s.max_len)
            out[seq_length_column(s.column)] = pa.array(lengths)
        return pa.table({k: (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v) for k, v in out.items()})

    def _ids(self, field: str, positions: np.ndarray) -> np.ndarray:
        """Lookup positions + 1 (0: not found) of ``field`` as ids: the positions themselves unless it has a fitted
        lookup."""
        table = self.ids.get(field)
        return positions if table is None else table[positions]


def encode_ids(values: pa.Array | pa.ChunkedArray, vocab: pa.Array) -> np.ndarray:
    """Ids of ``values`` in ``vocab``: position + 1, and 0 for null or out-of-vocabulary values.

    Args:
        values: ``[n]`` raw values of any type (compared as strings).
        vocab: ``[V]`` string array of the vocabulary (id i + 1 at index i).

    Returns:
        ``[n]`` int32 ids in 0..V.
    """
    idx = pc.index_in(_id_strings(values), value_set=vocab)
    return pc.add(pc.fill_null(idx, -1), 1).to_numpy(zero_copy_only=False).astype(np.int32)


def window(flat: np.ndarray, start: np.ndarray, end: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Gather, per row, ``flat[start:end]`` clipped to its last ``max_len`` values, left-aligned and 0-padded.

    Args:
        flat: ``[M]`` ids.
        start: ``[n]`` first position of each row's values in ``flat``.
        end: ``[n]`` one past the last position (``end >= start``).
        max_len: L.

    Returns:
        ``([n, L] int32 ids, [n] int32 lengths)``.
    """
    start = np.maximum(start, end - max_len)
    pos = start[:, None] + np.arange(max_len)[None, :]  # [n, L]
    valid = pos < end[:, None]
    if len(flat) == 0:
        return np.zeros(pos.shape, dtype=np.int32), np.zeros(len(start), dtype=np.int32)
    seq = np.where(valid, flat[np.minimum(pos, len(flat) - 1)], 0).astype(np.int32)
    return seq, (end - start).astype(np.int32)


def encode_sequence(
    column: pa.Array | pa.ChunkedArray, vocab: pa.Array, max_len: int, delimiter: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode a list (or delimited string) column of raw ids into a padded id matrix.

    Args:
        column: ``[n]`` lists of raw ids in chronological order, or strings joined by ``delimiter``.
        vocab: the shared vocabulary (string array).
        max_len: L; the most recent L ids are kept.
        delimiter: separator for a string column, None for a list column.

    Returns:
        ``([n, L] int32 ids, [n] int32 lengths)``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if delimiter is not None:
        column = pc.split_pattern(column, delimiter)
    values = _id_strings(pc.list_flatten(column))
    parents = pc.list_parent_indices(column).to_numpy()
    keep = pc.fill_null(pc.not_equal(values, ""), False).to_numpy(zero_copy_only=False)
    ids = encode_ids(values.filter(pa.array(keep)), vocab)  # [M] kept ids, grouped by row in row order
    counts = np.bincount(parents[keep], minlength=n)  # [n] kept ids per row
    end = np.cumsum(counts)
    return window(ids, end - counts, end, max_len)


def encode_table(
    raw: pa.Table,
    spec: TableSpec,
    dataset_id: str,
    vocab_mask: np.ndarray | None = None,
    split: np.ndarray | None = None,
    input_rows: Mapping[str, int] | None = None,
    fitted: Fitted | None = None,
) -> EncodedTable:
    """Validate a raw table, build vocabularies and scalers on the vocabulary rows (or take them as ``fitted``), and
    encode every row.

    Args:
        raw: the raw rows; any column types Arrow can cast (ids are compared as strings).
        spec: which column plays which role.
        dataset_id: names the prepared data set (goes into the schema and every error message).
        vocab_mask: ``[rows]`` bool, the rows vocabularies and dense scalers are fitted on; None: all rows.
        split: ``[rows]`` int8 split codes (0 train, 1 val, 2 test) when the data come with their own split;
            the schema then has ``has_split_column=True``.
        input_rows: the file each stretch of rows came from, ``{path: rows}`` in row order, so that errors name the
            file and its row too; None: errors name the row of ``raw`` only.
        fitted: vocabularies, lookups, dense scalers and known domains to encode with instead of fitting them
            (:class:`Fitted`); ``spec.min_count`` and ``spec.dense_scaling`` are then unused.

    Returns:
        The encoded columns (rows in == rows out), schema, vocabularies and report.

    Raises:
        ValueError: naming the column, row and value, for any bad input listed in the module docstring.
    """
    spec = spec.expand(raw.column_names, f"data set {dataset_id!r}")
    n = raw.num_rows
    if n == 0:
        raise ValueError(f"data set {dataset_id!r}: the input has no rows; check the raw files and filters")
    missing = [c for c in spec.columns() if c not in raw.column_names]
    if missing:
        raise ValueError(
            f"data set {dataset_id!r}: column(s) {missing} named in the spec are not in the data; "
            f"available columns: {raw.column_names}"
        )
    if split is not None and SPLIT_COLUMN in spec.columns():
        raise ValueError(
            f"data set {dataset_id!r}: column {SPLIT_COLUMN!r} is reserved for the split codes of data that come "
            "with their own split; rename it"
        )
    for name, arr in (("vocab_mask", vocab_mask), ("split", split)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"data set {dataset_id!r}: `{name}` has {len(arr)} entries for {n} rows")
    mask = np.ones(n, dtype=bool) if vocab_mask is None else np.asarray(vocab_mask, dtype=bool)
    if not mask.any():
        raise ValueError(f"data set {dataset_id!r}: the vocabulary rows (vocab_mask) are empty")

    domains = _domains(raw, spec, dataset_id, mask, input_rows, fitted.domains if fitted is not None else ())
    for c in spec.labels:
        y = _to_numpy(raw[c], pa.float64(), dataset_id, c)
        bad = (y != 0) & (y != 1)
        _raise_where(dataset_id, c, raw[c], bad, "is not a binary label (0 or 1); map it to 0/1 first", input_rows)
    scalers = {
        c: _fit_scaler(
            raw, c, mask, spec.dense_scaling, dataset_id, input_rows, fitted.scalers[c] if fitted is not None else None
        )
        for c in spec.dense
    }
    if spec.time is not None:
        t = raw[spec.time]
        _raise_where(
            dataset_id,
            spec.time,
            t,
            pc.is_null(t).to_numpy(zero_copy_only=False),
            "is missing; every row needs a timestamp",
            input_rows,
        )
        _cast(t, pa.int64(), dataset_id, spec.time)
    if spec.sequence is not None:
        _check_sequence_type(raw[spec.sequence.column].type, spec.sequence, dataset_id)
    vocab_rows = pa.array(mask)
    if fitted is None:
        vocabs = {c: _vocabulary(raw[c].filter(vocab_rows), spec.min_count, dataset_id, c) for c in spec.sparse}
        vocabularies, ids = {c: v.to_pylist() for c, v in vocabs.items()}, {}
    else:
        vocabs = {c: fitted.lookups[c][0] for c in spec.sparse}
        vocabularies = {c: list(fitted.vocabularies[c]) for c in spec.sparse}
        ids = {c: np.concatenate([[0], fitted.lookups[c][1]]).astype(np.int32) for c in spec.sparse}

    encoder = _Encoder(
        vocabs,
        ids,
        spec.domain,
        pa.array(domains, pa.string()),
        tuple(spec.labels),
        scalers,
        spec.time,
        spec.sequence,
    )
    encoded = pa.concat_tables(encoder(raw.slice(i, _ENCODE_BATCH_ROWS)) for i in range(0, n, _ENCODE_BATCH_ROWS))
    columns = {c: encoded.column(c).to_numpy() for c in encoded.column_names if c != _seq_name(spec)}
    if spec.sequence is not None:
        seq = pc.list_flatten(encoded.column(spec.sequence.column)).to_numpy()
        columns[spec.sequence.column] = seq.reshape(n, spec.sequence.max_len)
    if split is not None:
        columns[SPLIT_COLUMN] = np.asarray(split, dtype=np.int8)

    schema = Schema(
        dataset_id=dataset_id,
        sparse=tuple(SparseField(c, len(vocabularies[c]) + 1) for c in spec.sparse),
        dense=tuple(spec.dense),
        domain_field=spec.domain,
        domains=tuple(domains),
        labels=tuple(spec.labels),
        sequence=None
        if spec.sequence is None
        else SequenceField(spec.sequence.column, spec.sequence.vocab_field, spec.sequence.max_len),
        user_field=spec.user,
        time_column=spec.time,
        has_split_column=split is not None,
    )
    report = _report(raw, spec, schema, columns, mask, scalers, columns[SPLIT_COLUMN] if split is not None else None)
    return EncodedTable(schema, columns, vocabularies, report)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads consecutive integers over 64 bits


def row_hashes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each row's raw values in ``columns``: rows equal in every one of them hash equal.

    Values are compared exactly as stored (``7`` and ``7.0`` of a float column are one value, the strings ``"7"``
    and ``"7.0"`` two); a null is a value of its own, list columns are compared element by element. Vectorised:
    each column's values are numbered once (a hash table in Arrow), then mixed row-wise in numpy. Two different
    rows collide with probability about 2**-64.

    Args:
        table: the rows.
        columns: the columns that make a row.

    Returns:
        ``[rows]`` uint64.

    Example:
        >>> t = pa.table({"user": ["a", "b", "a"], "click": [1, 0, 1]})
        >>> h = row_hashes(t, ["user", "click"])
        >>> bool(h[0] == h[2]), bool(h[0] == h[1])
        (True, False)
    """
    hashes = np.zeros(table.num_rows, dtype=np.uint64)
    for column in columns:
        hashes = _mix(hashes * _GOLDEN + _value_hashes(table[column]))
    return hashes


def _value_hashes(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``[n]`` uint64, equal for equal values (nulls included): a list is hashed from its elements and positions."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        lengths = pc.fill_null(pc.list_value_length(values), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        parents = pc.list_parent_indices(values).to_numpy().astype(np.int64)  # [M] the row of each element
        position = np.arange(len(parents)) - np.searchsorted(parents, parents)  # [M] index within its row
        element = _mix(_value_hashes(pc.list_flatten(values)) + _mix(position.astype(np.uint64) + np.uint64(1)))
        sums = np.zeros(len(values), dtype=np.uint64)
        np.add.at(sums, parents, element)  # wraps modulo 2**64: an order-free sum of (element, position) hashes
        return _mix(sums + _mix(lengths.astype(np.uint64) + np.uint64(2)))  # null: length -1, empty: 0
    codes = pc.index_in(values, value_set=pc.unique(values), skip_nulls=False)  # null matches the null entry
    return _mix(codes.to_numpy(zero_copy_only=False).astype(np.uint64) + np.uint64(1))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: each input bit flips about half of the output bits (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _seq_name(spec: TableSpec) -> str | None:
    return None if spec.sequence is None else spec.sequence.column


def first_uncastable(values: pa.Array | pa.ChunkedArray, dtype: pa.DataType) -> int:
    """The index of the first value of ``values`` that does not cast to ``dtype``, for ``values`` that do not cast
    as a whole: a bisection over slices (about 2 x len(values) values cast, no per-value Python)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            values.slice(lo, mid - lo).cast(dtype)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


def _cast(values: pa.ChunkedArray, dtype: pa.DataType, dataset_id: str, column: str) -> pa.ChunkedArray:
    try:
        return values.cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        row = first_uncastable(values, dtype)
        raise ValueError(
            f"data set {dataset_id!r}, column {column!r}, row {row}: value {values[row].as_py()!r} cannot be read "
            f"as {dtype} (the column is {values.type}: {e})"
        ) from e


def _id_strings(values: pa.ChunkedArray | pa.Array, dataset_id: str = "", column: str = "") -> pa.ChunkedArray:
    """Ids as the strings they are compared as; NaN (a float column's missing value) becomes null."""
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_nan(values), None, values)
    return _cast(values, pa.string(), dataset_id, column)


def _to_numpy(
    values: pa.ChunkedArray | pa.Array, dtype: pa.DataType, dataset_id: str = "", column: str = ""
) -> np.ndarray:
    """``values`` cast to ``dtype`` as numpy; nulls become NaN."""
    return _cast(values, dtype, dataset_id, column).to_numpy(zero_copy_only=False)


def _raise_where(
    dataset_id: str,
    column: str,
    values: pa.ChunkedArray,
    bad: np.ndarray,
    problem: str,
    input_rows: Mapping[str, int] | None = None,
) -> None:
    """Raise naming the first row where ``bad`` holds (and its file, ``input_rows`` as in ``encode_table``), its
    raw value and how many rows are bad."""
    rows = np.flatnonzero(bad)
    if len(rows):
        row = int(rows[0])
        raise ValueError(
            f"data set {dataset_id!r}, column {column!r}, row {row}: value {values[row].as_py()!r} {problem} "
            f"({len(rows)} such row(s) of {len(bad)}{_in_file(row, input_rows)})"
        )


def _in_file(row: int, input_rows: Mapping[str, int] | None) -> str:
    """``; row <row> is row r of file 'f'`` for the file holding ``row`` of the concatenated files (``input_rows``),
    else ''."""
    if not input_rows:
        return ""
    ends = np.cumsum(list(input_rows.values()))
    i = int(np.searchsorted(ends, row, side="right"))
    return f"; row {row} is row {row - (int(ends[i - 1]) if i else 0)} of file {list(input_rows)[i]!r}"


def _check_sequence_type(dtype: pa.DataType, spec: SequenceSpec, dataset_id: str) -> None:
    is_text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype)
    if spec.delimiter is not None and not is_text:
        raise ValueError(
            f"data set {dataset_id!r}, sequence column {spec.column!r}: type {dtype} is not a string; "
            "`delimiter` applies to delimited strings only, set it to None for list columns"
        )
    if spec.delimiter is None and not is_list:
        raise ValueError(
            f"data set {dataset_id!r}, sequence column {spec.column!r}: type {dtype} is not a list; "
            "for ids joined in a string set `delimiter` (e.g. '|')"
        )
    if is_list:  # the elements are ids: a type that cannot be read as a string (a nested list) fails here
        _id_strings(pa.array([], dtype.value_type), dataset_id, spec.column)


def _domains(
    raw: pa.Table,
    spec: TableSpec,
    dataset_id: str,
    mask: np.ndarray,
    input_rows: Mapping[str, int] | None,
    known: Sequence[str] = (),
) -> list[str]:
    """The domain names in id order: ``known`` first, then ``spec.domains``, or those of the vocabulary rows
    (``mask``, sorted), that ``known`` lacks; raises on a row whose domain is missing or not among them."""
    values = _id_strings(raw[spec.domain], dataset_id, spec.domain)
    if spec.domains is None:
        domains = sorted(v for v in pc.unique(values.filter(pa.array(mask))).to_pylist() if v is not None)
        domains = [*known, *(d for d in domains if d not in known)]
        rows = "the rows" if mask.all() else "the training rows"
        problem = (
            f"is not one of the domains of {rows} {domains} (`domains: null` takes them from {rows}); list every "
            "domain in `domains` (a domain without training rows is then evaluated as the model stands) or drop "
            "those rows"
        )
    else:
        domains = [*known, *(d for d in spec.domains if d not in known)]
        problem = f"is not one of the configured domains {domains}; add it to `domains` or drop those rows"
    unknown = pc.is_null(pc.index_in(values, value_set=pa.array(domains, pa.string())))
    _raise_where(dataset_id, spec.domain, raw[spec.domain], unknown.to_numpy(zero_copy_only=False), problem, input_rows)
    return domains


def _fit_scaler(
    raw: pa.Table,
    column: str,
    mask: np.ndarray,
    method: str,
    dataset_id: str,
    input_rows: Mapping[str, int] | None,
    fixed: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Check a dense column is finite everywhere, also once scaled to float32, and that scaling does not collapse
    it (``_check_collapse``); return (shift, scale) fitted on the masked rows, or ``fixed`` (fitted before: only
    the checks that the values are finite and fit a float32 once scaled run)."""
    x = _to_numpy(raw[column], pa.float64(), dataset_id, column)
    _raise_where(
        dataset_id,
        column,
        raw[column],
        ~np.isfinite(x),
        "is not finite (NaN, inf or missing); fill or drop missing values before preparing",
        input_rows,
    )
    shift, scale = _fit(x, mask, method, dataset_id, column, raw, input_rows, fixed)
    if method != "none" and fixed is None:
        _check_collapse(x, mask, method, scale, dataset_id, column, raw, input_rows)
    return shift, scale


def _fit(
    x: np.ndarray,
    mask: np.ndarray,
    method: str,
    dataset_id: str,
    column: str,
    raw: pa.Table,
    input_rows: Mapping[str, int] | None,
    fixed: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """(shift, scale) of ``method`` fitted on ``x[mask]`` (or ``fixed``); raises naming the first row that
    overflows float32 once scaled."""
    fit = x[mask]
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: caught below, naming the row
        if fixed is not None:
            shift, scale = fixed
        elif method == "minmax":
            shift, scale = float(fit.min()), float(fit.max() - fit.min()) or 1.0
        elif method == "standard":
            shift, scale = float(fit.mean()), float(fit.std()) or 1.0
        else:
            shift, scale = 0.0, 1.0
        fitted = np.isfinite([shift, scale]).all()
        if fitted and max(abs(x.min() - shift), abs(x.max() - shift)) / scale <= np.finfo(np.float32).max:
            return shift, scale  # the extremes fit, so every row does (no scaled copy of the column)
        scaled = ((x - shift) / scale).astype(np.float32)
    # a scale that overflows comes from the largest magnitudes (the square of 1e300 in the standard deviation)
    overflow = ~np.isfinite(scaled) if fitted else np.abs(x) == np.abs(x[mask]).max()
    _raise_where(
        dataset_id,
        column,
        raw[column],
        overflow,
        f"does not fit a float32 once scaled ({method} fitted on the vocabulary rows: shift {shift}, scale "
        f"{scale}); rescale the column before preparing (e.g. log) or choose another `dense_scaling`",
        input_rows,
    )
    return shift, scale


def _check_collapse(
    x: np.ndarray,
    mask: np.ndarray,
    method: str,
    scale: float,
    dataset_id: str,
    column: str,
    raw: pa.Table,
    input_rows: Mapping[str, int] | None,
) -> None:
    """Raise, naming the most extreme fitted value, when ``scale`` leaves the bulk of the fitted rows (between the
    ``COLLAPSE_TAIL`` and 1 - ``COLLAPSE_TAIL`` quantiles, at least one row cut at each end) a spread below float32
    resolution, ``eps`` = 2**-23 of the scale: they would all train as one value. A bulk without spread in float32 (a
    constant or mostly constant column, or values only float64 tells apart) is not collapsed by scaling and passes."""
    rows = np.flatnonzero(mask)
    fit = x[rows]
    cut = max(1, math.ceil(COLLAPSE_TAIL * len(fit)))
    if len(fit) <= 2 * cut:
        return
    lo, hi = np.partition(fit, [cut, len(fit) - 1 - cut])[[cut, len(fit) - 1 - cut]]
    spread = float(hi - lo)
    with np.errstate(over="ignore"):  # beyond float32's range both are inf: not told apart either
        distinct = bool(np.float32(hi) != np.float32(lo))  # float32 tells them apart before scaling
    if spread == 0 or not distinct or spread / scale >= _FLOAT32_EPS:
        return
    distance = np.maximum(fit - hi, lo - fit)  # [fitted rows] how far beyond the bulk
    extreme = np.zeros(len(x), dtype=bool)
    extreme[rows[distance == distance.max()]] = True
    _raise_where(
        dataset_id,
        column,
        raw[column],
        extreme,
        f"makes the {method} scale {scale:.6g}, so the other rows (the 1st to 99th percentile of the rows it is "
        f"fitted on: {lo:.6g} .. {hi:.6g}) would differ by less than float32 resolution once scaled "
        f"({spread / scale:.3g} of the scale) and train as one value; clip the column (e.g. at its 1st and 99th "
        "percentiles) or log-transform it before preparing",
        input_rows,
    )


def _vocabulary(values: pa.ChunkedArray, min_count: int, dataset_id: str, column: str) -> pa.Array:
    """Sorted string values seen at least ``min_count`` times (nulls and NaN excluded)."""
    counts = pc.value_counts(_id_strings(values, dataset_id, column))
    vals, cnt = counts.field("values"), counts.field("counts")
    keep = pc.and_(pc.is_valid(vals), pc.greater_equal(cnt, min_count))
    vals = vals.filter(keep)
    return vals.take(pc.sort_indices(vals))


def _shares(hit: np.ndarray, group: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """Per group, the share of rows where ``hit`` holds (None for an empty group)."""
    total = np.bincount(group, minlength=len(names))
    hits = np.bincount(group, weights=hit, minlength=len(names))
    return {name: (float(hits[k] / total[k]) if total[k] else None) for k, name in enumerate(names)}


def _report(
    raw: pa.Table,
    spec: TableSpec,
    schema: Schema,
    columns: dict[str, np.ndarray],
    mask: np.ndarray,
    scalers: dict[str, tuple[float, float]],
    split: np.ndarray | None,
) -> dict:
    """Rows, positive rates and unseen/missing shares, overall, per domain and (with ``split``, the rows' split
    codes; not a data column that happens to be called ``split``) per split."""
    domain = columns[spec.domain]
    report: dict = {
        "dataset_id": schema.dataset_id,
        "rows": len(domain),
        "vocabulary_rows": int(mask.sum()),
        "rows_per_domain": dict(
            zip(schema.domains, np.bincount(domain, minlength=schema.num_domains).tolist(), strict=True)
        ),
        "positive_rate": {
            c: {
                "all": float(columns[c].mean(dtype=np.float64)),
                **_shares(columns[c], domain, schema.domains),
            }
            for c in spec.labels
        },
        "dense_scaling": {c: {"method": spec.dense_scaling, "shift": s, "scale": k} for c, (s, k) in scalers.items()},
        "fields": {},
    }
    if split is not None:
        report["rows_per_split"] = dict(zip(SPLIT_NAMES, np.bincount(split, minlength=3).tolist(), strict=True))
    for c in spec.sparse:
        missing = pc.is_null(raw[c], nan_is_null=True).to_numpy(zero_copy_only=False)
        unseen = (columns[c] == 0) & ~missing
        entry = {
            "vocab_size": schema.vocab_sizes[schema.sparse_index(c)],
            "unseen": float(unseen.mean()),
            "missing": float(missing.mean()),
            "unseen_per_domain": _shares(unseen, domain, schema.domains),
            "missing_per_domain": _shares(missing, domain, schema.domains),
        }
        if split is not None:
            entry["unseen_per_split"] = _shares(unseen, split, SPLIT_NAMES)
        report["fields"][c] = entry
    if spec.sequence is not None:
        s = spec.sequence
        seq, lengths = columns[s.column], columns[seq_length_column(s.column)]
        inside = np.arange(s.max_len)[None, :] < lengths[:, None]  # [rows, L] real (non-padding) positions
        report["sequence"] = {
            "column": s.column,
            "vocab_field": s.vocab_field,
            "max_len": s.max_len,
            "mean_length": float(lengths.mean()),
            "empty": float((lengths == 0).mean()),
            "unseen": float(((seq == 0) & inside).sum() / max(int(inside.sum()), 1)),
        }
    return report
