"""Export a serving model (:class:`~mdrec.serve.parallel.ServingModel`) to a file in one of three formats, load it
back, and check it against the network as trained.

- ``torchscript`` (``.pt``): the model traced with its input checks (a bad request raises naming the input);
  ``torch.jit.load``.
- ``aoti`` (``.pt2``): a ``torch.export`` program of :meth:`~mdrec.serve.parallel.ServingModel.served` compiled
  ahead of time by AOTInductor (C++ built with the system compiler); ``torch._inductor.aoti_load_package``.
- ``onnx`` (``.onnx``): the same program in ONNX (opset 18); any ONNX runtime (``onnxruntime``: ``pip install
  mdrec[export]``).

The three take the same request (the report ``mdrec-export`` writes beside them lists its columns): ``sparse``
int64 ``[B, F]``, ``dense`` float32 ``[B, N]``, ``domain`` int64 ``[B]`` (and ``seq`` int64 ``[B, L]``,
``seq_lengths`` int64 ``[B]`` with a sequence field) -> float32 ``[B, T]``; any B. The ``.pt2`` and ``.onnx``
programs check shapes and dtypes by their input specs only: NaN dense values there give NaN probabilities, and
there is no ``unknown_rows`` counter.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.rundir import load_checked, save_checked
from mdrec.serve.parallel import ServingModel, serves_any_domain

Format = Literal["torchscript", "aoti", "onnx"]
FORMATS: tuple[Format, ...] = get_args(Format)
SUFFIXES: dict[Format, str] = {"torchscript": ".pt", "aoti": ".pt2", "onnx": ".onnx"}
ONNX_OPSET = 18
Served = Callable[..., Tensor]  # a loaded file: the serving inputs -> [B, T] probabilities


def serving_inputs(batch: Batch) -> tuple[Tensor, ...]:
    """The serving model's inputs from a batch: ``(sparse, dense, domain[, seq, seq_lengths])``."""
    return (batch.sparse, batch.dense, batch.domain, *((batch.seq, batch.seq_lengths) if batch.seq is not None else ()))


def input_names(example: Batch) -> list[str]:
    """The names of :func:`serving_inputs`, in order."""
    return ["sparse", "dense", "domain", *(["seq", "seq_lengths"] if example.seq is not None else [])]


def onnx_available() -> bool:
    """Whether the ONNX exporter's packages (``onnx``, ``onnxscript``) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def export(model: ServingModel, example: Batch, path: Path) -> torch.jit.ScriptModule:
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


class ServedGraph(nn.Module):
    """``model.served`` as a module's forward: the graph ``torch.export`` takes (no checks, no counter)."""

    def __init__(self, model: ServingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model.served(*inputs)


def exported_program(model: ServingModel, example: Batch) -> torch.export.ExportedProgram:
    """``model.served`` as a ``torch.export`` program for any number of rows B (``example``: any batch of at least
    two rows; the inputs' other sizes are fixed)."""
    inputs = serving_inputs(example)
    if example.size < 2:
        raise ValueError(f"export a dynamic batch size from an example of at least 2 rows, got {example.size}")
    rows = torch.export.Dim("B", min=1)
    with torch.no_grad():
        return torch.export.export(
            ServedGraph(model.eval()), inputs, dynamic_shapes=(tuple({0: rows} for _ in inputs),)
        )


def export_aoti(model: ServingModel, example: Batch, path: Path) -> Served:
    """``model``'s :func:`exported_program` compiled by AOTInductor into the package ``path`` (``.pt2``; its folder
    made if missing, its sha256 beside it), returned loaded back (:func:`load_aoti`)."""
    program = exported_program(model, example)
    buffer = io.BytesIO()
    torch._inductor.aoti_compile_and_package(program, package_path=buffer)
    save_checked(path, lambda f: f.write(buffer.getvalue()))
    return load_aoti(path)


def export_onnx(model: ServingModel, example: Batch, path: Path) -> Served | None:
    """``model``'s :func:`exported_program` as an ONNX file ``path`` (its folder made if missing, its sha256 beside
    it), returned loaded back into onnxruntime (:func:`load_onnx`; None when onnxruntime is not installed).

    Raises:
        ModuleNotFoundError: ``onnx`` or ``onnxscript`` is missing (``pip install mdrec[export]``).
    """
    if not onnx_available():
        raise ModuleNotFoundError("ONNX export needs the packages onnx and onnxscript: pip install 'mdrec[export]'")
    program = exported_program(model, example).run_decompositions({})  # out= arguments made functional first
    program = program.run_decompositions(ONNX_DECOMPOSITIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own passes
        onnx_program = torch.onnx.export(
            program,
            input_names=input_names(example),
            output_names=["probabilities"],
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    proto = onnx_program.model_proto.SerializeToString()
    save_checked(path, lambda f: f.write(proto))
    return load_onnx(path) if onnxruntime_available() else None


def unstable_sort(x: Tensor, *, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Tensor:
    """``aten.sort.stable`` as ``aten.sort.default``. ONNX has no stable sort: ``aten.sort`` goes to TopK, whose ties
    keep their index order (the ONNX specification), the order of the stable sort."""
    return torch.ops.aten.sort.default(x, dim, descending)


def summed_bags(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    scale_grad_by_freq: bool,
    mode: int,
    sparse: bool,
    per_sample_weights: Tensor | None,
    include_last_offset: bool,
    padding_idx: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``aten.embedding_bag`` in sum mode (the per-row products of :func:`mdrec.nn.domain.rows_matmul`) as a gather
    of the weighted rows and a scatter-add into their bags: ops ONNX has (its own translation is a loop over bags).
    Only the bag sums are computed (the three other outputs are empty)."""
    if mode != 0 or include_last_offset or padding_idx is not None:
        raise NotImplementedError("the ONNX export writes embedding_bag in sum mode without padding or last offset")
    rows = weight.index_select(0, indices.long())  # [n, out]
    if per_sample_weights is not None:
        rows = rows * per_sample_weights[:, None]
    starts = torch.zeros_like(indices, dtype=torch.long).index_add(0, offsets.long(), torch.ones_like(offsets).long())
    bag = starts.cumsum(0) - 1  # [n]: each id's bag
    out = rows.new_zeros(offsets.shape[0], weight.shape[1]).index_add(0, bag, rows)  # [bags, out]
    empty = indices.new_zeros(0)
    return out, empty, empty, empty


# what the ONNX export decomposes first: the stable sort ONNX refuses, the bag sums it would loop over
ONNX_DECOMPOSITIONS = {torch.ops.aten.sort.stable: unstable_sort, torch.ops.aten.embedding_bag.padding_idx: summed_bags}


def write(fmt: Format, model: ServingModel, example: Batch, path: Path) -> Served | None:
    """Export ``model`` to ``path`` in format ``fmt`` and return the file loaded back (None: an ONNX file without
    onnxruntime to run it)."""
    writers = {"torchscript": export, "aoti": export_aoti, "onnx": export_onnx}
    return writers[fmt](model, example, path)


REMEDY = "Delete it and export it again (mdrec-export <run dir>, or mdrec-trim for serving_trimmed.pt)"


def load_serving(path: str | Path) -> torch.jit.ScriptModule:
    """The serving graph in ``path`` (written by :func:`export`), checked against its sha256 first
    (:func:`mdrec.rundir.load_checked`; a file without one loads with a warning).

    Raises:
        ValueError: the file is corrupted (truncated, flipped bytes, garbage); the error names it and says what to do.
    """
    return load_checked(path, lambda p: torch.jit.load(str(p)), "a TorchScript module", REMEDY)


def load_aoti(path: str | Path) -> Served:
    """The AOTInductor package in ``path`` (written by :func:`export_aoti`), checked against its sha256 first; called
    with the serving inputs, it returns ``[B, T]`` probabilities. The package holds compiled native code that loading
    runs: load only files you exported (the checksum guards against corruption, not against a crafted file)."""
    package = load_checked(
        path, lambda p: torch._inductor.aoti_load_package(str(p)), "an AOTInductor package (.pt2)", REMEDY
    )
    return lambda *inputs: package(*inputs)


def load_onnx(path: str | Path, threads: int = 1) -> Served:
    """The ONNX file in ``path`` (written by :func:`export_onnx`) in an onnxruntime session of ``threads`` threads,
    checked against its sha256 first; called with the serving inputs (tensors), it returns ``[B, T]``
    probabilities."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = load_checked(
        path,
        lambda p: onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]),
        "an ONNX model",
        REMEDY,
    )
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: Tensor) -> Tensor:
        feed = {name: t.numpy() for name, t in zip(names, inputs, strict=True)}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


def expected_probabilities(net: nn.Module, batch: Batch, num_domains: int) -> Tensor:
    """What a serving model of ``net`` (eval; K = ``num_domains``) should return for ``batch`` ``[B, T]``: an adapted
    network's own probabilities on rows of a known domain and its plain backbone's on the others; any other network's
    on rows of a known domain, and on the others its own if it serves any domain (a backbone that does not read the
    domain, or reads an unknown one as "any domain"), else NaN."""
    known = (batch.domain >= 0) & (batch.domain < num_domains)
    safe = Batch(
        batch.sparse, batch.dense, torch.where(known, batch.domain, 0), batch.labels, batch.seq, batch.seq_lengths
    )
    own = torch.sigmoid(net.eval()(safe).logits)
    plain = net.backbone if isinstance(net, AdaptedNet) else net  # what serves the unknown domains' rows
    if serves_any_domain(plain):
        other = torch.sigmoid(plain(batch).logits)  # the unknown ids as they are
    else:
        other = torch.full_like(own, float("nan"))
    return torch.where(known[:, None], own, other)


@torch.no_grad()
def max_difference(served: Served, net: nn.Module, batch: Batch, num_domains: int | None = None) -> float:
    """The largest ``|served - expected|`` probability on ``batch`` (:func:`expected_probabilities`, ``net`` as
    trained, K = ``num_domains``, default ``net.num_domains``); inf where one is NaN and the other is not."""
    expected = expected_probabilities(net, batch, net.num_domains if num_domains is None else num_domains)
    got = served(*serving_inputs(batch))
    if not torch.equal(expected.isnan(), got.isnan()):
        return float("inf")
    difference = (got - expected).abs().nan_to_num(0.0)
    return float(difference.max()) if difference.numel() else 0.0
