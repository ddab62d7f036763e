"""What every data source provides: a stable fingerprint and a ``prepare`` that writes a column store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

# Bump when the prepared format or any source's preparation changes, so stale caches are rebuilt.
PREPARE_VERSION = 2


@runtime_checkable
class Source(Protocol):
    """A data set that can prepare itself into a column store (``mdrec.data.store.write_store``)."""

    @property
    def dataset_id(self) -> str:
        """Short name of the prepared data set, e.g. ``ml1m`` or ``synthetic``."""
        ...

    def prepare(self, directory: Path, raw_dir: Path) -> None:
        """Write the prepared store to ``directory``; raw downloads may be cached under ``raw_dir``."""
        ...


def fingerprint(source: object) -> str:
    """A short hash of a (dataclass) source's settings: prepared data is cached under ``<dataset_id>-<hash>``.

    A source that reads user files also defines ``input_signature()`` (e.g. each file's path, size and
    modification time), so editing a file in place prepares the data again.
    """
    if not is_dataclass(source):
        raise TypeError(f"{type(source).__name__} must be a dataclass so its settings can be fingerprinted")
    signature = source.input_signature() if hasattr(source, "input_signature") else None
    payload = json.dumps(
        {"type": type(source).__qualname__, "v": PREPARE_VERSION, "inputs": signature, **asdict(source)},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:10]
