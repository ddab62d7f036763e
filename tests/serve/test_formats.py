"""Export of any run in every format: a network that groups its own rows (any ``model=``) serves all domains from
one graph; the TorchScript, AOTInductor and ONNX files each equal the model as trained, unknown domains included."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.nn.domain import DomainGroups
from mdrec.serve.cli import main as export_main
from mdrec.serve.export import (
    FORMATS,
    expected_probabilities,
    export,
    max_difference,
    onnx_available,
    onnxruntime_available,
    summed_bags,
    write,
)
from mdrec.serve.parallel import NetworkModel, ParallelModel
from mdrec.train.run import train
from tests.helpers import ADAPTERS, CONF_DIR, SCHEMA, K, TrainCfg, adapted, make_batch, perturb

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def schema_of(model: str) -> Schema:
    """The tiny schema; with a conversion label for ESMM (the batches' labels are not read in serving)."""
    return dataclasses.replace(SCHEMA, labels=("click", "conversion")) if model == "esmm" else SCHEMA


def zoo(model: str) -> nn.Module:
    """``model=<model>``'s network on the tiny schema, with weights and normalisation statistics away from their
    start (eval mode)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}", "input.embedding_dim=4"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)(schema_of(model))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        net.train()(make_batch(256, seed=7))  # running statistics of the domains' own rows
    return net.eval()


def with_unknown(batch: Batch) -> Batch:
    """``batch`` with every 5th row's domain id one the model does not know (-1, K, 99)."""
    rows = torch.arange(batch.size)
    unknown = torch.tensor([-1, K, 99])[rows % 3]
    return Batch(batch.sparse, batch.dense, torch.where(rows % 5 == 0, unknown, batch.domain), batch.labels)


def checks() -> list[Batch]:
    """Batches every exported file is checked on: mixed domains with unknown ids, an odd size, one row, one
    domain."""
    one = make_batch(64, seed=5)
    return [
        with_unknown(make_batch(64, seed=1)),
        make_batch(255, seed=3),
        make_batch(1, seed=4),
        Batch(one.sparse, one.dense, torch.full((64,), 2), one.labels),
    ]


def test_static_map_runs_each_rows_own_domain() -> None:
    """A static grouping's map (a serving graph of per-domain experts) equals the per-domain loop."""
    torch.manual_seed(0)
    x, domain, w = torch.randn(9, 4), torch.tensor([4, 0, 4, 2, 0, 4, 4, 2, 0]), torch.randn(5, 4, 3)
    fn = lambda rows, weight: torch.tanh(rows @ weight)  # noqa: E731 (not a product: no per-row form)
    for static in (False, True):
        g = DomainGroups(domain, 5, static=static)
        torch.testing.assert_close(
            g.ungroup(g.map(fn, g.group(x), g.take(w))), torch.tanh(x[:, None] @ w[domain])[:, 0]
        )


def test_summed_bags_equal_embedding_bag() -> None:
    """The ONNX export's bag sums: out[b] = sum over bag b's ids j of weight_j * table[id_j], empty bags 0."""
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    ids, offsets, weights = torch.tensor([2, 0, 1, 1]), torch.tensor([0, 1, 1]), torch.tensor([0.5, 1.0, 2.0, -1.0])
    out = summed_bags(table, ids, offsets, False, 0, False, weights, False, None)[0]
    torch.testing.assert_close(out, torch.tensor([[2.5, 3.0], [0.0, 0.0], [4.0, 6.0]]))  # 0.5*t2; none; t0+2t1-t1
    torch.testing.assert_close(out, F.embedding_bag(ids, table, offsets, mode="sum", per_sample_weights=weights))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_serves_from_one_traced_graph(model: str, tmp_path: Path) -> None:
    """Every model=: the serving model and its TorchScript file give the network's probabilities on known domains,
    NaN on unknown ones (a backbone that does not read the domain: its own), for any batch size and domain mix."""
    net = zoo(model)
    served = export(NetworkModel(net, schema_of(model)), make_batch(32, seed=2), tmp_path / "serving.pt")
    for batch in checks():
        assert max_difference(served, net, batch, K) < 1e-5
    unknown = with_unknown(make_batch(64, seed=1))
    nan = served(unknown.sparse, unknown.dense, unknown.domain).isnan()[:, 0]
    assert nan.tolist() == ([False] * 64 if model == "backbone" else (torch.arange(64) % 5 == 0).tolist())
    assert int(served.unknown_rows) == 26  # the first check batch had 13 too


def test_expected_probabilities_of_a_zoo_model_are_nan_on_unknown_domains() -> None:
    net = zoo("star")
    batch = with_unknown(make_batch(10, seed=1))
    expected = expected_probabilities(net, batch, K)
    assert expected[:, 0].isnan().tolist() == [True] + [False] * 4 + [True] + [False] * 4
    own = torch.sigmoid(net(Batch(batch.sparse[1:5], batch.dense[1:5], batch.domain[1:5], batch.labels[1:5])).logits)
    torch.testing.assert_close(expected[1:5], own)


def network_models() -> list[tuple[str, nn.Module, object]]:
    """A STAR, an MMoE and an IAK-adapted network with their serving models."""
    iak = perturb(adapted("dnn", "iak")).eval()
    return [
        ("star", (net := zoo("star")), NetworkModel(net, SCHEMA)),
        ("mmoe", (net2 := zoo("mmoe")), NetworkModel(net2, SCHEMA)),
        ("iak", iak, ParallelModel(iak, SCHEMA, ADAPTERS["iak"])),
    ]


@pytest.mark.slow  # ONNX export: about 10 s a model; AOTInductor compiles C++: about 40 s a model
@pytest.mark.parametrize("fmt", ["onnx", "aoti"])
def test_every_format_round_trips(fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxscript", reason="the ONNX export needs onnx and onnxscript: pip install mdrec[export]")
        if not onnxruntime_available():
            pytest.skip("onnxruntime is not installed (pip install mdrec[export]): the ONNX file cannot be run")
    for name, net, model in network_models():
        served = write(fmt, model, make_batch(32, seed=2), tmp_path / f"{name}.{fmt}")
        for batch in checks():
            assert max_difference(served, net, batch, K) < 1e-5, (name, fmt)


def test_export_cli_on_a_star_run(train_cfg: TrainCfg, tmp_path: Path) -> None:
    train(train_cfg(["model=star", "trainer.max_epochs=1", "data.source.num_rows=4000"]))
    assert export_main([str(tmp_path / "run"), "--batches", "2"]) == 0
    report = json.loads((tmp_path / "run" / "serving.json").read_text())
    assert report["model"] == "STAR" and report["unknown_domains"] == "NaN"
    assert report["files"]["torchscript"]["max_abs_difference"] < 1e-5
    assert report["request"]["inputs"]["domain"]["values"] == {d: i for i, d in enumerate(report["domains"])}
    assert list(report["request"]["inputs"]) == ["sparse", "dense", "domain"]


@pytest.mark.slow  # three training runs, AOTInductor compiles C++ for each
@pytest.mark.parametrize(
    "overrides", [["model=star"], ["model=mmoe"], ["stage=adapt", "adapter=iak"]], ids=["star", "mmoe", "iak"]
)
def test_export_cli_writes_every_format(overrides: list[str], train_cfg: TrainCfg, tmp_path: Path) -> None:
    if not onnx_available():
        pytest.skip("--format all writes ONNX, which needs onnx and onnxscript: pip install mdrec[export]")
    train(train_cfg([*overrides, "trainer.max_epochs=1", "data.source.num_rows=4000"]))
    assert export_main([str(tmp_path / "run"), "--batches", "2", "--format", "all"]) == 0
    report = json.loads((tmp_path / "run" / "serving.json").read_text())
    assert sorted(report["files"]) == sorted(FORMATS)
    for fmt, entry in report["files"].items():
        assert Path(entry["file"]).exists()
        if fmt != "onnx" or onnxruntime_available():
            assert entry["max_abs_difference"] < 1e-5, fmt


def test_export_cli_refuses_onnx_without_its_packages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("mdrec.serve.cli.onnx_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["no/such/run", "--format", "all"])
    assert exit_info.value.code == 2  # a usage error, before the run is loaded
    assert "pip install 'mdrec[export]'" in capsys.readouterr().err
