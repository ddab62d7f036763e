"""The Optuna search (`hparams_search=optuna`) resumed from its SQLite storage, as the README shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_a_search_resumes_from_its_sqlite_storage(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")  # the `sweep` / `dev` extra
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def search(trials: int, seed: int, sweep: str) -> None:
        command = [
            *(sys.executable, "-m", "mdrec.train", "hparams_search=optuna", "debug=fdr", "data.source.num_rows=4000"),
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=resumed",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.sampler.seed={seed}",
            f"hydra.sweep.dir={tmp_path / sweep}",
        ]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]  # SQLAlchemy 2 under Optuna 2.x: a bare AssertionError

    search(2, 1, "first")
    search(1, 2, "resumed")  # the same storage and study name: one more trial in the same study
    trials = optuna.load_study(study_name="resumed", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len({t.params["model.optimizer.lr"] for t in trials}) == 3  # its own seed: not a repeat of trial 0
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir() if p.is_dir()) == ["0"]
