"""AdaptDHM (Li et al., "AdaptDHM: Adaptive Distribution Hierarchical Model for Multi-Domain CTR Prediction",
arXiv 2022), as Scenario-Wise-Rec implements it: rows routed to learned clusters of the input distribution, then a
star-topology network per cluster."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import InputFactory
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups, StarLinear
from mdrec.nn.parameter import DomainParameter


class AdaptDHM(nn.Module):
    """``x = [x0, e_d]``, row i routed to cluster ``c_i = argmax_j x_i · μ_j``, then layers
    ``h_l = ReLU((W_l ⊙ W_{l,c}) h_{l-1} + b_l + b_{l,c})`` and a star-topology output (docs/models.md, AdaptDHM).

    The cluster centres μ (unit vectors, a buffer) move in training: ``routing_iterations`` times per batch,
    ``r = softmax(x μ^T)`` and ``μ <- normalise(β μ + (1 - β) r^T x)`` (no gradient). The per-cluster factors start
    at ones and zeros, so every cluster starts at the shared network; each cluster's layers run on its own block of
    rows (rows grouped by cluster). The clusters are not domains: only the domain embedding e_d is per domain.
    ``h`` is the last hidden layer.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        layer_sizes: hidden widths.
        num_clusters: C.
        beta: β, the centres' momentum.
        routing_iterations: centre updates per training batch.

    Example:
        >>> net = AdaptDHM(schema, layer_sizes=[16, 8], num_clusters=3)
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        num_clusters: int = 4,
        beta: float = 0.9,
        routing_iterations: int = 3,
    ) -> None:
        super().__init__()
        if num_clusters < 1 or routing_iterations < 0 or not 0.0 <= beta <= 1.0:
            raise ValueError(
                f"need num_clusters >= 1, routing_iterations >= 0 and beta in [0, 1], got {num_clusters}, "
                f"{routing_iterations}, {beta}"
            )
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {list(layer_sizes)}")
        self.num_domains, self.num_clusters = schema.num_domains, num_clusters
        self.beta, self.routing_iterations = beta, routing_iterations
        self.input = input(schema)
        dim = self.input.embedding_dim
        self.domain_embedding = DomainParameter(torch.randn(self.num_domains, dim) * self.input.init_std)
        width = self.input.out_features + dim
        self.register_buffer("centers", F.normalize(torch.randn(num_clusters, width), dim=1))
        widths = [width, *layer_sizes, 1]
        self.layers = nn.ModuleList(  # per-cluster factors: plain parameters (clusters are not domains)
            StarLinear(num_clusters, i, o, per_domain=False) for i, o in zip(widths[:-1], widths[1:], strict=True)
        )

    @torch.no_grad()
    def route(self, x: Tensor) -> Tensor:
        """Each row's cluster ``[B]`` (moving the centres first, in training)."""
        x = x.detach()
        if self.training:
            centers = self.centers
            for _ in range(self.routing_iterations):
                r = torch.softmax(x @ centers.T, dim=1)  # [B, C]
                centers = F.normalize(self.beta * centers + (1 - self.beta) * r.T @ x, dim=1)
            self.centers.copy_(centers)
        return torch.argmax(x @ self.centers.T, dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        x = torch.cat([self.input(batch), self.domain_embedding[batch.domain]], dim=1)  # [B, in + D]
        groups = DomainGroups(self.route(x), self.num_clusters)  # rows grouped by cluster
        h = groups.group(x)
        for layer in self.layers[:-1]:
            h = torch.relu(layer.grouped(h, groups))  # [B, H_l]
        logits = self.layers[-1].grouped(h, groups)  # [B, 1]
        return ModelOutput(logits=groups.ungroup(logits), aux_loss=logits.new_zeros(()), h=groups.ungroup(h))
