"""Per-domain selection: step 0 is a candidate with and without testing, a domain without a validation AUC keeps
step 0 (and says so), and what a run reports as selected is what it serves."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mdrec.nn.parameter import DomainParameter
from mdrec.rundir import RunDir
from mdrec.train.run import train
from mdrec.train.selection import DomainSelection
from tests.helpers import TrainCfg


class Slices(nn.Module):
    """A module whose only parameter is stacked per domain: row d is domain d's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = DomainParameter(torch.zeros(3, 2))


def validate(selection: DomainSelection, module: Slices, fn: str, epoch: int, aucs: dict[str, float]) -> None:
    """One validation end with ``aucs`` as the logged per-domain AUCs (``fn``: "validate" before fitting)."""
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn=fn),
        current_epoch=epoch,
        callback_metrics={f"val/auc/{d}": torch.tensor(v) for d, v in aucs.items()},
        should_stop=False,
    )
    selection.on_validation_end(trainer, module)
    return trainer


def test_a_domain_without_validation_auc_keeps_step_0_and_does_not_hold_off_stopping() -> None:
    module, selection = Slices(), DomainSelection(["a", "b", "e"], patience=1)
    validate(selection, module, "validate", 0, {"a": 0.6, "b": 0.6, "e": math.nan})  # step 0
    with torch.no_grad():
        module.w += 1.0  # epoch 0 trains every slice
    first = validate(selection, module, "fit", 0, {"a": 0.7, "b": 0.5, "e": math.nan})
    assert not first.should_stop  # a improved
    with torch.no_grad():
        module.w += 1.0
    second = validate(selection, module, "fit", 1, {"a": 0.65, "b": 0.55, "e": math.nan})
    assert second.should_stop  # neither a nor b improved; e's NaN is no improvement either
    selection.on_fit_end(second, module)
    assert selection.best_epoch == {"a": 0, "b": -1, "e": -1}
    assert module.w[:, 0].tolist() == [1.0, 0.0, 0.0]  # a from epoch 0, b and e from step 0: what is reported
    metrics = selection.metrics()
    assert metrics["selection/unrankable/e"] == 1.0 and metrics["selection/unrankable/a"] == 0.0
    # the evaluation of the selected model after fitting is no candidate
    validate(selection, module, "validate", 1, {"a": 0.9, "b": 0.9, "e": math.nan})
    assert selection.best_epoch == {"a": 0, "b": -1, "e": -1}


def write_sites(directory: Path, seed: int = 0) -> list[str]:
    """Train/val/test CSV files of three sites A, B, E; the click depends on the item's parity; E's validation rows
    are all negative (its validation AUC is undefined). Returns the tabular data overrides."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 3000), ("val", 900), ("test", 900)):
        with (directory / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user", "item", "site", "click"])
            for i in range(n):
                site = "ABE"[i % 3]
                item = int(rng.integers(0, 40))
                click = int(rng.random() < 0.2 + 0.6 * (item % 2))
                w.writerow(
                    [f"u{rng.integers(0, 100)}", f"i{item}", site, 0 if (split, site) == ("val", "E") else click]
                )
    files = [f"data.source.{s}_files=[{directory / f'{s}.csv'}]" for s in ("train", "val", "test")]
    spec = ["spec.sparse=[user,item]", "spec.domain=site", "spec.labels=[click]", "spec.user=user"]
    return ["data=tabular", "data.source.name=sites", *files, *(f"data.source.{s}" for s in spec)]


def test_a_one_class_validation_domain_keeps_step_0_and_serves_it(train_cfg: TrainCfg, tmp_path: Path) -> None:
    data = write_sites(tmp_path)
    max_epochs = 8
    cfg = train_cfg([*data, "stage=adapt", "adapter=lora", "stage.patience=1", f"trainer.max_epochs={max_epochs}"])
    metrics = train(cfg)
    assert math.isnan(metrics["val/auc/E"])
    assert metrics["train/epochs"] < max_epochs  # stopped early: E's NaN never counts as an improvement
    assert metrics["selection/epoch/E"] == -1.0 and metrics["selection/unrankable/E"] == 1.0
    predictions = RunDir(tmp_path / "run").read_predictions()
    e_rows = predictions["domain"] == list(predictions["domains"]).index("E")
    assert e_rows.sum() == 300
    assert np.array_equal(predictions["prob"][e_rows], predictions["zeroshot_prob"][e_rows])  # served: step 0


@pytest.mark.parametrize("adapter", ["lora"])
def test_step_0_is_a_candidate_with_and_without_testing(train_cfg: TrainCfg, adapter: str) -> None:
    # an adapter trained with a step this large ruins at least one domain: it keeps step 0
    adapt = ["stage=adapt", f"adapter={adapter}", "stage.optimizer.lr=5.0", "trainer.max_epochs=2"]
    tested = train(train_cfg(adapt))
    untested = train(train_cfg([*adapt, "test=false"]))
    chosen = {k: v for k, v in tested.items() if k.startswith("selection/")}
    assert -1.0 in chosen.values()
    assert {k: v for k, v in untested.items() if k.startswith("selection/")} == chosen
    assert "test/auc" not in untested and "zeroshot/val/auc" in untested
