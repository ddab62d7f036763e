"""Sweeps end to end: a Hydra multirun with a failing job, W&B offline run files, and ``mdrec-report``."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from mdrec.eval.cli import report
from mdrec.eval.summary import Run, load_failures, load_runs
from mdrec.eval.sweep import labelled_groups, paired, run_domains, sweep_report

DOMAINS = ["d0", "d1", "d2", "d3"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """2 loss normalisations x 2 seeds that train, and 2 jobs with an invalid value that fail (W&B offline)."""
    root = tmp_path_factory.mktemp("sweep")
    command = [
        sys.executable,
        "-m",
        "mdrec.train",
        "-m",
        "model.loss_normalization=batch,domain,bogus",
        "seed=0,1",
        "debug=limit",
        "data.source.num_rows=20000",
        "data.batch_size=512",
        "logger=many",
        f"paths.root_dir={root}",
        f"hydra.sweep.dir={root / 'sweep'}",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return root / "sweep", done


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_finish(sweep: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, done = sweep
    assert done.returncode != 0  # the sweep reports the failure ...
    runs = load_runs(root)  # ... after every other job ran to the end
    assert sorted((r.overrides["model.loss_normalization"], r.overrides["seed"]) for r in runs) == [
        ("batch", "0"),
        ("batch", "1"),
        ("domain", "0"),
        ("domain", "1"),
    ]
    failures = load_failures(root)
    assert [f.overrides["model.loss_normalization"] for f in failures] == ["bogus", "bogus"]
    assert all("model.loss_normalization='bogus' is not one of 'batch', 'domain'" in f.error for f in failures)
    assert "Traceback" in json.loads((failures[0].path / "failure.json").read_text())["traceback"]


@pytest.mark.slow
def test_every_run_logs_config_per_domain_metrics_params_and_time(
    sweep: tuple[Path, subprocess.CompletedProcess],
) -> None:
    root, _ = sweep
    for run in load_runs(root):
        assert {"params/total", "params/trainable", "time/fit_seconds"} <= run.metrics.keys()
        assert {f"val/auc/{d}" for d in DOMAINS} <= run.metrics.keys()
        hparams = (run.path / "csv" / "version_0" / "hparams.yaml").read_text()  # the resolved config
        assert f"loss_normalization: {run.overrides['model.loss_normalization']}" in hparams
        rows = (run.path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        per_epoch = [r for r in rows[1:] if r.split(",")[header.index("val/auc/d3")]]
        assert len(per_epoch) >= 2  # one row per validation epoch (2 epochs), plus the final figures


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_per_domain_metrics(sweep: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, _ = sweep
    finished = [run.path for run in load_runs(root)]
    wandb_runs = [run_dir for path in finished for run_dir in path.glob("wandb/offline-run-*")]
    assert len(wandb_runs) == 4  # one W&B run per finished job (not one shared by the sweep's process)
    for run_dir in wandb_runs:
        log = next(run_dir.glob("run-*.wandb")).read_bytes()  # the transaction log `wandb sync` uploads
        for d in DOMAINS:
            assert f"val/auc/{d}".encode() in log and f"test/auc/{d}".encode() in log
        metrics = json.loads((run_dir / "files" / "metrics.json").read_text())
        assert metrics == json.loads((run_dir.parents[1] / "metrics.json").read_text())
        (table_file,) = (run_dir / "files" / "media" / "table" / "summary").glob("test_domains_*.table.json")
        table = json.loads(table_file.read_text())
        assert table["columns"][:3] == ["domain", "auc", "logloss"]
        assert [row[0] for row in table["data"]] == [*DOMAINS, "overall"]
        assert table["data"][0][1] == pytest.approx(metrics["test/auc/d0"])
    # a directory of W&B runs reports like the sweep directory
    from_wandb = sorted(run.metrics["test/auc"] for run in load_runs(root.parent / "sweep" / "0" / "wandb"))
    assert from_wandb == [json.loads((root / "0" / "metrics.json").read_text())["test/auc"]]


@pytest.mark.slow
def test_report_tables_and_plots(sweep: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    root, _ = sweep
    out = tmp_path / "report"
    baseline = "model.loss_normalization=batch"
    assert report([str(root), "--baseline", baseline, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "4 finished runs, 2 failed" in text
    runs = load_runs(root)
    groups = labelled_groups(runs, ["model.loss_normalization"])
    for name, group in groups.items():
        auc = np.array([r.metrics["test/auc/d1"] for r in group])
        cell = f"{auc.mean():.4f} ± {auc.std(ddof=1):.4f}"
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | 2 |"))
        assert cell in row
    better = max(groups, key=lambda g: np.mean([r.metrics["test/auc"] for r in groups[g]]))
    row = next(line for line in text.splitlines() if line.startswith(f"| {better} | 2 | "))
    assert row.split(" | ")[2].startswith("**")  # the best overall test AUC is marked
    assert "## Failed runs" in text and text.count("is not one of") == 2
    assert (out / "bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the W&B directories give the same tables
    wandb_out = tmp_path / "wandb_report"
    assert report([*map(str, sorted(root.glob("*/wandb"))), "--out", str(wandb_out), "--domains", *DOMAINS]) == 0
    table = lambda t: t[t.index("## test/auc") : t.index("## test/logloss")]  # noqa: E731
    assert table((wandb_out / "report.md").read_text()) == table(text)


def fake(path: str, seed: int, overrides: dict[str, str], auc: float) -> Run:
    return Run(Path(path), {"test/auc": auc, "test/auc/a": auc, "seed": float(seed)}, {**overrides, "seed": str(seed)})


def test_paired_test_pairs_by_seed() -> None:
    base = [fake("b0", 0, {}, 0.70), fake("b1", 1, {}, 0.72), fake("b2", 2, {}, 0.71)]
    other = [fake("o2", 2, {"m": "x"}, 0.73), fake("o0", 0, {"m": "x"}, 0.705), fake("o1", 1, {"m": "x"}, 0.74)]
    result = paired(other, base, "test/auc", "x", "base")
    assert result is not None and result.n == 3 and result.better == 3
    assert result.mean == pytest.approx(np.mean([0.005, 0.02, 0.02]))
    assert result.p == pytest.approx(stats.ttest_rel([0.705, 0.74, 0.73], [0.70, 0.72, 0.71]).pvalue)
    with pytest.raises(ValueError, match="two runs with seed 0"):
        paired([*other, fake("o0b", 0, {"m": "x"}, 0.7)], base, "test/auc", "x", "base")
    groups = labelled_groups([*base, *other], ["m"], {"m=x": "X"})
    text = sweep_report([*base, *other], [], ["test/auc"], ["a"], groups, baseline="X")
    assert "| default | -0.0150 ± 0.0087 (p 0.095, 0/3) | -0.0150 ± 0.0087 (p 0.095, 0/3) |" in text


def test_curve_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i, (k, seed, auc) in enumerate([(2, 0, 0.70), (2, 1, 0.71), (8, 0, 0.75), (8, 1, 0.74)]):
        run = tmp_path / "runs" / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- data.source.num_domains={k}\n- seed={seed}\n")
        (run / "metrics.json").write_text(json.dumps({"test/auc": auc, "seed": seed}))
    out = tmp_path / "out"
    assert (
        report([str(tmp_path / "runs"), "--x", "data.source.num_domains", "--name", "default=DNN", "--out", str(out)])
        == 0
    )
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()  # the tables keep x apart, the curve has it along its axis
    assert "| DNN, data.source.num_domains=2 | 2 |" in text and "| DNN, data.source.num_domains=8 | 2 |" in text
    run = tmp_path / "runs" / "4"  # a run at the default number of domains (no override)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    (run / "metrics.json").write_text(json.dumps({"test/auc": 0.76, "seed": 2}))
    assert report([str(tmp_path / "runs"), "--x", "data.source.num_domains=8", "--out", str(out)]) == 0
    assert "| default, data.source.num_domains=8 | 3 | **0.7500 ± 0.0100** |" in (out / "report.md").read_text()
    (tmp_path / "runs" / "4" / ".hydra" / "overrides.yaml").write_text("- seed=2\n- data.source.num_domains=auto\n")
    with pytest.raises(SystemExit, match="not a number"):  # refused before anything is written
        report([str(tmp_path / "runs"), "--x", "data.source.num_domains", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
    with pytest.raises(
        SystemExit, match=r"no run sets the override\(s\) \['modle'\] / reports the metric\(s\) \['test/acu'\]"
    ):
        report([str(tmp_path / "runs"), "--by", "modle", "--metrics", "test/acu", "--out", str(out)])
    with pytest.raises(SystemExit, match="no group is called"):
        report([str(tmp_path / "runs"), "--name", "nope=X", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"no run sets the override\(s\) \['seed_missing'\]"):
        report([str(tmp_path / "runs"), "--x", "seed_missing", "--out", str(out)])
    with pytest.raises(SystemExit, match="baseline 'nope' is not a group"):
        report([str(tmp_path / "runs"), "--baseline", "nope", "--out", str(out)])
    with pytest.raises(SystemExit, match="no finished run"):
        report([str(tmp_path / "out"), "--out", str(out)])


@pytest.mark.slow
def test_optuna_search_maximises_validation_mean_auc(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "mdrec.train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "debug=limit",
        "data.source.num_rows=20000",
        "data.batch_size=512",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    runs = load_runs(tmp_path / "sweep")
    assert len(runs) == 3
    best = max(runs, key=lambda r: r.metrics["val/mean_auc"])
    assert result["best_value"] == pytest.approx(best.metrics["val/mean_auc"])
    assert float(best.overrides["model.optimizer.lr"]) == pytest.approx(result["best_params"]["model.optimizer.lr"])
    assert len({r.overrides["model.optimizer.lr"] for r in runs}) == 3  # every trial drew its own


def test_a_resumed_run_is_not_a_failure_and_domains_merge(tmp_path: Path) -> None:
    for name, domains in (("a", ["d0", "d1"]), ("b", ["d0", "d1", "d2", "d3"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"test/auc": 0.7, "seed": 0}))
        (tmp_path / name / "data_report.json").write_text(json.dumps({"domains": domains}))
    (tmp_path / "a" / "failure.json").write_text(json.dumps({"error": "killed"}))  # then resumed and finished
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "failure.json").write_text(json.dumps({"error": "ValueError: bad"}))
    assert [f.path.name for f in load_failures(tmp_path)] == ["c"]
    assert run_domains(load_runs(tmp_path), "test/auc") == ["d0", "d1", "d2", "d3"]


def test_nan_metrics_and_seedless_runs() -> None:
    runs = [fake("a0", 0, {"m": "a"}, 0.7), fake("a1", 1, {"m": "a"}, float("nan")), fake("b0", 0, {}, 0.6)]
    groups = labelled_groups(runs, ["m"])
    text = sweep_report(runs, [], ["test/auc"], [], groups)
    assert "| m=a | 2 | nan ± nan |" in text  # a NaN is shown, not averaged away
    assert "| default | 1 | **0.6000** |" in text  # the best of the groups with a mean; one run: no spread
    result = paired(groups["m=a"], groups["default"], "test/auc", "m=a", "default")
    assert result is not None and result.n == 1 and result.mean == pytest.approx(0.1)  # seed 1 has no partner
    assert str(result) == "+0.1000 (p n/a, 1/1)"
    seedless = [Run(Path("s"), {"test/auc": 0.7}, {"m": "a"}), *runs[2:]]
    with pytest.raises(ValueError, match="records no seed"):
        sweep_report(seedless, [], ["test/auc"], [], labelled_groups(seedless, ["m"]), baseline="default")


def test_a_metric_table_lists_only_the_groups_that_report_it() -> None:
    adapted = [
        dataclasses.replace(fake(f"z{s}", s, {"m": "x"}, 0.8), metrics={"zeroshot/test/auc": 0.6 + s / 100})
        for s in range(2)
    ]
    runs = [fake("b0", 0, {}, 0.7), *adapted]
    text = sweep_report(runs, [], ["zeroshot/test/auc"], [], labelled_groups(runs, ["m"]))
    table = text.split("## zeroshot/test/auc")[1].split("## Settings")[0].strip().splitlines()
    assert table[2:] == ["| m=x | 2 | 0.6050 ± 0.0071 |"]  # no n/a row for the runs without zero-shot figures
