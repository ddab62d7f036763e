"""Multi-domain baselines (shared-bottom, MMoE, PLE, STAR, single-domain) and their per-domain layers, tiny."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdrec.data.batch import Batch
from mdrec.models.dnn import DNNBackbone
from mdrec.models.mmoe import MMoE
from mdrec.models.ple import PLE
from mdrec.models.shared_bottom import SharedBottom
from mdrec.models.single_domain import SingleDomain
from mdrec.models.star import STAR
from mdrec.nn.domain import DomainGroups, DomainLinear, DomainMLP, StarLinear, per_domain_parameters
from mdrec.nn.norm import PartitionedNorm
from mdrec.train.run import train
from tests.helpers import SCHEMA, K, TrainCfg, make_batch, rows_of

MODELS: dict[str, Callable[[], nn.Module]] = {
    "shared_bottom": lambda: SharedBottom(SCHEMA, DNNBackbone(SCHEMA, 8, [16]), tower_sizes=[8], batch_norm=True),
    "mmoe": lambda: MMoE(SCHEMA, 8, num_experts=3, expert_sizes=[16, 8], tower_sizes=[8]),
    "ple": lambda: PLE(SCHEMA, 8, num_levels=2, num_domain_experts=2, num_shared_experts=1, expert_sizes=[8]),
    "star": lambda: STAR(SCHEMA, 8, layer_sizes=[16, 8], aux_sizes=[4], batch_norm=True),
    "single_domain": lambda: SingleDomain(SCHEMA, 8, layer_sizes=[16, 8], batch_norm=True),
}


def test_domain_groups_and_bad_ids() -> None:
    domain = torch.tensor([2, 0, 2, 2, 0])
    g = DomainGroups(domain, num_domains=4)
    assert g.present.tolist() == [0, 2] and g.sizes == [2, 3]
    assert g.domain.tolist() == [0, 0, 2, 2, 2] and g.order.tolist() == [1, 4, 0, 2, 3]
    x = torch.arange(5)
    assert torch.equal(g.ungroup(g.group(x)), x)
    with pytest.raises(ValueError, match="ids >= num_domains"):
        DomainGroups(torch.tensor([0, 4]), num_domains=4)


def test_domain_linear_equals_a_loop_of_linears() -> None:
    torch.manual_seed(0)
    layer = DomainLinear(K, 5, 4)
    bound = 1 / 5**0.5  # nn.Linear's init range for fan_in 5, per domain slice
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert not torch.equal(layer.weight[0], layer.weight[1])
    x, domain = torch.randn(40, 5), torch.randint(0, K, (40,))
    expected = torch.empty(40, 4)
    for d in range(K):
        ref = nn.Linear(5, 4)
        ref.load_state_dict({"weight": layer.weight[d], "bias": layer.bias[d]})
        expected[domain == d] = ref(x[domain == d])
    torch.testing.assert_close(layer(x, domain), expected)
    # the same grouping serves a whole stack; a batch missing a domain works too
    mlp = DomainMLP(K, 5, [6, 3], batch_norm=True)
    present = domain != 1
    full = mlp.eval()(x, domain)
    torch.testing.assert_close(full[present], mlp(x[present], domain[present]))


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


def test_star_starts_at_the_shared_weights() -> None:
    torch.manual_seed(0)
    net = STAR(SCHEMA, 8, layer_sizes=[16, 8], aux_sizes=[4])
    stars = [m for m in net.modules() if isinstance(m, StarLinear)]
    assert len(stars) == 3  # two hidden layers and the output layer
    for layer in stars:
        assert torch.equal(layer.weight, torch.ones_like(layer.weight))
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    # at step 0 every domain's main path is the shared network: only the auxiliary logit tells domains apart
    net.eval()
    batch = make_batch()
    out = net(batch)
    as_zero = net(Batch(batch.sparse, batch.dense, torch.zeros_like(batch.domain), batch.labels))
    aux = net.aux(net.domain_embedding)  # [K, 1]
    torch.testing.assert_close(out.h, as_zero.h)
    torch.testing.assert_close(out.logits - aux[batch.domain], as_zero.logits - aux[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shapes_and_per_domain_parameters(name: str) -> None:
    torch.manual_seed(0)
    net = MODELS[name]()
    out = net(make_batch())
    assert out.logits.shape == (64, 1) and out.h is not None and out.h.shape[0] == 64
    assert out.aux_loss.shape == () and bool(torch.isfinite(out.logits).all())
    stacked = dict(per_domain_parameters(net))
    assert stacked and all(p.shape[0] == K for p in stacked.values())


@pytest.mark.parametrize("name", list(MODELS))
def test_mixed_batch_equals_single_domain_batches(name: str) -> None:
    torch.manual_seed(0)
    net = MODELS[name]()
    batch = make_batch()
    net.train()
    for step in range(3):  # move the running statistics and every parameter off their initial values
        F.binary_cross_entropy_with_logits(net(make_batch(seed=step + 1)).logits, batch.labels).backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad if p.grad is not None else 0.0
    net.eval()
    mixed = net(batch)
    for d in range(K):
        mask = batch.domain == d
        alone = net(rows_of(batch, mask))
        torch.testing.assert_close(mixed.logits[mask], alone.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed.h[mask], alone.h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_per_domain_parameters_learn_only_from_their_domain(name: str) -> None:
    torch.manual_seed(0)
    net = MODELS[name]().train()
    batch = make_batch()
    only0 = rows_of(batch, batch.domain == 0)
    F.binary_cross_entropy_with_logits(net(only0).logits, only0.labels).backward()
    for key, p in per_domain_parameters(net):
        assert p.grad is not None and p.grad[0].abs().sum() > 0, key
        assert torch.equal(p.grad[1:], torch.zeros_like(p.grad[1:])), key


@pytest.mark.parametrize("name", list(MODELS))
def test_overfit_loss_falls(name: str) -> None:
    torch.manual_seed(0)
    net = MODELS[name]().train()
    batch = make_batch(rows=256)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = F.binary_cross_entropy_with_logits(net(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("model", list(MODELS))
def test_fast_dev_run(train_cfg: TrainCfg, model: str) -> None:
    metrics = train(train_cfg(["debug=fdr", f"model={model}"]))
    assert 0.0 <= metrics["test/auc"] <= 1.0
