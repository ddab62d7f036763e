"""File names and temporary files of the data layer.

- **Names** that become one file or directory name (a data set id in ``<data_dir>/<id>-<hash>``, a column in
  ``columns/<name>.npy``) must be plain file names (``is_plain_file_name``): never a path that leads elsewhere.
- **Temporaries**: everything the data layer writes goes first to ``temporary_path(target)``, a hidden sibling
  ``.<target name>.tmp-<pid>-<host>-<random>``, renamed onto the target when complete. A killed process leaves its
  temporary behind; the next writer into that directory removes it (``remove_stale_temporaries``): only those of
  processes of this host that are gone, never a live process's, never another host's (a shared file system).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 250
PLAIN_FILE_NAME = "a plain file name: not empty, not '.' or '..', no '/', '\\' or NUL, at most 250 bytes"
HOST_KEY = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # names this host in temporaries
_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$")


def is_plain_file_name(name: str) -> bool:
    """Whether ``name`` names one entry of a directory (``PLAIN_FILE_NAME``), so that joining it to the directory
    stays inside it.

    Example:
        >>> [is_plain_file_name(n) for n in ("shop", "ml-1m.v2", "../x", "/abs", "..", "")]
        [True, True, False, False, False, False]
    """
    too_long = len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
    return name not in ("", ".", "..") and not set(name) & set("/\\\0") and not too_long


def check_dataset_id(name: str, option: str) -> None:
    """Raise unless the data set id ``name`` (set by ``option``) is a plain file name: prepared data go to
    ``<data_dir>/<name>-<hash>``, so ``../x`` or an absolute path would write them outside ``data_dir``."""
    if not is_plain_file_name(str(name)):
        raise ValueError(
            f"{option} {name!r} cannot name the prepared data (<data_dir>/<name>-<hash>): it would write outside "
            f"data_dir or nowhere; use {PLAIN_FILE_NAME}, e.g. 'shop'"
        )


def temporary_path(target: Path) -> Path:
    """The hidden sibling of ``target`` that this process writes before renaming it onto ``target``.

    Example:
        >>> temporary_path(Path("data/synthetic-0a1b")).name.startswith(f".synthetic-0a1b.tmp-{os.getpid()}-")
        True
    """
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{HOST_KEY}-{secrets.token_hex(4)}")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove the temporaries (``temporary_path``) in ``directory`` whose process, on this host, is gone.

    A temporary of a live process (its pid answers ``kill(pid, 0)``, a recycled pid included) or of another host is
    kept. Returns the paths removed; nothing when ``directory`` does not exist or the platform is not POSIX.
    """
    if os.name != "posix" or not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or match["host"] != HOST_KEY or _alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        log.info("removed %s, left behind by process %s, which is gone", path, match["pid"])
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but is not ours, or cannot be asked: keep its files
    return True
