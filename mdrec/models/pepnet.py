"""PEPNet (Chang et al., KDD 2023, "PEPNet: Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information"): EPNet's domain gate on the embeddings, PPNet's per-layer gates from priors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.gates import GateNU
from mdrec.nn.parameter import DomainParameter


class PEPNet(nn.Module):
    """EPNet and PPNet around one DNN (docs/models.md, PEPNet); ``epnet`` / ``ppnet`` switch either off.

    EPNet: ``O_ep = δ_dom ⊙ E`` with ``δ_dom = GateNU([e_d, ∅(E)])``, E the embedded input, e_d the row's learned
    domain embedding and ∅ stop-gradient. PPNet: the prior ``p = [e_d, E(prior fields)]``; before each DNN layer l
    its input is scaled by ``δ_l = GateNU_l([p, ∅(O_ep)])``. Every gate is computed per row (the method is per row);
    the only per-domain parameter is the domain embedding, gathered per row. ``h`` is the last hidden layer.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        layer_sizes: hidden widths of the DNN.
        epnet: gate the embeddings with the domain (EPNet).
        ppnet: gate every DNN layer's input with the priors (PPNet).
        prior_fields: sparse fields whose embeddings join the domain embedding in PPNet's prior (e.g. user and
            item ids); None: the schema's ``user_field`` if it has one.
        gate_hidden: hidden width of every gate (None: the width it scales).
        gamma: γ, every gate's scale.
        dropout: dropout after each hidden activation.
        batch_norm: batch normalisation in the hidden layers.

    Example:
        >>> net = PEPNet(schema, layer_sizes=[32, 16], prior_fields=["movie_id"])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 16]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        epnet: bool = True,
        ppnet: bool = True,
        prior_fields: Sequence[str] | None = None,
        gate_hidden: int | None = None,
        gamma: float = 2.0,
        dropout: float = 0.2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {list(layer_sizes)}")
        if not epnet and not ppnet:
            raise ValueError("PEPNet needs epnet=true, ppnet=true or both (neither is a plain DNN: use model=backbone)")
        self.num_domains = schema.num_domains
        self.input = input(schema)
        width, dim = self.input.out_features, self.input.embedding_dim
        self.domain_embedding = DomainParameter(torch.randn(self.num_domains, dim) * self.input.init_std)
        self.ep_gate = GateNU(dim + width, width, gate_hidden, gamma) if epnet else None
        if prior_fields is None:
            prior_fields = [schema.user_field] if schema.user_field is not None else []
        unknown = [f for f in prior_fields if f not in self.input.field_names]
        if unknown:
            raise ValueError(
                f"prior_fields {unknown} are not embedded fields of schema {schema.dataset_id!r}; "
                f"choose among {self.input.field_names}"
            )
        columns = [torch.arange(dim) + dim * self.input.field_names.index(f) for f in prior_fields]
        self.register_buffer("prior_columns", torch.cat(columns) if columns else torch.zeros(0, dtype=torch.long))
        prior_width = dim * (1 + len(prior_fields))
        widths = [width, *layer_sizes]
        self.pp_gates = (
            nn.ModuleList(GateNU(prior_width + width, w, gate_hidden, gamma) for w in widths[:-1]) if ppnet else None
        )
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(o) for o in layer_sizes) if batch_norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(layer_sizes[-1], 1)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.input(batch)  # [B, in]
        e_d = self.domain_embedding[batch.domain]  # [B, D]
        o_ep = e if self.ep_gate is None else self.ep_gate(torch.cat([e_d, e.detach()], dim=1)) * e  # [B, in]
        deltas = []  # PPNet's gate of each layer's input
        if self.pp_gates is not None:
            prior = torch.cat([e_d, e.index_select(1, self.prior_columns)], dim=1)  # [B, D (1 + priors)]
            condition = torch.cat([prior, o_ep.detach()], dim=1)
            deltas = [gate(condition) for gate in self.pp_gates]  # [B, width of layer l's input] each
        h = o_ep
        for i, linear in enumerate(self.linears):
            h = linear(deltas[i] * h if deltas else h)
            if self.norms is not None:
                h = self.norms[i](h)
            h = self.dropout(torch.relu(h))
        return ModelOutput(logits=self.output(h), aux_loss=h.new_zeros(()), h=h)
