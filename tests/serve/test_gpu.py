"""On a CUDA device (skipped without one; ``scripts/check_gpu.py`` runs them with ``pytest -m gpu``): training steps
and the serving model give the CPU's numbers."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from mdrec.adapters.iak import IAK
from mdrec.serve.export import export
from mdrec.serve.parallel import ParallelModel
from tests.helpers import CASES, SCHEMA, adapted, make_batch, perturb

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.mark.parametrize(("backbone", "adapter"), [case for case in CASES if case[1] in ("lora", "iak", "hamur")])
def test_adapted_network_on_cuda_equals_cpu(backbone: str, adapter: str) -> None:
    net = perturb(adapted(backbone, adapter)).eval()
    batch = make_batch(64, seed=3)
    with torch.no_grad():
        expected = net(batch).logits
        got = net.to(CUDA)(batch.to(CUDA)).logits.cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_parallel_model_traced_on_cuda_equals_cpu(tmp_path: Path) -> None:
    net = perturb(adapted("dnn", "iak")).eval()
    model = ParallelModel(net, SCHEMA, functools.partial(IAK, bottleneck=5, hidden=6))
    batch = make_batch(64, seed=4)
    unknown = batch.domain.clone()
    unknown[::5] = SCHEMA.num_domains + 2  # rows of a domain the model does not know: the plain backbone
    inputs = (batch.sparse, batch.dense, unknown)
    with torch.no_grad():
        expected = model(*inputs)
    served = export(model.to(CUDA), make_batch(8).to(CUDA), tmp_path / "serving.pt")
    with torch.no_grad():
        got = served(*(t.to(CUDA) for t in inputs)).cpu()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_training_step_in_bf16_autocast_moves_the_loss_like_fp32() -> None:
    torch.manual_seed(0)
    net = adapted("dnn", "lora")
    batch = make_batch(256, seed=5)
    losses = {}
    for name, device, dtype in (("cpu", torch.device("cpu"), None), ("cuda", CUDA, torch.bfloat16)):
        copy = adapted("dnn", "lora").to(device)
        copy.load_state_dict(net.state_dict())
        optimizer = torch.optim.Adam([p for p in copy.parameters() if p.requires_grad], lr=1e-2)
        on = batch.to(device)
        history = []
        for _ in range(20):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = copy.train()(on).logits.float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, on.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss))
        losses[name] = history
    assert losses["cuda"][-1] < losses["cuda"][0]  # it learns
    assert abs(losses["cuda"][-1] - losses["cpu"][-1]) < 0.05  # as fp32 does, within bf16's rounding
