"""New rows encoded as a trained model reads its own: a run's encoding, a taxonomy mapping per field, coverage.

A model's ids mean something only with the vocabularies they were encoded with. Every stage=adapt (and onboard) run
writes its data's encoding into its directory (``encoding.json``, :class:`Encoding`): the schema (fields, roles,
vocabulary sizes, domains), each sparse field's vocabulary (raw value -> id), the ids the model never trained (those
``data.vocab_domains`` maps to 0), and the dense scalers. :class:`AlignedSource` prepares new files (a new partner's
train/val/test files, fresh rows of known domains) with that encoding instead of fitting its own:

- a raw value gets the run's id for that value (compared as strings, as ``mdrec.data.ingest`` compares them); a
  mapping file per field (:func:`read_mapping`, CSV ``target_value,source_value``) first translates the new data's
  codes (target values) into the run's (source values); a value neither mapped nor in the run's vocabulary is id 0,
  the unknown id;
- dense columns are scaled with the run's shift and scale;
- the run's domains keep their ids ``0..K-1``; domains the run does not know get ``K, K + 1, ...`` (sorted, or in
  the order ``domains`` gives), so old ids keep their meaning and a model can grow by one slice per new domain.

Before encoding, :func:`coverage` measures per new domain and sparse field, on the domain's training rows, the share
of rows and of distinct values matched exactly, through the mapping, or not at all (and missing values); the
prepared store's ``report.json`` keeps it under ``alignment``. ``stage=onboard`` logs it, writes it into its run
directory and refuses fields below ``stage.min_coverage``. The same source serves any later evaluation of a run on
new files (a data config with ``data.source.run=<run dir>``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.ingest import DENSE_SCALINGS, DenseScaling, Fitted, SequenceSpec, TableSpec, encode_ids
from mdrec.data.schema import Schema
from mdrec.data.sources.raw import file_signature
from mdrec.data.sources.tabular import MissingColumnsError, RawRows, TabularSource
from mdrec.data.store import ColumnStore  # noqa: F401 (the example)
from mdrec.rundir import RunDir

log = logging.getLogger(__name__)

ENCODING_VERSION = 1
MAPPING_COLUMNS = ("target_value", "source_value")
SHOWN = 5  # values an error lists


class AlignmentError(ValueError):
    """New data that cannot be encoded with a run's encoding (the error names the file, the field and the values)."""


class UnknownSourceValuesError(AlignmentError):
    """A mapping file maps onto values the run's vocabulary does not hold."""


class DuplicateTargetValuesError(AlignmentError):
    """A mapping file maps one target value more than once."""


class MissingSchemaColumnsError(AlignmentError):
    """A file of the new data lacks a column of the run's schema."""


@dataclass(frozen=True)
class Encoding:
    """How a run's data was encoded: what new rows need to mean the same to its model.

    Args:
        schema: the run's data schema (fields, roles, vocabulary sizes, domains in id order).
        vocabularies: per sparse field, the raw value of each id (index i holds id i + 1; ``vocab_size - 1`` values).
        unseen: per sparse field, ids the model never trained (``data.vocab_domains`` maps them to 0): new values
            equal to them are encoded as 0 too.
        dense_scaling: the scaling method of the dense columns (``minmax``, ``standard`` or ``none``).
        scalers: per dense column, ``(shift, scale)``: x becomes ``(x - shift) / scale``.

    Example:
        >>> users, movies = [f"u{i}" for i in range(1, 10)], [f"m{i}" for i in range(1, 20)]
        >>> enc = Encoding(schema, {"user_id": users, "movie_id": movies, "genre": ["a", "b", "c", "d"]},
        ...                unseen={"genre": [2]}, scalers={"age": (0.0, 1.0)})
        >>> values, ids = enc.lookup("genre", {"x": "c"})  # "x" means "c"; "b" (id 2) was never trained
        >>> values.to_pylist(), ids.tolist()
        (['x', 'a', 'b', 'c', 'd'], [3, 1, 0, 3, 4])
    """

    schema: Schema
    vocabularies: dict[str, list[str]]
    unseen: dict[str, list[int]] = field(default_factory=dict)
    dense_scaling: DenseScaling = "none"
    scalers: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_datamodule(cls, data: MultiDomainDataModule) -> Encoding:
        """The encoding of ``data``'s prepared store as its batches present it: the store's vocabularies (a store
        without them, the synthetic generator's, holds raw ids: id i is the value ``"i"``), the ids its
        ``vocab_domains`` map to 0, and the dense scalers ``report.json`` records (none recorded: unscaled)."""
        schema, store = data.schema, data.store
        vocabularies, unseen = {}, {}
        offsets = np.cumsum([0, *schema.vocab_sizes])
        for index, f in enumerate(schema.sparse):
            stored = store.vocabulary(f.name)
            raw_ids = [str(i) for i in range(1, f.vocab_size)]
            vocabularies[f.name] = [str(v) for v in stored] if stored is not None else raw_ids
            if data.id_map is not None:
                ids = data.id_map[offsets[index] : offsets[index + 1]].numpy()
                unseen[f.name] = np.flatnonzero(ids == 0)[1:].tolist()
        recorded = store.report().get("dense_scaling", {})
        methods = {entry["method"] for entry in recorded.values()}
        scalers = {
            c: (float(recorded[c]["shift"]), float(recorded[c]["scale"])) if c in recorded else (0.0, 1.0)
            for c in schema.dense
        }
        return cls(schema, vocabularies, unseen, methods.pop() if len(methods) == 1 else "none", scalers)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": ENCODING_VERSION,
            "schema": self.schema.to_json(),
            "vocabularies": self.vocabularies,
            "unseen": self.unseen,
            "dense_scaling": self.dense_scaling,
            "scalers": {c: list(v) for c, v in self.scalers.items()},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: Path) -> Encoding:
        """An encoding read from the file ``source`` (untrusted: every field's type and size is checked).

        Raises:
            ValueError: naming the file and the entry that is malformed.
        """

        def bad(what: str) -> ValueError:
            return ValueError(
                f"{source}: {what}; the file was edited or not written by mdrec: re-run the job that wrote it"
            )

        if obj.get("version") != ENCODING_VERSION:
            raise bad(f"version {obj.get('version')!r} is not {ENCODING_VERSION}")
        try:
            schema = Schema.from_json(obj["schema"])
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise bad(f"its schema does not read ({type(error).__name__}: {error})") from None
        domains = obj["schema"].get("domains")
        if (
            not isinstance(domains, list)
            or not all(isinstance(d, str) for d in domains)
            or len(set(domains)) < len(domains)
        ):
            raise bad(f"its domains {domains!r} are not a list of distinct names")
        sizes = [f.vocab_size for f in schema.sparse] + [s.max_len for s in [schema.sequence] if s is not None]
        if not all(type(n) is int and n > 0 for n in sizes):
            raise bad(f"its vocabulary sizes and sequence length {sizes} are not positive integers")
        vocabularies, unseen, scalers = obj.get("vocabularies"), obj.get("unseen", {}), obj.get("scalers")
        if not isinstance(vocabularies, dict) or not isinstance(unseen, dict) or not isinstance(scalers, dict):
            raise bad("vocabularies, unseen and scalers must be mappings")
        for f in schema.sparse:
            values = vocabularies.get(f.name)
            strings = isinstance(values, list) and all(isinstance(v, str) for v in values)
            if not strings or len(values) != f.vocab_size - 1 or len(set(values)) < len(values):
                raise bad(f"the vocabulary of {f.name!r} is not a list of {f.vocab_size - 1} distinct strings")
            ids = unseen.get(f.name, [])
            if not isinstance(ids, list) or not all(isinstance(i, int) and 0 < i < f.vocab_size for i in ids):
                raise bad(f"the unseen ids of {f.name!r} are not ids in 1..{f.vocab_size - 1}")
        if obj.get("dense_scaling") not in DENSE_SCALINGS:
            raise bad(f"dense_scaling {obj.get('dense_scaling')!r} is not one of {DENSE_SCALINGS}")
        for c in schema.dense:
            pair = scalers.get(c)
            ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int | float) for v in pair)
            if not ok or not all(math.isfinite(v) for v in pair) or pair[1] <= 0:
                raise bad(f"the scaler of dense column {c!r} is not [shift, scale] with a finite scale > 0: {pair!r}")
        return cls(
            schema,
            {f.name: vocabularies[f.name] for f in schema.sparse},
            {f.name: unseen[f.name] for f in schema.sparse if f.name in unseen},
            obj["dense_scaling"],
            {c: (float(scalers[c][0]), float(scalers[c][1])) for c in schema.dense},
        )

    @classmethod
    def of_run(cls, run: str | Path) -> Encoding:
        """The encoding a run directory carries (``encoding.json``, checked against its checksum)."""
        run_dir = RunDir(Path(run))
        encoding = cls.from_json(run_dir.read_encoding(), run_dir.file(RunDir.ENCODING))
        if not run_dir.exists(RunDir.DATA_REPORT):
            raise FileNotFoundError(
                f"{run_dir.file(RunDir.DATA_REPORT)} is missing: {run_dir.path} is not a finished run's directory, or "
                "it was copied in part; copy the whole run directory"
            )
        trained = run_dir.read_json(RunDir.DATA_REPORT).get("domains")  # the domains the run trained, in id order
        if trained != list(encoding.schema.domains):
            raise ValueError(
                f"{run_dir.file(RunDir.ENCODING)} lists the domains {list(encoding.schema.domains)}, but the run "
                f"trained {trained} ({run_dir.file(RunDir.DATA_REPORT)}): a domain's rows would run through another "
                "domain's adapter. The files were edited or come from different runs: copy the run directory again"
            )
        return encoding

    def save(self, run: str | Path) -> None:
        """Write ``encoding.json`` into the run directory ``run``."""
        RunDir(Path(run)).write_encoding(self.to_json())

    def with_domains(self, domains: Sequence[str]) -> Encoding:
        """This encoding with the domains ``domains`` (which must start with this encoding's)."""
        if tuple(domains[: self.schema.num_domains]) != self.schema.domains:
            raise ValueError(f"domains {list(domains)} do not start with the encoding's {list(self.schema.domains)}")
        return replace(self, schema=replace(self.schema, domains=tuple(domains)))

    def spec(
        self, domains: Sequence[str] | None = None, time: str | None = None, sequence_delimiter: str | None = None
    ) -> TableSpec:
        """The ``TableSpec`` that reads new files as the run's data: its columns in their roles."""
        s = self.schema
        sequence = None
        if s.sequence is not None:
            sequence = SequenceSpec(s.sequence.name, s.sequence.vocab_field, s.sequence.max_len, sequence_delimiter)
        return TableSpec(
            sparse=tuple(s.sparse_names),
            domain=s.domain_field,
            labels=tuple(s.labels),
            dense=tuple(s.dense),
            domains=domains,
            user=s.user_field,
            time=time,
            sequence=sequence,
            dense_scaling=self.dense_scaling,
        )

    def lookup(self, name: str, aliases: Mapping[str, str] | None = None) -> tuple[pa.Array, np.ndarray]:
        """Field ``name``'s lookup: ``(values [M] strings, ids [M])``, the aliases' targets first (the id of their
        source value, which must be in the vocabulary: :func:`read_mapping` checks it), then the vocabulary's values
        but those the aliases redefine; unseen ids are 0."""
        vocabulary = pa.array(self.vocabularies[name], pa.string())
        ids = np.arange(1, len(vocabulary) + 1)
        ids[np.asarray(self.unseen.get(name, []), dtype=np.int64) - 1] = 0
        if not aliases:
            return vocabulary, ids
        targets, sources = pa.array(list(aliases), pa.string()), pa.array(list(aliases.values()), pa.string())
        alias_ids = ids[pc.index_in(sources, value_set=vocabulary).to_numpy(zero_copy_only=False).astype(np.int64)]
        keep = pc.invert(pc.is_in(vocabulary, value_set=targets))
        values = pa.concat_arrays([targets, vocabulary.filter(keep)])
        return values, np.concatenate([alias_ids, ids[keep.to_numpy(zero_copy_only=False)]])

    def fitted(self, mappings: Mapping[str, Mapping[str, str]] | None = None) -> Fitted:
        """What ``encode_table`` encodes with (``mdrec.data.ingest.Fitted``): the vocabularies, each field's
        :meth:`lookup` with its mapping (target value -> source value), the scalers and the domains."""
        mappings = mappings or {}
        return Fitted(
            vocabularies=self.vocabularies,
            lookups={f: self.lookup(f, mappings.get(f)) for f in self.schema.sparse_names},
            scalers=self.scalers,
            domains=self.schema.domains,
        )


def read_mapping(path: str | Path, name: str, encoding: Encoding) -> dict[str, str]:
    """The mapping of sparse field ``name`` in the CSV file ``path``: a header ``target_value,source_value``, then
    one row per code of the new data (target value) and the run's value it means (source value), compared as strings.

    Raises:
        AlignmentError: ``name`` is not a sparse field, the file does not read as such a CSV, or a value is empty.
        DuplicateTargetValuesError: a target value is mapped more than once (the error lists them with their rows).
        UnknownSourceValuesError: a source value is not in the run's vocabulary of ``name`` (listed with their rows).
    """
    path = Path(path)
    if name not in encoding.schema.sparse_names:
        raise AlignmentError(
            f"mapping file {path} is given for {name!r}, which is not a sparse field of the run's schema "
            f"{encoding.schema.sparse_names}"
        )
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(MAPPING_COLUMNS, pa.string()), strings_can_be_null=True, null_values=[""]
            ),
        )
    except (pa.ArrowException, OSError) as error:
        raise AlignmentError(
            f"mapping file {path} of field {name!r} does not read as CSV ({error}); it must be UTF-8 text with the "
            f"header {','.join(MAPPING_COLUMNS)}, then one row per code"
        ) from None
    if table.column_names != list(MAPPING_COLUMNS):
        raise AlignmentError(
            f"mapping file {path} of field {name!r} has the columns {table.column_names}; it must have exactly "
            f"{list(MAPPING_COLUMNS)}: the new data's code, then the run's value it means"
        )
    targets, sources = (table.column(c).to_pylist() for c in MAPPING_COLUMNS)
    # rows are numbered after the header, 1 for the first, blank lines not counted (the CSV reader skips them)
    empty = [i + 1 for i, (t, s) in enumerate(zip(targets, sources, strict=True)) if t is None or s is None]
    if empty:
        raise AlignmentError(f"mapping file {path} of field {name!r}: empty value(s) in row(s) {empty[:SHOWN]}")
    rows: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        rows.setdefault(t, []).append(i + 1)
    duplicated = {t: ls for t, ls in rows.items() if len(ls) > 1}
    if duplicated:
        shown = "; ".join(f"{t!r} in rows {ls}" for t, ls in list(duplicated.items())[:SHOWN])
        raise DuplicateTargetValuesError(
            f"mapping file {path} of field {name!r} maps {len(duplicated)} target value(s) more than once: {shown}. "
            "Each code of the new data must mean one value: keep one row per target_value"
        )
    known = set(encoding.vocabularies[name])
    unknown = [(i + 1, s) for i, s in enumerate(sources) if s not in known]
    if unknown:
        shown = ", ".join(f"{s!r} (row {row})" for row, s in unknown[:SHOWN])
        raise UnknownSourceValuesError(
            f"mapping file {path} of field {name!r}: {len(unknown)} source value(s) are not in the run's vocabulary of "
            f"{name!r} ({len(known)} values, e.g. {sorted(known)[:SHOWN]}): {shown}. Map onto values the run knows "
            "(compared as strings: '7' and '7.0' differ), or drop those rows (their codes then encode as unknown, id 0)"
        )
    return dict(zip(targets, sources, strict=True))


def coverage(values: pa.Array | pa.ChunkedArray, encoding: Encoding, name: str, aliases: Mapping[str, str]) -> dict:
    """How the raw ``values`` of sparse field ``name`` encode: the share of rows matched exactly (a value of the
    run's vocabulary that it trained, not redefined by the mapping), through the mapping (``aliases``), not at all
    (``unknown``: id 0) or missing (null), the same shares of the distinct values (nulls left out), and
    ``coverage``, the share of the rows with a value that get an id (exact + mapped)."""
    lookup, ids = encoding.lookup(name, aliases)
    mapped_end = len(aliases)  # lookup positions 1..len(aliases) are the aliases

    def shares(column: pa.Array | pa.ChunkedArray) -> dict[str, float]:
        n = len(column)
        position = encode_ids(column, lookup).astype(np.int64)  # 0: not in the lookup (or null)
        missing = pc.is_null(column, nan_is_null=True).to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
        resolved = np.concatenate([[0], ids])[position] > 0  # an unseen id counts as unknown
        mapped = resolved & (position >= 1) & (position <= mapped_end)
        exact = resolved & (position > mapped_end)
        counts = {"exact": exact.sum(), "mapped": mapped.sum(), "unknown": (~resolved & ~missing).sum()}
        return {k: float(v / n) if n else math.nan for k, v in {**counts, "missing": missing.sum()}.items()}

    rows = shares(values)
    distinct = pc.drop_null(pc.unique(values))
    if pa.types.is_floating(distinct.type):
        distinct = distinct.filter(pc.invert(pc.is_nan(distinct)))
    values_share = shares(distinct)
    del values_share["missing"]
    present = 1.0 - rows["missing"]
    value = (rows["exact"] + rows["mapped"]) / present if present > 0 else math.nan
    return {"coverage": value, "rows": rows, "values": values_share}


@dataclass
class AlignedSource:
    """Files encoded with the encoding of the run ``run`` (:class:`Encoding`), through mapping files per field.

    The files hold the run's schema columns (sparse, dense, domain and label columns by their names; other columns
    are ignored). The run's domains keep their ids; the files' other domains come after them (``domains``: which
    ones, in this order; None: every other domain value of the training rows, sorted). Preparing writes the coverage
    of every new domain's training rows per sparse field into ``report.json`` (``alignment``, :func:`coverage`).

    Args:
        name: the data set id (prepared data are cached under ``<name>-<hash>``).
        run: the run directory whose ``encoding.json`` encodes the files (a stage=adapt or onboard run).
        data_files, train_files, val_files, test_files, delimiter, max_train_overlap: the files, as
            ``mdrec.data.sources.tabular.TabularSource`` takes them.
        mappings: per sparse field, a mapping file (:func:`read_mapping`): the files' codes -> the run's values.
        domains: the domain values to accept beyond the run's, in id order (None: those of the training rows).
        time: an integer time column of the files (for a temporal split), or None.
        sequence_delimiter: the separator of the sequence column when it holds delimited strings (None: lists).

    Example:
        >>> vocab = {"user_id": [f"u{i}" for i in range(1, 10)], "movie_id": [f"m{i}" for i in range(1, 20)],
        ...          "genre": ["a", "b", "c", "d"]}
        >>> Encoding(schema, vocab, scalers={"age": (0.0, 1.0)}).save(tmp_dir / "run")
        >>> RunDir(tmp_dir / "run").write_json(RunDir.DATA_REPORT, {"domains": list(schema.domains)})  # as a run has
        >>> _ = (tmp_dir / "p.csv").write_text("user_id,movie_id,genre,age,domain,click\\nu1,m2,G3,0.5,new,1\\n")
        >>> _ = (tmp_dir / "g.csv").write_text("target_value,source_value\\nG3,c\\n")
        >>> src = AlignedSource("partner", str(tmp_dir / "run"), data_files=str(tmp_dir / "p.csv"),
        ...                     mappings={"genre": str(tmp_dir / "g.csv")})
        >>> src.prepare(tmp_dir / "partner", tmp_dir / "raw")
        >>> store = ColumnStore(tmp_dir / "partner")
        >>> store.schema.domains, [int(store.column(c)[0]) for c in ("user_id", "movie_id", "genre", "domain")]
        (('d0', 'd1', 'd2', 'new'), [1, 2, 3, 3])
    """

    name: str
    run: str
    data_files: str | Sequence[str] | None = None
    train_files: str | Sequence[str] | None = None
    val_files: str | Sequence[str] | None = None
    test_files: str | Sequence[str] | None = None
    delimiter: str | None = None
    max_train_overlap: float = 0.5
    mappings: dict[str, str] | None = None
    domains: Sequence[str] | None = None
    time: str | None = None
    sequence_delimiter: str | None = None

    def __post_init__(self) -> None:
        self.run = str(self.run)
        self.mappings = {str(k): str(v) for k, v in (self.mappings or {}).items()}
        self.domains = [str(d) for d in self.domains] if self.domains is not None else None
        self.encoding = Encoding.of_run(self.run)
        self.files = TabularSource(
            self.name,
            self.encoding.spec(self.domains, self.time, self.sequence_delimiter),
            data_files=self.data_files,
            train_files=self.train_files,
            val_files=self.val_files,
            test_files=self.test_files,
            delimiter=self.delimiter,
            max_train_overlap=self.max_train_overlap,
        )
        for f in self.mappings:
            if f not in self.encoding.schema.sparse_names:
                raise AlignmentError(
                    f"data.source.mappings names {f!r}, which is not a sparse field of the run {self.run}: "
                    f"{self.encoding.schema.sparse_names}"
                )

    @property
    def dataset_id(self) -> str:
        return self.name

    def input_signature(self) -> list:
        """The files', the run encoding's and the mapping files' paths, sizes and modification times (part of the
        cache fingerprint: editing any of them prepares the data again)."""
        own = [RunDir(Path(self.run)).file(RunDir.ENCODING), *(Path(p) for p in self.mappings.values())]
        return [*self.files.input_signature(), *file_signature(own)]

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Read the mappings, measure the coverage of every new domain, encode the files and write the store."""
        mappings = {f: read_mapping(path, f, self.encoding) for f, path in self.mappings.items()}
        try:
            raw = self.files.read(raw_dir)
        except MissingColumnsError as error:
            raise MissingSchemaColumnsError(
                f"{error}. The new data must hold every column of the schema of the run {self.run} (its sparse, "
                "dense, domain and label columns): add the missing ones (an empty column encodes as unknown, id 0, "
                "for a sparse field; a dense column must hold numbers)"
            ) from None
        report = self.alignment_report(raw, mappings)
        encoded = self.files.encode_rows(raw, self.encoding.fitted(mappings))  # the files as read above
        encoded.report["alignment"] = report
        encoded.write(directory)

    def alignment_report(self, raw: RawRows, mappings: Mapping[str, Mapping[str, str]]) -> dict:
        """The run's and the new domains, the training rows of each new domain and, per new domain and sparse field,
        :func:`coverage` on those rows."""
        table = raw.rows
        domain = table.column(self.encoding.schema.domain_field).cast(pa.string())
        train = np.ones(table.num_rows, bool) if raw.split is None else raw.split == 0
        values = set(pc.unique(domain.filter(pa.array(train))).to_pylist()) - {None}
        known = self.encoding.schema.domains
        candidates = self.domains if self.domains is not None else sorted(values)
        new = [d for d in candidates if d not in known]
        out: dict[str, Any] = {"run": self.run, "known_domains": list(known), "new_domains": new, "train_rows": {}}
        out["coverage"] = {}
        for d in new:
            mask = train & np.asarray(pc.equal(domain, d).to_numpy(), dtype=bool)
            rows = pa.array(mask)
            out["train_rows"][d] = int(mask.sum())
            out["coverage"][d] = {
                f: coverage(table.column(f).filter(rows), self.encoding, f, mappings.get(f, {}))
                for f in self.encoding.schema.sparse_names
            }
        return out


def coverage_table(report: Mapping[str, Any]) -> str:
    """The ``alignment`` report of a prepared store as a markdown table: a row per new domain and field."""
    lines = [
        "| domain | field | coverage | rows exact | rows mapped | rows unknown | rows missing | values exact "
        "| values mapped | values unknown |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d, fields in report.get("coverage", {}).items():
        for f, c in fields.items():
            r, v = c["rows"], c["values"]
            lines.append(
                f"| {d} | {f} | {c['coverage']:.1%} | {r['exact']:.1%} | {r['mapped']:.1%} | {r['unknown']:.1%} "
                f"| {r['missing']:.1%} | {v['exact']:.1%} | {v['mapped']:.1%} | {v['unknown']:.1%} |"
            )
    return "\n".join(lines)
