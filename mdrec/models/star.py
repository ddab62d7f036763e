"""STAR (Sheng et al., CIKM 2021): star-topology FCN, partitioned normalisation, auxiliary domain network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainTower
from mdrec.nn.mlp import MLP
from mdrec.nn.norm import PartitionedNorm
from mdrec.nn.parameter import DomainParameter


class STAR(nn.Module):
    """``p = σ(s_main + s_aux)`` (docs/methods.md, STAR).

    Main path: embedded input -> partitioned normalisation (each domain's own batch statistics in training, its
    running statistics in eval) -> star-topology layers (domain d uses ``W ⊙ W_d``, ``b + b_d``; W_d starts at
    ones and b_d at zeros, so every domain starts at the shared network) -> a star-topology output layer: s_main.
    ``W ⊙ W_d`` is formed once per domain present in the batch and applied to that domain's rows only.
    Auxiliary path: the domain id's embedding -> MLP -> linear: s_aux. ``h`` is the last hidden layer.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        layer_sizes: hidden widths of the star-topology network.
        aux_sizes: hidden widths of the auxiliary network.
        dropout: dropout after each hidden activation.
        batch_norm: partitioned normalisation in the hidden layers too (the input is always normalised).

    Example:
        >>> net = STAR(schema, layer_sizes=[128, 64, 32], aux_sizes=[32])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 32]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        aux_sizes: Sequence[int] = (32,),
        dropout: float = 0.2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if not layer_sizes:
            raise ValueError(f"layer_sizes must name at least one hidden layer, got {list(layer_sizes)}")
        self.num_domains = schema.num_domains
        self.input = input(schema)
        self.input_norm = PartitionedNorm(self.num_domains, self.input.out_features)
        self.fcn = DomainTower(
            self.num_domains, self.input.out_features, list(layer_sizes), dropout, batch_norm, star=True
        )
        dim, std = self.input.embedding_dim, self.input.init_std  # the domain id's embedding is like the fields'
        self.domain_embedding = DomainParameter(torch.randn(self.num_domains, dim) * std)
        self.aux = nn.Sequential(MLP(dim, list(aux_sizes), dropout), nn.Linear(aux_sizes[-1], 1))

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        xs = self.input_norm(groups.group(self.input(batch)), groups.domain)  # [B, in] grouped order
        h, s_main = self.fcn.grouped(xs, groups)  # [B, H], [B, 1]
        s_aux = self.aux(self.domain_embedding[groups.domain])  # [B, D] -> [B, 1]
        return ModelOutput(logits=groups.ungroup(s_main + s_aux), aux_loss=s_main.new_zeros(()), h=groups.ungroup(h))
