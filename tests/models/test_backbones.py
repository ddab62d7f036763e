"""Backbones (DNN, Wide&Deep, DCNv2), sequence pooling in the input layer and the domain-as-feature input (the
cross and pooling layers alone: tests/nn/)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SparseField
from mdrec.models.dcnv2 import DCNv2Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.wide_deep import HASH_MASK, HASH_MIX, HASH_MULTIPLIER, WideArm, WideDeepBackbone
from mdrec.nn.cross import CrossLayer
from mdrec.train.run import train
from tests.helpers import SEQ_SCHEMA, TrainCfg, embedded

D, INPUT_WIDTH = 4, 2 * 4 + 4 + 2  # two fields, the pooled sequence, two dense features


def dcnv2(cross_rank: int | None, structure: str, **input_options: object) -> DCNv2Backbone:
    return DCNv2Backbone(SEQ_SCHEMA, embedded(D, **input_options), 2, cross_rank, [8, 6], structure, 0.0, num_tasks=2)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "dnn": lambda **kw: DNNBackbone(SEQ_SCHEMA, embedded(D, **kw), layer_sizes=[8, 6], dropout=0.0, num_tasks=2),
    "wide_deep": lambda **kw: WideDeepBackbone(
        SEQ_SCHEMA, embedded(D, **kw), [8, 6], crosses=[["user", "item"]], cross_buckets=11, dropout=0.0, num_tasks=2
    ),
    "dcnv2_stacked_full": lambda **kw: dcnv2(None, "stacked", **kw),
    "dcnv2_stacked_low": lambda **kw: dcnv2(3, "stacked", **kw),
    "dcnv2_parallel_full": lambda **kw: dcnv2(None, "parallel", **kw),
    "dcnv2_parallel_low": lambda **kw: dcnv2(3, "parallel", **kw),
}
HIDDEN = {name: INPUT_WIDTH + 6 if "parallel" in name else 6 for name in BACKBONES}


def random_batch(rows: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (rows,), generator=g)
    seq = torch.randint(1, 5, (rows, 3), generator=g) * (torch.arange(3) < lengths[:, None])  # 0 past the length
    return Batch(
        sparse=torch.stack([torch.randint(0, 7, (rows,), generator=g), torch.randint(0, 5, (rows,), generator=g)], 1),
        dense=torch.rand(rows, 2, generator=g),
        domain=torch.randint(0, 2, (rows,), generator=g),
        labels=torch.randint(0, 2, (rows, 2), generator=g).float(),
        seq=seq,
        seq_lengths=lengths,
    )


# ---- every backbone --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_shapes_and_finite_outputs(name: str) -> None:
    torch.manual_seed(0)
    net = BACKBONES[name]().eval()
    out = net(random_batch(5))
    assert out.logits.shape == (5, 2) and out.h.shape == (5, HIDDEN[name]) and net.hidden_size == HIDDEN[name]
    assert net.num_tasks == 2 and float(out.aux_loss) == 0.0
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.h).all()


@pytest.mark.parametrize(
    ("name", "options"),
    [(name, {}) for name in BACKBONES]
    + [
        ("dnn", {"sequence_pooling": "din"}),
        ("dcnv2_parallel_low", {"sequence_pooling": "din", "domain_as_feature": True}),
    ],
    ids=[*BACKBONES, "dnn_din", "dcnv2_parallel_low_din_domain_feature"],
)
def test_backbone_overfits_a_tiny_batch(name: str, options: dict) -> None:
    torch.manual_seed(0)
    net = BACKBONES[name](**options)  # dropout 0 by default
    batch = random_batch(32, seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        loss = nn.functional.binary_cross_entropy_with_logits(net(batch).logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


# ---- DCNv2 -----------------------------------------------------------------------------------------------------


def test_dcnv2_argument_checks() -> None:
    with pytest.raises(ValueError, match="structure must be one of \\['stacked', 'parallel'\\], got 'mixed'"):
        DCNv2Backbone(SEQ_SCHEMA, structure="mixed")
    with pytest.raises(ValueError, match="rank must be a positive integer or None"):
        CrossLayer(4, rank=0)
    with pytest.raises(ValueError, match="num_tasks 3 must be in 1..2"):
        DCNv2Backbone(SEQ_SCHEMA, num_tasks=3)


# ---- Wide&Deep -------------------------------------------------------------------------------------------------


def hand_bucket(ids: list[int], buckets: int) -> int:
    """The documented cross hash in plain Python integers."""
    h = 0
    for i in ids:
        h = (h * HASH_MULTIPLIER + i + 1) & HASH_MASK
        h ^= h >> 16
        h = (h * HASH_MIX) & HASH_MASK
        h ^= h >> 16
    return h % buckets


def test_wide_crosses_hash_deterministically() -> None:
    make = lambda crosses: WideArm(["u", "i", "g"], [50, 50, 3], 1, crosses, cross_buckets=1000)  # noqa: E731
    wide = make([["u", "i"]])
    u, i = torch.meshgrid(torch.arange(50), torch.arange(50), indexing="ij")
    ids = torch.stack([u.flatten(), i.flatten(), torch.zeros(2500, dtype=torch.long)], 1)  # every (u, i) pair
    buckets = wide.cross_ids(ids)[:, 0]
    assert int(buckets[3 * 50 + 7]) == hand_bucket([3, 7], 1000) and int(buckets[-1]) == hand_bucket([49, 49], 1000)
    assert torch.equal(buckets, make([["u", "i"]]).cross_ids(ids)[:, 0])  # a fresh arm: the same buckets
    assert 0 <= int(buckets.min()) and int(buckets.max()) < 1000
    assert buckets.unique().numel() > 850  # 2500 pairs spread over ~1000 buckets (uniform: ~918)
    # a shorter cross padded beside a longer one keeps its buckets
    mixed = make([["u", "i", "g"], ["u", "i"]]).cross_ids(ids)
    assert mixed.shape == (2500, 2) and torch.equal(mixed[:, 1], buckets)


def test_wide_arm_rejects_bad_crosses() -> None:
    with pytest.raises(ValueError, match=r"crosses: 'colour' is not a field; fields: \['user', 'item'\]"):
        WideDeepBackbone(SEQ_SCHEMA, crosses=[["user", "colour"]])
    with pytest.raises(ValueError, match="at least two fields"):
        WideArm(["user"], [3], 1, [["user"]])
    # the domain is a field only when it is a feature
    WideDeepBackbone(SEQ_SCHEMA, embedded(16, domain_as_feature=True), crosses=[["item", "domain"]])
    with pytest.raises(ValueError, match="'domain' is not a field"):
        WideDeepBackbone(SEQ_SCHEMA, crosses=[["item", "domain"]])


def test_wide_arm_starts_at_zero_and_trains_jointly() -> None:
    torch.manual_seed(0)
    net = BACKBONES["wide_deep"]().eval()
    batch = random_batch(6)
    torch.testing.assert_close(net(batch).logits, net.deep(batch).logits)  # the wide arm starts at zero
    loss = nn.functional.binary_cross_entropy_with_logits(net(batch).logits, batch.labels)
    loss.backward()
    assert net.wide.weights.table.weight.grad.abs().sum() > 0 and net.deep.output.weight.grad.abs().sum() > 0


# ---- sequence pooling ------------------------------------------------------------------------------------------


def test_din_input_attends_with_the_rows_own_item() -> None:
    torch.manual_seed(0)
    # unit-scale embeddings: at the default 0.01 the attention scores barely depend on the target
    inp = EmbeddedInput(SEQ_SCHEMA, embedding_dim=D, init_std=1.0, sequence_pooling="din", attention_softmax=True)
    batch = Batch(
        sparse=torch.tensor([[1, 2], [1, 2], [3, 4]]),
        dense=torch.zeros(3, 2),
        domain=torch.tensor([0, 0, 1]),
        labels=torch.zeros(3, 2),
        seq=torch.tensor([[1, 3, 0], [1, 3, 4], [0, 0, 0]]),
        seq_lengths=torch.tensor([2, 2, 0]),  # rows 0 and 1 differ only in padding
    )
    x = inp(batch)
    pooled = x[:, 2 * D : 3 * D]
    assert x.shape == (3, inp.out_features) == (3, INPUT_WIDTH)
    assert torch.equal(pooled[0], pooled[1]) and torch.equal(pooled[2], torch.zeros(D))
    # the attention weighs items[1] = 1, 3 by the row's own item: a different candidate pools differently
    other = Batch(
        torch.tensor([[1, 4]]),
        batch.dense[:1],
        batch.domain[:1],
        batch.labels[:1],
        batch.seq[:1],
        batch.seq_lengths[:1],
    )
    assert not torch.allclose(inp(other)[0, 2 * D : 3 * D], pooled[0])


def test_sequence_pooling_checks() -> None:
    with pytest.raises(ValueError, match=r"sequence_pooling must be one of \['mean', 'din'\], got 'max'"):
        EmbeddedInput(SEQ_SCHEMA, embedding_dim=D, sequence_pooling="max")
    no_seq = Schema("flat", (SparseField("user", 7),), (), "domain", ("a",), ("click",))
    with pytest.raises(ValueError, match="sequence_pooling 'din' attends over a sequence field"):
        DNNBackbone(no_seq, embedded(16, sequence_pooling="din"))


# ---- the domain as a feature -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dnn", "wide_deep", "dcnv2_parallel_low"])
def test_domain_as_feature_changes_outputs_only_through_the_domain_embedding(name: str) -> None:
    batch = random_batch(2)
    same_but_domain = Batch(
        batch.sparse[:1].repeat(2, 1),
        batch.dense[:1].repeat(2, 1),
        torch.tensor([0, 1]),
        batch.labels[:1].repeat(2, 1),
        batch.seq[:1].repeat(2, 1),
        batch.seq_lengths[:1].repeat(2),
    )
    torch.manual_seed(0)
    off = BACKBONES[name]().eval()(same_but_domain).logits
    assert torch.equal(off[0], off[1])
    torch.manual_seed(0)
    net = BACKBONES[name](domain_as_feature=True).eval()
    on = net(same_but_domain).logits
    assert not torch.allclose(on[0], on[1])
    inp = net.deep.input if name == "wide_deep" else net.input
    assert inp.field_names == ["user", "item", "domain"] and inp.vocab_sizes == [7, 5, 2]
    with torch.no_grad():  # the domain field owns the last 2 rows of the table: make them equal
        inp.embedding.table.weight[-1] = inp.embedding.table.weight[-2]
    tied = net(same_but_domain).logits
    torch.testing.assert_close(tied[0], tied[1])


@pytest.mark.parametrize("name", ["dnn", "wide_deep"])
def test_domain_dropout_reads_unknown_and_dropped_domains_as_the_any_domain_id(name: str) -> None:
    net = BACKBONES[name](domain_as_feature=True, domain_dropout=0.25)
    inp = net.deep.input if name == "wide_deep" else net.input
    assert inp.vocab_sizes == [7, 5, 3] and inp.serves_any_domain  # the 2 domains and id 2, any domain
    batch = random_batch(6)
    odd = Batch(
        batch.sparse, batch.dense, torch.tensor([0, 1, -1, 2, 7, 1]), batch.labels, batch.seq, batch.seq_lengths
    )
    assert inp.eval().field_ids(odd)[:, -1].tolist() == [0, 1, 2, 2, 2, 1]  # eval: unknown ids read id 2
    net.eval()
    any_domain = Batch(batch.sparse, batch.dense, torch.full((6,), 2), batch.labels, batch.seq, batch.seq_lengths)
    unknown = Batch(
        batch.sparse, batch.dense, torch.tensor([-1, 2, 3, 9, 2, 5]), batch.labels, batch.seq, batch.seq_lengths
    )
    torch.testing.assert_close(net(unknown).logits, net(any_domain).logits, rtol=0, atol=0)
    torch.manual_seed(0)
    many = torch.zeros(20_000, dtype=torch.long)  # training: each row's domain dropped with probability 0.25
    rows = Batch(torch.zeros(20_000, 2, dtype=torch.long), torch.zeros(20_000, 1), many, torch.zeros(20_000, 2))
    dropped = (inp.train().field_ids(rows)[:, -1] == 2).float().mean()
    assert abs(float(dropped) - 0.25) < 0.015
    new_domains = Batch(rows.sparse, rows.dense, torch.full((20_000,), 5), rows.labels)  # training, onboarding
    assert inp.field_ids(new_domains)[:, -1].eq(2).all()  # an unknown domain reads id 2 in training too
    assert not EmbeddedInput(SEQ_SCHEMA, domain_as_feature=True).serves_any_domain  # no such id without dropout
    onboarded = EmbeddedInput(SEQ_SCHEMA, domain_as_feature=True, domain_dropout=0.1, embedded_domains=1).eval()
    assert onboarded.vocab_sizes[-1] == 2 and onboarded.field_ids(odd)[:, -1].tolist() == [0, 1, 1, 1, 1, 1]
    for bad in ({"domain_dropout": 0.1, "embedded_domains": 3}, {"domain_dropout": 0.0, "embedded_domains": 1}):
        with pytest.raises(ValueError, match="embedded_domains"):
            EmbeddedInput(SEQ_SCHEMA, domain_as_feature=True, **bad)
    for bad in ({"domain_dropout": 0.1}, {"domain_as_feature": True, "domain_dropout": 1.0}):
        with pytest.raises(ValueError, match="domain_dropout"):
            BACKBONES[name](**bad)


# ---- end to end through the training entry point ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["backbone=dnn", "input.domain_as_feature=true"],
        ["backbone=wide_deep", "backbone.crosses=[[user_id,cat_1],[cat_2,cat_3,cat_4]]", "backbone.cross_buckets=997"],
        ["backbone=dcnv2"],
        ["backbone=dcnv2", "backbone.structure=parallel", "backbone.cross_rank=4"],
    ],
    ids=["dnn_domain_feature", "wide_deep", "dcnv2_stacked_full", "dcnv2_parallel_low"],
)
def test_backbone_configs_train_end_to_end(tmp_path: Path, train_cfg: TrainCfg, overrides: list[str]) -> None:
    metrics = train(train_cfg(["debug=fdr", "data.source.num_rows=4000", *overrides]))
    assert 0.0 <= metrics["test/auc"] <= 1.0 and (tmp_path / "run" / "metrics.json").exists()
