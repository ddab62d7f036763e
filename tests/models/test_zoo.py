"""Each zoo model's defining equation (docs/models.md) against a hand computation on a tiny input; the contract every
multi-domain network keeps (shapes, mixed = single-domain batches, per-domain gradients, overfit, CLI) is tested for
them in tests/models/test_baselines.py."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from mdrec.models.adaptdhm import AdaptDHM
from mdrec.models.adasparse import AdaSparse
from mdrec.models.apg import APG
from mdrec.models.dcnv2 import DCNv2Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.models.hamur import HAMUR
from mdrec.models.hmoe import HMoE
from mdrec.models.m2m import M2M
from mdrec.models.m3oe import M3oE
from mdrec.models.pepnet import PEPNet
from mdrec.models.ple import PLE
from mdrec.models.sarnet import SARNet
from mdrec.models.wide_deep import WideDeepBackbone
from mdrec.nn.domain import DomainGroups
from mdrec.nn.gates import GateNU
from mdrec.nn.parameter import per_domain_parameters
from tests.helpers import SCHEMA, K, embedded, make_batch


def gate_nu(gate: GateNU, c: Tensor) -> Tensor:
    """``γ σ(W2 ReLU(W1 c + b1) + b2)`` written out."""
    hidden = (c @ gate.hidden.weight.T + gate.hidden.bias).clamp(min=0)
    return gate.gamma * torch.sigmoid(hidden @ gate.output.weight.T + gate.output.bias)


def perturbed(net: nn.Module) -> nn.Module:
    """``net`` in eval mode with every parameter moved off its initial value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return net.eval()


def test_pepnet_gates_the_embeddings_and_every_layer_input() -> None:
    torch.manual_seed(0)
    # D = 2, fields row (columns 0-1) and item (columns 2-3), then the dense feature (column 4)
    net = perturbed(PEPNet(SCHEMA, embedded(2), layer_sizes=[3, 2], prior_fields=["item"], batch_norm=False))
    batch = make_batch(rows=6)
    e = net.input(batch)  # [6, 5]
    e_d = net.domain_embedding[batch.domain]  # [6, 2]
    o_ep = gate_nu(net.ep_gate, torch.cat([e_d, e], 1)) * e
    condition = torch.cat([e_d, e[:, 2:4], o_ep], 1)  # the prior: domain and item embeddings
    h = o_ep
    for gate, linear in zip(net.pp_gates, net.linears, strict=True):
        h = (gate_nu(gate, condition) * h @ linear.weight.T + linear.bias).clamp(min=0)
    out = net(batch)
    torch.testing.assert_close(out.h, h)
    torch.testing.assert_close(out.logits, h @ net.output.weight.T + net.output.bias)


def test_pepnet_gates_see_their_inputs_through_a_stop_gradient() -> None:
    """The embeddings reach the logit through the gated path only: their gradient is that of a net whose gate
    inputs are constants."""
    torch.manual_seed(0)
    net = perturbed(PEPNet(SCHEMA, embedded(2), layer_sizes=[3], prior_fields=[], batch_norm=False))
    batch = make_batch(rows=4)
    e = net.input(batch).detach().requires_grad_()
    net.input.forward = lambda _: e  # the embedded input as a leaf
    net(batch).logits.sum().backward()
    e_d = net.domain_embedding[batch.domain].detach()
    x = e.detach().requires_grad_()
    o_ep = gate_nu(net.ep_gate, torch.cat([e_d, e.detach()], 1)).detach() * x
    delta = gate_nu(net.pp_gates[0], torch.cat([e_d, o_ep.detach()], 1)).detach()
    linear = net.linears[0]
    h = (delta * o_ep @ linear.weight.T + linear.bias).clamp(min=0)
    (h @ net.output.weight.T + net.output.bias).sum().backward()
    torch.testing.assert_close(e.grad, x.grad)


def test_ple_shared_gate_mixes_every_domains_experts() -> None:
    """Two levels, one expert per domain and one shared, one layer each: row i of domain d gets
    ``h = mix(gate_d(u_d), [f2_d(u_d), f2_s(v)])`` with ``u_k = mix(gate1_k(x0), [f1_k(x0), f1_s(x0)])`` and the
    shared input ``v = mix(shared_gate(x0), [f1_0(x0), ..., f1_{K-1}(x0), f1_s(x0)])``: all K domains' experts."""
    torch.manual_seed(0)
    net = perturbed(PLE(SCHEMA, embedded(2), num_levels=2, num_domain_experts=1, expert_sizes=[2], tower_sizes=[]))
    batch = make_batch(rows=6)
    x0 = net.input(batch)
    first, second = net.levels

    def expert(experts: nn.Module, x: Tensor, k: int | None = None) -> Tensor:  # expert 0 (of domain k)
        w, b = (experts.weights[0], experts.biases[0]) if k is None else (experts.weights[0][k], experts.biases[0][k])
        return (x @ w[0] + b[0]).clamp(min=0)

    def mix(logits: Tensor, outputs: list[Tensor]) -> Tensor:
        return sum(g * o for g, o in zip(torch.softmax(logits, -1), outputs, strict=True))

    for i, d in enumerate(batch.domain.tolist()):
        x = x0[i]
        shared1 = expert(first.shared_experts, x)
        u = mix(first.gate.weight[d] @ x + first.gate.bias[d], [expert(first.domain_experts, x, d), shared1])
        every = [expert(first.domain_experts, x, k) for k in range(K)] + [shared1]
        v = mix(first.shared_gate.weight @ x + first.shared_gate.bias, every)
        h = mix(
            second.gate.weight[d] @ u + second.gate.bias[d],
            [expert(second.domain_experts, u, d), expert(second.shared_experts, v)],
        )
        out = net(batch.rows(torch.tensor([i])))
        torch.testing.assert_close(out.h[0], h)
        output = net.tower.output
        torch.testing.assert_close(out.logits[0], output.weight[d] @ h + output.bias[d])
    # "own": the shared gate mixes the row's own domain's expert and the shared one only
    assert first.shared_gate.out_features == K + 1
    own = PLE(SCHEMA, embedded(2), num_levels=2, num_domain_experts=1, expert_sizes=[2], shared_gate_experts="own")
    assert own.levels[0].shared_gate.out_features == 2


def test_m2m_meta_attention_and_meta_tower() -> None:
    """Row i of domain d: ``S = ReLU(W_s e_d + b_s)``, ``T = ReLU(W_t t + b_t)``, experts ``E_j = ReLU(U_j x + c_j)``;
    meta layers ``W(S) = reshape(V S + c)``; ``α = softmax_j(v · ReLU(W_a(S) [E_j, T] + b_a(S)))``,
    ``r = Σ_j α_j E_j``, ``r <- ReLU(W_l(S) r + b_l(S) + r)`` per tower layer, ``s = w_o · r + b_o``."""
    torch.manual_seed(0)
    net = perturbed(M2M(SCHEMA, embedded(2), num_experts=2, expert_sizes=[3], scenario_sizes=[2], num_tower_layers=2))
    batch = make_batch(rows=5)
    x0 = net.input(batch)
    relu = torch.relu
    scenario, task = net.scenario.layers[0], net.task.layers[0]
    t = relu(task.weight @ net.task_embedding + task.bias)

    def meta(layer: nn.Module, s: Tensor) -> tuple[Tensor, Tensor]:
        weight = (layer.weight_generator.weight @ s + layer.weight_generator.bias).view(layer.out_features, -1)
        return weight, layer.bias_generator.weight @ s + layer.bias_generator.bias

    for i, d in enumerate(batch.domain.tolist()):
        s = relu(scenario.weight @ net.domain_embedding[d] + scenario.bias)
        w, b = net.experts.weights[0], net.experts.biases[0]  # [E, in, H], [E, H]
        experts = [relu(x0[i] @ w[j] + b[j]) for j in range(2)]
        w_a, b_a = meta(net.attention, s)
        scores = torch.stack([net.attention_vector @ relu(w_a @ torch.cat([e, t]) + b_a) for e in experts])
        alpha = torch.softmax(scores, 0)
        r = alpha[0] * experts[0] + alpha[1] * experts[1]
        for layer in net.tower:
            w_l, b_l = meta(layer, s)
            r = relu(w_l @ r + b_l + r)
        out = net(batch.rows(torch.tensor([i])))
        torch.testing.assert_close(out.h[0], r)
        torch.testing.assert_close(out.logits[0], net.output.weight @ r + net.output.bias)


def test_adasparse_prunes_neurons_with_domain_aware_factors() -> None:
    """``v = W [e_d, z]``; fusion ``π = β σ(α v) · 1[β σ(α v) ≥ ε]``, binarization ``π = 1[σ(α v) ≥ ε]``, on the
    input and on each hidden layer, ``h = π ⊙ z``; α grows by ``delta_alpha`` per training forward; the regulariser
    is ``λ Σ_l (1 - mean σ(α v_l) - r)²``."""
    torch.manual_seed(0)
    batch = make_batch(rows=6)

    def by_hand(net: AdaSparse, form: str, alpha: float, beta: float, eps: float) -> tuple[Tensor, list, list]:
        """h_L, the soft factors σ(α v_l) and the factors π_l of every layer."""
        e_d = net.domain_embedding[batch.domain]
        h, softs, pis = None, [], []
        for i, pruner in enumerate(net.pruners):
            if h is None:
                z = net.input(batch)
            else:
                linear = net.linears[i - 1]
                z = net.norms[i - 1](h @ linear.weight.T + linear.bias).clamp(min=0)  # eval: running statistics
            soft = torch.sigmoid(alpha * torch.cat([e_d, z], 1) @ pruner.linear.weight.T)
            weight = beta * soft if form == "fusion" else soft
            pi = torch.where(weight >= eps, weight if form == "fusion" else torch.ones_like(weight), 0.0)
            h, softs, pis = pi * z, [*softs, soft], [*pis, pi]
        return h, softs, pis

    for form in ("fusion", "binarization"):
        net = perturbed(AdaSparse(SCHEMA, embedded(2), layer_sizes=[3], form=form, epsilon=0.6, beta=1.5, alpha=2.0))
        h, _, pis = by_hand(net, form, alpha=2.0, beta=1.5, eps=0.6)
        assert all(0 < int((pi == 0).sum()) < pi.numel() for pi in pis)  # every layer prunes some neurons, not all
        out = net(batch)
        torch.testing.assert_close(out.h, h)
        torch.testing.assert_close(out.logits, h @ net.output.weight.T + net.output.bias)
    net = AdaSparse(SCHEMA, embedded(2), [3], delta_alpha=0.5, sparsity_weight=2.0, target_sparsity=0.25)
    net.train()(batch)
    net.train()(batch)
    assert float(net.alpha) == 2.0
    net = perturbed(net)
    _, softs, _ = by_hand(net, "fusion", alpha=2.0, beta=2.0, eps=0.01)
    expected = 2.0 * sum((1 - soft.mean() - 0.25) ** 2 for soft in softs)
    torch.testing.assert_close(net(batch).aux_loss, expected)


def test_apg_generates_each_rows_low_rank_weight() -> None:
    """``h = ReLU(x U S(z) V + b(z))`` with ``[vec S(z), b(z)] = A z + a`` and z = e_d (domain), x (self) or
    ``[e_d, x]`` (mix); with ``overparam`` U = U_l U_r and V = V_l V_r."""
    torch.manual_seed(0)
    batch = make_batch(rows=5)
    for condition, overparam in (("domain", None), ("self", 3), ("mix", None)):
        net = perturbed(
            APG(SCHEMA, embedded(2), [3], condition=condition, rank=2, overparam=overparam, batch_norm=False)
        )
        layer = net.layers[0]
        u, v = layer.factors[0], layer.factors[1]
        if overparam is not None:
            u, v = layer.factors[0] @ layer.factors[1], layer.factors[2] @ layer.factors[3]
        x0 = net.input(batch)
        for i, d in enumerate(batch.domain.tolist()):
            e_d = None if net.domain_embedding is None else net.domain_embedding[d]
            z = {"domain": e_d, "self": x0[i], "mix": torch.cat([e_d, x0[i]]) if e_d is not None else None}[condition]
            generated = layer.hyper[1].weight @ z + layer.hyper[1].bias  # hyper[0]: no hidden layers
            core, bias = generated[:4].view(2, 2), generated[4:]
            h = (x0[i] @ u @ core @ v + bias).clamp(min=0)
            out = net(batch)
            torch.testing.assert_close(out.h[i], h)
            torch.testing.assert_close(out.logits[i], net.output.weight @ h + net.output.bias)


def test_hamur_adapter_with_hyper_generated_weights() -> None:
    """Row i of domain d: ``Z = A2 ReLU(A1 x0 + a1) + a2`` (``[R, R]``), ``t = σ(h U1_d Z V1_d + b1_d)``,
    ``u = t U2_d Z V2_d + b2_d``, ``h' = h + γ_d (u - μ_d) / sqrt(σ²_d + ε) + β_d`` (the domain's running statistics
    in eval), ``s = w_d · h' + c_d``."""
    torch.manual_seed(0)
    bottom = functools.partial(DNNBackbone, input=embedded(2), layer_sizes=[4], dropout=0.0)
    net = perturbed(HAMUR(SCHEMA, bottom, bottleneck=2, rank=3, hyper_sizes=[5]))
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
    batch = make_batch(rows=6)
    h, x0 = net.backbone(batch).h, net.backbone.input(batch)
    hidden, last = net.hyper[0].layers[0], net.hyper[1]
    out = net(batch)
    for i, d in enumerate(batch.domain.tolist()):
        z = (last.weight @ (hidden.weight @ x0[i] + hidden.bias).clamp(min=0) + last.bias).view(3, 3)
        t = torch.sigmoid(h[i] @ net.down_u[d] @ z @ net.down_v[d] + net.down_bias[d])
        u = t @ net.up_u[d] @ z @ net.up_v[d] + net.up_bias[d]
        norm = net.norm
        dn = norm.weight[d] * (u - norm.running_mean[d]) / torch.sqrt(norm.running_var[d] + norm.eps) + norm.bias[d]
        adapted = h[i] + dn
        torch.testing.assert_close(out.h[i], adapted)
        torch.testing.assert_close(out.logits[i], net.output.weight[d] @ adapted + net.output.bias[d])


BOTTOMS = {  # tiny backbones with dropout, so that training mode draws random numbers too
    "dnn": functools.partial(DNNBackbone, input=embedded(2), layer_sizes=[4]),
    "wide_deep": functools.partial(WideDeepBackbone, input=embedded(2), layer_sizes=[4], crosses=[["row", "item"]]),
    "dcnv2": functools.partial(DCNv2Backbone, input=embedded(2), num_cross_layers=1, layer_sizes=[4]),
}


@pytest.mark.parametrize("bottom", BOTTOMS)
def test_hamur_embeds_once_and_equals_embedding_twice(bottom: str) -> None:
    """HAMUR hands the backbone's input layer output to the backbone's rest and to the hyper-network: one embedding
    lookup per forward, bit for bit what running the whole backbone and then its input layer again gave."""
    torch.manual_seed(0)
    net = perturbed(HAMUR(SCHEMA, BOTTOMS[bottom], bottleneck=2, rank=3, hyper_sizes=[5]))
    calls: list[int] = []
    net.backbone.input.register_forward_hook(lambda module, args, out: calls.append(len(out)))
    batch = make_batch(rows=12)

    def embedding_twice() -> tuple[Tensor, Tensor]:
        groups = DomainGroups(batch.domain, K)
        h = groups.group(net.backbone(batch).h)
        adapted = net.adapt(h, groups.group(net.backbone.input(batch)), groups)
        return groups.ungroup(net.output.grouped(adapted, groups)), groups.ungroup(adapted)

    for mode in (True, False):  # training (dropout, batch statistics), then eval
        net.train(mode)
        torch.manual_seed(2)
        out = net(batch)
        assert calls == [12]
        torch.manual_seed(2)
        logits, h = embedding_twice()
        assert torch.equal(out.logits, logits) and torch.equal(out.h, h)
        calls.clear()


def test_sarnet_transforms_the_input_per_domain_and_mixes_shared_and_own_experts() -> None:
    """Row i of domain d: ``x' = BN(x0 ⊙ w_d + b_d)`` (running statistics), experts ``ReLU(x' W + c)``:
    domain d's then the shared ones, ``m = Σ softmax(G_d x' + g_d)_j f_j``, ``h = ReLU(W_h m + c_h)``,
    ``s = w_o · h + b_o``."""
    torch.manual_seed(0)
    net = perturbed(
        SARNet(SCHEMA, embedded(2), num_shared_experts=2, num_domain_experts=1, expert_sizes=[3], layer_sizes=[2])
    )
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
    batch = make_batch(rows=6)
    x0, out = net.input(batch), net(batch)
    bn, cgc, mlp = net.norm, net.experts, net.mlp.layers[0]
    for i, d in enumerate(batch.domain.tolist()):
        x = x0[i] * net.scale[d] + net.shift[d]
        x = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        own = cgc.domain_experts
        experts = [(x @ own.weights[0][d, 0] + own.biases[0][d, 0]).clamp(min=0)]
        shared = cgc.shared_experts
        experts += [(x @ shared.weights[0][j] + shared.biases[0][j]).clamp(min=0) for j in range(2)]
        gate = torch.softmax(cgc.gate.weight[d] @ x + cgc.gate.bias[d], 0)
        mixed = sum(g * e for g, e in zip(gate, experts, strict=True))
        h = (mlp.weight @ mixed + mlp.bias).clamp(min=0)
        torch.testing.assert_close(out.h[i], h)
        torch.testing.assert_close(out.logits[i], net.output.weight @ h + net.output.bias)


def test_m3oe_fuses_gated_shared_experts_with_the_balanced_domain_expert() -> None:
    """Row i of domain d: ``z = ReLU(LN(A (W ⊙ W_d x + b + b_d) + a)) + ReLU(LN(C x + c))``, shared experts
    ``e_i = ReLU(z E_i + ε_i)`` mixed by ``softmax(G_d z + g_d)``, domain experts ``f_j = ReLU(z F_j + φ_j)``,
    ``g_d = w_bal f_d + (1 - w_bal) / (K - 1) Σ_{j≠d} f_j``, ``h = Σ gate e + w_exp g_d``, ``s = w_d · h + c_d``."""
    torch.manual_seed(0)
    net = perturbed(M3oE(SCHEMA, embedded(2), star_sizes=[4, 3], num_experts=2, expert_sizes=[2], tower_sizes=[]))
    batch = make_batch(rows=6)
    x0, out = net.input(batch), net(batch)

    def lin_ln_relu(block: nn.Sequential, x: Tensor) -> Tensor:
        linear, norm = block[0], block[1]
        y = linear.weight @ x + linear.bias
        y = (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + norm.eps) * norm.weight + norm.bias
        return y.clamp(min=0)

    w_bal, w_exp = torch.sigmoid(net.balance_logit), torch.sigmoid(net.expert_logit)
    for i, d in enumerate(batch.domain.tolist()):
        star = (net.star.shared_weight * net.star.weight[d]) @ x0[i] + net.star.shared_bias + net.star.bias[d]
        z = lin_ln_relu(net.star_mlp, star) + lin_ln_relu(net.skip, x0[i])
        shared = [(z @ net.experts.weights[0][j] + net.experts.biases[0][j]).clamp(min=0) for j in range(2)]
        gate = torch.softmax(net.gate.weight[d] @ z + net.gate.bias[d], 0)
        own = net.domain_experts
        f = [(z @ own.weights[0][k, 0] + own.biases[0][k, 0]).clamp(min=0) for k in range(K)]
        g = w_bal * f[d] + (1 - w_bal) / (K - 1) * sum(f[k] for k in range(K) if k != d)
        h = gate[0] * shared[0] + gate[1] * shared[1] + w_exp * g
        torch.testing.assert_close(out.h[i], h)
        output = net.tower.output
        torch.testing.assert_close(out.logits[i], output.weight[d] @ h + output.bias[d])


def test_m3oe_balance_gradients_are_those_of_every_domains_expert_on_every_row() -> None:
    """M3oE's balanced expert, ``(w_bal - c) f_d + c Σ_k f_k``, has the value and gradients of the written-out
    ``w_bal f_d + c Σ_{k≠d} f_k`` with every domain's expert run on every row."""
    torch.manual_seed(0)
    net = perturbed(M3oE(SCHEMA, embedded(2), star_sizes=[4, 3], num_experts=2, expert_sizes=[3, 2], tower_sizes=[]))
    batch = make_batch(rows=9)
    z = torch.randn(9, 3, requires_grad=True)
    groups = DomainGroups(batch.domain, K)
    params = [z, *net.domain_experts.parameters(), net.balance_logit]
    probe = torch.randn(9, 2)
    got = torch.autograd.grad((net.domain_expert(groups.group(z), groups) * groups.group(probe)).sum(), params)
    every = z
    for weight, bias in zip(net.domain_experts.weights, net.domain_experts.biases, strict=True):
        every = torch.einsum("bi,kio->bko" if every.dim() == 2 else "bki,kio->bko", every, weight[:, 0]) + bias[:, 0]
        every = every.clamp(min=0)  # [B, K, H]
    own = every[torch.arange(9), batch.domain]
    w = torch.sigmoid(net.balance_logit)
    g = w * own + (1 - w) / (K - 1) * (every.sum(1) - own)
    torch.testing.assert_close(groups.ungroup(net.domain_expert(groups.group(z), groups)), g)
    for a, b in zip(got, torch.autograd.grad((g * probe).sum(), params), strict=True):
        torch.testing.assert_close(a, b)


def test_hmoe_mixes_every_domains_tower_with_per_row_weights() -> None:
    """Row i of domain d: experts ``f_j = ReLU(x W_j + c_j)``; for every domain k ``t_k = ReLU(T_k Σ_j softmax(G_k x +
    g_k)_j f_j + τ_k)``; ``w = softmax(Ω_d x + ω_d)``, ``z = Σ_k w_k t_k``, ``s = u_d · z + c_d`` (the stop-gradient
    on the other domains' towers: tests/models/test_baselines.py, per-domain parameters)."""
    torch.manual_seed(0)
    net = perturbed(HMoE(SCHEMA, embedded(2), num_experts=2, expert_sizes=[3], tower_sizes=[2]))
    batch = make_batch(rows=6)
    x0, out = net.input(batch), net(batch)
    for i, d in enumerate(batch.domain.tolist()):
        x = x0[i]
        f = [(x @ net.experts.weights[0][j] + net.experts.biases[0][j]).clamp(min=0) for j in range(2)]
        t = []
        for k in range(K):
            gate = torch.softmax(net.gate.weight[k] @ x + net.gate.bias[k], 0)
            mixed = gate[0] * f[0] + gate[1] * f[1]
            t.append((mixed @ net.towers.weights[0][k, 0] + net.towers.biases[0][k, 0]).clamp(min=0))
        w = torch.softmax(net.weights.weight[d] @ x + net.weights.bias[d], 0)
        z = sum(w[k] * t[k] for k in range(K))
        torch.testing.assert_close(out.h[i], z)
        torch.testing.assert_close(out.logits[i], net.output.weight[d] @ z + net.output.bias[d])


def test_hmoe_gradients_are_those_of_every_domains_towers_with_a_stop_gradient() -> None:
    """HMoE's gradients (own tower with gradient, every tower by value, mixed in blocks of rows) equal those of the
    written-out form: every domain's gate and tower on every row, the other domains' outputs detached."""
    torch.manual_seed(0)
    net = perturbed(HMoE(SCHEMA, embedded(2), num_experts=2, expert_sizes=[3], tower_sizes=[4, 2]))
    batch = make_batch(rows=9)
    params = list(net.parameters())
    out = net(batch)
    got = torch.autograd.grad(out.logits.square().sum() + out.h.sum(), params, allow_unused=True)
    x = net.input(batch)
    experts = net.experts(x)  # [B, E, H]
    gates = torch.softmax(torch.einsum("bi,kei->bke", x, net.gate.weight) + net.gate.bias, dim=-1)
    towers = gates @ experts  # [B, K, H]
    for weight, bias in zip(net.towers.weights, net.towers.biases, strict=True):
        towers = (torch.einsum("bki,kio->bko", towers, weight[:, 0]) + bias[:, 0]).clamp(min=0)
    own = nn.functional.one_hot(batch.domain, K)[..., None].float()
    towers = own * towers + (1 - own) * towers.detach()
    w = torch.einsum("bi,bki->bk", x, net.weights.weight[batch.domain]) + net.weights.bias[batch.domain]
    w = torch.softmax(w, -1)
    z = (w[..., None] * towers).sum(1)
    logits = (z * net.output.weight[batch.domain, 0]).sum(1, keepdim=True) + net.output.bias[batch.domain]
    torch.testing.assert_close(out.logits, logits)
    expected = torch.autograd.grad(logits.square().sum() + z.sum(), params, allow_unused=True)
    for name, a, b in zip([n for n, _ in net.named_parameters()], got, expected, strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_bad_options_name_the_option_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"prior_fields \['user'\] are not embedded fields .* \['row', 'item'\]"):
        PEPNet(SCHEMA, embedded(2), prior_fields=["user"])
    with pytest.raises(ValueError, match="epnet=true, ppnet=true or both"):
        PEPNet(SCHEMA, embedded(2), epnet=False, ppnet=False)
    with pytest.raises(ValueError, match=r"form must be one of \['binarization', 'scaling', 'fusion'\], got 'hard'"):
        AdaSparse(SCHEMA, embedded(2), form="hard")
    with pytest.raises(ValueError, match=r"condition must be one of \['domain', 'self', 'mix'\], got 'row'"):
        APG(SCHEMA, embedded(2), condition="row")
    with pytest.raises(ValueError, match=r"shared_gate_experts must be one of \['all', 'own'\], got 'some'"):
        PLE(SCHEMA, embedded(2), num_levels=2, shared_gate_experts="some")


def test_adaptdhm_routes_rows_to_clusters_and_moves_the_centres() -> None:
    """``x = [x0, e_d]``; training moves the centres ``μ <- normalise(β μ + (1 - β) softmax(x μ^T)^T x)`` per
    iteration; row i goes to ``c = argmax_j x_i · μ_j`` and ``s = (w ⊙ w_c) · ReLU((W ⊙ W_c) x_i + b + b_c) + v +
    v_c``."""
    torch.manual_seed(0)
    net = AdaptDHM(SCHEMA, embedded(2), layer_sizes=[3], num_clusters=2, beta=0.5, routing_iterations=2)
    batch = make_batch(rows=8)
    x = torch.cat([net.input(batch), net.domain_embedding[batch.domain]], 1).detach()
    mu = net.centers.clone()
    for _ in range(2):
        r = torch.softmax(x @ mu.T, 1)
        mu = 0.5 * mu + 0.5 * r.T @ x
        mu = mu / mu.norm(dim=1, keepdim=True)
    net.train()(batch)
    torch.testing.assert_close(net.centers, mu)
    net = perturbed(net)
    x = torch.cat([net.input(batch), net.domain_embedding[batch.domain]], 1)
    clusters = (x @ net.centers.T).argmax(1)
    assert set(clusters.tolist()) == {0, 1}  # both clusters in use
    out = net(batch)
    first, second = net.layers
    for i, c in enumerate(clusters.tolist()):
        h = ((first.shared_weight * first.weight[c]) @ x[i] + first.shared_bias + first.bias[c]).clamp(min=0)
        torch.testing.assert_close(out.h[i], h)
        logit = (second.shared_weight * second.weight[c]) @ h + second.shared_bias + second.bias[c]
        torch.testing.assert_close(out.logits[i], logit)
    assert not list(per_domain_parameters(net.layers))  # the per-cluster factors are not per-domain parameters
