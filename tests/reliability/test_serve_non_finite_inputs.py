"""The serving model refuses NaN and inf dense inputs, naming the row, the feature and the value, in the eager
``ParallelModel`` and in the exported TorchScript file: served, they would give NaN probabilities."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.models.dnn import DNNBackbone
from mdrec.serve.export import export
from mdrec.serve.parallel import ParallelModel
from tests.helpers import ADAPTERS, SCHEMA, embedded, make_batch, perturb

TWO_DENSE = dataclasses.replace(SCHEMA, dense=("age", "price"))


def with_two_dense(batch: Batch) -> Batch:
    """``batch`` with a second dense feature, ``price``."""
    return dataclasses.replace(batch, dense=torch.cat([batch.dense, 2 * batch.dense + 1], dim=1))


def test_nan_and_inf_dense_inputs_are_refused_naming_the_row_in_the_model_and_its_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = DNNBackbone(TWO_DENSE, embedded(8), [16, 8]).eval()
    net = perturb(AdaptedNet(TWO_DENSE, backbone, ADAPTERS["lora"](TWO_DENSE, backbone))).eval()
    model = ParallelModel(net, TWO_DENSE, ADAPTERS["lora"])
    export(model, with_two_dense(make_batch(16, seed=1)), tmp_path / "serving.pt")
    served = torch.jit.load(str(tmp_path / "serving.pt"))  # as a serving system loads it
    b = with_two_dense(make_batch(10, seed=3))
    domain = torch.tensor([0, 1, 2, 7, 0, 1, 2, 0, 1, 2])  # row 3: an unknown domain, counted when served
    clean = model(b.sparse, b.dense, domain)
    assert torch.isfinite(clean).all()
    cases = []
    nan = b.dense.clone()
    nan[6, 1] = float("nan")
    cases.append((nan, "dense row 6 holds nan in feature 'price' (column 1; rows with NaN or inf: 1)"))
    several = b.dense.clone()
    several[2, 0], several[2, 1], several[8, 1] = float("-inf"), float("nan"), float("inf")
    cases.append((several, "dense row 2 holds -inf in feature 'age' (column 0; rows with NaN or inf: 2)"))
    for dense, message in cases:
        expected = re.escape(message) + ".*fill or drop missing values before serving"
        with pytest.raises(ValueError, match=expected):
            model(b.sparse, dense, domain)
        with pytest.raises(torch.jit.Error, match=expected):
            served(b.sparse, dense, domain)
    # refused before anything was served: only the clean call counted its unknown row
    assert int(model.unknown_rows) == 1 and int(served.unknown_rows) == 0
    torch.testing.assert_close(served(b.sparse, b.dense, domain), clean, rtol=1e-5, atol=1e-6)  # finite rows serve
    assert int(served.unknown_rows) == 1
