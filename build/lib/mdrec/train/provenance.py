"""What a run records about where it came from: seed, package versions, the code's git commit, the command."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("mdrec", "torch", "pytorch-lightning", "hydra-core", "omegaconf", "torchmetrics", "numpy", "datasets")


def git_state(directory: Path) -> dict[str, str | bool | None]:
    """``commit`` (None outside a git checkout) and ``dirty`` (uncommitted changes to tracked files)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory, capture_output=True, text=True, check=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def provenance(seed: int) -> dict[str, object]:
    """The run's seed, Python and package versions, the git state of the mdrec source, and the command line."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "seed": seed,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git": git_state(Path(__file__).resolve().parent),
        "command": sys.argv,
    }
