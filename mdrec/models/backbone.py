"""The contract every backbone keeps, which multi-domain networks, adapters and serving build on."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput


class Backbone(nn.Module):
    """A domain-agnostic ranker: ``input`` embeds the batch, the body maps it to the representation ``h [B, H]``,
    and ``head``, one linear layer ``H -> T``, maps ``h`` to the logits.

    A subclass sets ``input`` (an :class:`~mdrec.models.inputs.EmbeddedInput`) and ``num_tasks`` in its constructor,
    implements ``head`` (a linear layer registered below the backbone), ``forward_from_input``, the network after
    its input layer, and, for LoRA's default targets, ``first_layer_site``; ``forward`` runs the input layer, then
    ``forward_from_input``. Adapters that act "before the head" attach at ``head_site()``.
    """

    input: EmbeddedInput
    num_tasks: int

    @property
    def head(self) -> nn.Linear:
        """The linear layer that maps ``h [B, H]`` to the logits ``[B, T]``."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        """H, the width of ``h`` (the head's input width)."""
        return self.head.in_features

    def first_layer_site(self) -> str:
        """The module name of the body's first hidden linear layer (e.g. ``"mlp.layers.0"``; DCNv2's first MLP
        layer, not a cross layer's factor): where LoRA adapts by default."""
        raise NotImplementedError(
            f"{type(self).__name__} does not name its first hidden layer (Backbone.first_layer_site): give the "
            'layers to adapt explicitly, e.g. adapter.targets=["*"]'
        )

    def head_site(self) -> str:
        """The module name of ``head`` below the backbone (e.g. ``"output"``), where adapters hook it."""
        return self.site_of(self.head)

    def site_of(self, module: nn.Module) -> str:
        """The name of ``module`` (one of this backbone's) below the backbone."""
        return next(name for name, m in self.named_modules() if m is module)

    def forward(self, batch: Batch) -> ModelOutput:
        return self.forward_from_input(self.input(batch), batch)

    def forward_from_input(self, x0: Tensor, batch: Batch) -> ModelOutput:
        """The network above its input layer: ``ModelOutput(logits [B, T], aux_loss, h [B, H])`` from
        ``x0 = self.input(batch)`` (``[B, input.out_features]``), for a caller that needs ``x0`` itself too and
        embeds once. ``batch`` is read only where the network uses more than ``x0`` (Wide&Deep's wide arm)."""
        raise NotImplementedError


# a backbone class with its options bound, completed with the data's schema (a `_partial_` config node)
BackboneFactory = Callable[[Schema], Backbone]
# the input layer's class with its options bound (the `input` config node)
InputFactory = Callable[[Schema], EmbeddedInput]
