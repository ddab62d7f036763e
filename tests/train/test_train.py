"""The training entry point end to end on small synthetic data."""

from __future__ import annotations

import csv
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from mdrec.train.checkpoint import load_checkpoint
from mdrec.train.run import train
from tests.helpers import TrainCfg


def test_fast_dev_run(tmp_path: Path, train_cfg: TrainCfg) -> None:
    metrics = train(train_cfg(["debug=fdr"]))
    assert 0.0 <= metrics["test/auc"] <= 1.0
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "config.yaml").exists()


def test_training_writes_per_domain_metrics_below_the_oracle(tmp_path: Path, train_cfg: TrainCfg) -> None:
    cfg = train_cfg(["data.source.num_rows=60000", "trainer.max_epochs=3"])
    train(cfg)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    domains = ["d0", "d1", "d2", "d3"]
    for key in ("test/auc", "test/gauc", "test/wauc", "test/mean_auc", "test/logloss", "val/auc_best"):
        assert key in metrics, key
    for d in domains:
        assert {f"test/auc/{d}", f"test/logloss/{d}", f"oracle/auc/{d}"} <= metrics.keys()
        # the true probabilities are the Bayes-optimal scorer: a trained model cannot beat them
        assert metrics[f"oracle/auc/{d}"] >= metrics[f"test/auc/{d}"]
    assert metrics["test/auc"] > 0.65  # and it learned something
    assert list((run / "checkpoints").glob("epoch_*.ckpt")) and (run / "checkpoints" / "last.ckpt").exists()


def test_overfit_loss_falls(tmp_path: Path, train_cfg: TrainCfg) -> None:
    train(
        train_cfg(
            [
                "debug=overfit",
                "trainer.log_every_n_steps=1",
                "trainer.max_epochs=80",
                "model.optimizer.lr=0.01",
            ]
        )
    )
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 100
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)


def test_misspelt_key_fails_at_instantiation(train_cfg: TrainCfg) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'layer_size'"):
        train(train_cfg(["debug=fdr", "+backbone.layer_size=[8]"]))


def test_lightning_sets_the_epoch_of_the_training_order(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from mdrec.data.datamodule import MultiDomainDataModule
    from mdrec.data.splits import RandomSplit
    from mdrec.data.synthetic import SyntheticSource
    from mdrec.models.dnn import DNNBackbone
    from mdrec.train.module import RankingModule

    class Record(pl.Callback):
        epochs: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            self.epochs.append(trainer.train_dataloader.sampler.epoch)

    dm = MultiDomainDataModule(SyntheticSource(num_rows=5000), RandomSplit(), str(tmp_path), batch_size=1000)
    dm.prepare_data()
    dm.setup()
    module = RankingModule(DNNBackbone(dm.schema, layer_sizes=[8]), dm.schema, torch.optim.Adam)
    trainer = pl.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Record()],
    )
    trainer.fit(module, datamodule=dm)
    assert Record.epochs == [0, 0, 1, 1, 2, 2]  # a resumed run at epoch e replays epoch e's order


def test_same_seed_same_metrics_and_the_run_records_its_provenance(tmp_path: Path, train_cfg: TrainCfg) -> None:
    runs = []
    for name in ("a", "b"):
        cfg = train_cfg(["trainer.max_epochs=2", "seed=3"])
        cfg.paths.output_dir = str(tmp_path / name)
        runs.append({k: v for k, v in train(cfg).items() if not k.startswith("time/")})
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)  # every metric, bit for bit
    info = json.loads((tmp_path / "a" / "provenance.json").read_text())
    assert info["seed"] == 3 and info["packages"]["torch"] == metadata.version("torch")
    assert info["git"]["commit"] is None or len(info["git"]["commit"]) == 40  # None outside a git checkout


def test_threads_and_declared_trainer_options(train_cfg: TrainCfg, tmp_path: Path) -> None:
    cfg = train_cfg(
        ["threads=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.max_epochs=1"]
    )
    metrics = train(cfg)
    assert torch.get_num_threads() == 2  # the test fixture puts it back afterwards
    assert metrics["train/epochs"] == 1.0
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 3  # 3 batches, not the whole epoch
