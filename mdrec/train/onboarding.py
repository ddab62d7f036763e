"""What onboarding domains into an adapted model needs besides training them (docs/methods.md, Onboarding): rows of
one domain as batches, the warm start of new slices from similar domains, the check that the other domains' predictions
did not move, the negative-transfer gate's options, and the reference later drift checks compare fresh rows with."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from mdrec.adapters.base import AdaptedNet, Adapter
from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.eval.drift import DenseHistogram, DomainReference, Histogram, SparseHistogram
from mdrec.nn.parameter import per_domain_parameters
from mdrec.train.subrun import sub_run_config

Init = Literal["identity", "nearest", "weighted"]
INITS = get_args(Init)


class NoNewDomainRowsError(ValueError):
    """The onboarding data hold no training rows of a domain to onboard (the error names the domains)."""


class NegativeTransferError(RuntimeError):
    """``stage.gate.strict``: the gate flagged an onboarded domain (the error names it; its slice is not served)."""


class GateOptions:
    """The negative-transfer gate of an onboarding run (``mdrec.eval.gate``): per onboarded domain, the onboarded
    model against the backbone alone (zero-shot: the domain's slice at the identity) and, with ``scratch``, against
    a model trained from scratch on the same rows, paired bootstrap over the domain's test rows.

    Args:
        scratch: also train the adapted run's backbone from scratch on this run's data (a run of its own, in
            ``<run dir>/gate_scratch``) and compare with it.
        strict: a flagged domain fails the run (after its files are written) and its slice is reset to the identity
            in ``adapter.pt``, so a serving file exported from the run gives its requests the backbone.
        delta: tolerated AUC loss: flagged when the whole interval of ``AUC_onboarded - best alternative`` lies below
            ``-delta``.
        confidence: of the percentile interval.
        resamples: bootstrap resamples.
        seed: seed of the resamples.
    """

    def __init__(
        self,
        scratch: bool = False,
        strict: bool = False,
        delta: float = 0.0,
        confidence: float = 0.95,
        resamples: int = 1000,
        seed: int = 0,
    ) -> None:
        if not 0 < confidence < 1 or resamples < 1:
            raise ValueError(f"stage.gate: confidence ({confidence}) must be in (0, 1), resamples ({resamples}) >= 1")
        self.scratch, self.strict, self.delta = scratch, strict, delta
        self.confidence, self.resamples, self.seed = confidence, resamples, seed


def split_rows(data: MultiDomainDataModule, split: str, domains: Sequence[int]) -> np.ndarray:
    """The rows of ``split`` whose domain id is one of ``domains``, in the split's order."""
    rows = data.splits[split]
    return rows[np.isin(data.split_column(split, data.schema.domain_field), domains)]


def batches(data: MultiDomainDataModule, rows: np.ndarray, device: torch.device | None = None) -> Iterator[Batch]:
    """``rows`` of the store as batches of ``data.eval_batch_size`` (ids mapped as in training) on ``device`` (None:
    the CPU)."""
    for start in range(0, len(rows), data.eval_batch_size):
        batch = data.on_before_batch_transfer(data.store.take(rows[start : start + data.eval_batch_size]), 0)
        yield batch if device is None else batch.to(device)


def routed(batch: Batch, domain: int) -> Batch:
    """``batch`` with every row routed to domain id ``domain`` instead of its own."""
    return replace(batch, domain=torch.full_like(batch.domain, domain))


def device_of(net: AdaptedNet) -> torch.device:
    """Where ``net``'s weights are."""
    return next(net.parameters()).device


@torch.no_grad()
def routed_logloss(net: AdaptedNet, data: MultiDomainDataModule, rows: np.ndarray, domains: Sequence[int]) -> Tensor:
    """``[len(domains)]``: the mean log loss (over the rows and the T predicted labels, as the training loss) of
    ``rows`` routed through each domain's slice of ``net`` (eval mode; no auxiliary loss)."""
    net.eval()
    out = torch.zeros(len(domains), dtype=torch.float64)
    for batch in batches(data, rows, device_of(net)):
        for i, d in enumerate(domains):
            logits = net(routed(batch, d)).logits
            bce = F.binary_cross_entropy_with_logits(logits, batch.labels[:, : logits.shape[1]], reduction="none")
            out[i] += bce.mean(1).sum().double().cpu()
    return out / max(len(rows), 1)


def init_weights(logloss: Tensor, init: Init, temperature: float) -> Tensor | None:
    """The weights ``[n, K + 1]`` of the candidates in the start of n new slices: the K existing slices and, last,
    the new slice as built (the identity: the backbone), from the log loss ``[n, K + 1]`` of each new domain's
    training rows routed through each candidate: ``nearest`` one-hot on the smallest (the identity, when every
    existing slice fits worse than the backbone alone), ``weighted`` ``softmax(-logloss / temperature)``;
    ``identity`` None (the new slices stay as built).

    Example:
        >>> init_weights(torch.tensor([[0.50, 0.40, 0.45, 0.42]]), "nearest", 0.01).tolist()
        [[0.0, 1.0, 0.0, 0.0]]
    """
    if init not in INITS:
        raise ValueError(f"stage.init={init!r} is not one of {INITS}")
    if init == "identity":
        return None
    if init == "nearest":
        return F.one_hot(logloss.argmin(1), logloss.shape[1]).to(logloss.dtype)
    if temperature <= 0:
        raise ValueError(f"stage.temperature={temperature} must be > 0 (the softmax of -logloss / temperature)")
    return torch.softmax(-logloss / temperature, dim=1)


@torch.no_grad()
def warm_start(adapter: Adapter, k: int, targets: Sequence[int], weights: Tensor) -> None:
    """Set the slices ``targets`` (n new domains' ids) of every per-domain parameter of ``adapter`` to the
    ``weights [n, K + 1]``-weighted sums of its first K slices and, last, the target's own slice as built (a one-hot
    row copies a slice: 1 x w + 0 x the others is w exactly)."""
    for _, param in per_domain_parameters(adapter):
        w = weights.to(param.dtype)
        own = param[list(targets)]  # [n, ...] as built
        shape = (-1, *[1] * (param.dim() - 1))
        param[list(targets)] = torch.einsum("nk,k...->n...", w[:, :k], param[:k]) + w[:, k].view(shape) * own


def train_only_domains(adapter: Adapter, domains: Sequence[int]) -> None:
    """Mask the gradient of every stacked per-domain parameter of ``adapter`` to the slices of ``domains``."""
    for _, param in per_domain_parameters(adapter):
        mask = torch.zeros(param.shape[0], *[1] * (param.dim() - 1))
        mask[list(domains)] = 1.0
        param.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))


@torch.no_grad()
def keep_other_domains(adapter: Adapter, before: dict[str, Tensor], domains: Sequence[int]) -> None:
    """Put every slice but those of ``domains`` back to ``before`` (the adapter's state dict as loaded)."""
    for name, param in per_domain_parameters(adapter):  # names as in the state dict
        others = ~torch.isin(torch.arange(param.shape[0]), torch.tensor(list(domains), dtype=torch.long))
        param[others] = before[name][others].to(param.device)


@torch.no_grad()
def other_domains_change(
    before: AdaptedNet, after: AdaptedNet, data: MultiDomainDataModule, k: int, trained: Sequence[int]
) -> tuple[float, int]:
    """The largest change of a probability of an untrained domain among the first ``k`` (the adapted run's) between
    ``before`` (the adapted run's model, K = ``k`` domains) and ``after`` (the onboarded one), and the rows compared.

    Compared: every test row of such a domain, as its own domain; and, routed through each of them, every test row of
    the other domains (the onboarded ones, which ``before`` cannot score as themselves: new data may hold no row of
    the old domains at all). Both models run the same batches in eval mode.
    """
    device = device_of(after)
    before.to(device).eval(), after.eval()
    kept = [d for d in range(k) if d not in trained]
    change, compared = 0.0, 0
    own = batches(data, split_rows(data, "test", kept), device)
    others = batches(
        data, split_rows(data, "test", [d for d in range(data.schema.num_domains) if d not in kept]), device
    )
    compared_batches = itertools.chain(own, (routed(batch, d) for batch in others for d in kept))
    for batch in compared_batches:
        diff = torch.sigmoid(before(batch).logits) - torch.sigmoid(after(batch).logits)
        change = max(change, float(diff.abs().max()) if diff.numel() else 0.0)
        compared += batch.size
    return change, compared


@torch.no_grad()
def backbone_probabilities(net: AdaptedNet, data: MultiDomainDataModule) -> np.ndarray:
    """``[n, T]``: the probabilities of ``net``'s backbone alone (every slice at the identity) on the test split, in
    its order."""
    net.eval()
    rows = data.splits["test"]
    probs = [torch.sigmoid(net.backbone(batch).logits).cpu() for batch in batches(data, rows, device_of(net))]
    return torch.cat(probs).numpy() if probs else np.zeros((0, 1), dtype=np.float32)


def scratch_config(cfg: DictConfig, backbone_cfg: DictConfig, output_dir: Path) -> DictConfig:
    """The stage=train config of the gate's from-scratch model: ``cfg`` (same data, trainer, seed) training the
    network ``backbone_cfg`` (the adapted run's backbone, its targets checked by the caller) into ``output_dir``,
    tested, without the dynamic learning rate (a backbone has no per-domain parameters to scale)."""
    sub = sub_run_config(cfg, "mdrec.train.stages.Train")
    with open_dict(sub):
        sub.data = OmegaConf.to_container(cfg.data, resolve=True)  # it may name the stage's run (data=aligned)
        sub.model.net = OmegaConf.create(OmegaConf.to_container(backbone_cfg, resolve=True))
        sub.model.net.input.pop("embedded_domains", None)  # trained from scratch on every domain: a vector each
        sub.test = True
        sub.paths.output_dir = str(output_dir)
    return sub


def model_columns(data: MultiDomainDataModule, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Every sparse and dense column of the store's ``rows`` (sorted row numbers), the sparse ids as the model sees
    them (mapped through ``data.vocab_domains``' vocabulary, as batches are)."""
    schema, store = data.schema, data.store
    out: dict[str, np.ndarray] = {}
    for index, f in enumerate(schema.sparse):
        ids = np.asarray(store.column(f.name)[rows]).astype(np.int64)
        if data.id_map is not None:
            ids = data.id_map[torch.from_numpy(ids) + data.id_offsets[index]].numpy()
        out[f.name] = ids
    out.update({c: np.asarray(store.column(c)[rows], dtype=np.float64) for c in schema.dense})
    return out


def drift_reference(
    data: MultiDomainDataModule, predictions: dict[str, np.ndarray], domains: Sequence[str]
) -> dict[str, DomainReference]:
    """The drift reference of ``domains`` (``mdrec.eval.drift``): per domain with training rows, the histogram of
    every field over them and, from the test ``predictions`` (``prob [n, T]``, ``label``, ``domain``; empty when the
    run was not tested), the first label's predictions on its test rows."""
    schema = data.schema
    out: dict[str, DomainReference] = {}
    for name in domains:
        d = schema.domains.index(name)
        rows = split_rows(data, "train", [d])
        if not len(rows):
            continue
        columns = model_columns(data, rows)
        histograms: dict[str, Histogram] = {f: SparseHistogram.of(columns[f]) for f in schema.sparse_names}
        histograms.update({c: DenseHistogram.of(columns[c]) for c in schema.dense})
        prob = label = None
        if "prob" in predictions:
            mine = predictions["domain"] == d
            prob, label = predictions["prob"][mine, 0], predictions["label"][mine, 0]
        out[name] = DomainReference(len(rows), histograms, prob, label)
    return out
