"""The DNN backbone: embeddings + dense features -> MLP -> shared representation h -> one logit per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone, InputFactory
from mdrec.models.inputs import EmbeddedInput, check_num_tasks
from mdrec.models.output import ModelOutput
from mdrec.nn.mlp import MLP


class DNNBackbone(Backbone):
    """A domain-agnostic MLP ranker; the representation ``h`` is the last hidden layer.

    Args:
        schema: the data's schema.
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        layer_sizes: hidden widths; H = ``layer_sizes[-1]``.
        dropout: dropout after each hidden activation.
        batch_norm: batch normalisation in the hidden layers.
        num_tasks: T, logits per row (1: CTR).

    Example:
        >>> net = DNNBackbone(schema, functools.partial(EmbeddedInput, embedding_dim=8), layer_sizes=[256, 128])
        >>> out = net(batch); out.logits.shape, out.h.shape, net.head_site()
        (torch.Size([8, 1]), torch.Size([8, 128]), 'output')
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        dropout: float = 0.2,
        batch_norm: bool = True,
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        self.num_tasks = check_num_tasks(schema, num_tasks)
        self.input = input(schema)
        self.mlp = MLP(self.input.out_features, list(layer_sizes), dropout, batch_norm)
        self.output = nn.Linear(self.mlp.out_features, num_tasks)

    def first_layer_site(self) -> str:
        return self.site_of(self.mlp.layers[0])

    @property
    def head(self) -> nn.Linear:
        return self.output

    def forward_from_input(self, x0: Tensor, batch: Batch) -> ModelOutput:
        h = self.mlp(x0)  # [B, H]
        return ModelOutput(logits=self.output(h), aux_loss=h.new_zeros(()), h=h)
