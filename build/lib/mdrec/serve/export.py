"""Export the parallel serving model to TorchScript and check the file against the model as trained."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.rundir import load_checked, save_checked
from mdrec.serve.parallel import ParallelModel


def serving_inputs(batch: Batch) -> tuple[Tensor, ...]:
    """The serving model's inputs from a batch: ``(sparse, dense, domain[, seq, seq_lengths])``."""
    return (batch.sparse, batch.dense, batch.domain, *((batch.seq, batch.seq_lengths) if batch.seq is not None else ()))


def export(model: ParallelModel, example: Batch, path: Path) -> torch.jit.ScriptModule:
    """Trace ``model`` on ``example`` (any batch: the graph holds for every size and domain mix), save it to ``path``
    (its folder made if missing) with its sha256 beside it (:func:`mdrec.rundir.save_checked`), and return the file
    loaded back (:func:`load_serving`; serving needs neither mdrec nor Python objects)."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # rows_matmul branches on a layer's width: a constant of the model, rightly a constant of the graph
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="mdrec.nn.domain")
        traced = torch.jit.trace(model, serving_inputs(example), check_trace=False)
    traced.unknown_rows.zero_()  # the trace itself ran a batch
    model.unknown_rows.zero_()
    save_checked(path, lambda f: torch.jit.save(traced, f))
    return load_serving(path)


def load_serving(path: str | Path) -> torch.jit.ScriptModule:
    """The serving graph in ``path`` (written by :func:`export`), checked against its sha256 first
    (:func:`mdrec.rundir.load_checked`; a file without one loads with a warning).

    Raises:
        ValueError: the file is corrupted (truncated, flipped bytes, garbage); the error names it and says what to do.
    """
    remedy = "Delete it and export it again (mdrec-export <run dir>, or mdrec-trim for serving_trimmed.pt)"
    return load_checked(path, lambda p: torch.jit.load(str(p)), "a TorchScript module", remedy)


@torch.no_grad()
def max_difference(served: torch.nn.Module, net: AdaptedNet, batch: Batch) -> float:
    """The largest ``|served - reference|`` probability on ``batch``: the reference is the adapted network as
    trained (``net``, eval) for rows of a known domain and its plain backbone for the others."""
    k = net.num_domains
    known = (batch.domain >= 0) & (batch.domain < k)
    safe = Batch(
        batch.sparse, batch.dense, torch.where(known, batch.domain, 0), batch.labels, batch.seq, batch.seq_lengths
    )
    adapted = torch.sigmoid(net.eval()(safe).logits)
    plain = torch.sigmoid(net.backbone(safe).logits)
    reference = torch.where(known[:, None], adapted, plain)
    difference = (served(*serving_inputs(batch)) - reference).abs()
    return float(difference.max()) if difference.numel() else 0.0
