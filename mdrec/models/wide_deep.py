"""The Wide&Deep backbone (Cheng et al. 2016): a linear model on raw ids and their crosses, plus a DNN, one loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone, InputFactory
from mdrec.models.dnn import DNNBackbone
from mdrec.models.inputs import EmbeddedInput
from mdrec.models.output import ModelOutput
from mdrec.nn.embedding import FieldEmbedding

# cross hash over the cross's fields: h <- mix((h * P + id + 1) mod 2^31), then h mod cross_buckets, with mix a
# 31-bit xorshift-multiply finaliser (murmur-style) that breaks the polynomial's linear structure (which would put
# (a, b) and (a + 1, b - P mod buckets) in one bucket). Every product stays below 2^58: exact int64 arithmetic, the
# same buckets on every device and in every process.
HASH_MULTIPLIER = 1_000_003
HASH_MIX = 0x45D9F3B
HASH_MASK = 2**31 - 1


def _mix(h: Tensor) -> Tensor:
    """A bijection of ``[0, 2^31)`` that spreads nearby inputs: ``h`` int64 ``[...]`` -> ``[...]``."""
    h = h ^ (h >> 16)
    h = (h * HASH_MIX) & HASH_MASK
    return h ^ (h >> 16)


class WideArm(nn.Module):
    """A linear model on ids: one learned weight per id per field and task, plus hashed crosses of fields.

    Each cross (a tuple of two or more field names) is one more "field" whose id is the hash of its fields' ids
    into ``cross_buckets`` buckets (see ``cross_ids``). The weights start at zero, so the wide arm adds nothing
    until it learns; it has no bias of its own (the deep arm's output layer carries it).

    Args:
        field_names: names of the id columns, in column order.
        vocab_sizes: ids per field (including id 0), in column order.
        num_tasks: T, logits per row.
        crosses: field-name tuples to cross, e.g. ``[["user_id", "movie_id"]]``.
        cross_buckets: hash buckets per cross.

    Example:
        >>> wide = WideArm(["user", "item"], [10, 5], num_tasks=1, crosses=[["user", "item"]], cross_buckets=7)
        >>> ids = torch.tensor([[3, 1], [9, 4]])    # [B, F]
        >>> wide(ids).shape, wide.cross_ids(ids).shape
        (torch.Size([2, 1]), torch.Size([2, 1]))
    """

    def __init__(
        self,
        field_names: Sequence[str],
        vocab_sizes: Sequence[int],
        num_tasks: int,
        crosses: Sequence[Sequence[str]] = (),
        cross_buckets: int = 100_000,
    ) -> None:
        super().__init__()
        field_names = list(field_names)
        if len(field_names) != len(vocab_sizes):
            raise ValueError(f"field_names ({len(field_names)}) and vocab_sizes ({len(vocab_sizes)}) differ in length")
        if crosses and cross_buckets < 1:
            raise ValueError(f"cross_buckets must be positive, got {cross_buckets}")
        for cross in crosses:
            if len(cross) < 2:
                raise ValueError(f"crosses: each cross names at least two fields, got {list(cross)}")
            for name in cross:
                if name not in field_names:
                    raise ValueError(f"crosses: {name!r} is not a field; fields: {field_names}")
        self.cross_buckets = cross_buckets
        arity = max((len(c) for c in crosses), default=0)
        # [C, A] column of each cross's fields, padded at the end (valid = False) to the longest cross
        columns = [[field_names.index(n) for n in c] + [0] * (arity - len(c)) for c in crosses]
        valid = [[True] * len(c) + [False] * (arity - len(c)) for c in crosses]
        self.register_buffer(
            "cross_columns", torch.tensor(columns, dtype=torch.long).reshape(len(crosses), arity), persistent=False
        )
        self.register_buffer("cross_valid", torch.tensor(valid, dtype=torch.bool).reshape(len(crosses), arity), False)
        self.weights = FieldEmbedding([*vocab_sizes, *[cross_buckets] * len(crosses)], num_tasks)
        nn.init.zeros_(self.weights.table.weight)

    def cross_ids(self, ids: Tensor) -> Tensor:
        """Each cross's bucket: ``ids [B, F]`` -> ``[B, C]`` in ``0..cross_buckets-1``, deterministic."""
        picked = ids[:, self.cross_columns]  # [B, C, A]
        h = ids.new_zeros(picked.shape[:2])  # [B, C]
        for a in range(picked.shape[2]):
            step = _mix((h * HASH_MULTIPLIER + picked[:, :, a] + 1) & HASH_MASK)
            h = torch.where(self.cross_valid[:, a], step, h)
        return h % self.cross_buckets

    def forward(self, ids: Tensor) -> Tensor:
        """``ids [B, F]`` -> ``[B, T]``: the sum of the weights of every id and every cross bucket."""
        all_ids = torch.cat([ids, self.cross_ids(ids)], dim=1)  # [B, F + C]
        return self.weights(all_ids).sum(1)  # [B, F + C, T] -> [B, T]


class WideDeepBackbone(Backbone):
    """Wide&Deep: ``logits = wide(ids, crosses) + deep(batch)``, trained jointly; ``h`` is the deep arm's.

    The deep arm is a ``DNNBackbone`` (embeddings, pooled sequence and dense features -> MLP -> output layer);
    the wide arm a ``WideArm`` on the same fields' raw ids (the domain id too with ``domain_as_feature``, so a
    cross may name ``schema.domain_field``). H = ``layer_sizes[-1]``.

    Args:
        schema: the data's schema.
        input: the deep arm's input layer's factory (the ``input`` config node); its fields (the domain id too with
            ``domain_as_feature``) are the wide arm's.
        layer_sizes: hidden widths of the deep arm.
        crosses: field-name tuples crossed in the wide arm, e.g. ``[["user_id", "genre"]]``.
        cross_buckets: hash buckets per cross.
        dropout: dropout after each hidden activation of the deep arm.
        batch_norm: batch normalisation in the deep arm's hidden layers.
        num_tasks: T, logits per row (1: CTR).

    Example:
        >>> net = WideDeepBackbone(schema, crosses=[["user_id", "movie_id"]])
        >>> out = net(batch); out.logits.shape, out.h.shape, net.head_site()
        (torch.Size([8, 1]), torch.Size([8, 128]), 'deep.output')
    """

    def __init__(
        self,
        schema: Schema,
        input: InputFactory = EmbeddedInput,
        layer_sizes: Sequence[int] = (256, 128),
        crosses: Sequence[Sequence[str]] = (),
        cross_buckets: int = 100_000,
        dropout: float = 0.2,
        batch_norm: bool = True,
        num_tasks: int = 1,
    ) -> None:
        super().__init__()
        self.deep = DNNBackbone(schema, input, layer_sizes, dropout, batch_norm, num_tasks)
        if not self.deep.input.field_names:
            raise ValueError(f"the wide arm needs id fields, but schema {schema.dataset_id!r} has only dense ones")
        self.num_tasks = num_tasks
        self.wide = WideArm(self.deep.input.field_names, self.deep.input.vocab_sizes, num_tasks, crosses, cross_buckets)

    @property
    def input(self) -> EmbeddedInput:  # type: ignore[override]
        """The deep arm's input layer."""
        return self.deep.input

    def first_layer_site(self) -> str:
        return self.site_of(self.deep.mlp.layers[0])

    @property
    def head(self) -> nn.Linear:
        """The deep arm's output layer (the wide arm's logits are added after it)."""
        return self.deep.output

    def forward_from_input(self, x0: Tensor, batch: Batch) -> ModelOutput:
        deep = self.deep.forward_from_input(x0, batch)
        logits = deep.logits + self.wide(self.deep.input.field_ids(batch))  # [B, T]
        return ModelOutput(logits=logits, aux_loss=deep.aux_loss, h=deep.h)
