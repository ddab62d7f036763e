"""Partitioned normalisation: each domain's own batch and running statistics."""

from __future__ import annotations

import torch

from mdrec.nn.norm import PartitionedNorm
from tests.helpers import K


def test_partitioned_norm_uses_each_domains_own_statistics() -> None:
    torch.manual_seed(0)
    norm = PartitionedNorm(K, 4, momentum=0.5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
        norm.shared_weight.uniform_(0.5, 1.5)
        norm.shared_bias.normal_()
    z = torch.randn(30, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5.0
    domain = torch.tensor([0] * 10 + [2] * 20)[torch.randperm(30)]  # domain 1 absent
    out = norm.train()(z, domain)
    for d in (0, 2):
        rows = z[domain == d]
        mean, var = rows.mean(0), rows.var(0, unbiased=False)
        expected = norm.shared_weight * norm.weight[d] * (rows - mean) / (var + norm.eps).sqrt()
        torch.testing.assert_close(out[domain == d], expected + norm.shared_bias + norm.bias[d])
        # running statistics: halfway from (0, 1) to the batch's (mean, unbiased var), per domain
        torch.testing.assert_close(norm.running_mean[d], 0.5 * mean)
        torch.testing.assert_close(norm.running_var[d], 0.5 + 0.5 * rows.var(0, unbiased=True))
    assert torch.equal(norm.running_mean[1], torch.zeros(4)) and torch.equal(norm.running_var[1], torch.ones(4))
    # eval: every row normalised with its own domain's running statistics
    out = norm.eval()(z, domain)
    scale = norm.shared_weight * norm.weight[domain] / (norm.running_var[domain] + norm.eps).sqrt()
    expected = (z - norm.running_mean[domain]) * scale + norm.shared_bias + norm.bias[domain]
    torch.testing.assert_close(out, expected)
