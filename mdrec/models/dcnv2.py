"""The DCNv2 backbone (Wang et al. 2021): explicit feature crosses beside or before an MLP, one logit per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone, InputFactory
from mdrec.models.inputs import EmbeddedInput, check_num_tasks
from mdrec.models.output import ModelOutput
from mdrec.nn.cross import CrossNetwork
from mdrec.nn.mlp import MLP

Structure = Literal["stacked", "parallel"]
STRUCTURES = get_args(Structure)


class DCNv2Backbone(Backbone):
    """A cross network and an MLP on the embedded input; ``h`` is what the output layer reads.

    ``"stacked"``: ``h = MLP(Cross(x0))``, H = ``layer_sizes[-1]``. ``"parallel"``: ``h = [Cross(x0), MLP(x0)]``,
    H = d + ``layer_sizes[-1]`` with d the input width. Full-rank cross layers learn ``d^2`` weights each, low-rank
    ones (``cross_rank`` R) ``2dR``.

    Args:
        schema: the data's schema.
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        num_cross_layers: number of cross layers.
        cross_rank: R for low-rank cross layers; None for full rank.
        layer_sizes: hidden widths of the MLP.
        structure: ``"stacked"`` (cross, then MLP) or ``"parallel"`` (both on the input, concatenated).
        dropout: dropout after each hidden activation of the MLP.
        batch_norm: batch normalisation in the MLP's hidden layers.
        num_tasks: T, logits per row (1: CTR).

    Example:
        >>> net = DCNv2Backbone(schema, num_cross_layers=3, cross_rank=8, structure="parallel")
        >>> out = net(batch); out.logits.shape, out.h.shape, net.hidden_size  # d = 3 * 16 + 1 = 49, plus 128
        (torch.Size([8, 1]), torch.Size([8, 177]), 177)
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        num_cross_layers: int = 3,
        cross_rank: int | None = None,
        layer_sizes: Sequence[int] = (256, 128),
        structure: Structure = "stacked",
        dropout: float = 0.2,
        batch_norm: bool = True,
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {list(STRUCTURES)}, got {structure!r}")
        self.num_tasks = check_num_tasks(schema, num_tasks)
        self.structure = structure
        self.input = input(schema)
        self.cross = CrossNetwork(self.input.out_features, num_cross_layers, cross_rank)
        self.mlp = MLP(self.input.out_features, list(layer_sizes), dropout, batch_norm)
        hidden = self.mlp.out_features + (self.cross.out_features if structure == "parallel" else 0)
        self.output = nn.Linear(hidden, num_tasks)

    def first_layer_site(self) -> str:
        return self.site_of(self.mlp.layers[0])

    @property
    def head(self) -> nn.Linear:
        return self.output

    def forward_from_input(self, x0: Tensor, batch: Batch) -> ModelOutput:  # x0 [B, d]
        if self.structure == "stacked":
            h = self.mlp(self.cross(x0))  # [B, d] -> [B, H]
        else:
            h = torch.cat([self.cross(x0), self.mlp(x0)], dim=1)  # [B, d] + [B, H_mlp] -> [B, d + H_mlp]
        return ModelOutput(logits=self.output(h), aux_loss=h.new_zeros(()), h=h)
