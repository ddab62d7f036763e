"""Sparse embedding updates: JointOptimizer steps two optimisers as one; model.embedding_optimizer gives the
embedding tables sparse gradients and its own (lazy) optimiser."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from mdrec.adapters.base import AdaptedNet
from mdrec.adapters.iak import IAK
from mdrec.models.dnn import DNNBackbone
from mdrec.train.module import RankingModule
from mdrec.train.optim import JointOptimizer
from mdrec.train.run import train
from tests.helpers import SCHEMA, TrainCfg, embedded, make_batch


def toy() -> tuple[nn.Embedding, nn.Linear]:
    torch.manual_seed(0)
    return nn.Embedding(6, 3, sparse=True), nn.Linear(3, 1)


def backward(emb: nn.Embedding, lin: nn.Linear, ids: list[int]) -> None:
    lin(emb(torch.tensor(ids))).square().sum().backward()


def test_a_joint_step_is_the_two_optimisers_stepped_apart() -> None:
    emb, lin = toy()
    emb2, lin2 = copy.deepcopy(emb), copy.deepcopy(lin)
    joint = JointOptimizer(torch.optim.Adam(lin.parameters(), lr=0.1), torch.optim.SparseAdam([emb.weight], lr=0.1))
    apart = [torch.optim.Adam(lin2.parameters(), lr=0.1), torch.optim.SparseAdam([emb2.weight], lr=0.1)]
    for ids in ([1, 2], [3, 3, 4]):
        joint.zero_grad()
        backward(emb, lin, ids)
        joint.step()
        for o in apart:
            o.zero_grad()
        backward(emb2, lin2, ids)
        for o in apart:
            o.step()
    torch.testing.assert_close(emb.weight, emb2.weight, rtol=0, atol=0)
    torch.testing.assert_close(lin.weight, lin2.weight, rtol=0, atol=0)
    # lazy: rows 1 and 2 (first step only) moved once, row 0 and 5 never
    start = toy()[0].weight
    assert torch.equal(emb.weight[[0, 5]], start[[0, 5]]) and not torch.equal(emb.weight[1], start[1])


def test_the_joint_state_dict_round_trips_and_its_groups_are_the_parts_groups() -> None:
    emb, lin = toy()

    def make(e: nn.Embedding, li: nn.Linear) -> JointOptimizer:
        return JointOptimizer(torch.optim.Adam(li.parameters(), lr=0.1), torch.optim.SparseAdam([e.weight], lr=0.05))

    joint = make(emb, lin)
    backward(emb, lin, [1, 2])
    joint.step()
    emb2, lin2 = copy.deepcopy(emb), copy.deepcopy(lin)
    resumed = make(emb2, lin2)
    resumed.load_state_dict(copy.deepcopy(joint.state_dict()))
    assert [g["lr"] for g in resumed.param_groups] == [0.1, 0.05]
    for opt, e, li in ((joint, emb, lin), (resumed, emb2, lin2)):
        opt.param_groups[1]["lr"] = 0.2  # reaches SparseAdam, after loading too
        opt.zero_grad()
        backward(e, li, [2, 4])
        opt.step()
    assert resumed.sparse.param_groups[0]["lr"] == 0.2 and resumed.sparse.state is resumed.state
    torch.testing.assert_close(emb2.weight, emb.weight, rtol=0, atol=0)
    torch.testing.assert_close(lin2.weight, lin.weight, rtol=0, atol=0)


def test_a_parameter_in_both_optimisers_is_refused() -> None:
    emb, _ = toy()
    with pytest.raises(ValueError, match="in both"):
        JointOptimizer(torch.optim.SGD([emb.weight], lr=0.1), torch.optim.SparseAdam([emb.weight]))


def module(**options: object) -> RankingModule:
    torch.manual_seed(0)
    net = DNNBackbone(SCHEMA, embedded(4), [8])
    return RankingModule(net, SCHEMA, functools.partial(torch.optim.Adam, lr=1e-2), **options)


def test_the_embedding_optimizer_gets_the_tables_and_sparse_gradients() -> None:
    m = module(embedding_optimizer=functools.partial(torch.optim.SparseAdam, lr=1e-2))
    m.trainer = type("T", (), {"gradient_clip_val": None})()  # configure_optimizers reads the clipping setting
    opt = m.configure_optimizers()
    table = m.net.input.embedding.table.weight
    assert isinstance(opt, JointOptimizer) and opt.sparse.param_groups[0]["params"] == [table]
    assert all(p is not table for g in opt.dense.param_groups for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.net.parameters()))
    batch = make_batch(16)
    m.loss(m(batch), batch).backward()
    assert table.grad.is_sparse and table.grad.coalesce().indices().shape[1] < table.shape[0]  # the batch's rows
    opt.step()


def test_clipping_and_sparse_gradients_are_refused_and_a_frozen_table_needs_no_sparse_optimiser() -> None:
    m = module(embedding_optimizer=functools.partial(torch.optim.SparseAdam))
    m.trainer = type("T", (), {"gradient_clip_val": 1.0})()
    with pytest.raises(ValueError, match="gradient_clip_val=1.0"):
        m.configure_optimizers()
    torch.manual_seed(0)
    net = DNNBackbone(SCHEMA, embedded(4), [8])
    net.input.embedding.requires_grad_(False)  # as stage=adapt freezes a backbone
    frozen = RankingModule(net, SCHEMA, torch.optim.Adam, embedding_optimizer=torch.optim.SparseAdam)
    assert frozen.sparse_tables == [] and not net.input.embedding.table.sparse
    assert isinstance(frozen.configure_optimizers(), torch.optim.Adam)


@pytest.mark.parametrize("freeze", [["*"], []])
def test_an_adapted_net_gives_its_tables_to_the_embedding_optimiser_only_when_they_train(freeze: list[str]) -> None:
    """stage=adapt builds its module with model.embedding_optimizer: inert on a frozen backbone, the tables' optimiser
    when the backbone fine-tunes (freeze: [])."""
    torch.manual_seed(0)
    backbone = DNNBackbone(SCHEMA, embedded(4), [8])
    net = AdaptedNet(SCHEMA, backbone, IAK(SCHEMA, backbone, bottleneck=2, hidden=3), freeze=freeze)
    m = RankingModule(net, SCHEMA, torch.optim.Adam, embedding_optimizer=torch.optim.SparseAdam)
    m.trainer = type("T", (), {"gradient_clip_val": None})()
    opt = m.configure_optimizers()
    table = backbone.input.embedding.table.weight
    if freeze:
        assert isinstance(opt, torch.optim.Adam) and all(p is not table for p in opt.param_groups[0]["params"])
    else:
        assert isinstance(opt, JointOptimizer) and opt.sparse.param_groups[0]["params"] == [table]


def test_a_sparse_run_trains_and_checkpoints_both_optimisers(tmp_path: Path, train_cfg: TrainCfg) -> None:
    sparse = "model.embedding_optimizer={_target_: torch.optim.SparseAdam, _partial_: true, lr: 0.003}"
    overrides = [sparse, "data.source.num_rows=6000", "trainer.max_epochs=2", "model.optimizer.lr=0.003"]
    metrics = train(train_cfg(overrides))
    assert metrics["test/auc"] > 0.55
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    (states,) = ckpt["optimizer_states"]
    assert len(states["param_groups"]) == 2  # Adam's group, then SparseAdam's
