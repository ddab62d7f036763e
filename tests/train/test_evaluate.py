"""mdrec-eval: any finished run's selected model evaluated again gives the run's own metrics, on either split, with
other batch sizes; runs without weights and data on other domains are refused."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from mdrec.rundir import RunDir
from mdrec.train.cli import evaluate
from mdrec.train.evaluate import evaluate_run
from mdrec.train.run import train
from tests.helpers import compose_train

TINY = ["data.source.num_rows=4000", "data.batch_size=256", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A train run of a multi-domain model, an adapt run (IAK) and the pretrain run it made (the backbone store)."""
    root = tmp_path_factory.mktemp("runs")
    train(compose_train(root / "train", [*TINY, "model=shared_bottom"]))
    train(compose_train(root / "adapt", [*TINY, "stage=adapt", "stage.patience=1"]))
    (pretrain,) = (p for p in (root / "adapt" / "pretrained").iterdir() if p.is_dir())
    return {"train": root / "train" / "run", "adapt": root / "adapt" / "run", "pretrain": pretrain}


def assert_same(evaluated: dict[str, float], recorded: dict[str, float], split: str) -> None:
    keys = [k for k in recorded if k.startswith(f"{split}/") and k != "val/auc_best"]
    assert len(keys) > 20 and set(keys) <= set(evaluated)
    for key in keys:
        a, b = evaluated[key], recorded[key]
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6, (key, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "adapt", "pretrain"])
def test_an_evaluation_repeats_the_run_s_own_metrics(runs: dict[str, Path], stage: str, tmp_path: Path) -> None:
    recorded = RunDir(runs[stage]).read_metrics()
    test = evaluate_run(runs[stage], [f"output_dir={tmp_path / 'test'}"])
    assert test.split == "test" and test.domains == ["d0", "d1", "d2", "d3"]
    assert_same(test.metrics, recorded, "test")
    assert_same(RunDir(tmp_path / "test").read_metrics(), test.metrics, "test")  # written where the user said
    # the validation split, in batches of another size
    val = evaluate_run(runs[stage], ["split=val", "data.batch_size=97", f"output_dir={tmp_path / 'val'}"])
    assert_same(val.metrics, recorded, "val")
    assert RunDir(tmp_path / "val").read_config().data.batch_size == 97


@pytest.mark.slow
def test_another_data_option_on_the_run_s_schema_gives_the_same_metrics(runs: dict[str, Path], tmp_path: Path) -> None:
    # data=<option>: a data config of the tree (here the synthetic one with the run's settings), prepared anew
    recorded = RunDir(runs["adapt"]).read_metrics()
    options = ["data=synthetic", *TINY[:2], f"paths.data_dir={tmp_path / 'data'}", f"output_dir={tmp_path / 'o'}"]
    assert_same(evaluate_run(runs["adapt"], options).metrics, recorded, "test")


@pytest.mark.slow
def test_the_command_line_prints_the_table_and_refuses_what_it_cannot_evaluate(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert evaluate([str(runs["train"])]) == 0
    out = capsys.readouterr().out
    assert "per-domain test metrics of" in out and "overall" in out
    (written,) = (runs["train"] / "eval").glob("*/metrics.json")  # the default output directory
    assert f"written: {written}" in out
    with pytest.raises(SystemExit, match="domains .* are not the run's"):
        evaluate([str(runs["train"]), "data.source.num_domains=3", "data.source.domain_shares=[0.5,0.3,0.2]"])
    bare = tmp_path / "bare"  # a run that kept no weights (debug=fdr keeps no checkpoint)
    bare.mkdir()
    shutil.copy(runs["train"] / RunDir.CONFIG, bare)
    with pytest.raises(SystemExit, match="holds no weights"):
        evaluate([str(bare)])


def test_a_bad_split_or_a_misspelt_key_is_refused_before_any_work(tmp_path: Path) -> None:
    RunDir(tmp_path).write_config(compose_train(tmp_path, TINY))  # a run directory's config.yaml, nothing else
    with pytest.raises(SystemExit, match="split=train is not one of"):
        evaluate([str(tmp_path), "split=train"])
    with pytest.raises(SystemExit, match="Could not override 'data.batch_sise'"):
        evaluate([str(tmp_path), "data.batch_sise=8"])
    with pytest.raises(SystemExit, match=r"data.batch_size='many' is not an int"):
        evaluate([str(tmp_path), "data.batch_size=many"])
    assert not (tmp_path / "data").exists()  # nothing prepared
    assert evaluate([]) == 2 and evaluate(["--help"]) == 0
