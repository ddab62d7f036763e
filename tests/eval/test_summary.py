"""Sweep summaries: runs found with their overrides, grouped, mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mdrec.eval.summary import cell, comparison_table, group_runs, load_runs
from mdrec.eval.sweep import settings_lines


def fake_run(
    root: Path, name: str, overrides: list[str], metrics: dict[str, float], config: dict | None = None
) -> None:
    (root / name / ".hydra").mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    (root / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if config is not None:
        (root / name / "config.yaml").write_text(yaml.safe_dump(config))


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


def test_a_run_inside_a_run_is_not_a_run_of_the_sweep(tmp_path: Path) -> None:
    """A baseline= run (or W&B's copies) inside a job counts for nothing: not beside its finished job, and not in
    place of a job that failed after its baseline finished."""
    fake_run(tmp_path, "0", ["seed=0"], {"test/auc": 0.80})
    fake_run(tmp_path / "0", "baseline", [], {"test/auc": 0.81})
    fake_run(tmp_path, "1", ["seed=1"], {"test/auc": 0.82})
    (tmp_path / "1" / "metrics.json").unlink()
    (tmp_path / "1" / "failure.json").write_text(json.dumps({"error": "ValueError: later"}))
    fake_run(tmp_path / "1", "baseline", [], {"test/auc": 0.83})
    assert [r.metrics["test/auc"] for r in load_runs(tmp_path)] == [0.80]
    assert [r.metrics["test/auc"] for r in load_runs(tmp_path / "0")] == [0.80]


def test_comparison_table_has_a_row_per_group(tmp_path: Path) -> None:
    fake_run(tmp_path, "0", ["model=mmoe", "seed=0"], {"test/auc": 0.80, "test/auc/a": 0.7})
    fake_run(tmp_path, "1", ["model=mmoe", "seed=1"], {"test/auc": 0.84, "test/auc/a": 0.9})
    fake_run(tmp_path, "2", ["model=star", "seed=0"], {"test/auc": 0.75})
    table = comparison_table(group_runs(load_runs(tmp_path), ["model"]), ["model"], ["test/auc", "test/auc/a"])
    assert table.splitlines() == [
        "| model | runs | test/auc | test/auc/a |",
        "|---|---|---|---|",
        "| mmoe | 2 | 0.8200 ± 0.0283 | 0.8000 ± 0.1414 |",
        "| star | 1 | 0.7500 | n/a |",  # one run: its value, no spread
    ]


def test_a_report_states_the_settings_its_runs_share(tmp_path: Path) -> None:
    def config(name: str, net: str, units: int, epochs: int) -> dict:
        return {
            "seed": int(name),
            "data": {"source": {"num_rows": 4000, "seed": int(name)}, "batch_size": 512},
            "trainer": {"max_epochs": epochs, "limit_train_batches": None, "default_root_dir": str(tmp_path / name)},
            "model": {"net": {"_target_": net, "units": units}},
            "paths": {"output_dir": str(tmp_path / name)},
            "callbacks": {"model_checkpoint": {"dirpath": str(tmp_path / name / "checkpoints")}},
        }

    metrics = {"test/auc": 0.8, "test/rows/a": 300, "test/rows/b": 100, "train/epochs": 2}
    fake_run(tmp_path, "0", ["model=mmoe", "seed=0"], metrics, config("0", "MMoE", 8, 2))
    fake_run(tmp_path, "1", ["model=star", "seed=1"], {**metrics, "train/epochs": 1}, config("1", "STAR", 16, 2))
    fake_run(tmp_path, "2", ["model=star", "seed=2"], metrics, config("2", "STAR", 16, 3))  # a longer run slipped in
    fake_run(tmp_path, "3", ["model=star", "seed=3"], metrics)  # no config.yaml
    assert settings_lines(load_runs(tmp_path)) == [
        "## Settings",
        "",
        "From the runs' config.yaml and metrics.json.",
        "1 of the 4 runs record no config.yaml.",
        "",
        "| setting | value |",
        "|---|---|",
        "| data.source.num_rows | 4000 |",
        "| data.batch_size | 512 |",
        "| trainer.max_epochs | 2 / 3 |",
        "| trainer.limit_train_batches | null |",
        "| model.net._target_ | MMoE / STAR |",
        "| test rows | 400 |",
        "| epochs trained | 1 to 2 |",
        "",
        # the seeds and each run's own directories are no difference
        "Other config values that differ between runs: model.net.",
    ]
