"""Per-domain feature trimming: permutation and ablation importance within domains, the brief re-training, and a
plan that drops a field for the domain where it is noise while the other domain keeps it."""

from __future__ import annotations

import pytest
import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SparseField
from mdrec.eval.trim import (
    LatencyModel,
    Retraining,
    Verdict,
    ablation_importance,
    auc_change_se,
    permutation_importance,
    permuted_within_domains,
    plan_trimming,
    read_budgets,
    read_domain_ms,
    read_feature_costs,
    retrain,
    split_halves,
    trim_table,
)
from mdrec.models.dnn import DNNBackbone
from mdrec.serve.ablation import adapter_retrainer
from tests.helpers import embedded

SCHEMA = Schema(
    "trim", tuple(SparseField(f, 21) for f in ("signal", "local", "noise")), ("x",), "domain", ("a", "b"), ("click",)
)


def world(rows: int, seed: int) -> Batch:
    """``signal`` drives the click in both domains, ``local`` in domain a only (noise in b), ``noise`` and ``x``
    in neither."""
    g = torch.Generator().manual_seed(seed)
    effect = torch.randn(2, 21, generator=torch.Generator().manual_seed(99)) * 1.5  # per id of signal / local
    sparse = torch.randint(1, 21, (rows, 3), generator=g)
    domain = torch.randint(0, 2, (rows,), generator=g)
    logit = effect[0, sparse[:, 0]] + (domain == 0) * effect[1, sparse[:, 1]]
    labels = (torch.rand(rows, generator=g) < torch.sigmoid(logit)).float()[:, None]
    return Batch(sparse, torch.rand(rows, 1, generator=g), domain, labels)


def trained(domain_as_feature: bool = True) -> DNNBackbone:
    torch.manual_seed(0)
    net = DNNBackbone(SCHEMA, embedded(8, domain_as_feature=domain_as_feature), [32], dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    data = world(20_000, seed=0)
    for step in range(300):
        rows = torch.arange(step * 512, (step + 1) * 512) % data.size
        batch = data.rows(rows)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_permutation_stays_within_domains() -> None:
    column, domain = torch.arange(10), torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1, 0])
    out = permuted_within_domains(column, domain, torch.Generator().manual_seed(0))
    for d in (0, 1):
        assert sorted(out[domain == d].tolist()) == column[domain == d].tolist()
    assert not torch.equal(out, column)


def test_noise_field_of_one_domain_is_trimmed_there_only() -> None:
    net = trained()
    predict = lambda b: torch.sigmoid(net(b).logits[:, 0])  # noqa: E731
    fit, check = split_halves(world(40_000, seed=1))
    importance = permutation_importance(predict, fit, SCHEMA)  # [F, K]: signal, local, noise, x
    assert importance[0].min() > 0.05  # signal matters in both
    assert importance[1, 0] > 0.05 and importance[1, 1] < 0.005  # local matters in a only
    plan = plan_trimming(predict, fit, check, SCHEMA, importance, limit=0.002)
    assert set(plan.dropped("a")) == {"noise", "x"}
    assert set(plan.dropped("b")) == {"local", "noise", "x"}
    assert (plan.auc_before - plan.auc_after).max() <= 0.002
    assert (plan.check_before - plan.check_after).max() <= 0.002  # held out: within the limit too
    assert plan.verdict == [Verdict.TRIMMED, Verdict.TRIMMED]
    # the plan's AUC is the AUC with its features blanked
    blank = check.blanked(plan.drop)
    assert (blank.sparse[check.domain == 1, 1] == 0).all() and (blank.sparse[check.domain == 0, 1] > 0).all()
    assert "| b | 1 / 4 |" in trim_table(plan)
    small = plan_trimming(predict, fit, check, SCHEMA, importance, limit=0.002, min_rows=25_000)
    assert not small.drop.any()  # about 20,000 rows per domain: too few for this guard, every feature kept
    assert small.verdict == [Verdict.TOO_FEW_ROWS, Verdict.TOO_FEW_ROWS]
    with pytest.raises(ValueError, match="AUC loss"):
        plan_trimming(predict, fit, check, SCHEMA, importance, limit=-1.0)


def test_halves_split_each_domain_evenly_and_disjointly() -> None:
    data = world(1001, seed=3)
    data = Batch(data.sparse, data.dense, data.domain, torch.arange(1001, dtype=torch.float32)[:, None])
    fit, check = split_halves(data, seed=5)
    ids = torch.cat([fit.labels[:, 0], check.labels[:, 0]]).long()
    assert sorted(ids.tolist()) == list(range(1001))  # every row once
    for d in (0, 1):
        assert abs(int((fit.domain == d).sum()) - int((check.domain == d).sum())) <= 1
    again = split_halves(data, seed=5)[0]
    assert torch.equal(again.labels, fit.labels) and not torch.equal(split_halves(data, seed=6)[0].labels, fit.labels)


def true_model(batch: Batch) -> torch.Tensor:
    """The click probability of :func:`world` itself: ``noise`` and ``x`` have no effect, ``local`` none in b."""
    effect = torch.randn(2, 21, generator=torch.Generator().manual_seed(99)) * 1.5
    return torch.sigmoid(effect[0, batch.sparse[:, 0]] + (batch.domain == 0) * effect[1, batch.sparse[:, 1]])


def test_a_plan_that_only_helps_the_rows_that_chose_it_is_cut_back() -> None:
    # on the choosing half the click ignores ``local`` in domain a too: blanking it costs nothing there; on the
    # checking half (as the model assumes) it matters: the held-out check must undo that drop
    fit, check = split_halves(world(20_000, seed=1))
    effect = torch.randn(2, 21, generator=torch.Generator().manual_seed(99)) * 1.5
    g = torch.Generator().manual_seed(7)
    fit_labels = (torch.rand(fit.size, generator=g) < torch.sigmoid(effect[0, fit.sparse[:, 0]])).float()[:, None]
    fit = Batch(fit.sparse, fit.dense, fit.domain, fit_labels)
    importance = permutation_importance(true_model, fit, SCHEMA)
    plan = plan_trimming(true_model, fit, check, SCHEMA, importance, limit=0.002)
    assert "local" not in plan.dropped("a")  # chosen on fit, refused on check
    first = importance.clone()
    first[1, 0] = -1.0  # local tried first in a: the first step fails the check, nothing of a's plan survives
    refused = plan_trimming(true_model, fit, check, SCHEMA, first, limit=0.002)
    assert refused.dropped("a") == [] and refused.verdict[0] == Verdict.REFUSED
    assert "the checking half refused every drop" in trim_table(refused)
    assert set(plan.dropped("a")) <= {"noise", "x"} and set(plan.dropped("b")) == {"local", "noise", "x"}
    assert (plan.check_before - plan.check_after).max() <= 0.002


def test_a_latency_budget_drops_costly_features_until_it_is_met_or_says_it_cannot() -> None:
    fit, check = split_halves(world(20_000, seed=1))
    importance = permutation_importance(true_model, fit, SCHEMA)
    # signal 1 ms, local 2 ms, noise 0.5 ms, x free; the model itself 1 ms per call
    latency = LatencyModel(
        model_ms=torch.tensor([1.0, 1.0], dtype=torch.float64),
        cost_ms=torch.tensor([1.0, 2.0, 0.5, 0.0], dtype=torch.float64),
        budget_ms=torch.tensor([2.0, 3.0], dtype=torch.float64),
    )
    plan = plan_trimming(true_model, fit, check, SCHEMA, importance, limit=0.01, latency=latency)
    # b: 4.5 ms in all; dropping local (no effect in b) gives 2.5 <= 3: met, and noise stays (no need)
    assert plan.dropped("b") == ["local"] and plan.verdict[1] == Verdict.TRIMMED
    # a: noise goes (4.0 ms), then local would cost far more than 0.01 AUC: 2 ms is not reachable; x is free
    assert plan.dropped("a") == ["noise"] and plan.verdict[0] == Verdict.NOT_REACHABLE
    assert latency.predicted_ms(plan.drop).tolist() == [4.0, 2.5]
    table = trim_table(plan)
    assert "| a | 3 / 4 |" in table and "budget not reachable within the AUC limit" in table
    assert "| 2.500 | 3 |" in table  # b's predicted total against its budget
    # a budget the model alone cannot meet, whatever is dropped
    tight = LatencyModel(latency.model_ms, latency.cost_ms, torch.tensor([0.5, 0.5], dtype=torch.float64))
    plan = plan_trimming(true_model, fit, check, SCHEMA, importance, limit=1.0, latency=tight)
    assert plan.verdict == [Verdict.NOT_REACHABLE, Verdict.NOT_REACHABLE]
    assert plan.drop[:, :3].all() and not plan.drop[:, 3].any()  # every costly feature dropped, the free one kept


def test_cost_and_budget_files_are_checked(tmp_path) -> None:
    features = ["signal", "local", "noise", "x"]
    good = tmp_path / "costs.csv"
    good.write_text("feature,microseconds\nsignal,1500\nnoise,250\n")
    assert read_feature_costs(good, features).tolist() == [1.5, 0.0, 0.25, 0.0]
    cases = {
        "feature,cost\nsignal,1\n": "header",
        "feature,microseconds\nprice,1\n": "unknown feature 'price'",
        "feature,microseconds\nsignal,1\nsignal,2\n": "listed twice",
        "feature,microseconds\nsignal,-1\n": "finite number >= 0",
        "feature,microseconds\nsignal,fast\n": "not a number",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_feature_costs(bad, features)
    bom = tmp_path / "bom.csv"  # as Excel saves a CSV: a byte-order mark first
    bom.write_bytes(b"\xef\xbb\xbffeature,microseconds\nnoise,250\n")
    assert read_feature_costs(bom, features).tolist() == [0.0, 0.0, 0.25, 0.0]
    bom.write_bytes(b"feature,microseconds\nnois\xe9,250\n")  # Latin-1
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_feature_costs(bom, features)
    assert read_budgets("2.5", ["a", "b"]).tolist() == [2.5, 2.5]
    budgets = tmp_path / "budgets.csv"
    budgets.write_text("domain,budget_ms\na,1\nb,4\n")
    assert read_budgets(str(budgets), ["a", "b"]).tolist() == [1.0, 4.0]
    budgets.write_text("domain,budget_ms\na,1\n")
    with pytest.raises(ValueError, match=r"no --latency-budget-ms for domains \[.b.\]"):
        read_budgets(str(budgets), ["a", "b"])
    with pytest.raises(ValueError, match="positive"):
        read_budgets("0", ["a", "b"])
    with pytest.raises(ValueError, match="neither a number"):
        read_budgets("soon", ["a", "b"])
    model = tmp_path / "model.csv"  # the model's own time on the user's system (--model-ms), read the same way
    model.write_text("domain,model_ms\na,0.5\nb,2\n")
    assert read_domain_ms(str(model), ["a", "b"], "--model-ms", "model_ms").tolist() == [0.5, 2.0]
    with pytest.raises(ValueError, match="--model-ms: every value must be positive"):
        read_domain_ms("-1", ["a", "b"], "--model-ms", "model_ms")


def test_retraining_fits_only_its_parameters_on_equal_rows_of_every_domain() -> None:
    data = world(2_000, seed=4)
    w, frozen = torch.zeros(21, requires_grad=True), torch.ones(21, requires_grad=True)
    seen = []

    def logits(batch: Batch) -> torch.Tensor:
        seen.append(torch.bincount(batch.domain, minlength=2))
        return (w[batch.sparse[:, 0]] * frozen[batch.sparse[:, 0]])[:, None]

    losses = retrain(logits, [w], data, Retraining(steps=60, rows=32, lr=0.1))
    assert all(c.tolist() == [32, 32] for c in seen)  # every step: 32 rows of each domain
    assert torch.equal(frozen, torch.ones(21)) and w.abs().sum() > 0
    assert sum(losses[-10:]) < sum(losses[:10])  # ``signal`` explains the click: the fit lowers the loss
    assert retrain(logits, [w], data, Retraining(steps=0)) == []
    runs = []  # with dropout: seeded, the same twice
    for _ in range(2):
        v = torch.zeros(21, requires_grad=True)
        dropped = lambda b, v=v: torch.nn.functional.dropout(v[b.sparse[:, 0]], 0.5, training=True)[:, None]  # noqa: E731
        runs.append(retrain(dropped, [v], data, Retraining(steps=5, rows=32, lr=0.1)))
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="steps >= 0"):
        Retraining(steps=-1)


def test_ablation_importance_is_the_auc_lost_without_the_feature() -> None:
    # the defining equation on a model that ignores what it is not given: exactly 0 for the unused features
    fit = world(8_000, seed=1)
    blanking = lambda drop: lambda b: true_model(b.blanked(drop.expand(2, -1)))  # noqa: E731
    importance = ablation_importance(blanking, fit, SCHEMA)
    base = torch.stack([importance[f] for f in (2, 3)])
    assert torch.equal(base, torch.zeros(2, 2))  # noise and x: not read, nothing lost
    assert importance[0].min() > 0.1 and importance[1, 0] > 0.05 and importance[1, 1] == 0  # local: a only


@pytest.mark.slow
def test_ablation_importance_re_trains_each_domains_adapter() -> None:
    backbone = trained(domain_as_feature=False)  # shared by both domains: local's effect in a is the adapter's job
    torch.manual_seed(1)
    net = AdaptedNet(SCHEMA, backbone, LoRA(SCHEMA, backbone, rank=4)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    retrained = adapter_retrainer(net, world(20_000, seed=2), Retraining(steps=150, rows=128, lr=1e-2))
    importance = ablation_importance(retrained, world(20_000, seed=3), SCHEMA)  # [F, K]: signal, local, noise, x
    assert importance[0].min() > 0.05  # the click depends on signal in both domains
    assert importance[1, 0] > 0.02  # and on local in a
    assert importance[1:, 1].abs().max() < 0.005 and importance[2:, 0].abs().max() < 0.005  # on nothing else
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the run's network untouched
    with pytest.raises(ValueError, match="has none"):
        adapter_retrainer(AdaptedNet(SCHEMA, backbone, None), world(10, seed=0), Retraining())


def test_auc_change_se_is_the_bootstrap_spread_of_the_paired_change() -> None:
    data = world(4_000, seed=5)
    probs = true_model(data)
    noisy = probs + 0.3 * torch.rand(data.size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(auc_change_se(probs, probs, data, 2, replicates=50), torch.zeros(2))  # the same: no spread
    se = auc_change_se(probs, noisy, data, 2, replicates=50)
    assert (se > 0.001).all() and (se < 0.02).all()  # about 2,000 rows a domain: a spread of a few thousandths


def test_per_cost_order_drops_the_least_auc_per_millisecond_first() -> None:
    # domain b: local costs 5 ms and nothing in AUC (importance 0.0005, say by noise), noise 0.1 ms and less;
    # importance order drops noise then local to meet 3 ms; per millisecond, local alone meets it
    fit, check = split_halves(world(20_000, seed=1))
    importance = torch.tensor([[0.3, 0.3], [0.1, 0.0005], [0.0, 0.0001], [0.0, 0.0]])  # [F, K]
    latency = LatencyModel(
        model_ms=torch.tensor([1.0, 1.0], dtype=torch.float64),
        cost_ms=torch.tensor([1.0, 5.0, 0.1, 0.0], dtype=torch.float64),
        budget_ms=torch.tensor([100.0, 3.0], dtype=torch.float64),
    )
    by_importance = plan_trimming(true_model, fit, check, SCHEMA, importance, limit=0.01, latency=latency)
    per_cost = plan_trimming(true_model, fit, check, SCHEMA, importance, 0.01, latency=latency, per_cost=True)
    assert by_importance.dropped("b") == ["local", "noise"]
    assert per_cost.dropped("b") == ["local"]  # keys: local 0.0001 / ms, noise 0.001 / ms, signal 0.3 / ms
    assert per_cost.verdict[1] == Verdict.TRIMMED and latency.predicted_ms(per_cost.drop)[1] == 2.1
    assert per_cost.dropped("a") == [] and per_cost.verdict[0] == Verdict.MEETS_UNTRIMMED  # 7.1 ms <= 100
    with pytest.raises(ValueError, match="latency model"):
        plan_trimming(true_model, fit, check, SCHEMA, importance, 0.01, per_cost=True)
