"""``mdrec-report`` on run directories with malformed files: a malformed ``metrics.json`` (or ``failure.json``) is
listed among the failed runs with the reason, never left out of the report in silence; a malformed
``.hydra/overrides.yaml`` or ``data_report.json`` is an error naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mdrec.eval.cli import report
from mdrec.eval.summary import load_failures, load_runs, overrides_of


def run_dir(root: Path, name: str, metrics: str | None, overrides: str = "- model=a\n") -> Path:
    """A run directory ``root/name`` with ``metrics.json`` holding the text ``metrics`` (None: no such file)."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(overrides)
    if metrics is not None:
        (run / "metrics.json").write_text(metrics)
    return run


def test_runs_with_a_malformed_metrics_json_are_listed_as_failed_with_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    run_dir(root, "0", json.dumps({"test/auc": 0.70, "seed": 0}))
    run_dir(root, "1", json.dumps({"test/auc": 0.74, "seed": 1}))
    malformed = {
        "2": ('{"test/auc": 0.7', "is not valid JSON"),  # cut short
        "3": ("[0.7, 0.8]", "holds a JSON list, not a mapping"),
        "4": (json.dumps({"test/auc": "high", "seed": 2}), "'test/auc' is 'high', not a number"),
        "5": (json.dumps({"seed": 3, "test/auc": None}), "'test/auc' is None, not a number"),
        "6": (json.dumps({"test/auc": True}), "'test/auc' is True, not a number"),
    }
    for name, (text, _) in malformed.items():
        run_dir(root, name, text)
    raised = run_dir(root, "10", None)  # after 2..6: in path order by number
    (raised / "failure.json").write_text('{"error": "ValueError: bo')  # the job died while writing it

    assert [r.path.name for r in load_runs(root)] == ["0", "1"]
    failures = load_failures(root)
    assert [f.path.name for f in failures] == ["2", "3", "4", "5", "6", "10"]
    for failure, (name, (_, reason)) in zip(failures, malformed.items(), strict=False):
        assert str(root / name / "metrics.json") in failure.error and reason in failure.error, failure.error
        assert failure.overrides == {"model": "a"}
    assert f"{raised / 'failure.json'} is not valid JSON" in failures[-1].error

    out = tmp_path / "out"
    assert report([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "2 finished runs, 6 failed, 1 groups." in text
    assert "| default | 2 | 0.7200 ± 0.0283 |" in text  # the tables hold the two good runs only
    listed = [line for line in text.split("## Failed runs")[1].splitlines() if line.startswith("- ")]
    assert len(listed) == 6
    for line, (name, (_, reason)) in zip(listed, malformed.items(), strict=False):
        assert line.startswith(f"- `{root / name}` (model=a): ") and reason in line, line
    assert listed[-1].startswith(f"- `{raised}` (model=a): {raised / 'failure.json'} is not valid JSON")


def test_a_sweep_of_only_malformed_runs_says_so(tmp_path: Path) -> None:
    run_dir(tmp_path, "0", "{")
    with pytest.raises(SystemExit, match=r"no finished run \(metrics.json\) below .*; 1 failed runs"):
        report([str(tmp_path), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ("- model=a\n- seed: [0\n", "is not valid YAML"),
        ("model: a\nseed: 0\n", "holds a dict, not a list of overrides"),
        ("- model=a\n- 3\n", "item 1 is 3, not a key=value string"),
        ("- model=a\n- {seed: 0}\n", "item 1 is {'seed': 0}, not a key=value string"),
    ],
)
def test_a_malformed_overrides_yaml_is_an_error_naming_the_file(tmp_path: Path, overrides: str, reason: str) -> None:
    run_dir(tmp_path, "0", json.dumps({"test/auc": 0.7, "seed": 0}))
    bad = run_dir(tmp_path, "1", json.dumps({"test/auc": 0.8, "seed": 1}), overrides)
    path = bad / ".hydra" / "overrides.yaml"
    expected = re.escape(f"{path}") + ".*" + re.escape(reason) + ".*fix the file, or delete it"
    with pytest.raises(ValueError, match=expected):
        overrides_of(bad)
    with pytest.raises(SystemExit, match=f"mdrec-report: {expected}"):
        report([str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_malformed_data_report_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run = run_dir(tmp_path, "0", json.dumps({"test/auc": 0.7, "test/auc/d0": 0.6, "seed": 0}))
    (run / "data_report.json").write_text('{"domains": ["d0", ')
    with pytest.raises(SystemExit, match=re.escape(f"mdrec-report: {run / 'data_report.json'} is not valid JSON")):
        report([str(tmp_path), "--out", str(tmp_path / "out")])
