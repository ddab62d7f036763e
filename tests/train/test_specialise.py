"""stage=specialise: a multi-domain network trained end to end (found in the store or trained there once), then only
its per-domain parameters trained, each domain keeping its own best validation, the end-to-end model included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mdrec.models.dnn import DNNBackbone
from mdrec.models.ple import PLE
from mdrec.models.shared_frozen import SharedFrozen
from mdrec.models.star import STAR
from mdrec.rundir import RunDir
from mdrec.train.checkpoint import load_selected
from mdrec.train.evaluate import evaluate_run
from mdrec.train.pretrained import pretrain_key
from mdrec.train.run import train
from mdrec.train.stages import Train, pretrain_config, target_of
from mdrec.train.subrun import sub_run_config
from tests.helpers import SCHEMA, TrainCfg, embedded, make_batch, stored_backbones

DOMAINS = ("d0", "d1", "d2", "d3")
SMALL_PLE = ["model.net.expert_sizes=[16]", "model.net.tower_sizes=[8]", "trainer.max_epochs=2"]


def test_specialise_trains_only_the_chosen_per_domain_parameters_of_the_stored_network(
    train_cfg: TrainCfg, tmp_path: Path
) -> None:
    metrics = train(train_cfg(["stage=specialise", "stage.trainable=[tower.*]", *SMALL_PLE]))
    stored = stored_backbones(tmp_path / "pretrained")
    assert len(stored) == 1 and (stored[0] / "checkpoints" / "last.ckpt").exists()
    end_to_end = json.loads((stored[0] / "metrics.json").read_text())
    # step 0 is the end-to-end model itself: its test AUC is the stage=train run's, per domain too
    for key in ["test/auc", *(f"test/auc/{d}" for d in DOMAINS)]:
        assert metrics[f"zeroshot/{key}"] == pytest.approx(end_to_end[key], abs=1e-6), key

    data = RunDir(tmp_path / "run").instantiate("data")
    data.prepare_data()
    data.setup()
    schema = data.schema
    before = load_selected(RunDir(stored[0]), schema).state_dict()
    after = load_selected(RunDir(tmp_path / "run"), schema).state_dict()  # network.pt
    assert (tmp_path / "run" / RunDir.NETWORK).exists()
    for key, value in before.items():  # the shared parts, the experts and the gates: as trained end to end
        if not key.startswith("tower."):
            assert torch.equal(after[key], value), key
    kept = [d for d, name in enumerate(DOMAINS) if metrics[f"selection/epoch/{name}"] == -1.0]
    moved = [d for d in range(len(DOMAINS)) if d not in kept]
    assert kept and moved  # the 38-row domain keeps step 0 (the guard's min_rows); the big ones adopt an epoch
    for key in (k for k in before if k.startswith("tower.")):
        assert torch.equal(after[key][kept], before[key][kept]), key
    assert not torch.equal(after["tower.output.weight"][moved], before["tower.output.weight"][moved])
    for name in DOMAINS:  # no domain is worse on validation than the end-to-end model
        assert metrics[f"val/auc/{name}"] >= metrics[f"zeroshot/val/auc/{name}"] - 1e-6
    # the towers' parameters per domain: [16] -> [8] -> 1
    assert metrics["params/added_per_domain"] == 16 * 8 + 8 + 8 + 1

    # the run directory alone rebuilds the specialised network: its test AUC again
    again = evaluate_run(tmp_path / "run", [f"output_dir={tmp_path / 'eval'}"]).metrics
    assert again["test/auc"] == pytest.approx(metrics["test/auc"], abs=1e-6)

    # without network.pt (a run that died before writing it) the checkpoints are not taken for the selection
    (tmp_path / "run" / RunDir.NETWORK).rename(tmp_path / "network.pt")
    with pytest.raises(FileNotFoundError, match="a stage=specialise run that did not finish"):
        load_selected(RunDir(tmp_path / "run"), schema)
    (tmp_path / "network.pt").rename(tmp_path / "run" / RunDir.NETWORK)

    # a second run with other trainable parameters finds the stored network instead of training it again
    every = train(train_cfg(["stage=specialise", *SMALL_PLE]))
    assert stored_backbones(tmp_path / "pretrained") == stored
    assert every["zeroshot/test/auc"] == metrics["zeroshot/test/auc"]
    assert every["params/added_per_domain"] > metrics["params/added_per_domain"]


def test_shared_frozen_trains_and_drops_out_only_in_the_chosen_parts() -> None:
    net = SharedFrozen(PLE(SCHEMA, embedded(4), expert_sizes=[8], tower_sizes=[4], dropout=0.5), ["tower.*"])
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        f"net.tower.{part}" for part in ("mlp.linears.0.weight", "mlp.linears.0.bias", "output.weight", "output.bias")
    }
    net.train()
    training = {name for name, m in net.named_modules() if m.training}
    assert "net.tower" in training and not any(name.startswith("net.levels") for name in training)
    # frozen experts drop nothing: with the towers' dropout off, train mode computes what eval mode computes
    net.net.tower.eval()
    batch = make_batch(64)
    with torch.no_grad():
        trained_mode = net(batch).logits
        assert torch.equal(trained_mode, net.eval()(batch).logits)


def test_a_network_whose_domains_share_trainable_slices_is_refused() -> None:
    # below PLE's last level the shared gate mixes every domain's experts: a row reads other domains' experts
    coupled = PLE(SCHEMA, embedded(4), num_levels=2, expert_sizes=[8], tower_sizes=[4])
    with pytest.raises(ValueError, match=r"depend on other domains' slices of \['levels.0.domain_experts.biases.0'"):
        SharedFrozen(coupled, ["*"]).check(make_batch(64))
    SharedFrozen(coupled, ["tower.*", "levels.1.*"]).check(make_batch(64))  # the last level and towers: apart
    apart = PLE(SCHEMA, embedded(4), num_levels=2, expert_sizes=[8], shared_gate_experts="own")
    SharedFrozen(apart, ["*"]).check(make_batch(64))


def test_state_in_buffers_stays_as_trained_end_to_end() -> None:
    # STAR's partitioned norm holds per-domain scales (trained) beside its running statistics (kept)
    star = SharedFrozen(STAR(SCHEMA, embedded(4), layer_sizes=[8]), ["*"])
    star.check(make_batch(64))  # a training step moves no buffer
    before = {name: b.clone() for name, b in star.named_buffers()}
    star.train()
    star(make_batch(64, seed=1)).logits.sum().backward()
    assert all(torch.equal(b, before[name]) for name, b in star.named_buffers())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in star.named_parameters() if "norm" in n)


def test_a_specialised_run_is_not_onboarded(tmp_path: Path) -> None:
    (tmp_path / RunDir.NETWORK).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a stage=specialise run: it records no encoding.json"):
        RunDir(tmp_path).read_encoding()


def test_shared_frozen_names_what_it_could_train() -> None:
    with pytest.raises(ValueError, match=r"matches no per-domain parameter of PLE: its per-domain parameters are \["):
        SharedFrozen(PLE(SCHEMA, embedded(4), expert_sizes=[8]), ["towers.*"])
    with pytest.raises(ValueError, match=r"DNNBackbone: it has none .*model=ple"):
        SharedFrozen(DNNBackbone(SCHEMA, embedded(4), layer_sizes=[8]), ["*"])


def test_a_network_without_weights_to_reuse_is_refused(train_cfg: TrainCfg, tmp_path: Path) -> None:
    no_checkpoint = ["~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false"]
    with pytest.raises(FileNotFoundError, match=r"kept no weights to reuse .*keep callbacks.model_checkpoint"):
        train(train_cfg(["stage=specialise", *no_checkpoint, *SMALL_PLE]))
    assert all(p.name.endswith(".partial") for p in stored_backbones(tmp_path / "pretrained"))  # none to find


def test_the_store_keeps_a_network_and_a_backbone_of_one_config_apart(train_cfg: TrainCfg) -> None:
    cfg = train_cfg(["stage=specialise"])
    network = sub_run_config(cfg, target_of(Train))
    assert pretrain_key(network) != pretrain_key(pretrain_config(cfg, SCHEMA, None))
