"""The schema: every field of a prepared data set named once, saved as ``schema.json`` beside its columns.

Vocabulary sizes live here (with the data), never in YAML. Id 0 of every sparse and sequence field is reserved
for padding and for values unseen when the vocabulary was built.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA_FILE = "schema.json"
SCHEMA_VERSION = 1
MAX_VOCAB = 2**31 - 1  # ids are stored as int32


@dataclass(frozen=True)
class SparseField:
    """A categorical field with one id per row.

    Args:
        name: column name.
        vocab_size: number of ids including the reserved id 0 (padding / out of vocabulary).
    """

    name: str
    vocab_size: int


@dataclass(frozen=True)
class SequenceField:
    """A padded list of ids per row (e.g. a user's last items), stored as an ``[rows, max_len]`` column.

    Args:
        name: column name.
        vocab_field: the sparse field whose vocabulary (and embedding table) the ids share.
        max_len: L, the padded length; ids sit left-aligned, padding is 0.
    """

    name: str
    vocab_field: str
    max_len: int


@dataclass(frozen=True)
class Schema:
    """What a prepared data set holds.

    Args:
        dataset_id: names the data set and its preparation (a mismatch on load is an error).
        sparse: categorical fields, in the column order of ``Batch.sparse``.
        dense: float fields, in the column order of ``Batch.dense``.
        domain_field: name of the domain column.
        domains: domain names; a row's domain id is its index here (0..K-1).
        labels: label columns, in the column order of ``Batch.labels`` (click first, then conversion).
        sequence: optional sequence field (``Batch.seq``).
        user_field: sparse field that identifies a user (GAUC groups by it); None if there is none.
        time_column: integer timestamp column used by temporal splits; None if there is none.
        oracle_columns: per label, the column holding each row's true probability (synthetic data only).
        has_split_column: the data came with its own train/val/test assignment (column ``split``).

    Example:
        >>> s = Schema("toy", (SparseField("user", 11),), ("age",), "region", ("north", "south"), ("click",))
        >>> s.num_domains, s.sparse_names
        (2, ['user'])
    """

    dataset_id: str
    sparse: tuple[SparseField, ...]
    dense: tuple[str, ...]
    domain_field: str
    domains: tuple[str, ...]
    labels: tuple[str, ...]
    sequence: SequenceField | None = None
    user_field: str | None = None
    time_column: str | None = None
    oracle_columns: dict[str, str] = field(default_factory=dict)
    has_split_column: bool = False

    def __post_init__(self) -> None:
        if not self.domains:
            raise ValueError(f"schema {self.dataset_id!r}: `domains` is empty; a data set needs at least one domain")
        if not self.labels:
            raise ValueError(f"schema {self.dataset_id!r}: `labels` is empty; name at least one label column")
        if not self.sparse and not self.dense:
            raise ValueError(f"schema {self.dataset_id!r}: no sparse and no dense fields; name at least one feature")
        names = [*self.sparse_names, *self.dense, *self.labels, self.domain_field, *self.oracle_columns.values()]
        if self.sequence is not None:
            names.append(self.sequence.name)
        if self.time_column is not None:
            names.append(self.time_column)
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(
                f"schema {self.dataset_id!r}: column(s) {duplicated} are used more than once "
                "(as a feature, label, domain, time or oracle column); each column plays one role. "
                "A label used as a feature would leak the answer into the model."
            )
        for f in self.sparse:
            if not 1 <= f.vocab_size <= MAX_VOCAB:
                raise ValueError(
                    f"schema {self.dataset_id!r}: sparse field {f.name!r} has vocab_size {f.vocab_size}; it must be in "
                    f"1..{MAX_VOCAB} (ids are stored as int32: hash or bucket larger id spaces)"
                )
        if self.sequence is not None and self.sequence.vocab_field not in self.sparse_names:
            raise ValueError(
                f"schema {self.dataset_id!r}: sequence {self.sequence.name!r} shares the vocabulary of "
                f"{self.sequence.vocab_field!r}, which is not a sparse field ({self.sparse_names})"
            )
        if self.user_field is not None and self.user_field not in self.sparse_names:
            raise ValueError(
                f"schema {self.dataset_id!r}: user_field {self.user_field!r} is not a sparse field "
                f"({self.sparse_names})"
            )
        unknown = sorted(set(self.oracle_columns) - set(self.labels))
        if unknown:
            raise ValueError(f"schema {self.dataset_id!r}: oracle columns for unknown labels {unknown}")

    @property
    def num_domains(self) -> int:
        """K, the number of domains."""
        return len(self.domains)

    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.sparse]

    def sparse_index(self, name: str) -> int:
        """Column of ``name`` in ``Batch.sparse``; raises naming the available fields."""
        if name not in self.sparse_names:
            raise KeyError(f"{name!r} is not a sparse field of {self.dataset_id!r}; fields: {self.sparse_names}")
        return self.sparse_names.index(name)

    def columns(self) -> list[str]:
        """Every column file a prepared store of this schema must hold."""
        cols = [
            *self.sparse_names,
            *self.dense,
            self.domain_field,
            *self.labels,
            *self.oracle_columns.values(),
        ]
        if self.sequence is not None:
            cols += [self.sequence.name, seq_length_column(self.sequence.name)]
        if self.time_column is not None:
            cols.append(self.time_column)
        if self.has_split_column:
            cols.append(SPLIT_COLUMN)
        return cols

    def to_json(self) -> dict:
        return {"version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, obj: dict) -> Schema:
        obj = dict(obj)
        version = obj.pop("version", None)
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema version {version!r} is not {SCHEMA_VERSION}; re-prepare the data")
        seq = obj.pop("sequence", None)
        return cls(
            **{k: v for k, v in obj.items() if k not in ("sparse", "dense", "domains", "labels")},
            sparse=tuple(SparseField(**f) for f in obj["sparse"]),
            dense=tuple(obj["dense"]),
            domains=tuple(obj["domains"]),
            labels=tuple(obj["labels"]),
            sequence=SequenceField(**seq) if seq is not None else None,
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / SCHEMA_FILE
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Schema:
        path = Path(directory) / SCHEMA_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {SCHEMA_FILE} in {directory}: prepare the data set first")
        return cls.from_json(json.loads(path.read_text()))


SPLIT_COLUMN = "split"
SPLIT_NAMES = ("train", "val", "test")


def seq_length_column(name: str) -> str:
    """Name of the column that holds the true length of each row's sequence."""
    return f"{name}__length"
