"""experiments/adapt_recipe/table.py: the per-domain counts of a recipe against the reference, on domains whose names
hold "/" (ML-1M's occupations, such as academic/educator), and the best of several recipes chosen per domain,
hand-checked on three seeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mdrec.eval.summary import Run

TABLE = Path(__file__).resolve().parents[2] / "experiments" / "adapt_recipe" / "table.py"


def table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("recipe_table", TABLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sweep(root: Path, per_seed: list[dict[str, float]], val_shift: dict[str, float] | None = None) -> None:
    """A sweep directory: one run per seed, each with the metrics a run of stage=adapt writes; a domain's validation
    AUC is its test AUC plus ``val_shift[domain]`` (0 by default)."""
    shift = val_shift or {}
    for seed, domains in enumerate(per_seed):
        val = {d: v + shift.get(d, 0.0) for d, v in domains.items()}
        metrics = {
            "seed": seed,
            "test/auc": float(sum(domains.values()) / len(domains)),
            "val/auc": float(sum(val.values()) / len(val)),
            **{f"test/auc/{d}": v for d, v in domains.items()},
            **{f"val/auc/{d}": v for d, v in val.items()},
            "params/added_per_domain": 10.0,
            "params/trainable": 20.0,
            "time/fit_seconds": 4.0,
        }
        (root / str(seed)).mkdir(parents=True)
        (root / str(seed) / "metrics.json").write_text(json.dumps(metrics))


def test_domain_counts_read_names_that_hold_a_slash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # R minus O on "academic/educator": +0.010, +0.011, +0.012 (t = 19, p 0.003); on "farmer": -0.01, -0.02, -0.03
    # (t = -3.5, p 0.07: behind, not significantly)
    ref = [{"academic/educator": 0.80 + s / 100, "farmer": 0.70 + s / 100} for s in range(3)]
    other = [{"academic/educator": 0.79 + s / 100 - s / 1000, "farmer": 0.71 + s / 50} for s in range(3)]
    write_sweep(tmp_path / "ref", ref)
    write_sweep(tmp_path / "other", other)
    argv = ["table.py", "--reference", "R", "--target", "R", "--domain-counts", f"R={tmp_path / 'ref'}"]
    monkeypatch.setattr(sys, "argv", [*argv, f"O={tmp_path / 'other'}"])
    table().main()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| O |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # both domains counted: R ahead on one, significantly, and behind on the other, not significantly
    assert cells[4:7] == ["1/2", "1", "0"]
    # costs: 10 per domain, 20 - 2 * 10 shared, 4 s, 2 s per domain
    assert cells[7:] == ["10", "0", "4", "2"]


def test_best_of_takes_each_domain_from_the_recipe_best_on_it(tmp_path: Path) -> None:
    module = table()
    # test AUC per seed. "a/b": A 0.80 0.83 0.80 (mean 0.81), B 0.81 0.79 0.80 (0.80): A by its mean although B is
    # ahead on seed 0. "c": A 0.70 0.69 0.71 (0.70), B 0.72 0.71 0.73 (0.72): B; on validation A's "c" reads 0.03
    # higher (0.73), so there A. Overall (the mean of the two): on test B (0.76 against 0.755), on validation A.
    a_ab, a_c, b_ab, b_c = [0.80, 0.83, 0.80], [0.70, 0.69, 0.71], [0.81, 0.79, 0.80], [0.72, 0.71, 0.73]
    write_sweep(tmp_path / "A", [{"a/b": x, "c": y} for x, y in zip(a_ab, a_c, strict=True)], {"c": 0.03})
    write_sweep(tmp_path / "B", [{"a/b": x, "c": y} for x, y in zip(b_ab, b_c, strict=True)])
    recipes = {name: module.runs_of(str(tmp_path / name)) for name in "AB"}
    keys = ["test/auc", "test/auc/a/b", "test/auc/c"]

    def best(split: str) -> list[dict[str, float]]:
        runs = module.best_per_key(recipes, ["A", "B"], keys, split)
        return [run.metrics for run in sorted(runs, key=lambda run: run.metrics["seed"])]

    on_test, on_val = best("test"), best("val")
    assert [m["seed"] for m in on_test] == [0, 1, 2]
    assert [m["test/auc/a/b"] for m in on_test] == [m["test/auc/a/b"] for m in on_val] == pytest.approx(a_ab)
    assert [m["test/auc/c"] for m in on_test] == pytest.approx(b_c)
    assert [m["test/auc/c"] for m in on_val] == pytest.approx(a_c)  # chosen on validation, its test figure
    assert [m["test/auc"] for m in on_test] == pytest.approx([(x + y) / 2 for x, y in zip(b_ab, b_c, strict=True)])
    assert [m["test/auc"] for m in on_val] == pytest.approx([(x + y) / 2 for x, y in zip(a_ab, a_c, strict=True)])
    assert module.costs([Run(Path("r"), m, {}) for m in on_test], 2) == " | | | "  # no single model's costs


def test_a_model_before_adapting_keeps_its_seed_and_reads_its_zero_shot_figures() -> None:
    run = Run(Path("r"), {"seed": 2, "test/auc": 0.8, "zeroshot/test/auc": 0.7, "zeroshot/val/auc/a/b": 0.71}, {})
    assert table().before_adapting(run).metrics == {
        "test/auc": 0.7,
        "val/auc/a/b": 0.71,
        "seed": 2,
        "params/added_per_domain": 0.0,
        "params/trainable": 0.0,
        "time/fit_seconds": 0.0,
    }
