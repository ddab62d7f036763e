"""model.compile=true: the network runs through torch.compile; the module's parameters, state dict and results are
the eager module's."""

from __future__ import annotations

import functools

import pytest
import torch

from mdrec.models.dnn import DNNBackbone
from mdrec.train.module import RankingModule
from tests.helpers import SCHEMA, embedded, make_batch


@pytest.mark.slow
def test_a_compiled_module_computes_and_saves_what_the_eager_one_does() -> None:
    torch.manual_seed(0)
    net = DNNBackbone(SCHEMA, embedded(8), [16, 8], dropout=0.0)
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    eager, compiled = RankingModule(net, SCHEMA, adam), RankingModule(net, SCHEMA, adam, compile=True)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # nothing of the compiled function's
    for rows, seed in ((64, 1), (37, 2)):  # two batch sizes: dynamic shapes
        batch = make_batch(rows, seed=seed)
        batch = type(batch)(batch.sparse.clamp(max=10), batch.dense, batch.domain, batch.labels)  # ids in vocabulary
        a, b = eager.loss(eager(batch), batch), compiled.loss(compiled(batch), batch)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        b.backward()
        assert all(p.grad is not None for p in net.parameters())
        net.zero_grad()
    assert compiled.compiled is not None  # it ran compiled, not through the eager fallback


def test_a_backend_that_fails_falls_back_to_eager_saying_why(caplog: pytest.LogCaptureFixture) -> None:
    net = DNNBackbone(SCHEMA, embedded(8), [16, 8]).eval()
    module = RankingModule(net, SCHEMA, functools.partial(torch.optim.Adam), compile=True)

    def no_compiler(batch: object) -> None:
        raise torch._dynamo.exc.BackendCompilerFailed(no_compiler, RuntimeError("no working C++ compiler found"), None)

    module.compiled = no_compiler  # what torch.compile's first call raises on a machine without a compiler
    batch = make_batch(16, seed=1)
    batch = type(batch)(batch.sparse.clamp(max=10), batch.dense, batch.domain, batch.labels)
    with caplog.at_level("WARNING"):
        out = module(batch)
    torch.testing.assert_close(out.logits, net(batch).logits)  # eager, the same network
    assert module.compiled is None and "torch.compile failed" in caplog.text and "C++ compiler" in caplog.text
