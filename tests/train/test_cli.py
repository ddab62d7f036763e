"""The command line as the README shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_a_multirun_needs_no_sweep_dir(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mdrec.train", "-m", "seed=0,1", "debug=fdr", "data.source.num_rows=4000"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.parent.name for p in (tmp_path / "logs" / "debug" / "multiruns").glob("*/*/metrics.json"))
    assert runs == ["0", "1"]  # under the directory it was launched from
