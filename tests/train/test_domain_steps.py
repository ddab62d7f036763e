"""The per-domain step callbacks against hand computations with Adam: the dynamic batch-aware learning rate and the
per-domain weight decay scaled by domain size."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SparseField
from mdrec.models.output import ModelOutput
from mdrec.nn.parameter import DomainParameter
from mdrec.train.domain_steps import DomainWeightDecay
from mdrec.train.dynamic_lr import DynamicDomainLR
from mdrec.train.module import RankingModule
from mdrec.train.run import train
from tests.helpers import TrainCfg

DOMAINS = ("d0", "d1", "d2", "d3")

SCHEMA = Schema("toy", (SparseField("user", 9),), ("x",), "domain", ("a", "b"), ("click",))


class DomainBias(nn.Module):
    """logit = bias[domain] + w * x: one per-domain parameter [K, 1] and one shared scalar."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self.bias = DomainParameter(torch.full((2, 1), start))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> ModelOutput:
        return ModelOutput(self.bias[batch.domain] + self.w * batch.dense, torch.zeros(()))


def clicks(domain: list[int]) -> Batch:
    n = len(domain)
    return Batch(torch.ones(n, 1, dtype=torch.long), torch.ones(n, 1), torch.tensor(domain), torch.ones(n, 1))


def fit(batches: list[Batch], callbacks: list[pl.Callback], start: float = 0.0) -> DomainBias:
    net = DomainBias(start)
    module = RankingModule(net, SCHEMA, lambda params: torch.optim.Adam(params, lr=0.1))
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=callbacks
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return net


def test_step_scales_by_batch_share_and_gradient_cap() -> None:
    # K = 2, B = 4: shares 3*2/4 = 1.5 and 1*2/4 = 0.5, square roots; the second gradient is capped: 1 / 4
    scales = DynamicDomainLR().scales(torch.tensor([3, 1]), torch.tensor([0.5, 4.0]))
    assert scales.tolist() == pytest.approx([math.sqrt(1.5), math.sqrt(0.5) * 0.25])
    clipped = DynamicDomainLR(r_min=0.5, r_max=1.2, grad_cap=None).scales(torch.tensor([99, 1, 0]), torch.zeros(3))
    assert clipped.tolist() == pytest.approx([1.2, 0.5, 0.0])  # (297/100)^0.5 clipped, (3/100)^0.5 clipped, absent


def test_adam_steps_are_scaled_per_domain() -> None:
    # first Adam step moves every parameter by lr * sign(gradient) = 0.1, whatever the loss scale; the callback
    # scales it per domain: batch 3 rows of a, 1 of b -> sqrt(1.5), sqrt(0.5); gradients 0.375, 0.125 < cap 1
    plain = fit([clicks([0, 0, 0, 1])], [])
    assert plain.bias.flatten().tolist() == pytest.approx([0.1, 0.1], rel=1e-5)
    net = fit([clicks([0, 0, 0, 1])], [DynamicDomainLR()])
    assert net.bias.flatten().tolist() == pytest.approx([0.1 * math.sqrt(1.5), 0.1 * math.sqrt(0.5)], rel=1e-5)
    assert net.w.item() == pytest.approx(0.1, rel=1e-5)  # shared: the optimiser's own step
    # gradient cap 0.2: domain a's gradient 3 * 0.5 / 4 = 0.375 -> factor 0.2 / 0.375; b's 0.125 is under the cap
    capped = fit([clicks([0, 0, 0, 1])], [DynamicDomainLR(grad_cap=0.2)])
    expected = [0.1 * math.sqrt(1.5) * 0.2 / 0.375, 0.1 * math.sqrt(0.5)]
    assert capped.bias.flatten().tolist() == pytest.approx(expected, rel=1e-5)


def test_absent_domain_does_not_move_although_adam_has_momentum() -> None:
    batches = [clicks([0, 1]), clicks([0, 0])]  # step 2 holds no row of b
    plain = fit(batches, [])
    assert float(plain.bias[1]) > 0.1 + 1e-3  # Adam's momentum moves b on step 2
    net = fit(batches, [DynamicDomainLR()])
    assert float(net.bias[1]) == pytest.approx(0.1, rel=1e-5)  # step 1 only (share 1: factor 1)


def test_dynamic_lr_errors() -> None:
    with pytest.raises(ValueError, match="r_min <= r_max"):
        DynamicDomainLR(r_min=2.0, r_max=1.0)
    with pytest.raises(ValueError, match="grad_cap must be positive"):
        DynamicDomainLR(grad_cap=0.0)
    module = RankingModule(nn.Linear(1, 1), SCHEMA, torch.optim.Adam)
    with pytest.raises(ValueError, match="trains none"):
        DynamicDomainLR().setup(pl.Trainer(logger=False), module, "fit")


def test_dynamic_lr_config_logs_a_factor_per_domain(train_cfg: TrainCfg, tmp_path: Path) -> None:
    # the synthetic default's domains hold 60/30/8/2 % of the rows: the small ones' steps are scaled down
    train(train_cfg(["stage=adapt", "adapter=lora", "callbacks=dynamic_lr", "trainer.max_epochs=1"]))
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    scale = {d: float(next(r[f"lr_scale/{d}"] for r in rows if r.get(f"lr_scale/{d}"))) for d in DOMAINS}
    assert 0.1 <= scale["d3"] < scale["d2"] < scale["d1"] < scale["d0"] <= 10.0


def test_weight_decay_scales_with_domain_size_and_skips_absent_domains() -> None:
    # rows 300 and 100, mean 200: lambda = 1 * 200 / 300 and 1 * 200 / 100; Adam's first step moves both biases to
    # 0.1, then each shrinks by 1 - lr * lambda (lr 0.1)
    decay = DomainWeightDecay(1.0, power=1.0, rows=[300, 100])
    assert decay.decays(torch.tensor([300, 100])).tolist() == pytest.approx([2 / 3, 2.0])
    net = fit([clicks([0, 0, 0, 1])], [decay])
    assert net.bias.flatten().tolist() == pytest.approx([0.1 * (1 - 0.1 * 2 / 3), 0.1 * (1 - 0.1 * 2.0)], rel=1e-5)
    assert net.w.item() == pytest.approx(0.1, rel=1e-5)  # shared: no decay
    # step 2 holds no row of b: b is decayed once (after step 1), a twice; Adam's steps do not read the values
    batches = [clicks([0, 1]), clicks([0, 0])]
    plain, decayed = fit(batches, []), fit(batches, [DomainWeightDecay(1.0, power=0.0, rows=[1, 1])])
    b_plain, b_decayed = plain.bias[1].item(), decayed.bias[1].item()
    assert b_decayed == pytest.approx(b_plain - 0.1 * 0.1 * 1.0, rel=1e-5)
    # towards where a slice started, not towards zero: biases starting at 1 (a STAR weight, a norm's scale)
    from_one = fit([clicks([0, 0, 0, 1])], [DomainWeightDecay(1.0, power=1.0, rows=[300, 100])], start=1.0)
    expected = [1 + 0.1 * (1 - 0.1 * 2 / 3), 1 + 0.1 * (1 - 0.1 * 2.0)]
    assert from_one.bias.flatten().tolist() == pytest.approx(expected, rel=1e-5)


def test_weight_decay_errors() -> None:
    with pytest.raises(ValueError, match="weight_decay > 0 and power >= 0"):
        DomainWeightDecay(0.0)
    module = RankingModule(DomainBias(), SCHEMA, torch.optim.Adam)
    with pytest.raises(ValueError, match=r"callbacks.domain_decay.rows has 3 entries for 2 domains.*\['a', 'b'\]"):
        DomainWeightDecay(0.1, rows=[1, 2, 3]).setup(pl.Trainer(logger=False), module, "fit")
    with pytest.raises(ValueError, match="this fit has none: give one count per domain"):
        fit([clicks([0, 1])], [DomainWeightDecay(0.1)])
    with pytest.raises(ValueError, match="domain_decay acts on the steps of per-domain parameters"):
        DomainWeightDecay(0.1).setup(
            pl.Trainer(logger=False), RankingModule(nn.Linear(1, 1), SCHEMA, torch.optim.Adam), "fit"
        )


def test_weight_decay_config_counts_the_training_rows(train_cfg: TrainCfg) -> None:
    """A decay so strong that every domain smaller than the mean is pulled back to the identity at every step: under
    one overall selection (no per-domain step 0) their adapted predictions are still the pre-trained model's; the
    larger domains' are not."""
    options = [
        "stage=adapt",
        "callbacks=domain_decay",
        "callbacks.domain_decay.weight_decay=40",
        "callbacks.domain_decay.power=3",
    ]
    metrics = train(train_cfg([*options, "stage.select_per_domain=false", "trainer.max_epochs=1"]))
    for d in ("d2", "d3"):  # 8 % and 2 % of the training rows: lr * lambda = 1e-3 * 40 * (25 / 8)^3 >= 1
        assert metrics[f"test/auc/{d}"] == metrics[f"zeroshot/test/auc/{d}"]
    for d in ("d0", "d1"):  # 60 % and 30 %: lr * lambda 0.003 and 0.023, the adapters move
        assert metrics[f"test/auc/{d}"] != metrics[f"zeroshot/test/auc/{d}"]
