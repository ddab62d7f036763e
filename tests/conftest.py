"""Shared fixtures: tiny synthetic stores and composed training configs (lightning-hydra-template style)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mdrec.data.store import ColumnStore
from mdrec.data.synthetic import SyntheticSource
from tests.helpers import TrainCfg, compose_train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread (several threads on a busy 2-core machine cost 10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_cfg(tmp_path: Path) -> TrainCfg:
    """``train_cfg(overrides)``: a composed training config writing under ``tmp_path``."""
    return lambda overrides: compose_train(tmp_path, overrides)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> ColumnStore:
    """A 20k-row, 3-domain synthetic store shared by read-only tests."""
    directory = tmp_path_factory.mktemp("store") / "synthetic"
    SyntheticSource(num_rows=20_000, num_domains=3, seed=1).prepare(directory, directory.parent)
    return ColumnStore(directory)
