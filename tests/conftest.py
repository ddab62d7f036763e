"""Shared fixtures: tiny synthetic stores and composed training configs (lightning-hydra-template style)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mdrec.data.store import ColumnStore
from mdrec.data.synthetic import SyntheticSource

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread (several threads on a busy 2-core machine cost 10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[[list[str]], DictConfig]:
    """``train_cfg(overrides)``: a composed training config writing under ``tmp_path``."""
    return lambda overrides: compose_train(tmp_path, overrides)


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` with the given overrides, writing everything under ``tmp_path``.

    Synthetic data shrinks to 20,000 rows unless the overrides set ``data.source.num_rows`` themselves.
    """
    base = [
        "data.batch_size=512",
        "trainer.max_epochs=2",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'run'}",
        "~callbacks.progress_bar",
        "+trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + overrides)
    synthetic = cfg.data.source._target_.endswith("SyntheticSource")
    if synthetic and not any(o.startswith("data.source.num_rows=") for o in overrides):
        cfg.data.source.num_rows = 20_000
    return cfg


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> ColumnStore:
    """A 20k-row, 3-domain synthetic store shared by read-only tests."""
    directory = tmp_path_factory.mktemp("store") / "synthetic"
    SyntheticSource(num_rows=20_000, num_domains=3, seed=1).prepare(directory, directory.parent)
    return ColumnStore(directory)
