"""What several test files share: the composed training config, the tiny schema with its batch builders, and the
backbones and adapters every adapter test runs on. Test files import shared things from here only."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from mdrec.adapters.base import AdaptedNet, Adapter
from mdrec.adapters.hamur import HAMURAdapter
from mdrec.adapters.head import WideDeepHead
from mdrec.adapters.iak import IAK
from mdrec.adapters.lora import LoRA
from mdrec.data.batch import Batch
from mdrec.data.schema import Schema, SequenceField, SparseField
from mdrec.models.dcnv2 import DCNv2Backbone
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.wide_deep import WideDeepBackbone

# ---- composed training configs -----------------------------------------------------------------------------------

CONF_DIR = Path(__file__).resolve().parents[1] / "mdrec" / "conf"
TrainCfg = Callable[[list[str]], DictConfig]  # the ``train_cfg`` fixture (conftest.py)


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """``mdrec/conf/train.yaml`` with the given overrides, writing everything under ``tmp_path``.

    Synthetic data shrinks to 20,000 rows unless the overrides set ``data.source.num_rows`` themselves.
    """
    base = [
        "data.batch_size=512",
        "trainer.max_epochs=2",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'run'}",
        "~callbacks.progress_bar",
        "trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + overrides)
    synthetic = cfg.data.source._target_.endswith("SyntheticSource")
    if synthetic and not any(o.startswith("data.source.num_rows=") for o in overrides):
        cfg.data.source.num_rows = 20_000
    return cfg


# ---- the tiny schema: 3 domains, two sparse fields, one dense feature --------------------------------------------

K = 3
SCHEMA = Schema(
    "tiny", (SparseField("row", 257), SparseField("item", 11)), ("age",), "domain", ("a", "b", "c"), ("click",)
)


# two fields, two dense features, a history of up to 3 items and two labels (click, conversion)
SEQ_SCHEMA = Schema(
    "tiny",
    (SparseField("user", 7), SparseField("item", 5)),
    ("age", "price"),
    "domain",
    ("a", "b"),
    ("click", "conversion"),
    sequence=SequenceField("history", "item", 3),
)


def toy_schema() -> Schema:
    """A tiny data set: sparse user_id (10), movie_id (20), genre (5), dense age, domains d0-d2, label click."""
    sparse = (SparseField("user_id", 10), SparseField("movie_id", 20), SparseField("genre", 5))
    return Schema("toy", sparse, ("age",), "domain", ("d0", "d1", "d2"), ("click",), user_field="user_id")


def toy_columns(rows: int = 32) -> dict[str, np.ndarray]:
    """Deterministic rows of ``toy_schema()``: every domain holds clicks and non-clicks."""
    i = np.arange(rows)
    return {
        "user_id": (1 + i % 9).astype(np.int32),
        "movie_id": (1 + 7 * i % 19).astype(np.int32),
        "genre": (1 + i % 4).astype(np.int32),
        "age": (i % 7 / 6).astype(np.float32),
        "domain": (i % 3).astype(np.int32),
        "click": (i // 3 % 2).astype(np.float32),
    }


def stored_backbones(root: Path) -> list[Path]:
    """The backbone directories of a store (``paths.pretrained_dir``), without its lock files, in name order."""
    return sorted(p for p in root.iterdir() if p.is_dir())


def embedded(embedding_dim: int, **options: object) -> Callable[[Schema], EmbeddedInput]:
    """An input-layer factory: ``EmbeddedInput`` with ``embedding_dim`` and ``options`` bound."""
    return functools.partial(EmbeddedInput, embedding_dim=embedding_dim, **options)


def make_batch(rows: int = 64, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        sparse=torch.stack([torch.arange(1, rows + 1), torch.randint(0, 11, (rows,), generator=g)], dim=1),
        dense=torch.rand(rows, 1, generator=g),
        domain=torch.randint(0, K, (rows,), generator=g),
        labels=torch.randint(0, 2, (rows, 1), generator=g).float(),
    )


def rows_of(batch: Batch, mask: torch.Tensor) -> Batch:
    return Batch(batch.sparse[mask], batch.dense[mask], batch.domain[mask], batch.labels[mask])


# ---- every adapter on every backbone, on the tiny schema ----------------------------------------------------------

BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "dnn": lambda: DNNBackbone(SCHEMA, embedded(8), [16, 8], dropout=0.2),
    "pooled": lambda: DNNBackbone(
        SCHEMA, embedded(8, domain_as_feature=True, domain_dropout=0.1), [16, 8], dropout=0.2
    ),
    "wide_deep": lambda: WideDeepBackbone(
        SCHEMA, embedded(8), [16, 8], crosses=[["row", "item"]], cross_buckets=50, dropout=0.0
    ),
    "dcnv2": lambda: DCNv2Backbone(
        SCHEMA, embedded(8), num_cross_layers=2, cross_rank=3, layer_sizes=[16, 8], dropout=0.0
    ),
}
ADAPTERS: dict[str, Callable[[Schema, nn.Module], Adapter]] = {
    "lora": lambda s, b: LoRA(s, b, targets=["*"], rank=4),
    "mlora": lambda s, b: LoRA(s, b, targets=["*mlp.*"], variant="mlora", alpha=4),
    "iak": lambda s, b: IAK(s, b, bottleneck=5, hidden=6),
    "iak_layers_learned_prior": lambda s, b: IAK(s, b, bottleneck=5, hidden=6, placement="layers", prior="learned"),
    "iak_encoder_only": lambda s, b: IAK(s, b, bottleneck=5, hidden=6, encoder_only=True, kl=False),
    "head": lambda s, b: WideDeepHead(s, b, hidden_sizes=[4], wide_fields=["item"], domain_wide_fields={"a": []}),
    "hamur": lambda s, b: HAMURAdapter(s, b, bottleneck=4, rank=3, hyper_sizes=[6]),
}
CASES = [(b, a) for b in BACKBONES for a in ADAPTERS]


def pretrained(backbone: str) -> nn.Module:
    """A backbone with non-trivial weights and batch-norm statistics, as after pre-training."""
    torch.manual_seed(0)
    net = BACKBONES[backbone]()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        net.train()(make_batch(256, seed=7))  # moves the running statistics away from their initial values
    return net.eval()


def adapted(backbone: str, adapter: str) -> AdaptedNet:
    net = pretrained(backbone)
    return AdaptedNet(SCHEMA, net, ADAPTERS[adapter](SCHEMA, net))


def perturb(net: AdaptedNet) -> AdaptedNet:
    """Random adapter weights: an adapter away from the identity."""
    with torch.no_grad():
        for p in net.adapter.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net
