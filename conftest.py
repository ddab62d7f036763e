"""Doctest namespace: the examples in mdrec's docstrings may use these names without importing them.

Every example (every doctest item) gets:

- modules ``torch``, ``np``, ``functools`` and ``pl`` (``pytorch_lightning``);
- ``schema``: a tiny data set, sparse fields ``user_id`` (vocabulary 10), ``movie_id`` (20) and ``genre`` (5),
  dense feature ``age``, domains ``d0``, ``d1``, ``d2`` (column ``domain``), label ``click``, user field
  ``user_id``;
- ``columns``: its 32 rows as numpy arrays, one per column of ``schema.columns()`` (the dtypes ``write_store``
  writes), row i in domain ``i % 3``;
- ``store``: a ``ColumnStore`` of ``columns`` (written once per session, opened for each example);
- ``batch``: its first 8 rows as a ``Batch`` (``store.take(np.arange(8))``): sparse ``[8, 3]``, dense ``[8, 1]``,
  domain ``[8]`` (``0, 1, 2, 0, ...``), labels ``[8, 1]``;
- ``seq_schema``, ``seq_batch``: the same with a sequence field ``history`` (``movie_id``'s vocabulary,
  ``max_len`` 4): seq ``[8, 4]``, row i holding ``i % 5`` ids;
- ``ctcvr_schema``, ``ctcvr_batch``: the same with a second label, ``conversion`` (click and an odd row): labels
  ``[8, 2]``, as ESMM needs;
- ``DNNBackbone`` and ``backbone``: ``DNNBackbone(schema)``, freshly initialised (``torch.manual_seed(0)``);
- ``tmp_dir``: an empty temporary directory (``pathlib.Path``) of the example's own.

Fresh objects for each example: one that trains or freezes ``backbone`` leaves the next one's untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from _pytest.doctest import DoctestItem

from mdrec.data.schema import SequenceField
from mdrec.data.store import ColumnStore, write_store
from tests.helpers import toy_columns, toy_schema

BATCH_ROWS = 8  # rows of ``batch``


@pytest.fixture(scope="session")
def _toy_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("doctest") / "toy", toy_schema(), toy_columns())


@pytest.fixture(autouse=True)
def _doctest_names(request: pytest.FixtureRequest, doctest_namespace: dict) -> None:
    doctest_namespace.update(torch=torch, np=np)
    if not isinstance(request.node, DoctestItem):
        return
    import pytorch_lightning as pl  # imported when a doctest runs: slow to import

    from mdrec.models.dnn import DNNBackbone

    torch.manual_seed(0)
    schema = toy_schema()
    store = ColumnStore(request.getfixturevalue("_toy_store_dir"))
    batch = store.take(np.arange(BATCH_ROWS))
    seq_schema = dataclasses.replace(schema, dataset_id="toy_seq", sequence=SequenceField("history", "movie_id", 4))
    lengths = torch.arange(BATCH_ROWS) % 5  # [8]
    ids = 1 + (torch.arange(BATCH_ROWS)[:, None] + torch.arange(4)) % 19  # [8, 4]
    seq = ids.masked_fill(torch.arange(4) >= lengths[:, None], 0)  # left-aligned, 0-padded
    conversion = batch.labels * (torch.arange(BATCH_ROWS)[:, None] % 2)  # [8, 1]: a conversion implies a click
    doctest_namespace.update(
        functools=functools,
        pl=pl,
        schema=schema,
        columns=toy_columns(),
        store=store,
        batch=batch,
        seq_schema=seq_schema,
        seq_batch=dataclasses.replace(batch, seq=seq, seq_lengths=lengths),
        ctcvr_schema=dataclasses.replace(schema, dataset_id="toy_ctcvr", labels=("click", "conversion")),
        ctcvr_batch=dataclasses.replace(batch, labels=torch.cat([batch.labels, conversion], dim=1)),
        DNNBackbone=DNNBackbone,
        backbone=DNNBackbone(schema),
        tmp_dir=request.getfixturevalue("tmp_path"),
    )
