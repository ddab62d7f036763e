"""Parallel domain-activated inference: one graph for all domains, unknown domains fall back to the backbone, and
the exported TorchScript file equals the model as trained, for every adapter on every backbone."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.head import WideDeepHead
from mdrec.adapters.iak import IAK
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SequenceField
from mdrec.models.dnn import DNNBackbone
from mdrec.nn.domain import DomainGroups, DomainLinear
from mdrec.serve.cli import main as export_main
from mdrec.serve.cli import trim as trim_main
from mdrec.serve.export import export, max_difference, serving_inputs
from mdrec.serve.parallel import NetworkModel, ParallelModel
from mdrec.train.run import train
from tests.helpers import ADAPTERS, CASES, SCHEMA, K, TrainCfg, adapted, embedded, make_batch, perturb, pretrained


def with_domains(batch: Batch, domain: list[int] | torch.Tensor) -> Batch:
    return Batch(batch.sparse, batch.dense, torch.as_tensor(domain), batch.labels)


def test_static_grouping_equals_the_per_domain_loop() -> None:
    torch.manual_seed(0)
    layer = DomainLinear(5, 4, 3)
    x, domain = torch.randn(9, 4), torch.tensor([4, 0, 4, 2, 0, 4, 4, 2, 0])  # domains 1 and 3 absent
    expected = torch.bmm(x[:, None], layer.weight[domain].mT).squeeze(1) + layer.bias[domain]
    for static in (False, True):
        g = DomainGroups(domain, 5, static=static)
        torch.testing.assert_close(g.ungroup(layer.grouped(g.group(x), g)), expected)
    g = DomainGroups(domain, 5, static=True)
    a, b, c = torch.randn(5, 4, 2), torch.randn(5, 2, 3), torch.randn(5, 3, 1)  # c: a one-column product
    torch.testing.assert_close(
        g.ungroup(g.matmul(g.group(x), a, b, c)), (x[:, None] @ a[domain] @ b[domain] @ c[domain]).squeeze(1)
    )
    assert DomainGroups(domain[:0], 5, static=True).matmul(x[:0], a, b).shape == (0, 3)  # an empty batch


@pytest.mark.parametrize(
    ("variant", "widths", "place"),
    [
        ({}, [(8, 6), (6, 6), (6, 1)], "output"),  # enc1, enc2's mean half o dec1, dec2 o head
        ({"encoder_only": True}, [(8, 6), (6, 1)], "output"),
        ({"residual": False}, [(8, 6), (6, 6), (6, 8)], "input"),  # not folded into the head
        ({"placement": "layers", "prior": "learned"}, None, None),
    ],
)
def test_iak_serving_form_equals_iak(
    variant: dict[str, object], widths: list[tuple[int, int]] | None, place: str | None
) -> None:
    """The folded kernels compute what IAK computes in eval, with narrower per-domain products."""
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedded(4), layer_sizes=[16, 8]).eval()
    net = perturb(AdaptedNet(SCHEMA, backbone, IAK(SCHEMA, backbone, bottleneck=5, hidden=6, **variant))).eval()
    serving = AdaptedNet(SCHEMA, backbone, net.adapter.for_serving(backbone)).eval()
    batch = make_batch(64, seed=1)
    for static in (False, True):
        torch.testing.assert_close(serving(batch, static=static).logits, net(batch).logits, rtol=1e-5, atol=1e-6)
    if widths is not None:
        layers = serving.adapter.kernels["output"].layers
        assert [(layer.in_features, layer.out_features) for layer in layers] == widths
        assert serving.adapter.sites == {"output": place}


@pytest.mark.parametrize(("backbone", "adapter"), CASES)
def test_parallel_model_and_its_export_equal_the_trained_model(backbone: str, adapter: str, tmp_path: Path) -> None:
    net = perturb(adapted(backbone, adapter)).eval()
    model = ParallelModel(net, SCHEMA, ADAPTERS[adapter])
    mixed = make_batch(64, seed=1)
    unknown = with_domains(
        mixed, torch.where(torch.arange(64) % 5 == 0, torch.tensor([-1, K, 99])[torch.arange(64) % 3], mixed.domain)
    )
    assert max_difference(model, net, unknown) < 1e-5
    served = export(model, make_batch(32, seed=2), tmp_path / "new" / "serving.pt")  # the folder is made
    for batch in (
        unknown,
        make_batch(255, seed=3),  # an odd size; "row" ids run 1..B, within its 257 ids
        with_domains(make_batch(1, seed=4), [2]),
        with_domains(mixed, [1] * 64),
    ):
        assert max_difference(served, net, batch) < 1e-5
    assert int(served.unknown_rows) == 13  # only the first batch had unknown ids: rows 0, 5, ..., 60
    # the adapters do act: each domain's rows differ from the backbone's
    plain = torch.sigmoid(net.backbone(mixed).logits)
    assert (served(mixed.sparse, mixed.dense, mixed.domain) - plain).abs().max() > 1e-3


def test_export_cli_on_an_adapt_run(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["stage=adapt", "adapter=iak", "trainer.max_epochs=1"]))
    assert export_main([str(tmp_path / "run"), "--batches", "2"]) == 0
    report = json.loads((tmp_path / "run" / "serving.json").read_text())
    assert report["max_abs_difference"] < 1e-5
    # every 10th row of half the checked batches (batches of 1,000 rows here); rows_checked counts each batch four
    # times: as it is, routed through every domain, and each of those with unknown ids
    assert report["unknown_rows_checked"] == report["rows_checked"] // 20 == 400
    assert int(torch.jit.load(str(tmp_path / "run" / "serving.pt")).unknown_rows) == 0  # the file starts clean
    with pytest.raises(SystemExit, match="lacks"):
        export_main([str(tmp_path)])


@pytest.mark.parametrize(
    ("backbone", "adapter", "skips"),
    [("dnn", "lora", True), ("dcnv2", "iak", True), ("wide_deep", "lora", False), ("dnn", "head", False)],
)
def test_trimmed_parallel_model_blanks_each_domains_dropped_features(
    tmp_path: Path, backbone: str, adapter: str, skips: bool
) -> None:
    net = perturb(adapted(backbone, adapter)).eval()
    drop = torch.tensor([[True, False, False], [False, True, True], [False, False, False]])  # [K, row item age]
    batch = make_batch(64, seed=5)
    expected = torch.sigmoid(net(batch.blanked(drop)).logits)
    for skip in (False, True) if skips else (False,):  # the lookups left out where nothing else reads their ids
        model = ParallelModel(net, SCHEMA, ADAPTERS[adapter], drop, skip_lookups=skip)
        served = export(model, batch, tmp_path / "trimmed.pt")
        torch.testing.assert_close(served(batch.sparse, batch.dense, batch.domain), expected, rtol=1e-5, atol=1e-6)
    if not skips:
        with pytest.raises(ValueError, match="skip_lookups needs"):
            ParallelModel(net, SCHEMA, ADAPTERS[adapter], drop, skip_lookups=True)

    with pytest.raises(ValueError, match="drop must be bool"):
        ParallelModel(net, SCHEMA, ADAPTERS[adapter], drop[:, :2])


def test_trim_cli_on_an_adapt_run(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["stage=adapt", "adapter=lora", "trainer.max_epochs=1"]))
    args = [str(tmp_path / "run"), "--budget", "0.002", "--latency-rows", "64", "--min-rows", "100"]
    assert trim_main([*args, "--tradeoff", "0.01", "0", "--variants"]) == 0
    routing = json.loads((tmp_path / "run" / "variants" / "routing.json").read_text())
    assert routing["max_abs_difference"] <= 1e-5 and len(routing["domains"]) == 4  # every domain: a file of its own
    variants = json.loads((tmp_path / "run" / "trim.json").read_text())["variants"]
    assert variants["sliced_difference"] <= 1e-5  # as sliced, each variant is the blanked model on its rows
    for result in variants["auc"].values():  # re-trained (200 steps by default), served where it does not lose
        assert result["check_auc_retrained"] is not None
        lost = result["check_auc_retrained"] < result["check_auc_sliced"]
        assert result["served"] == ("sliced" if lost else "retrained")
    assert "re-trained" in (tmp_path / "run" / "trim.md").read_text()
    for route in routing["domains"].values():
        assert (tmp_path / "run" / "variants" / route["file"]).exists()
    report = json.loads((tmp_path / "run" / "trim.json").read_text())
    tradeoff = json.loads((tmp_path / "run" / "trim_tradeoff.json").read_text())
    assert tradeoff["budgets"] == [0.0, 0.002, 0.01]
    kept = np.array(tradeoff["kept"])  # [budgets, K]: a larger budget never keeps more features
    assert (np.diff(kept, axis=0) <= 0).all()
    total = len(report["features"])
    assert kept[1].tolist() == [total - len(report["dropped"][d]) for d in tradeoff["domains"]]
    assert (tmp_path / "run" / "trim_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    for d in report["val_auc_before"]:
        for half in ("val", "check"):  # NaN: one class in that half
            loss = report[f"{half}_auc_before"][d] - report[f"{half}_auc_after"][d]
            assert np.isnan(loss) or loss <= 0.002 + 1e-9
    assert any(report["dropped"].values())  # the synthetic default has fields that do not matter to some domains
    assert (tmp_path / "run" / "serving_trimmed.pt").exists()
    assert "| feature |" in (tmp_path / "run" / "trim.md").read_text()
    report = json.loads((tmp_path / "run" / "trim.json").read_text())
    for d, route in routing["domains"].items():  # each variant's requests carry the features its plan keeps
        assert route["sparse"] + route["dense"] == [f for f in report["features"] if f not in report["dropped"][d]]


def test_trim_cli_meets_a_latency_budget_where_fetching_dominates(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["stage=adapt", "adapter=lora", "trainer.max_epochs=1"]))
    run = tmp_path / "run"
    args = [str(run), "--latency-rows", "64", "--min-rows", "100"]
    assert trim_main([*args, "--latency-budget-ms", "1000", "--max-auc-loss", "0.01"]) == 0
    report = json.loads((run / "trim.json").read_text())
    small = "too few validation rows: keeps every feature"  # the toy data's smallest domain
    assert set(report["verdict"].values()) <= {"meets the budget with every feature", small}  # 1 s: nothing to drop
    features = report["features"]
    costs = tmp_path / "costs.csv"  # every feature costs 1 ms to fetch: fetching dominates the model's time
    costs.write_text("feature,microseconds\n" + "".join(f"{f},1000\n" for f in features))
    args += ["--feature-costs", str(costs)]
    budget = len(features) - 2  # ms: at least three features (3 ms) must go, whatever the model's time (< 1 ms)
    assert trim_main([*args, "--latency-budget-ms", str(budget), "--max-auc-loss", "0.01"]) == 0
    report = json.loads((run / "trim.json").read_text())
    for d, verdict in report["verdict"].items():
        total = report["model_ms"][d] + report["trimmed_features_ms"][d]
        if verdict != small:
            assert (total <= budget) == (verdict in ("trimmed", "meets the budget with every feature")), (d, verdict)
        held_out = report["check_auc_before"][d] - report["check_auc_after"][d]
        assert np.isnan(held_out) or held_out <= 0.01 + 1e-9
    assert "trimmed" in report["verdict"].values()  # the large domains can drop three features within 0.01
    assert "budget" in (run / "trim.md").read_text()
    # a budget below the model's own time on the serving system (given: 5 ms), not reachable even with every
    # feature dropped (an AUC limit of 1 allows it)
    given = ["--model-ms", "5", "--latency-budget-ms", "4", "--max-auc-loss", "1"]
    assert trim_main([*args, *given]) == 0
    report = json.loads((run / "trim.json").read_text())
    assert set(report["verdict"].values()) <= {"budget not reachable within the AUC limit", small}
    assert set(report["model_ms"].values()) == {5.0} and "given by --model-ms 5" in (run / "trim.md").read_text()
    assert report["importance_method"] == "permutation"
    # ablation importance (a few re-training steps here): another ranking, the same checked plan
    ablation = ["--importance", "ablation", "--retrain-steps", "3"]
    assert trim_main([*args, "--latency-budget-ms", str(budget), *ablation]) == 0
    report = json.loads((run / "trim.json").read_text())
    assert report["importance_method"] == "ablation" and "Ablation importance" in (run / "trim.md").read_text()
    for text in ("feature,microseconds\nprice,3\n", "feature,microseconds\nuser_id,-3\n"):
        costs.write_text(text)  # a feature the model does not have, a negative cost: usage errors
        with pytest.raises(SystemExit):
            trim_main(args)


def test_parallel_model_refuses_a_backbone_that_embeds_the_domain() -> None:
    backbone = DNNBackbone(SCHEMA, embedded(8, domain_as_feature=True), [16])
    net = AdaptedNet(SCHEMA, backbone, ADAPTERS["lora"](SCHEMA, backbone))
    with pytest.raises(ValueError, match="embeds the domain id"):
        ParallelModel(net, SCHEMA, ADAPTERS["lora"])


def test_a_backbone_with_the_any_domain_id_serves_unknown_domains_with_it(tmp_path: Path) -> None:
    """A pooled backbone pre-trained with domain dropout: ParallelModel's fallback and NetworkModel's unknown rows get
    the backbone with the "any domain" id K (its own embedding row), in the exported file too."""
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedded(8, domain_as_feature=True, domain_dropout=0.1), [16]).eval()
    with torch.no_grad():
        backbone.input.embedding.table.weight.normal_()  # distinct domain rows, K's included
    batch = make_batch(32, seed=2)
    as_any = torch.sigmoid(backbone(with_domains(batch, [K] * 32)).logits)
    mixed = with_domains(batch, torch.where(torch.arange(32) % 4 == 0, K + 3, batch.domain))
    net = perturb(AdaptedNet(SCHEMA, backbone, ADAPTERS["lora"](SCHEMA, backbone))).eval()
    for model, trained in (
        (ParallelModel(net, SCHEMA, ADAPTERS["lora"]), net),
        (NetworkModel(backbone, SCHEMA), backbone),
    ):
        served = export(model, make_batch(16, seed=1), tmp_path / f"{type(model).__name__}.pt")
        unknown = served(*serving_inputs(with_domains(batch, [-1, K + 1] * 16)))
        torch.testing.assert_close(unknown, as_any, rtol=0, atol=1e-5)
        assert max_difference(served, trained, mixed, SCHEMA.num_domains) < 1e-5
        assert not torch.allclose(as_any, torch.sigmoid(backbone(with_domains(batch, [0] * 32)).logits))


def test_wide_deep_head_whose_every_domain_overrides_wide_fields_serves_unknown_domains(tmp_path: Path) -> None:
    """``wide_fields`` names a field no trained domain uses: the fallback slot must not bring it in (it would change
    the wide tables' layout); unknown rows get the plain backbone."""

    def make(schema: Schema, backbone: torch.nn.Module) -> WideDeepHead:
        own = {"a": ["item"], "b": ["item"], "c": ["item"]}
        return WideDeepHead(schema, backbone, hidden_sizes=[4], wide_fields=["row"], domain_wide_fields=own)

    backbone = pretrained("dnn")
    net = perturb(AdaptedNet(SCHEMA, backbone, make(SCHEMA, backbone))).eval()
    served = export(ParallelModel(net, SCHEMA, make), make_batch(16, seed=1), tmp_path / "serving.pt")
    batch = make_batch(32, seed=2)
    plain = torch.sigmoid(net.backbone(batch).logits)
    unknown = served(*serving_inputs(with_domains(batch, [-1, K] * 16)))
    torch.testing.assert_close(unknown, plain, rtol=0, atol=1e-5)
    mixed = with_domains(batch, torch.where(torch.arange(32) % 4 == 0, K, batch.domain))
    assert max_difference(served, net, mixed) < 1e-5
    assert (served(*serving_inputs(batch)) - plain).abs().max() > 1e-3  # known domains do get their adapters


def test_parallel_model_leaves_the_callers_network_as_it_is() -> None:
    backbone = pretrained("dnn")
    net = perturb(AdaptedNet(SCHEMA, backbone, ADAPTERS["lora"](SCHEMA, backbone), freeze=[])).train()

    def flags() -> tuple[list[bool], list[bool]]:
        return [p.requires_grad for p in net.parameters()], [m.training for m in net.modules()]

    before = flags()
    assert all(before[0]) and all(before[1])  # adapted with the backbone trainable, in training mode
    model = ParallelModel(net, SCHEMA, ADAPTERS["lora"])
    assert flags() == before
    assert not any(p.requires_grad for p in model.parameters()) and not model.net.training
    assert max_difference(model, net, make_batch(64, seed=1)) < 1e-5  # the serving copy equals the network


def test_parallel_model_refuses_an_adapter_whose_fresh_slot_is_not_the_backbone() -> None:
    def make(schema: Schema, backbone: torch.nn.Module) -> IAK:
        return IAK(schema, backbone, bottleneck=5, hidden=6, residual=False)  # r' = f: no identity slot

    backbone = pretrained("dnn")
    net = perturb(AdaptedNet(SCHEMA, backbone, make(SCHEMA, backbone))).eval()
    with pytest.raises(ValueError, match="a fresh IAK slot is not the identity"):
        ParallelModel(net, SCHEMA, make)


def test_parallel_model_and_its_export_refuse_inputs_that_do_not_fit(tmp_path: Path) -> None:
    net = perturb(adapted("dnn", "lora")).eval()
    model = ParallelModel(net, SCHEMA, ADAPTERS["lora"])
    served = export(model, make_batch(16, seed=1), tmp_path / "serving.pt")
    b = make_batch(10, seed=3)
    sparse = "sparse must be int64 (or int32) [B, F=2] ids, got "
    dense = "dense must be float32 [B, N=1] (convert with .float()), got "
    bad = [
        ("same number of rows B, got 10, 10 and 8", (b.sparse, b.dense, b.domain[:8])),
        ("same number of rows B, got 10, 8 and 10", (b.sparse, b.dense[:8], b.domain)),
        (sparse + "int64 [10, 1]", (b.sparse[:, :1], b.dense, b.domain)),
        (sparse + "float32 [10, 2]", (b.sparse.float(), b.dense, b.domain)),
        (dense + "float64 [10, 1]", (b.sparse, b.dense.double(), b.domain)),
        (dense + "float32 [10, 2]", (b.sparse, b.dense.repeat(1, 2), b.domain)),
        ("domain must be int64 (or int32) [B] domain ids, got int64 [10, 1]", (b.sparse, b.dense, b.domain[:, None])),
    ]
    for message, inputs in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            model(*inputs)
        with pytest.raises(torch.jit.Error, match=re.escape(message)):
            served(*inputs)
    expected = model(b.sparse, b.dense, b.domain)
    for m in (model, served):  # int32 ids serve as int64 ones
        torch.testing.assert_close(m(b.sparse.int(), b.dense, b.domain.int()), expected, rtol=0, atol=0)
    assert int(model.unknown_rows) == int(served.unknown_rows) == 0


def test_out_of_vocabulary_ids_are_served_as_the_unknown_id(tmp_path: Path) -> None:
    """An id outside its field's vocabulary reads neither another field's embedding nor another domain's wide
    table row (the head's wide arm on "item"): it is id 0, in the eager model and in the exported file."""
    net = perturb(adapted("dnn", "head")).eval()
    model = ParallelModel(net, SCHEMA, ADAPTERS["head"])
    served = export(model, make_batch(16, seed=1), tmp_path / "serving.pt")
    b = make_batch(12, seed=3)
    oov, unknown = b.sparse.clone(), b.sparse.clone()
    oov[0::4, 0] = 257 + 3  # "row" has 257 ids: ids + offsets read "item" id 3
    oov[1::4, 1] = 11  # "item" has 11 ids: past the table's end
    oov[2::4, 1] = -1  # reads "row"'s last id
    oov[3::4, 0] = 10**9
    unknown[0::4, 0], unknown[1::4, 1], unknown[2::4, 1], unknown[3::4, 0] = 0, 0, 0, 0
    for m in (model, served):
        torch.testing.assert_close(m(oov, b.dense, b.domain), m(unknown, b.dense, b.domain), rtol=0, atol=0)
        assert (m(oov, b.dense, b.domain) - m(b.sparse, b.dense, b.domain)).abs().max() > 1e-4


def test_out_of_vocabulary_sequence_ids_are_served_as_the_unknown_id(tmp_path: Path) -> None:
    schema = dataclasses.replace(SCHEMA, sequence=SequenceField("hist", "item", 3))
    torch.manual_seed(0)
    backbone = DNNBackbone(schema, embedded(8), [16, 8]).eval()  # mean pooling over the history, "item"'s embeddings
    net = perturb(AdaptedNet(schema, backbone, ADAPTERS["lora"](schema, backbone))).eval()
    model = ParallelModel(net, schema, ADAPTERS["lora"])
    b = make_batch(6, seed=3)
    lengths = torch.tensor([3, 3, 2, 1, 3, 0])
    seq = torch.tensor([[1, 2, 3], [4, 11, 5], [-1, 6, 0], [10**9, 0, 0], [7, 8, 9], [0, 0, 0]])
    unknown = seq.masked_fill((seq < 0) | (seq >= 11), 0)
    inputs = (b.sparse, b.dense, b.domain)
    served = export(model, Batch(*inputs, b.labels, unknown, lengths), tmp_path / "serving.pt")
    for m in (model, served):
        torch.testing.assert_close(m(*inputs, seq, lengths), m(*inputs, unknown, lengths), rtol=0, atol=0)
    message = "seq must be int64 (or int32) [B=6, L] ids, got int64 [4, 3]"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(*inputs, seq[:4], lengths)
    with pytest.raises(torch.jit.Error, match=re.escape(message)):
        served(*inputs, seq[:4], lengths)


def test_export_cli_refuses_no_batches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_main(["no/such/run", "--batches", "0"])
    assert exit_info.value.code == 2  # argparse's usage error, before the run is loaded
    assert "--batches must be at least 1" in capsys.readouterr().err
