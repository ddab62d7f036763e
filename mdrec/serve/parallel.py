"""Parallel domain-activated inference (docs/architecture.md, Serving): the backbone and all K domains' adapters
in one graph; each row runs its own domain's adapter, picked by its domain id; a domain the model does not know
falls back to the plain backbone."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from mdrec.adapters.base import FALLBACK_DOMAIN, AdaptedNet, AdapterFactory, grow
from mdrec.adapters.iak import IAK
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.models.dcnv2 import DCNv2Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.nn.domain import DomainLinear, static_groups
from mdrec.nn.embedding import SkippingEmbedding

TOLERANCE = 1e-5  # largest |served - reference| probability: the export check, the fallback slot's probe


def with_fallback_slot(net: AdaptedNet, schema: Schema, make_adapter: AdapterFactory) -> AdaptedNet:
    """``net`` with one more domain slot, K, that leaves the backbone as it is (a freshly built adapter slice: every
    adapter starts as the identity). Every stacked ``[K, ...]`` entry of the adapter's state is copied into the
    first K slots of a K + 1 adapter that ``make_adapter`` builds (:func:`~mdrec.adapters.base.grow`), then put in
    its serving form (:meth:`~mdrec.adapters.base.Adapter.for_serving`). The result runs on a copy of ``net``'s
    backbone, frozen and in eval mode: ``net`` itself is left as it is. (An adapter that does not start as the
    identity, IAK with ``residual=False``, has no such slot: :class:`ParallelModel` refuses it.)"""
    extended = dataclasses.replace(schema, domains=(*schema.domains, FALLBACK_DOMAIN))
    backbone = copy.deepcopy(net.backbone)  # freezing it below must not freeze the caller's
    adapter = grow(net.adapter, make_adapter(extended, backbone)).for_serving(backbone)
    for module in adapter.modules():
        if isinstance(module, DomainLinear):  # same values and shape, each [out, in] slice stored transposed:
            w = module.weight.data  # the per-row product reads weight.mT ([K, in, out]) without a copy per call
            module.weight.data = w.mT.contiguous().mT
    return AdaptedNet(extended, backbone, adapter, freeze=["*"]).eval()


def skips_lookups(net: AdaptedNet) -> bool:
    """Whether a trimmed serving graph of ``net`` can leave the dropped fields' lookups out: its backbone reads the
    sparse ids only through its input layer's embedding (DNN, DCNv2) and its adapter reads none (LoRA, MLoRA, IAK;
    the Wide&Deep head and a Wide&Deep backbone read ids of their own)."""
    backbone = net.backbone
    plain = type(backbone) in (DNNBackbone, DCNv2Backbone) and backbone.input.embedding is not None
    return plain and isinstance(net.adapter, LoRA | IAK)


def probe_batch(schema: Schema, rows: int, domain: int, seed: int = 0) -> Batch:
    """``rows`` random rows of ``schema`` (ids within each field's vocabulary, standard normal dense features, full
    sequences), all of domain id ``domain``."""
    g = torch.Generator().manual_seed(seed)
    vocab = torch.tensor(schema.vocab_sizes, dtype=torch.float64)  # [F]
    sparse = (torch.rand(rows, len(schema.sparse), generator=g, dtype=torch.float64) * vocab).long()  # [rows, F]
    dense = torch.randn(rows, len(schema.dense), generator=g)  # [rows, N]
    seq = seq_lengths = None
    if schema.sequence is not None:
        size = schema.vocab_sizes[schema.sparse_index(schema.sequence.vocab_field)]
        seq = torch.randint(0, size, (rows, schema.sequence.max_len), generator=g)  # [rows, L]
        seq_lengths = torch.full((rows,), schema.sequence.max_len)  # [rows]
    return Batch.unlabelled(sparse, dense, torch.full((rows,), domain), seq, seq_lengths)


def fallback_difference(net: AdaptedNet, schema: Schema, rows: int = 16) -> float:
    """The largest ``|fallback slot - plain backbone|`` probability over ``rows`` random rows of ``schema`` routed to
    ``net``'s last slot (K of a :func:`with_fallback_slot` network): 0 up to rounding when that slot is the
    identity."""
    batch = probe_batch(schema, rows, net.num_domains - 1).to(next(net.backbone.parameters()).device)
    with torch.no_grad():
        served = torch.sigmoid(net(batch, static=True).logits)
        plain = torch.sigmoid(net.backbone(batch).logits)
    return float((served - plain).abs().max())


def dtype_name(t: Tensor) -> str:
    """``t``'s dtype without the ``torch.`` prefix (TorchScript holds a dtype as a number)."""
    names = {
        torch.bool: "bool",
        torch.uint8: "uint8",
        torch.int8: "int8",
        torch.int16: "int16",
        torch.int32: "int32",
        torch.int64: "int64",
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
        torch.float32: "float32",
        torch.float64: "float64",
    }
    return names.get(t.dtype, "dtype " + str(t.dtype))


def check_inputs(sparse: Tensor, dense: Tensor, domain: Tensor, num_sparse: int, dense_names: list[str]) -> Tensor:
    """``domain``, after raising ``ValueError`` unless ``sparse`` is int64 (or int32) ``[B, F]``, ``dense`` float32
    ``[B, N]`` and finite, and ``domain`` int64 (or int32) ``[B]``, with the same B; ``num_sparse`` F,
    ``dense_names`` the N dense features. A NaN or inf would give NaN probabilities: refused naming its row, feature
    and value, as the data pipeline refuses them before training (one pass over ``dense``). (It returns a tensor
    that the caller goes on with: a traced graph keeps the call.)"""
    integer = (torch.int64, torch.int32)
    num_dense = len(dense_names)
    if sparse.dim() != 2 or sparse.shape[1] != num_sparse or sparse.dtype not in integer:
        raise ValueError(
            f"serving model input sparse must be int64 (or int32) [B, F={num_sparse}] ids, got {dtype_name(sparse)} "
            f"{list(sparse.shape)}"
        )
    if dense.dim() != 2 or dense.shape[1] != num_dense or dense.dtype != torch.float32:
        raise ValueError(
            f"serving model input dense must be float32 [B, N={num_dense}] (convert with .float()), got "
            f"{dtype_name(dense)} {list(dense.shape)}"
        )
    finite = torch.isfinite(dense)
    if not bool(finite.all()):
        bad = (~finite).nonzero()  # [bad values, 2]: (row, feature)
        row, column = int(bad[0, 0]), int(bad[0, 1])
        rows = int((~finite).any(dim=1).sum())
        raise ValueError(
            f"serving model input dense row {row} holds {float(dense[row, column])} in feature "
            f"'{dense_names[column]}' (column {column}; rows with NaN or inf: {rows}): it would be served a NaN "
            "probability; fill or drop missing values before serving, as before training"
        )
    if domain.dim() != 1 or domain.dtype not in integer:
        raise ValueError(
            f"serving model input domain must be int64 (or int32) [B] domain ids, got {dtype_name(domain)} "
            f"{list(domain.shape)}"
        )
    if sparse.shape[0] != domain.shape[0] or dense.shape[0] != domain.shape[0]:
        raise ValueError(
            f"serving model inputs sparse, dense and domain must have the same number of rows B, got "
            f"{sparse.shape[0]}, {dense.shape[0]} and {domain.shape[0]}"
        )
    return domain


def check_sequence(seq: Tensor, seq_lengths: Tensor, rows: int) -> Tensor:
    """``seq``, after raising ``ValueError`` unless ``seq`` is int64 (or int32) ``[B, L]`` and ``seq_lengths`` int64
    (or int32) ``[B]``, B = ``rows``."""
    integer = (torch.int64, torch.int32)
    if seq.dim() != 2 or seq.shape[0] != rows or seq.dtype not in integer:
        raise ValueError(
            f"serving model input seq must be int64 (or int32) [B={rows}, L] ids, got {dtype_name(seq)} "
            f"{list(seq.shape)}"
        )
    if seq_lengths.dim() != 1 or seq_lengths.shape[0] != rows or seq_lengths.dtype not in integer:
        raise ValueError(
            f"serving model input seq_lengths must be int64 (or int32) [B={rows}], got {dtype_name(seq_lengths)} "
            f"{list(seq_lengths.shape)}"
        )
    return seq


# the same checks compiled: a traced graph keeps a call to a scripted function, its branches and raises included,
# so the exported file refuses what the eager model refuses (eager calls the Python functions: a plain ValueError)
scripted_check_inputs = torch.jit.script(check_inputs)
scripted_check_sequence = torch.jit.script(check_sequence)


class ServingModel(nn.Module):
    """What every serving graph shares: ``forward(sparse, dense, domain[, seq, seq_lengths])`` -> ``[B, T]`` click
    (and conversion) probabilities, row i served as domain ``domain[i]``.

    ``forward`` refuses inputs of the wrong shape, dtype or row count, and NaN or inf dense values, with a
    ``ValueError`` that names them (for a value: its row, feature and value), in a TorchScript file too (there a
    ``torch.jit.Error``); it counts the rows of a domain id outside ``0..K-1`` in the buffer ``unknown_rows``, then
    calls :meth:`served`. ``served`` is the graph a ``torch.export`` program and an ONNX file hold
    (:mod:`mdrec.serve.export`): an id outside its field's vocabulary (``< 0`` or ``>= vocab_size``; ``seq`` ids: its
    vocabulary field's) is read as 0, the unknown id, as the data pipeline maps unseen values; then
    :meth:`probabilities`, the subclass's own.
    """

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.num_domains = schema.num_domains
        self.num_sparse, self.dense_names = len(schema.sparse), list(schema.dense)
        self.register_buffer("vocab_sizes", torch.tensor(schema.vocab_sizes, dtype=torch.long), persistent=False)
        seq = schema.sequence  # its ids share its vocabulary field's
        self.seq_vocab = schema.vocab_sizes[schema.sparse_index(seq.vocab_field)] if seq is not None else 0
        self.register_buffer("unknown_rows", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        sparse: Tensor,
        dense: Tensor,
        domain: Tensor,
        seq: Tensor | None = None,
        seq_lengths: Tensor | None = None,
    ) -> Tensor:
        tracing = torch.jit.is_tracing()  # the traced graph keeps the scripted checks, raises included
        domain = (scripted_check_inputs if tracing else check_inputs)(
            sparse, dense, domain, self.num_sparse, self.dense_names
        )
        if (seq is None) != (seq_lengths is None):
            raise ValueError("serving model inputs seq and seq_lengths go together: give both or neither")
        if seq is not None and seq_lengths is not None:
            seq = (scripted_check_sequence if tracing else check_sequence)(seq, seq_lengths, domain.shape[0])
        self.unknown_rows += ((domain < 0) | (domain >= self.num_domains)).sum()
        return self.served(sparse, dense, domain, seq, seq_lengths)

    def served(
        self,
        sparse: Tensor,
        dense: Tensor,
        domain: Tensor,
        seq: Tensor | None = None,
        seq_lengths: Tensor | None = None,
    ) -> Tensor:
        """``forward`` without its checks and count: inputs as ``forward`` takes them, already checked."""
        sparse = sparse.masked_fill((sparse < 0) | (sparse >= self.vocab_sizes), 0)  # [B, F]: as the data maps them
        if seq is not None:
            seq = seq.masked_fill((seq < 0) | (seq >= self.seq_vocab), 0)  # out of vocabulary: 0, the unknown id
        return self.probabilities(sparse, dense, domain, seq, seq_lengths)

    def probabilities(
        self, sparse: Tensor, dense: Tensor, domain: Tensor, seq: Tensor | None, seq_lengths: Tensor | None
    ) -> Tensor:
        """``[B, T]`` probabilities of rows whose ids are within their vocabularies (``domain``: any id)."""
        raise NotImplementedError


class ParallelModel(ServingModel):
    """Serves every domain from one graph: ``forward(sparse, dense, domain[, seq, seq_lengths])`` -> ``[B, T]``
    click (and conversion) probabilities, row i through the adapter of domain ``domain[i]``.

    A domain id outside ``0..K-1`` (a domain added after training, a bad id) runs the plain backbone; the rows are
    counted in the buffer ``unknown_rows``. The per-domain products run row by row on the stacked weights over the
    rows sorted by domain (a static grouping, :class:`~mdrec.nn.domain.DomainGroups`: no host synchronisation, no
    data-dependent Python; the adapter in its serving form, ``Adapter.for_serving``), so the module traces or
    exports into one graph that holds for any batch size and domain mix (:mod:`mdrec.serve.export`). Inputs are
    checked and out-of-vocabulary ids read as 0 as :class:`ServingModel` says.

    The fallback is one more slot of the adapter, freshly built. The constructor runs a few random rows through it
    and refuses the adapter unless they equal the backbone's (IAK with ``residual=False`` does not start as the
    backbone): a check of what is served, for any adapter, that needs no property declared by each.

    Args:
        net: the adapted network as trained (K domains); left as it is (the model serves a frozen copy).
        schema: its data's schema.
        make_adapter: builds ``net.adapter``'s kind for a schema on a backbone (here: K + 1 slots).
        drop: per-domain feature trimming (:mod:`mdrec.eval.trim`), bool ``[K, F + N]`` (sparse fields, then dense
            features): each row's dropped features are blanked before the backbone (a sparse field as its id-0
            vector, looked up as id 0; a dense feature as 0). None: no trimming. Unknown domains keep every feature.
        skip_lookups: with ``drop``, leave the dropped fields' lookups out (:class:`~mdrec.nn.embedding.
            SkippingEmbedding`: a gather of the kept ids only, the same probabilities); needs a network whose ids
            only the input layer reads (:func:`skips_lookups`). On CPU the masked gather costs more than the lookups
            it saves (scripts/bench_trim.py), hence off by default.

    Example:
        >>> from mdrec.adapters.lora import LoRA
        >>> net = AdaptedNet(schema, backbone, LoRA(schema, backbone, rank=4))
        >>> model = ParallelModel(net, schema, functools.partial(LoRA, rank=4))
        >>> model(batch.sparse, batch.dense, batch.domain).shape
        torch.Size([8, 1])
        >>> unknown = torch.tensor([0, 1, 7, 2, 0, 1, 2, 9])  # ids 7 and 9: no such domain, the plain backbone
        >>> model(batch.sparse, batch.dense, unknown).shape, int(model.unknown_rows)
        (torch.Size([8, 1]), 2)
    """

    def __init__(
        self,
        net: AdaptedNet,
        schema: Schema,
        make_adapter: AdapterFactory,
        drop: Tensor | None = None,
        skip_lookups: bool = False,
    ) -> None:
        super().__init__(schema)
        if net.adapter is None:
            raise ValueError("ParallelModel serves adapters; this network has none (serve the backbone itself)")
        if not net.backbone.input.serves_any_domain:
            raise ValueError(
                "ParallelModel falls back to the plain backbone for unknown domains, but this backbone embeds the "
                "domain id (input.domain_as_feature=true, model=pooled) and has no embedding for them; serve a "
                "domain-agnostic backbone (pre-train with input=embedded) or one pre-trained with an 'any domain' id "
                "(input=pooled, stage=adapt's default)"
            )
        self.net = with_fallback_slot(net, schema, make_adapter)
        difference = fallback_difference(self.net, schema)
        if difference > TOLERANCE:
            raise ValueError(
                f"ParallelModel serves unknown domain ids with the plain backbone through a fresh slot of the "
                f"adapter, but a fresh {type(net.adapter).__name__} slot is not the identity (random rows differ "
                f"from the backbone by {difference:.2e} > {TOLERANCE:g}): the adapter does not start as the "
                "backbone (IAK with residual=false does not). Serve an adapter that does (e.g. IAK residual=true), or "
                "serve only known domain ids, with the adapted network itself"
            )
        width = len(schema.sparse) + len(schema.dense)
        if drop is not None and (drop.dtype != torch.bool or tuple(drop.shape) != (self.num_domains, width)):
            raise ValueError(
                f"drop must be bool [K={self.num_domains}, F+N={width}], got {drop.dtype} {tuple(drop.shape)}"
            )
        self.trimmed = drop is not None
        if skip_lookups and not (self.trimmed and skips_lookups(net)):  # the adapter as trained, not its serving form
            raise ValueError(
                "skip_lookups needs a drop mask and a network whose sparse ids only its input layer reads (a DNN or "
                f"DCNv2 backbone with a LoRA, MLoRA or IAK adapter); this one has {type(net.backbone).__name__} and "
                f"{type(net.adapter).__name__}"
            )
        self.skipping = skip_lookups
        if self.skipping:  # the serving copy's embedding; the caller's network is left as it is
            self.net.backbone.input.embedding = SkippingEmbedding(self.net.backbone.input.embedding)
        slots = torch.zeros(self.num_domains + 1, width, dtype=torch.bool)  # the fallback slot keeps everything
        self.register_buffer("drop", slots if drop is None else torch.cat([drop, slots[-1:]]))
        for p in self.parameters():
            p.requires_grad_(False)

    def probabilities(
        self, sparse: Tensor, dense: Tensor, domain: Tensor, seq: Tensor | None, seq_lengths: Tensor | None
    ) -> Tensor:
        known = (domain >= 0) & (domain < self.num_domains)
        slot = torch.where(known, domain, self.num_domains)  # [B]: K is the backbone's own slot
        batch = Batch.unlabelled(sparse, dense, slot, seq, seq_lengths)
        if self.trimmed:
            batch = batch.blanked(self.drop, -1 if self.skipping else 0)  # -1: not looked up
        return torch.sigmoid(self.net(batch, static=True).logits)


def serves_any_domain(net: nn.Module) -> bool:
    """Whether ``net`` serves a domain id outside ``0..K-1``: a backbone that does not embed the domain id, or that
    embeds it with an "any domain" id (``input.domain_dropout``)."""
    return isinstance(net, Backbone) and net.input.serves_any_domain


class NetworkModel(ServingModel):
    """Serves a network that groups its own rows by domain (any ``model=``: a multi-domain model such as STAR or
    MMoE, pooled, single-domain, a backbone) in one graph: ``forward(sparse, dense, domain[, seq, seq_lengths])``
    -> ``[B, T]`` probabilities, as :class:`ServingModel`.

    The network runs with static grouping (:func:`~mdrec.nn.domain.static_groups`: per-row products on the stacked
    weights), so the graph holds for any batch size and domain mix. A domain id outside ``0..K-1`` is counted in
    ``unknown_rows``; a backbone that does not embed the domain serves its rows as any other (one with an "any domain"
    id, ``input.domain_dropout``, with that id), and every other network, which has no parameters for a domain it was
    not trained on, gives them NaN probabilities (serve new domains through an adapter run: :class:`ParallelModel`
    falls back to the backbone).

    Args:
        net: the network as trained; left as it is (the model serves a frozen copy in eval mode).
        schema: its data's schema.
    """

    def __init__(self, net: nn.Module, schema: Schema) -> None:
        super().__init__(schema)
        if isinstance(net, AdaptedNet):
            raise ValueError("an adapted network is served by ParallelModel (its unknown domains get the backbone)")
        self.net = copy.deepcopy(net).eval()
        self.any_domain = serves_any_domain(net)
        for p in self.parameters():
            p.requires_grad_(False)

    def probabilities(
        self, sparse: Tensor, dense: Tensor, domain: Tensor, seq: Tensor | None, seq_lengths: Tensor | None
    ) -> Tensor:
        known = (domain >= 0) & (domain < self.num_domains)
        served = domain if self.any_domain else torch.where(known, domain, 0)  # any_domain: unknown ids its own way
        batch = Batch.unlabelled(sparse, dense, served, seq, seq_lengths)
        with static_groups():
            p = torch.sigmoid(self.net(batch).logits)  # [B, T]
        return p if self.any_domain else p.masked_fill(~known[:, None], float("nan"))
