"""Domain subsets for the cross-domain warm start: per-domain training fractions, and a vocabulary fitted on the
source domains only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.splits import RandomSplit
from mdrec.data.synthetic import SyntheticSource


def datamodule(tmp_path: Path, **options: object) -> MultiDomainDataModule:
    source = SyntheticSource(num_rows=20_000, num_domains=4, vocab_sizes=[3000, 50], seed=3)
    dm = MultiDomainDataModule(source, RandomSplit(), str(tmp_path), batch_size=512, **options)
    dm.prepare_data()
    dm.setup()
    return dm


def test_domain_fractions_subsample_train_and_hold_out_validation(tmp_path: Path) -> None:
    full = datamodule(tmp_path)
    dm = datamodule(tmp_path, domain_fractions={"d1": 0.1, "d3": 0.0})
    count = lambda m, split: np.bincount(m.split_column(split, "domain"), minlength=4)  # noqa: E731
    full_train, train = count(full, "train"), count(dm, "train")
    assert train[0] == full_train[0] and train[2] == full_train[2] and train[3] == 0
    assert abs(train[1] - 0.1 * full_train[1]) < 4 * (0.09 * full_train[1]) ** 0.5  # binomial, 4 sigma
    assert count(dm, "val")[3] == 0 and count(dm, "val")[1] == count(full, "val")[1]
    assert np.array_equal(count(dm, "test"), count(full, "test"))  # test rows never change
    with pytest.raises(ValueError, match=r"data.domain_fractions names unknown domain\(s\) \['d9'\]"):
        datamodule(tmp_path, domain_fractions={"d9": 0.5})
    with pytest.raises(ValueError, match="must be shares in"):
        datamodule(tmp_path, domain_fractions={"d1": 2.0})


def test_vocabulary_of_source_domains_maps_unseen_target_ids_to_0(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, vocab_domains=["d0", "d1", "d2"])
    users = dm.split_column("train", "user_id")[dm.split_column("train", "domain") < 3]
    seen = np.zeros(3001, dtype=bool)
    seen[users] = True
    batch = next(iter(dm.loader("test")))
    mapped = dm.on_before_batch_transfer(batch, 0)
    raw = batch.sparse[:, 0].numpy()
    assert np.array_equal(mapped.sparse[:, 0].numpy(), np.where(seen[raw], raw, 0))
    assert (mapped.sparse[:, 0] == 0).any() and torch.equal(mapped.sparse[:, 1], batch.sparse[:, 1])
    # coverage is reported against the same vocabulary
    share = dm.unseen_shares("test")["user_id"]
    d3 = dm.split_column("test", "domain") == 3
    assert share["d3"] == pytest.approx((~seen[dm.split_column("test", "user_id")[d3]]).mean(), abs=1e-6)
