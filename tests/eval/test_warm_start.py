"""Cross-domain warm start: pre-training on the source domains, onboarding one domain, and the negative-transfer
gate with its bootstrap (the domain subsets and fractions of the data: tests/data/test_domain_subsets.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mdrec.eval.cli import gate
from mdrec.eval.gate import bootstrap_auc, negative_transfer, weighted_auc
from mdrec.eval.metrics import domain_metrics
from mdrec.serve.cli import main as export_main
from mdrec.train.run import train
from tests.helpers import TrainCfg, stored_backbones


def test_warm_start_pretrains_on_sources_and_onboarding_keeps_other_domains(
    train_cfg: TrainCfg, tmp_path: Path
) -> None:
    sources, equal = "[d0,d1,d2]", "data.source.domain_shares=[1,1,1,1]"
    adapt = train_cfg(
        [
            "stage=adapt",
            "input=embedded",
            f"stage.source_domains={sources}",
            f"data.vocab_domains={sources}",
            "data.domain_fractions={d3:0.0}",
            equal,
        ]
    )
    adapt.paths.output_dir = str(tmp_path / "adapt")
    adapted = train(adapt)
    (pretrained,) = stored_backbones(tmp_path / "pretrained")
    pre_cfg = OmegaConf.load(pretrained / "config.yaml")
    pre_cfg_path = tmp_path / "adapt" / "config.yaml"
    assert pre_cfg.data.domain_fractions == {"d3": 0.0} and pre_cfg.data.vocab_domains is None
    assert adapted["selection/epoch/d3"] == -1  # no d3 rows: its adapter stays at the identity
    assert (tmp_path / "adapt" / "backbone.pt").exists() and (tmp_path / "adapt" / "adapter.pt").exists()

    onboard = train_cfg(
        [
            "stage=onboard",
            f"stage.adapted={tmp_path / 'adapt'}",
            "stage.domains=[d3]",
            f"data.vocab_domains={sources}",
            "adapter=lora",  # ignored: onboarding keeps (and records) the adapted run's adapter
            equal,
        ]
    )
    onboard.data.domain_fractions = {"d0": 0.0, "d1": 0.0, "d2": 0.0}
    onboard.paths.output_dir = str(tmp_path / "onboard")
    metrics = train(onboard)
    assert metrics["onboard/other_domains_max_abs_change"] == 0.0
    assert metrics["selection/epoch/d3"] >= 0  # d3 trained (and beat its identity start on validation)
    assert metrics["val/auc/d3"] >= metrics["zeroshot/val/auc/d3"] - 1e-6
    for d in ("d0", "d1", "d2"):
        assert metrics[f"test/auc/{d}"] == adapted[f"test/auc/{d}"]
    before = torch.load(tmp_path / "adapt" / "adapter.pt")
    after = torch.load(tmp_path / "onboard" / "adapter.pt")
    changed = {k for k in before if not torch.equal(before[k][:3], after[k][:3])}
    assert not changed and any(not torch.equal(before[k][3], after[k][3]) for k in before)
    # the onboard run rebuilds on its own, as its adapter: it exports like an adapt run
    assert OmegaConf.load(tmp_path / "onboard" / "config.yaml").adapter == OmegaConf.load(pre_cfg_path).adapter
    assert export_main([str(tmp_path / "onboard"), "--batches", "1"]) == 0

    # the gate on real runs: a from-scratch run on the same data and test rows
    scratch = train_cfg([equal])
    scratch.paths.output_dir = str(tmp_path / "scratch")
    train(scratch)
    report = tmp_path / "gate.md"
    code = gate(
        [str(tmp_path / "onboard"), str(tmp_path / "scratch"), "--out", str(report), "--resamples", "200", "--strict"]
    )
    text = report.read_text()
    assert "| d3 |" in text and code == (1 if "**negative transfer**" in text else 0)


def test_weighted_and_bootstrap_auc_match_the_metrics_module() -> None:
    rng = np.random.default_rng(5)
    y = rng.random(3000) < 0.3
    s = np.round(rng.random(3000) + 0.4 * y, 2)  # ties included
    expected = domain_metrics(
        torch.tensor(s), torch.tensor(y, dtype=torch.float32), torch.zeros(3000, dtype=torch.long), ["a"]
    )
    assert weighted_auc(s[None], y, np.ones((1, 3000)))[0, 0] == pytest.approx(expected["auc"], abs=1e-6)
    boot = bootstrap_auc(np.stack([s, s]), y, 300, seed=1)
    assert np.array_equal(boot[0], boot[1])  # paired: the same resamples for every model
    assert boot[0].mean() == pytest.approx(expected["auc"], abs=0.003)
    assert 0.004 < boot[0].std() < 0.015  # ~ sqrt(AUC (1 - AUC) / min class count)


def test_gate_flags_a_clearly_worse_warm_start_and_strict_exits_1(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 4000
    domain = np.repeat([0, 1], n // 2)
    y = (rng.random(n) < 0.3).astype(np.float32)
    good = y * 0.5 + rng.random(n)
    warm = np.where(domain == 1, rng.random(n), good + 0.01 * rng.random(n))  # domain 1: noise
    rows = negative_transfer(warm, good, good, y, domain, ["a", "b"], num_resamples=200)
    assert [r.flagged for r in rows] == [False, True]
    assert rows[1].high < 0 and rows[1].low < rows[1].diff < rows[1].high
    for name, prob in (("adapted", warm), ("scratch", good)):
        (tmp_path / name).mkdir()
        extra = {"zeroshot_prob": good[:, None]} if name == "adapted" else {}
        np.savez(
            tmp_path / name / "predictions.npz",
            prob=prob[:, None],
            label=y[:, None],
            domain=domain,
            domains=np.array(["a", "b"]),
            **extra,
        )
    args = [str(tmp_path / "adapted"), str(tmp_path / "scratch"), "--resamples", "200"]
    assert gate(args) == 0 and gate([*args, "--strict"]) == 1
    assert gate([*args, "--strict", "--domains", "a"]) == 0
    with pytest.raises(SystemExit, match="not a stage=adapt run"):
        gate([str(tmp_path / "scratch"), str(tmp_path / "scratch")])
