"""The DNN backbone: embeddings + dense features -> MLP -> shared representation h -> one logit per task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.inputs import EmbeddedInput, check_num_tasks
from mdrec.models.output import ModelOutput
from mdrec.nn.mlp import MLP


class DNNBackbone(nn.Module):
    """A domain-agnostic MLP ranker; the representation ``h`` is the last hidden layer.

    Args:
        schema: the data's schema.
        embedding_dim: D, per sparse field.
        layer_sizes: hidden widths; H = ``layer_sizes[-1]``.
        dropout: dropout after each hidden activation.
        batch_norm: batch normalisation in the hidden layers.
        num_tasks: T, logits per row (1: CTR).
        embedding_init_std: standard deviation of the initial embedding weights.
        sequence_pooling: ``"mean"`` or ``"din"`` (target attention), see ``EmbeddedInput``.
        attention_layer_sizes: hidden widths of DIN's attention MLP.
        attention_softmax: softmax-normalise DIN's attention scores.
        domain_as_feature: embed the domain id as an ordinary field (the "pooled" baseline).

    Example:
        >>> net = DNNBackbone(schema, embedding_dim=16, layer_sizes=[256, 128])   # doctest: +SKIP
        >>> out = net(batch); out.logits.shape, out.h.shape                      # doctest: +SKIP
        (torch.Size([4096, 1]), torch.Size([4096, 128]))
    """

    # the linear layer that maps h to the logits (adapters that act "before the heads" attach to its input)
    head_name = "output"

    def __init__(
        self,
        schema: Schema,
        embedding_dim: int = 16,
        layer_sizes: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        batch_norm: bool = True,
        num_tasks: int = 1,
        embedding_init_std: float = 1e-2,
        sequence_pooling: str = "mean",
        attention_layer_sizes: Sequence[int] = (80, 40),
        attention_softmax: bool = False,
        domain_as_feature: bool = False,
    ) -> None:
        super().__init__()
        self.num_tasks = check_num_tasks(schema, num_tasks)
        self.input = EmbeddedInput(
            schema,
            embedding_dim,
            embedding_init_std,
            sequence_pooling,
            attention_layer_sizes,
            attention_softmax,
            domain_as_feature,
        )
        self.mlp = MLP(self.input.out_features, list(layer_sizes), dropout, batch_norm)
        self.output = nn.Linear(self.mlp.out_features, num_tasks)

    @property
    def hidden_size(self) -> int:
        """H, the width of the representation ``h``."""
        return self.mlp.out_features

    def forward(self, batch: Batch) -> ModelOutput:
        h = self.mlp(self.input(batch))  # [B, H]
        return ModelOutput(logits=self.output(h), aux_loss=h.new_zeros(()), h=h)
