"""APG (Yan et al., NeurIPS 2022, "APG: Adaptive Parameter Generation Network for Click-Through Rate
Prediction"): a DNN whose layers' weights are generated from a condition, low-rank ``W = U S(z) V``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups
from mdrec.nn.meta import APGLinear
from mdrec.nn.parameter import DomainParameter

Condition = Literal["domain", "self", "mix"]
CONDITIONS = get_args(Condition)


class APG(nn.Module):
    """A DNN of :class:`~mdrec.nn.meta.APGLinear` layers (docs/models.md, APG).

    The condition z of layer l is, by ``condition``: ``domain`` the row's domain embedding e_d (group-wise: one
    weight per domain, generated once per forward and applied to each domain's block of rows); ``self`` the
    layer's own input ``h_{l-1}`` (self-wise: a weight per row; knows nothing of domains unless the input embeds
    the domain, ``input.domain_as_feature``); ``mix`` ``[e_d, h_{l-1}]`` (mix-wise, per row). Each layer is
    ``h_l = Dropout(ReLU([BN](h_{l-1} W_l(z) + b_l(z))))``, then ``s = w_o · h_L + b_o``; ``h = h_L``.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        layer_sizes: hidden widths of the DNN.
        condition: ``domain``, ``self`` or ``mix`` (see above).
        rank: R of ``W = U S(z) V``, capped per layer at min(in, out) (None: generate whole weights).
        overparam: p, the over-parameterisation width of U and V (None: none).
        generate_bias: generate the biases from z too.
        hyper_sizes: hidden widths of every weight generator.
        dropout: dropout after each hidden activation.
        batch_norm: batch normalisation in the hidden layers.

    Example:
        >>> net = APG(schema, layer_sizes=[16, 8], rank=4)
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        condition: Condition = "mix",
        rank: int | None = 32,
        overparam: int | None = None,
        generate_bias: bool = True,
        hyper_sizes: Sequence[int] = (),
        dropout: float = 0.2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {list(CONDITIONS)}, got {condition!r}")
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {list(layer_sizes)}")
        self.num_domains, self.condition = schema.num_domains, condition
        self.input = input(schema)
        dim = self.input.embedding_dim
        self.domain_embedding = (
            DomainParameter(torch.randn(self.num_domains, dim) * self.input.init_std) if condition != "self" else None
        )
        widths = [self.input.out_features, *layer_sizes]
        self.layers = nn.ModuleList()
        for i, o in zip(widths[:-1], widths[1:], strict=True):
            cond = {"domain": dim, "self": i, "mix": dim + i}[condition]
            r = None if rank is None else min(rank, i, o)
            p = None if overparam is None or r is None else max(overparam, r)
            self.layers.append(APGLinear(cond, i, o, r, p, generate_bias, list(hyper_sizes)))
        self.norms = nn.ModuleList(nn.BatchNorm1d(o) for o in layer_sizes) if batch_norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(layer_sizes[-1], 1)

    def layer(self, i: int, h: Tensor, batch: Batch, groups: DomainGroups | None) -> Tensor:
        """Layer i's linear map of ``h`` under the configured condition."""
        layer = self.layers[i]
        if groups is not None:  # condition "domain": rows in grouped order
            return layer.grouped(h, self.domain_embedding, groups)
        if self.domain_embedding is None:  # "self"
            return layer.rows(h, h)
        return layer.rows(h, torch.cat([self.domain_embedding[batch.domain], h], dim=1))  # "mix"

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains) if self.condition == "domain" else None
        h = self.input(batch)  # [B, in]
        if groups is not None:
            h = groups.group(h)
        for i in range(len(self.layers)):
            h = self.layer(i, h, batch, groups)
            if self.norms is not None:
                h = self.norms[i](h)
            h = self.dropout(torch.relu(h))
        logits = self.output(h)
        if groups is not None:
            logits, h = groups.ungroup(logits), groups.ungroup(h)
        return ModelOutput(logits=logits, aux_loss=logits.new_zeros(()), h=h)
