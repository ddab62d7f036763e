"""Fixtures of the data tests: downloads served from memory (no network)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pooch
import pytest
import requests


@dataclass
class Served:
    """What the fake HTTP answers: ``data`` for every URL (None: a connection error); ``urls`` records the requests
    and ``timeouts`` the timeout each downloader was made with."""

    data: bytes | None = None
    urls: list[str] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Served:
    """``pooch.HTTPDownloader`` (what ``mdrec.data.sources.raw.download`` fetches through) replaced by one that
    writes ``Served.data``: pooch's checksum, temporary file and caching logic run as they are."""
    served = Served()

    class Downloader:
        def __init__(self, progressbar: bool = False, chunk_size: int = 1024, **kwargs: object) -> None:
            served.timeouts.append(kwargs.get("timeout"))

        def __call__(self, url: str, output_file: str, pooch: object) -> None:
            served.urls.append(url)
            if served.data is None:
                raise requests.ConnectionError(f"{url}: no network in the tests")
            Path(output_file).write_bytes(served.data)

    monkeypatch.setattr(pooch, "HTTPDownloader", Downloader)
    return served
