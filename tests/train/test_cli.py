"""The command line as the README shows it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mdrec


def mdrec_train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m mdrec.train *args`` run in ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mdrec.train", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_multirun_needs_no_sweep_dir(tmp_path: Path) -> None:
    done = mdrec_train(tmp_path, "-m", "seed=0,1", "debug=fdr", "data.source.num_rows=4000")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.parent.name for p in (tmp_path / "logs" / "debug" / "multiruns").glob("*/*/metrics.json"))
    assert runs == ["0", "1"]  # under the directory it was launched from


@pytest.mark.slow
def test_a_config_dir_of_ones_own_layers_on_the_packaged_tree(tmp_path: Path) -> None:
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    mine = "# @package _global_\nseed: 7\ntask_name: mine\ntags: [mine]\n"
    (tmp_path / "my_conf" / "experiment" / "mine.yaml").write_text(mine)
    done = mdrec_train(tmp_path, "--config-dir", "my_conf", "experiment=mine", "debug=fdr")
    assert done.returncode == 0, done.stderr[-3000:]
    (config,) = (tmp_path / "logs").glob("*/runs/*/config.yaml")
    assert "seed: 7" in config.read_text().splitlines()


@pytest.mark.slow
def test_a_non_editable_install_trains_from_another_directory(tmp_path: Path) -> None:
    repository = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info/ beside the sources
    top_level = {".git", ".venv", "logs", "data", "pretrained", "build", "mdrec.egg-info"}  # not sources
    shutil.copytree(repository, source, ignore=lambda d, names: top_level & set(names) if Path(d) == repository else [])
    run = lambda *args, **kw: subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)  # noqa: E731
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, source)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("mdrec-*.whl")
    site = tmp_path / "site"
    installed = run(sys.executable, "-m", "pip", "install", "--no-deps", "--target", site, wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    script = (
        "import mdrec, runpy, sys; print(mdrec.__file__, file=sys.stderr); "
        "runpy.run_module('mdrec.train', run_name='__main__')"
    )
    done = run(sys.executable, "-c", script, "debug=fdr", f"hydra.run.dir={tmp_path / 'run'}", cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(site) in done.stderr  # the installed copy ran, not the repository's
    assert (tmp_path / "run" / "metrics.json").exists() and (elsewhere / "data").is_dir()


def test_version_prints_mdrec_s_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mdrec.train", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"mdrec {mdrec.__version__}"
