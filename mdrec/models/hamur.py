"""HAMUR (Li et al., CIKM 2023, "HAMUR: Hyper Adapter for Multi-Domain Recommendation"): a domain-specific adapter
on a backbone's representation, its weights ``U_d Z V_d`` completed per row by a shared hyper-network."""

from __future__ import annotations

from collections.abc import Sequence

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import BackboneFactory
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, DomainLinear
from mdrec.nn.meta import HyperAdapterCell


class HAMUR(HyperAdapterCell):
    """``h' = h + DN_d(σ(h W1 + b1_d) W2 + b2_d)`` with ``W_i = U_{i,d} Z V_{i,d}``, ``Z = hyper(x0)`` per row,
    then domain d's output layer (docs/models.md, HAMUR).

    The backbone (any of ``backbone=``: DNN, Wide&Deep, DCNv2) gives ``h [B, H]``; its own head is not used. The
    adapter cell (:class:`~mdrec.nn.meta.HyperAdapterCell`, also ``adapter=hamur``'s) has a shared hyper-network
    that maps the row's embedded input to ``Z [R, R]``; the factors ``U``, ``V``, the biases, the domain norm and the
    output layer are per domain, applied to each domain's block of rows. ``h`` is the adapted representation.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone's factory (a backbone class with its options bound; the ``backbone`` config node).
        bottleneck: m, the adapter's down-projected width.
        rank: R, the size of the generated ``Z``.
        hyper_sizes: hidden widths of the hyper-network (ReLU), then a linear map to ``R²``.

    Example:
        >>> net = HAMUR(schema, functools.partial(DNNBackbone, layer_sizes=[16]), bottleneck=4, rank=3)
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 16]))
    """

    def __init__(
        self,
        schema: Schema,
        backbone: BackboneFactory,
        bottleneck: int = 32,
        rank: int = 32,
        hyper_sizes: Sequence[int] = (64,),
    ) -> None:
        super().__init__()
        self.num_domains = schema.num_domains
        self.backbone = backbone(schema)
        k, hidden = self.num_domains, self.backbone.hidden_size
        self.build_cell(k, self.backbone.input.out_features, hidden, bottleneck, rank, hyper_sizes)
        self.output = DomainLinear(k, hidden, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        groups = DomainGroups(batch.domain, self.num_domains)
        x0 = self.backbone.input(batch)  # [B, in]: embedded once, for the backbone and the hyper-network
        out = self.backbone.forward_from_input(x0, batch)
        adapted = self.adapt(groups.group(out.h), groups.group(x0), groups)  # [B, H] grouped order
        logits = self.output.grouped(adapted, groups)
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=out.aux_loss, h=groups.ungroup(adapted))
