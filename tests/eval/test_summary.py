"""Sweep summaries: runs found with their overrides, grouped, mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

from mdrec.eval.summary import cell, comparison_table, group_runs, load_runs


def fake_run(root: Path, name: str, overrides: list[str], metrics: dict[str, float]) -> None:
    (root / name / ".hydra").mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    (root / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


def test_runs_grouped_by_override(tmp_path: Path) -> None:
    fake_run(tmp_path, "0", ["model=mmoe", "seed=0"], {"test/auc": 0.80, "test/auc/a": 0.7})
    fake_run(tmp_path, "1", ["model=mmoe", "seed=1"], {"test/auc": 0.84, "test/auc/a": 0.9})
    fake_run(tmp_path, "2", ["model=star", "seed=0"], {"test/auc": 0.75})
    runs = load_runs(tmp_path)
    assert [r.overrides["seed"] for r in runs] == ["0", "1", "0"]
    groups = group_runs(runs, ["model"])
    assert list(groups) == [("mmoe",), ("star",)]
    cells = [cell(groups[("mmoe",)], key) for key in ("test/auc", "test/auc/a", "test/auc/b")]
    assert cells == ["0.8200 ± 0.0283", "0.8000 ± 0.1414", "n/a"]


def test_comparison_table_has_a_row_per_group(tmp_path: Path) -> None:
    fake_run(tmp_path, "0", ["model=mmoe", "seed=0"], {"test/auc": 0.80, "test/auc/a": 0.7})
    fake_run(tmp_path, "1", ["model=mmoe", "seed=1"], {"test/auc": 0.84, "test/auc/a": 0.9})
    fake_run(tmp_path, "2", ["model=star", "seed=0"], {"test/auc": 0.75})
    table = comparison_table(group_runs(load_runs(tmp_path), ["model"]), ["model"], ["test/auc", "test/auc/a"])
    assert table.splitlines() == [
        "| model | runs | test/auc | test/auc/a |",
        "|---|---|---|---|",
        "| mmoe | 2 | 0.8200 ± 0.0283 | 0.8000 ± 0.1414 |",
        "| star | 1 | 0.7500 ± 0.0000 | n/a |",
    ]
