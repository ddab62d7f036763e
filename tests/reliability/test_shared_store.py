"""Adapt jobs started at the same moment share one pre-trained backbone: exactly one pre-trains, the others wait for
it, and every job ends as a job alone would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = [
    "stage=adapt",
    "adapter=lora",
    "data.source.num_rows=6000",
    "backbone.layer_sizes=[16]",
    "trainer.max_epochs=2",
    "seed=0",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_three_jobs_started_together_pretrain_once(tmp_path: Path) -> None:
    paths = [f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"]
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "mdrec.train", *SMALL, *paths, f"hydra.run.dir={tmp_path / f'job{i}'}"],
            cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    errors = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], [e[-3000:] for e in errors]
    store = sorted(p.name for p in (tmp_path / "pretrained").iterdir())
    (key,) = [name for name in store if not name.endswith(".lock")]  # one backbone, no .partial left
    assert store == [key, f"{key}.lock"]
    pretrained_once = sum("no pre-trained model for this config yet: training it into" in e for e in errors)
    assert pretrained_once == 1
    metrics = [json.loads((tmp_path / f"job{i}" / "metrics.json").read_text()) for i in range(3)]
    for other in metrics[1:]:
        assert (
            other["test/auc"] == metrics[0]["test/auc"]
            and other["zeroshot/test/auc"] == metrics[0]["zeroshot/test/auc"]
        )
