"""HAMUR's adapter on a pre-trained backbone (docs/methods.md, HAMUR adapter): per-domain adapter cells whose
weights a shared hyper-network completes per row, on the backbone's representation before its head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mdrec.adapters.base import Adapter, Route
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.meta import HyperAdapterCell


class HAMURAdapter(Adapter, HyperAdapterCell):
    """HAMUR (Li et al., CIKM 2023) as an adapter: ``h' = h + DN_d(σ(h W1 + b1_d) W2 + b2_d)`` with
    ``W_i = U_{i,d} Z V_{i,d}`` and ``Z = reshape(hyper(x0))`` per row, on the backbone's ``h`` before its head (the
    cell of the zoo model ``model=hamur``, :class:`~mdrec.nn.meta.HyperAdapterCell`).

    x0 is the output of the backbone's input layer in the same pass (a site on that layer hands it to the head's
    site). The backbone's head maps ``h'`` to the logits (the zoo model has an output layer per domain instead).
    The domain norm's per-domain scales start at 0, so the adapter starts as the backbone. The hyper-network is
    shared by all domains, by the method's definition: it is the one adapter part that is not stacked per domain
    (``stage.select_per_domain=null`` therefore selects on the overall validation AUC).

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone the adapter attaches to.
        bottleneck: m, the cell's down-projected width.
        rank: R, the size of the generated ``Z``.
        hyper_sizes: hidden widths of the hyper-network (ReLU), then a linear map to ``R²``.

    Example:
        >>> from mdrec.adapters.base import AdaptedNet
        >>> net = AdaptedNet(schema, backbone, HAMURAdapter(schema, backbone, bottleneck=4, rank=3))
        >>> net(batch).logits.shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        schema: Schema,
        backbone: Backbone,
        bottleneck: int = 32,
        rank: int = 32,
        hyper_sizes: Sequence[int] = (64,),
    ) -> None:
        super().__init__(schema.num_domains)
        self.input_site = next(name for name, module in backbone.named_modules() if module is backbone.input)
        self.head_site = backbone.head_site()
        width = backbone.input.out_features
        self.build_cell(self.num_domains, width, backbone.hidden_size, bottleneck, rank, hyper_sizes, norm_weight=0.0)
        self.sites[self.input_site] = "output"
        self.sites[self.head_site] = "input"

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        if name == self.input_site:  # x0: handed to the head's site, the input layer's output unchanged
            route.handoff[self.head_site] = y
            return y
        return self.adapt(x, route.handoff.pop(self.head_site), route.groups)
