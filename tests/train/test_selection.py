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
from mdrec.train.selection import DomainSelection, Guard
from tests.helpers import TrainCfg


class Slices(nn.Module):
    """A module whose only parameter is stacked per domain: row d is domain d's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = DomainParameter(torch.zeros(3, 2))
        self.last_validation: dict[str, np.ndarray] = {}  # as RankingModule keeps it: prob [n, 1], label, domain


def validate(selection: DomainSelection, module: Slices, fn: str, epoch: int, aucs: dict[str, float]) -> None:
    """One validation end with ``aucs`` as the logged per-domain AUCs (``fn``: "validate" before fitting)."""
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn=fn),
        current_epoch=epoch,
        global_step=10 * (epoch + 1),
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
    assert selection.metrics()["selection/step/a"] == 10.0 and selection.metrics()["selection/step/b"] == 0.0
    assert module.w[:, 0].tolist() == [1.0, 0.0, 0.0]  # a from epoch 0, b and e from step 0: what is reported
    metrics = selection.metrics()
    assert metrics["selection/unrankable/e"] == 1.0 and metrics["selection/unrankable/a"] == 0.0
    # the evaluation of the selected model after fitting is no candidate
    validate(selection, module, "validate", 1, {"a": 0.9, "b": 0.9, "e": math.nan})
    assert selection.best_epoch == {"a": 0, "b": -1, "e": -1}


def guarded_run(guard: Guard, steps: list[tuple[np.ndarray, dict[str, float]]]) -> DomainSelection:
    """Per-domain selection over domains a, b, c with ``guard``: step 0, then one epoch per entry of ``steps``
    after the first (each: the validation probabilities and the logged AUCs); every epoch adds 1 to every slice."""
    module, selection = Slices(), DomainSelection(["a", "b", "c"], guard=guard)
    labels, domain = VAL_LABELS, VAL_DOMAIN
    trainer = None
    for epoch, (prob, aucs) in enumerate(steps):
        module.last_validation = {"prob": prob[:, None], "label": labels[:, None], "domain": domain}
        trainer = validate(selection, module, "validate" if epoch == 0 else "fit", epoch - 1, aucs)
        with torch.no_grad():
            module.w += 1.0
    selection.on_fit_end(trainer, module)
    selection.module = module
    return selection


# validation rows: a and b have 4 rows each (2 negatives, 2 positives), c has 40 (20, 20)
VAL_DOMAIN = np.array([0] * 4 + [1] * 4 + [2] * 40)
VAL_LABELS = np.array([0, 0, 1, 1] * 2 + [0, 1] * 20, dtype=np.float32)


def test_the_guard_keeps_step_0_where_the_gain_is_not_significant_or_the_rows_too_few() -> None:
    # step 0 ranks every domain in reverse (AUC 0); epoch 0 ranks a and c perfectly (AUC 1) and b as step 0 did
    reverse, perfect = 1.0 - VAL_LABELS, VAL_LABELS.copy()
    epoch0 = np.where(VAL_DOMAIN == 1, reverse, perfect)
    steps = [(reverse, {"a": 0.0, "b": 0.0, "c": 0.0}), (epoch0, {"a": 1.0, "b": 0.0, "c": 1.0})]
    # a perfect ranking against a reversed one wins on every resample (with both classes): the bound is exactly 1
    selection = guarded_run(Guard(min_rows=0, confidence=0.9), steps)
    assert selection.best_epoch == {"a": 0, "b": -1, "c": 0}
    assert selection.gain_low == {"a": 1.0, "c": 1.0}
    assert selection.module.w[:, 0].tolist() == [1.0, 0.0, 1.0]
    # min_rows: the 4 validation rows of a and b are too few to adopt anything (b kept step 0 anyway), c's 40 are enough
    selection = guarded_run(Guard(min_rows=10), steps)
    assert selection.best_epoch == {"a": -1, "b": -1, "c": 0} and selection.too_few_rows == {"a", "b"}
    assert selection.module.w[:, 0].tolist() == [0.0, 0.0, 1.0]  # served: step 0 for a
    metrics = selection.metrics()
    assert metrics["selection/too_few_rows/a"] == 1.0 and metrics["selection/too_few_rows/c"] == 0.0
    # a higher validation AUC on the same predictions as step 0 (a gain of exactly 0 on every resample) is no gain
    same = [(reverse, {"a": 0.0, "b": 0.0, "c": 0.0}), (reverse, {"a": 0.5, "b": 0.0, "c": 0.5})]
    selection = guarded_run(Guard(min_rows=0, confidence=0.6), same)
    assert selection.best_epoch == {"a": -1, "b": -1, "c": -1}
    assert selection.not_significant == {"a", "c"} and selection.gain_low == {"a": 0.0, "c": 0.0}
    assert selection.metrics()["selection/not_significant/c"] == 1.0


def test_a_guard_refuses_to_resume_a_checkpoint_written_without_one() -> None:
    state = DomainSelection(["a"]).state_dict() | {"best": {"a": 0.7}, "best_epoch": {"a": 2}}
    with pytest.raises(ValueError, match="written by a run without stage.guard"):
        DomainSelection(["a"], guard=Guard(min_rows=100)).load_state_dict(state)
    DomainSelection(["a"]).load_state_dict(state)  # without a guard: as before


def test_the_guard_bound_is_the_bootstrap_percentile_of_the_paired_auc_gain() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(np.float32)
    step0 = rng.random(300)
    best = step0 + 0.3 * labels  # better on average
    guard = Guard(confidence=0.9, num_resamples=200, seed=3)
    counts = np.random.default_rng((3 + 2, 1)).multinomial(300, np.full(300, 1 / 300), size=200)  # domain 2
    gains = []
    for c in counts:  # by hand: the weighted Mann-Whitney AUC of each model on each resample
        auc = []
        for s in (best, step0):
            pos, neg = np.repeat(s[labels == 1], c[labels == 1]), np.repeat(s[labels == 0], c[labels == 0])
            auc.append(
                ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                / (pos.size * neg.size)
            )
        gains.append(auc[0] - auc[1])
    assert guard.gain_low(best, step0, labels, 2) == pytest.approx(np.percentile(gains, 10), abs=1e-12)


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
    max_epochs = 16  # A and B stop improving after 2-12 epochs, as the seed's dropout masks go (seeds 0-3)
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


def test_a_guard_no_domain_passes_serves_the_pre_trained_model(train_cfg: TrainCfg, tmp_path: Path) -> None:
    cfg = train_cfg(["stage=adapt", "adapter=lora", "trainer.max_epochs=1", "stage.guard.min_rows=1000000000"])
    metrics = train(cfg)
    domains = [k.split("/")[-1] for k in metrics if k.startswith("selection/too_few_rows/")]
    assert len(domains) == 4 and all(metrics[f"selection/too_few_rows/{d}"] == 1.0 for d in domains)
    assert all(metrics[f"selection/epoch/{d}"] == -1.0 for d in domains)
    predictions = RunDir(Path(cfg.paths.output_dir)).read_predictions()
    assert np.array_equal(predictions["prob"], predictions["zeroshot_prob"])
