"""The drift check of an adapted run (python -m mdrec.train.drift): on fresh synthetic rows in which one domain
drifted it flags that domain and no other, re-adapts exactly it (the others bit-identical), and names its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mdrec.rundir import RunDir
from mdrec.train.drift import DRIFT_JSON, check_drift, main
from mdrec.train.run import train
from tests.helpers import compose_train

BALANCED = ["data.source.num_rows=20000", "data.source.domain_shares=[0.4,0.3,0.2,0.1]"]
FRESH = ["+data.source.period=1"]
DRIFTED = [*FRESH, "+data.source.drift_domain=d1", "+data.source.drift=1.0"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapt run on 20,000 synthetic rows of four domains."""
    root = tmp_path_factory.mktemp("drift")
    train(compose_train(root, ["stage=adapt", *BALANCED, "stage.patience=1"]))
    return root


def drift(root: Path, out: str, *overrides: str) -> list[str]:
    return [f"paths.data_dir={root / 'data'}", f"output_dir={root / out}", "resamples=300", *overrides]


def test_the_drifted_domain_is_flagged_and_no_other(adapted: Path) -> None:
    root = adapted
    assert RunDir(root / "run").exists(RunDir.DRIFT_REFERENCE)  # written by the adapt run
    calm = check_drift(root / "run", drift(root, "calm", *FRESH))
    assert calm.flagged == [] and calm.skipped == {} and [c.domain for c in calm.checks] == ["d0", "d1", "d2", "d3"]
    assert all(max(c.psi.values()) < 0.1 for c in calm.checks)
    moved = check_drift(root / "run", drift(root, "moved", *DRIFTED))
    assert moved.flagged == ["d1"]
    d1 = next(c for c in moved.checks if c.domain == "d1")
    assert {f for f, v in d1.psi.items() if v > 0.2} == {f"dense_{i}" for i in range(4)}  # ids keep their law
    assert d1.auc.fresh < next(c for c in calm.checks if c.domain == "d1").auc.fresh - 0.02
    record = RunDir(root / "moved").read_json(DRIFT_JSON)
    assert record["flagged"] == ["d1"] and record["domains"]["d1"]["reasons"][0].startswith("inputs: PSI > 0.2")
    assert "**inputs: PSI > 0.2" in (root / "moved" / "drift.md").read_text()
    assert (root / "moved" / "reliability.png").stat().st_size > 0


def test_readapt_trains_the_flagged_domain_only_and_recovers_it(adapted: Path, capsys: pytest.CaptureFixture) -> None:
    root = adapted
    assert main([str(root / "run"), "--readapt", *drift(root, "readapt", *DRIFTED)]) == 0
    assert "## Re-adapted: d1" in capsys.readouterr().out
    figures = RunDir(root / "readapt").read_json(DRIFT_JSON)["readapt"]
    assert figures["readapt/other_domains_max_abs_change"] == 0.0
    assert figures["readapt/auc_after/d1"] > figures["readapt/auc_before/d1"] + 0.005
    before = torch.load(root / "run" / "adapter.pt")
    after = torch.load(root / "readapt" / "readapt" / "adapter.pt")
    others = [0, 2, 3]
    assert all(torch.equal(after[k][others], before[k][others]) for k in before)  # bit for bit
    assert any(not torch.equal(after[k][1], before[k][1]) for k in before)
    # the re-adapted run's reference: d1's histograms (field 8: dense_0) now of the fresh rows, the others' kept
    new = RunDir(root / "readapt" / "readapt").read_drift_reference()
    old = RunDir(root / "run").read_drift_reference()
    assert np.array_equal(new["0/8/counts"], old["0/8/counts"]) and not np.array_equal(
        new["1/8/counts"], old["1/8/counts"]
    )


def test_named_errors_and_skipped_domains(adapted: Path, tmp_path: Path) -> None:
    root = adapted
    with pytest.raises(ValueError, match=r"mdrec.train.drift: the data do not read as the adapted run .*vocabulary"):
        check_drift(root / "run", drift(root, "other", *FRESH, "data.source.vocab_sizes=[300,20]"))
    few = check_drift(root / "run", drift(root, "few", *FRESH, "data.source.domain_shares=[0.5,0.5,1e-9,1e-9]"))
    assert few.skipped == {d: "the fresh data hold no row of it" for d in ("d2", "d3")}
    assert [c.domain for c in few.checks] == ["d0", "d1"]
    bare = tmp_path / "bare"
    shutil.copytree(root / "run", bare)
    RunDir(bare).file(RunDir.DRIFT_REFERENCE).unlink()
    with pytest.raises(FileNotFoundError, match=r"drift_reference.npz is missing.*--write-reference"):
        check_drift(bare, drift(root, "bare", *FRESH))
    assert main([str(bare), "--write-reference", f"paths.data_dir={root / 'data'}"]) == 0  # from its own data
    assert check_drift(bare, drift(root, "bare", *FRESH)).flagged == []
