"""Parallel domain-activated inference (METHODS.md 1): the backbone and all K domains' adapters in one graph;
each row runs its own domain's adapter, picked by its domain id; a domain the model does not know falls back to
the plain backbone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mdrec.adapters.base import AdaptedNet, Adapter
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.nn.domain import DomainLinear

FALLBACK = "<unknown>"
# builds an adapter for a schema on a backbone: the adapter class with its options bound (what the ``adapter``
# config node instantiates with ``_partial_``)
AdapterFactory = Callable[[Schema, nn.Module], Adapter]


def with_fallback_slot(net: AdaptedNet, schema: Schema, make_adapter: AdapterFactory) -> AdaptedNet:
    """``net`` with one more domain slot, K, that leaves the backbone as it is (a freshly built adapter slice: every
    adapter starts as the identity). Every stacked ``[K, ...]`` entry of the adapter's state is copied into the
    first K slots of a K + 1 adapter that ``make_adapter`` builds, then put in its serving form
    (:meth:`~mdrec.adapters.base.Adapter.for_serving`). (An adapter that does not start as the identity,
    IAK with ``residual=False``, has no such slot: ``mdrec-export``'s check of unknown-domain rows fails on it.)"""
    extended = dataclasses.replace(schema, domains=(*schema.domains, FALLBACK))
    adapter = make_adapter(extended, net.backbone)
    own, trained = adapter.state_dict(), net.adapter.state_dict()
    k = schema.num_domains
    for key, value in trained.items():
        if own[key].shape == value.shape:
            own[key] = value
        elif own[key].shape == (k + 1, *value.shape[1:]):
            own[key] = torch.cat([value, own[key][k:]])
        else:
            raise ValueError(f"adapter entry {key}: {tuple(value.shape)} does not stack per domain ({k} domains)")
    adapter.load_state_dict(own)
    adapter = adapter.for_serving(net.backbone)
    for module in adapter.modules():
        if isinstance(module, DomainLinear):  # same values and shape, each [out, in] slice stored transposed:
            w = module.weight.data  # the per-row product reads weight.mT ([K, in, out]) without a copy per call
            module.weight.data = w.mT.contiguous().mT
    return AdaptedNet(extended, net.backbone, adapter, freeze=["*"]).eval()


class ParallelModel(nn.Module):
    """Serves every domain from one graph: ``forward(sparse, dense, domain[, seq, seq_lengths])`` -> ``[B, T]``
    click (and conversion) probabilities, row i through the adapter of domain ``domain[i]``.

    A domain id outside ``0..K-1`` (a domain added after training, a bad id) runs the plain backbone; the rows are
    counted in the buffer ``unknown_rows``. The per-domain products run row by row on the stacked weights over the
    rows sorted by domain (a static grouping, :class:`~mdrec.nn.domain.DomainGroups`: no host synchronisation, no
    data-dependent Python; the adapter in its serving form, ``Adapter.for_serving``), so the module traces into
    one TorchScript graph that holds for any batch size and domain mix (:func:`mdrec.serve.export.export`).

    Args:
        net: the adapted network as trained (K domains).
        schema: its data's schema.
        make_adapter: builds ``net.adapter``'s kind for a schema on a backbone (here: K + 1 slots).
        drop: per-domain feature trimming (:mod:`mdrec.eval.trim`), bool ``[K, F + N]`` (sparse fields, then dense
            features): each row's dropped features are blanked before the backbone; None: no trimming. Unknown
            domains keep every feature.

    Example:
        >>> model = ParallelModel(adapted_net, schema, partial(LoRA, rank=4))                # doctest: +SKIP
        >>> model(batch.sparse, batch.dense, batch.domain).shape                            # doctest: +SKIP
        torch.Size([4096, 1])
    """

    def __init__(
        self, net: AdaptedNet, schema: Schema, make_adapter: AdapterFactory, drop: Tensor | None = None
    ) -> None:
        super().__init__()
        if net.adapter is None:
            raise ValueError("ParallelModel serves adapters; this network has none (serve the backbone itself)")
        if getattr(getattr(net.backbone, "input", None), "domain_as_feature", False):
            raise ValueError(
                "ParallelModel falls back to the plain backbone for unknown domains, but this backbone embeds the "
                "domain id (backbone.domain_as_feature=true, model=pooled) and has no embedding for them; serve a "
                "domain-agnostic backbone (pre-train with model=backbone)"
            )
        self.num_domains = schema.num_domains
        self.net = with_fallback_slot(net, schema, make_adapter)
        width = len(schema.sparse) + len(schema.dense)
        if drop is not None and (drop.dtype != torch.bool or tuple(drop.shape) != (self.num_domains, width)):
            raise ValueError(
                f"drop must be bool [K={self.num_domains}, F+N={width}], got {drop.dtype} {tuple(drop.shape)}"
            )
        self.trimmed = drop is not None
        slots = torch.zeros(self.num_domains + 1, width, dtype=torch.bool)  # the fallback slot keeps everything
        self.register_buffer("drop", slots if drop is None else torch.cat([drop, slots[-1:]]))
        self.register_buffer("unknown_rows", torch.zeros((), dtype=torch.long))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(
        self,
        sparse: Tensor,
        dense: Tensor,
        domain: Tensor,
        seq: Tensor | None = None,
        seq_lengths: Tensor | None = None,
    ) -> Tensor:
        known = (domain >= 0) & (domain < self.num_domains)
        self.unknown_rows += (~known).sum()
        slot = torch.where(known, domain, self.num_domains)  # [B]: K is the backbone's own slot
        batch = Batch.unlabelled(sparse, dense, slot, seq, seq_lengths)
        if self.trimmed:
            batch = batch.blanked(self.drop)
        return torch.sigmoid(self.net(batch, static=True).logits)
