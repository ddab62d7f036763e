"""``mdrec.data.sources.raw.download`` (pooch) against a loopback HTTP server: the real downloader, no network."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mdrec.data.sources import raw


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class names it so)
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served at ``http://127.0.0.1:<port>/`` for the test's duration: ``(folder, base URL)``."""
    folder = tmp_path / "site"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_checks_md5_caches_and_replaces(tmp_path: Path, site: tuple[Path, str]) -> None:
    folder, base = site
    data = b"a release, byte for byte\n" * 1000
    (folder / "release.zip").write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    target = tmp_path / "raw" / "release.zip"
    assert raw.download(f"{base}/release.zip", target, md5) == target and target.read_bytes() == data
    (folder / "release.zip").write_bytes(b"changed on the server")
    assert raw.download(f"{base}/release.zip", target, md5).read_bytes() == data  # cached: not fetched again
    target.write_bytes(data[:-1])  # a damaged cached copy is fetched again (and now fails its check)
    (target.parent / ".release.zip.tmp-999999999-00000000-00000000").mkdir()  # another host's: kept
    with pytest.raises(ValueError, match=rf"{re.escape(base)}/release\.zip: MD5 hash .* expected md5:{md5}"):
        raw.download(f"{base}/release.zip", target, md5)
    left = sorted(p.name for p in target.parent.iterdir())
    assert left == [".release.zip.tmp-999999999-00000000-00000000", "release.zip"]  # no temporary of its own left
    assert target.read_bytes() == data[:-1]  # the damaged copy is not replaced by other wrong bytes


def test_download_of_a_missing_file_is_an_os_error(tmp_path: Path, site: tuple[Path, str]) -> None:
    _, base = site
    with pytest.raises(OSError, match="404"):
        raw.download(f"{base}/nowhere.zip", tmp_path / "nowhere.zip", "0" * 32)
    assert not list(tmp_path.glob("*.zip"))
