"""Per-domain trimmed variants (docs/methods.md, Feature trimming: topology A): for a domain with a trimming plan, a
plain network that no longer has the dropped features at all (their embedding lookups gone, the first layer
narrowed), served by routing the domain's requests to it.

A blanked sparse field (id 0) adds a constant to the first layer's input, ``W[:, f] e_0(f)``, and a blanked dense
feature (0) adds nothing: folding those constants into the first layer's bias and removing the fields' columns gives
exactly the blanked model, with fewer lookups and a narrower first matrix product. A backbone that embeds the domain
id (``input=pooled``) reads one constant vector on a domain's rows: it is folded into the bias the same way. The
domain's adapter is merged into the backbone first (:meth:`mdrec.adapters.lora.LoRA.merged`), so the variant is one
plain network. A variant can then be briefly re-trained on its domain's rows (:func:`recovered`) to make up for what
the dropped features carried.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.eval.trim import Retraining, retrain
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.rundir import load_checked, save_checked


class Variant(nn.Module):
    """One domain's trimmed network: ``forward(sparse, dense)`` -> ``[B, T]`` probabilities, ``sparse`` int64
    ``[B, F']`` and ``dense`` float32 ``[B, N']`` holding only the kept features (``sparse_names``, ``dense_names``,
    in that order)."""

    def __init__(self, network: DNNBackbone, schema: Schema) -> None:
        super().__init__()
        self.network = network.eval()
        self.sparse_names, self.dense_names = list(schema.sparse_names), list(schema.dense)
        self.register_buffer("vocab_sizes", torch.tensor(schema.vocab_sizes, dtype=torch.long), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        sparse = sparse.masked_fill((sparse < 0) | (sparse >= self.vocab_sizes), 0)  # out of vocabulary: id 0
        domain = torch.zeros(sparse.shape[0], dtype=torch.long, device=sparse.device)  # unused by a plain network
        return torch.sigmoid(self.network(Batch.unlabelled(sparse, dense, domain)).logits)


def variant(net: AdaptedNet, schema: Schema, domain: int, drop: Tensor) -> Variant:
    """Domain ``domain``'s variant of ``net`` without the features ``drop`` (bool ``[F + N]``, sparse fields then
    dense features): equal to ``net`` with those features blanked on the domain's rows (up to rounding).

    Raises:
        ValueError: a backbone other than the DNN, an input with a sequence, an adapter
            that does not merge into the backbone (only LoRA and MLoRA do; none is fine), or a ``drop`` of another
            width.
    """
    backbone = net.backbone
    if type(backbone) is not DNNBackbone or schema.sequence is not None:
        raise ValueError(
            "trimmed variants (topology A) narrow the first layer of a DNN backbone (backbone=dnn) without a sequence "
            f"field; this run has {type(backbone).__name__}: serve its trimmed mask instead (mdrec-trim without "
            "--variants)"
        )
    width = len(schema.sparse) + len(schema.dense)
    if drop.dtype != torch.bool or tuple(drop.shape) != (width,):
        raise ValueError(f"drop must be bool [F+N={width}], got {drop.dtype} {tuple(drop.shape)}")
    if net.adapter is not None and not isinstance(net.adapter, LoRA):
        raise ValueError(
            f"trimmed variants (topology A) merge the domain's adapter into the backbone; {type(net.adapter).__name__} "
            "does not merge (adapter=lora and mlora do): serve its trimmed mask instead (mdrec-trim without --variants)"
        )
    plain = net.adapter.merged(backbone, domain) if isinstance(net.adapter, LoRA) else copy.deepcopy(backbone)
    return Variant(narrowed(plain.eval(), schema, drop, domain), kept_schema(schema, drop))


def recovered(model: Variant, rows: Batch, drop: Tensor, how: Retraining) -> tuple[Variant, list[float]]:
    """A copy of ``model`` (a domain's variant without ``drop``, bool ``[F + N]``) whose dense layers (every layer
    after the embeddings: the narrowed first layer, the rest of the MLP, the output) are re-trained by
    :func:`mdrec.eval.trim.retrain` on ``rows`` (the domain's training rows, every feature; their domain ids are
    not read); the embeddings, ``model`` and every other network stay as they are. Returns the copy and the loss of
    each step."""
    out = copy.deepcopy(model)
    network = out.network.train()
    params = [p for name, p in network.named_parameters() if not name.startswith("input.")]
    for p in params:
        p.requires_grad_(True)
    sparse, dense = split_inputs(rows, drop)
    kept = Batch(sparse, dense, torch.zeros(rows.size, dtype=torch.long), rows.labels)
    losses = retrain(lambda b: network(b).logits, params, kept, how)
    network.eval().requires_grad_(False)
    return out, losses


def kept_schema(schema: Schema, drop: Tensor) -> Schema:
    """``schema`` with only the features ``drop`` keeps (a dropped user field is no user field any more)."""
    f = len(schema.sparse)
    sparse = tuple(s for s, gone in zip(schema.sparse, drop[:f].tolist(), strict=True) if not gone)
    dense = tuple(d for d, gone in zip(schema.dense, drop[f:].tolist(), strict=True) if not gone)
    user = schema.user_field if schema.user_field in {s.name for s in sparse} else None
    return dataclasses.replace(schema, sparse=sparse, dense=dense, user_field=user)


@torch.no_grad()
def narrowed(backbone: DNNBackbone, schema: Schema, drop: Tensor, domain: int) -> DNNBackbone:
    """A copy of ``backbone`` for domain ``domain``'s rows whose input holds only the kept features and no domain
    field: the kept fields' embedding rows, the first layer's kept columns, and its bias plus ``W[:, f] e_0(f)`` for
    every dropped sparse field f (what the blanked id 0 fed it) and, where the backbone embeds the domain id, plus
    ``W[:, domain] e(domain)`` (an id it has no vector for reads the "any domain" one, as the input does). ``backbone``
    in eval mode (the domain's id read without dropout)."""
    old = backbone.input
    out = copy.deepcopy(backbone)
    sub = kept_schema(schema, drop)
    out.input = EmbeddedInput(sub, embedding_dim=old.embedding_dim, init_std=old.init_std)
    f, d = len(schema.sparse), old.embedding_dim
    kept_fields = [i for i in range(f) if not drop[i]]
    table = old.embedding.table.weight  # [sum V, D]
    offsets = [0, *torch.tensor(schema.vocab_sizes).cumsum(0).tolist()]
    if out.input.embedding is not None:
        out.input.embedding.table.weight.copy_(torch.cat([table[offsets[i] : offsets[i + 1]] for i in kept_fields]))
    first: nn.Linear = backbone.mlp.layers[0]
    columns = [*(c for i in kept_fields for c in range(i * d, (i + 1) * d))]
    width = len(old.vocab_sizes) * d  # the embedded fields' columns: the sparse fields, then the domain's if embedded
    columns += [width + j for j in range(len(schema.dense)) if not drop[f + j]]
    rows = {i: offsets[i] for i in range(f) if drop[i]}  # the constant vectors: the blanked ids 0 ...
    if old.domain_as_feature:  # ... and the domain's own vector (field f; the backbone is in eval mode: no dropout)
        rows[f] = offsets[f] + int(old.domain_ids(torch.tensor([domain]))[0])
    constant = sum(
        (first.weight[:, i * d : (i + 1) * d] @ table[row] for i, row in rows.items()), torch.zeros(first.out_features)
    )
    layer = nn.Linear(len(columns), first.out_features)
    layer.weight.copy_(first.weight[:, columns])
    layer.bias.copy_(first.bias + constant)
    out.mlp.layers[0] = layer
    return out


def split_inputs(batch: Batch, drop: Tensor) -> tuple[Tensor, Tensor]:
    """``batch``'s ``sparse`` and ``dense`` columns that a variant without ``drop`` (bool ``[F + N]``) takes."""
    f = batch.sparse.shape[1]
    return batch.sparse[:, ~drop[:f]], batch.dense[:, ~drop[f:]].float()


ROUTING = "routing.json"


@torch.no_grad()
def blanked_difference(net: AdaptedNet, schema: Schema, drop: Tensor, data: Batch) -> float:
    """The largest absolute difference between every domain's variant (:func:`variant`, as sliced) and ``net`` with
    the features ``drop`` (bool ``[K, F + N]``) blanked, on the domain's rows of ``data`` (a domain without rows
    there is not checked)."""
    worst = 0.0
    for d in range(schema.num_domains):
        rows = data.rows(torch.nonzero(data.domain == d).flatten())
        if rows.size:
            served = variant(net, schema, d, drop[d])(*split_inputs(rows, drop[d]))
            worst = max(worst, float((served - torch.sigmoid(net(rows.blanked(drop)).logits)).abs().max()))
    return worst


def export_variants(models: dict[str, Variant], drop: Tensor, data: Batch, directory: Path) -> dict[str, Any]:
    """Every domain's variant ``models[domain]`` (in the schema's domain order; without the features ``drop``, bool
    ``[K, F + N]``), traced to TorchScript as ``<directory>/<domain>.pt`` (checksummed), and ``routing.json``: per
    domain its file and the features its requests carry, in order; each file is loaded back and checked against its
    module on the domain's rows of ``data`` (``max_abs_difference``, the largest over domains). A request's domain
    picks its file; an unknown domain has none (serve it the full model)."""
    directory.mkdir(parents=True, exist_ok=True)
    routes: dict[str, dict[str, Any]] = {}
    worst = 0.0
    for d, (name, model) in enumerate(models.items()):
        rows = data.rows(torch.nonzero(data.domain == d).flatten())
        if rows.size == 0:
            raise ValueError(f"no rows of domain {name!r} to trace and check its variant with")
        inputs = split_inputs(rows, drop[d])
        path = directory / f"{name}.pt"
        with torch.no_grad():
            traced = torch.jit.trace(model, inputs, check_trace=False)
        save_checked(path, lambda f, t=traced: torch.jit.save(t, f))
        served = load_checked(path, torch.jit.load, "a TorchScript module", "export the variants again")
        with torch.no_grad():
            worst = max(worst, float((served(*inputs) - model(*inputs)).abs().max()))
        routes[name] = {"file": path.name, "sparse": model.sparse_names, "dense": model.dense_names}
    report = {"domains": routes, "max_abs_difference": worst, "rows_checked": data.size}
    (directory / ROUTING).write_text(json.dumps(report, indent=2))
    return report
