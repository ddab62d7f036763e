"""STAR's partitioned normalisation: batch normalisation with each domain's own statistics and scales."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdrec.nn.parameter import DomainParameter


class PartitionedNorm(nn.Module):
    """``z' = (γ · γ_d)(z - E_d) / sqrt(Var_d + ε) + (β + β_d)`` (docs/methods.md, STAR).

    In training, ``E_d`` and ``Var_d`` are the mean and (biased) variance of domain d's rows in the batch,
    computed for every present domain at once with ``index_add``; each present domain's running statistics move
    towards them with ``momentum`` (unbiased variance, as ``nn.BatchNorm1d``). In eval mode every row is
    normalised with its domain's running statistics. Rows of any order work: statistics are keyed by id.

    Args:
        num_domains: K.
        num_features: N, the width normalised.
        eps: ε added to the variance.
        momentum: weight of the batch statistics in the running statistics.
        shared_affine: also learn the shared γ, β (STAR); False leaves only the per-domain γ_d, β_d
            (independent per-domain towers).

    Shapes: per-domain ``weight`` (γ_d, ones) and ``bias`` (β_d, zeros) ``[K, N]``; shared ``shared_weight`` and
    ``shared_bias`` ``[N]``; buffers ``running_mean``, ``running_var`` ``[K, N]``; ``forward(z [B, N],
    domain [B])`` -> ``[B, N]``.

    Example:
        >>> norm = PartitionedNorm(num_domains=2, num_features=3)
        >>> z = norm(torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> torch.allclose(z[:3].mean(0), torch.zeros(3), atol=1e-6)
        True
    """

    def __init__(
        self,
        num_domains: int,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        shared_affine: bool = True,
    ) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be positive, got {num_domains}")
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.num_domains = num_domains
        self.eps = eps
        self.momentum = momentum
        self.weight = DomainParameter(torch.ones(num_domains, num_features))
        self.bias = DomainParameter(torch.zeros(num_domains, num_features))
        self.shared_weight = nn.Parameter(torch.ones(num_features)) if shared_affine else None
        self.shared_bias = nn.Parameter(torch.zeros(num_features)) if shared_affine else None
        self.register_buffer("running_mean", torch.zeros(num_domains, num_features))
        self.register_buffer("running_var", torch.ones(num_domains, num_features))

    def batch_stats(self, z: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-domain row counts ``[K]``, means ``[K, N]`` and biased variances ``[K, N]`` of a batch."""
        counts = torch.bincount(domain, minlength=self.num_domains).to(z.dtype)  # [K]
        denom = counts.clamp(min=1)[:, None]  # [K, 1]; absent domains: 0 / 1
        mean = z.new_zeros(self.num_domains, z.shape[1]).index_add(0, domain, z) / denom  # [K, N]
        centered = z - mean[domain]  # [B, N]
        var = z.new_zeros(self.num_domains, z.shape[1]).index_add(0, domain, centered.square()) / denom  # [K, N]
        return counts, mean, var

    def forward(self, z: Tensor, domain: Tensor) -> Tensor:
        if self.training:
            counts, mean, var = self.batch_stats(z, domain)
            with torch.no_grad():
                rate = self.momentum * (counts > 0).to(z.dtype)[:, None]  # [K, 1]; absent domains keep theirs
                unbiased = var * (counts / (counts - 1).clamp(min=1))[:, None]
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(unbiased, rate)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)  # [K, N]
        shift = self.bias  # [K, N]
        if self.shared_weight is not None:
            scale = scale * self.shared_weight
            shift = shift + self.shared_bias
        return (z - mean[domain]) * scale[domain] + shift[domain]
