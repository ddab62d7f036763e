"""Every multi-domain network (shared-bottom, MMoE, PLE, STAR, single-domain and the zoo of docs/models.md), tiny:
the contract each keeps (their per-domain layers alone: tests/nn/; each zoo model's defining equation:
tests/models/test_zoo.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdrec.data.batch import Batch
from mdrec.models.adaptdhm import AdaptDHM
from mdrec.models.adasparse import AdaSparse
from mdrec.models.apg import APG
from mdrec.models.dnn import DNNBackbone
from mdrec.models.hamur import HAMUR
from mdrec.models.hmoe import HMoE
from mdrec.models.m2m import M2M
from mdrec.models.m3oe import M3oE
from mdrec.models.mmoe import MMoE
from mdrec.models.pepnet import PEPNet
from mdrec.models.ple import PLE
from mdrec.models.sarnet import SARNet
from mdrec.models.shared_bottom import SharedBottom
from mdrec.models.single_domain import SingleDomain
from mdrec.models.star import STAR
from mdrec.nn.domain import StarLinear
from mdrec.nn.parameter import per_domain_parameters
from mdrec.train.run import train
from tests.helpers import CONF_DIR, SCHEMA, K, TrainCfg, embedded, make_batch, rows_of

MODELS: dict[str, Callable[[], nn.Module]] = {
    "shared_bottom": lambda: SharedBottom(
        SCHEMA,
        functools.partial(DNNBackbone, input=embedded(8), layer_sizes=[16], dropout=0.0),
        tower_sizes=[8],
        batch_norm=True,
    ),
    "mmoe": lambda: MMoE(SCHEMA, embedded(8), num_experts=3, expert_sizes=[16, 8], tower_sizes=[8], dropout=0.0),
    "ple": lambda: PLE(SCHEMA, embedded(8), num_levels=2, expert_sizes=[8], tower_sizes=[8], dropout=0.0),
    "ple_own": lambda: PLE(
        SCHEMA, embedded(8), num_levels=2, expert_sizes=[8], tower_sizes=[8], dropout=0.0, shared_gate_experts="own"
    ),
    "star": lambda: STAR(SCHEMA, embedded(8), layer_sizes=[16, 8], aux_sizes=[4], dropout=0.0),
    "single_domain": lambda: SingleDomain(SCHEMA, 8, layer_sizes=[16, 8], dropout=0.0),
    "pepnet": lambda: PEPNet(SCHEMA, embedded(8), layer_sizes=[16, 8], prior_fields=["item"], dropout=0.1),
    "epnet": lambda: PEPNet(SCHEMA, embedded(8), layer_sizes=[16, 8], ppnet=False, dropout=0.0),
    "adasparse": lambda: AdaSparse(SCHEMA, embedded(8), [16, 8], sparsity_weight=0.1, target_sparsity=0.2, dropout=0.0),
    "adasparse_binarization": lambda: AdaSparse(SCHEMA, embedded(8), [16, 8], form="binarization", dropout=0.0),
    "apg": lambda: APG(SCHEMA, embedded(8), layer_sizes=[16, 8], rank=4, hyper_sizes=[6], dropout=0.0),
    "apg_domain": lambda: APG(SCHEMA, embedded(8), [16, 8], condition="domain", rank=4, overparam=8, dropout=0.0),
    "apg_full": lambda: APG(SCHEMA, embedded(8), [16, 8], rank=None, generate_bias=False, dropout=0.0),
    "hamur": lambda: HAMUR(
        SCHEMA, functools.partial(DNNBackbone, input=embedded(8), layer_sizes=[16], dropout=0.0), 4, 3, [6]
    ),
    "sarnet": lambda: SARNet(SCHEMA, embedded(8), 3, 2, expert_sizes=[8], layer_sizes=[8]),
    "m3oe": lambda: M3oE(SCHEMA, embedded(8), star_sizes=[16, 8], num_experts=2, expert_sizes=[8], tower_sizes=[4]),
    "m3oe_own": lambda: M3oE(SCHEMA, embedded(8), [16, 8], num_experts=2, expert_sizes=[8], balance=False),
    "hmoe": lambda: HMoE(SCHEMA, embedded(8), num_experts=3, expert_sizes=[16], tower_sizes=[8]),
    "adaptdhm": lambda: AdaptDHM(SCHEMA, embedded(8), layer_sizes=[16, 8], num_clusters=2),
    "m2m": lambda: M2M(SCHEMA, embedded(8), num_experts=3, expert_sizes=[16, 8], scenario_sizes=[6]),
    "ppnet": lambda: PEPNet(SCHEMA, embedded(8), [16, 8], epnet=False, prior_fields=["row", "item"], dropout=0.0),
}


def test_star_starts_at_the_shared_weights() -> None:
    torch.manual_seed(0)
    net = STAR(SCHEMA, embedded(8), layer_sizes=[16, 8], aux_sizes=[4])
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


# below its last level, the paper's PLE mixes every domain's experts into every row's shared input; M3oE's balanced
# domain expert mixes every domain's expert into every row's
SHARED_BY_DESIGN = {"ple", "m3oe"}


@pytest.mark.parametrize("name", [m for m in MODELS if m not in SHARED_BY_DESIGN])
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


@pytest.mark.parametrize("model", [m for m in MODELS if (CONF_DIR / "model" / f"{m}.yaml").exists()])
def test_fast_dev_run(train_cfg: TrainCfg, model: str) -> None:
    metrics = train(train_cfg(["debug=fdr", f"model={model}"]))
    assert 0.0 <= metrics["test/auc"] <= 1.0
