"""AdaSparse (Yang et al., CIKM 2022, "AdaSparse: Learning Adaptively Sparse Structures for Multi-Domain
Click-Through Rate Prediction"): one DNN whose neurons a domain-aware pruner weights or switches off, per row."""

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
from mdrec.nn.parameter import DomainParameter

Form = Literal["binarization", "scaling", "fusion"]
FORMS = get_args(Form)


class Pruner(nn.Module):
    """The weighting factors π of one layer's N neurons from ``[e_d, z]`` (docs/models.md, AdaSparse).

    ``v = W [e_d, z]`` (no bias), then by ``form``: ``binarization`` ``π = 1[σ(αv) ≥ ε]`` (gradient through σ(αv),
    straight-through); ``scaling`` ``π = βσ(v) · 1[βσ(v) ≥ ε]``; ``fusion`` ``π = βσ(αv) · 1[βσ(αv) ≥ ε]``.

    Shapes: ``forward(e_d [B, D], z [B, N], alpha)`` -> ``(π [B, N], soft keep rate σ(αv) or σ(v) [B, N])``.
    """

    def __init__(self, domain_features: int, num_features: int, form: str, epsilon: float, beta: float) -> None:
        super().__init__()
        self.linear = nn.Linear(domain_features + num_features, num_features, bias=False)
        self.form, self.epsilon, self.beta = form, epsilon, beta

    def forward(self, e_d: Tensor, z: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        v = self.linear(torch.cat([e_d, z], dim=1))  # [B, N]
        soft = torch.sigmoid(v if self.form == "scaling" else alpha * v)
        if self.form == "binarization":
            hard = (soft >= self.epsilon).to(soft.dtype)
            return hard + soft - soft.detach(), soft  # the value of the step, the gradient of σ(αv)
        weight = self.beta * soft
        return weight * (weight >= self.epsilon).to(weight.dtype), soft


class AdaSparse(nn.Module):
    """A DNN whose input and hidden neurons are multiplied by per-row, domain-aware factors (docs/models.md,
    AdaSparse).

    ``h_0 = π_0 ⊙ x0``, then per layer ``z_l = Dropout(ReLU([BN](W_l h_{l-1} + b_l)))`` and ``h_l = π_l ⊙ z_l``,
    each ``π`` from its :class:`Pruner` on ``[e_d, z]``; ``s = w_o · h_L + b_o``. ``α`` starts at ``alpha`` and
    grows by ``delta_alpha`` every training forward. With ``sparsity_weight`` λ > 0 the auxiliary loss is
    ``λ Σ_l (1 - mean(σ) - r)²``, pulling each layer's soft pruned fraction to ``target_sparsity`` r. The pruners
    run per row (the method is per row); the domain embedding is the only per-domain parameter.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        input: the input layer's factory (``EmbeddedInput`` with its options bound; the ``input`` config node).
        layer_sizes: hidden widths of the DNN.
        form: the weighting factors' form, ``binarization``, ``scaling`` or ``fusion``.
        epsilon: ε, factors below it prune their neuron.
        beta: β, the scale of ``scaling`` and ``fusion`` factors.
        alpha: α at the start.
        delta_alpha: α's growth per training forward.
        sparsity_weight: λ (0: no regulariser).
        target_sparsity: r, the pruned fraction the regulariser aims at.
        dropout: dropout after each hidden activation.
        batch_norm: batch normalisation in the hidden layers.

    Example:
        >>> net = AdaSparse(schema, layer_sizes=[16, 8])
        >>> out = net(batch); out.logits.shape, out.h.shape
        (torch.Size([8, 1]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        form: Form = "fusion",
        epsilon: float = 1e-2,
        beta: float = 2.0,
        alpha: float = 1.0,
        delta_alpha: float = 1e-4,
        sparsity_weight: float = 0.0,
        target_sparsity: float = 0.0,
        dropout: float = 0.2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {list(layer_sizes)}")
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
        self.num_domains = schema.num_domains
        self.input = input(schema)
        dim = self.input.embedding_dim
        self.domain_embedding = DomainParameter(torch.randn(self.num_domains, dim) * self.input.init_std)
        widths = [self.input.out_features, *layer_sizes]
        self.pruners = nn.ModuleList(Pruner(dim, w, form, epsilon, beta) for w in widths)
        self.linears = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(o) for o in layer_sizes) if batch_norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(layer_sizes[-1], 1)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.delta_alpha, self.sparsity_weight, self.target_sparsity = delta_alpha, sparsity_weight, target_sparsity

    def pruned(self, layer: int, e_d: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """``π_l ⊙ z`` and the layer's regulariser term ``(1 - mean σ - r)²``."""
        pi, soft = self.pruners[layer](e_d, z, self.alpha)
        return pi * z, (1 - soft.mean() - self.target_sparsity) ** 2

    def forward(self, batch: Batch) -> ModelOutput:
        if self.training:
            self.alpha += self.delta_alpha
        e_d = self.domain_embedding[batch.domain]  # [B, D]
        h, penalty = self.pruned(0, e_d, self.input(batch))  # [B, in]
        for i, linear in enumerate(self.linears):
            z = linear(h)
            if self.norms is not None:
                z = self.norms[i](z)
            h, term = self.pruned(i + 1, e_d, self.dropout(torch.relu(z)))  # [B, width of layer i]
            penalty = penalty + term
        return ModelOutput(logits=self.output(h), aux_loss=self.sparsity_weight * penalty, h=h)
