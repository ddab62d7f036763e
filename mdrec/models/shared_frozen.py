"""A multi-domain network that trains only its per-domain parameters: what stage=specialise trains."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torch import nn

from mdrec.data.batch import Batch
from mdrec.models.output import ModelOutput
from mdrec.nn.parameter import per_domain_parameters


class SharedFrozen(nn.Module):
    """``net`` with every parameter frozen except the per-domain ones whose names match a ``trainable`` glob.

    While training, a submodule whose parameters are all frozen stays in eval mode (its dropout off), and so does
    every module that keeps state in buffers (batch-norm statistics, STAR's partitioned norm, AdaSparse's annealed
    temperature, AdaptDHM's cluster centres): that state stays as trained end to end, for every domain, so a domain
    that keeps its step-0 slices keeps the end-to-end model. ``net`` keeps its state-dict keys below ``net.``.

    Args:
        net: a multi-domain network (``forward(batch) -> ModelOutput``).
        trainable: glob patterns of :class:`~mdrec.nn.parameter.DomainParameter` names below ``net`` (``["*"]``:
            all of them).

    Raises:
        ValueError: no per-domain parameter matches (the message lists them, or says ``net`` has none).

    Example:
        >>> from mdrec.models.ple import PLE
        >>> frozen = SharedFrozen(PLE(schema), ["tower.*"])
        >>> sorted({name.split(".")[1] for name, p in frozen.named_parameters() if p.requires_grad})
        ['tower']
    """

    def __init__(self, net: nn.Module, trainable: Sequence[str]) -> None:
        super().__init__()
        self.net = net
        stacked = [name for name, _ in per_domain_parameters(net)]
        chosen = {name for name in stacked if any(fnmatch(name, p) for p in trainable)}
        if not chosen:
            has = f"its per-domain parameters are {stacked}" if stacked else "it has none (a domain-agnostic network)"
            raise ValueError(
                f"stage.trainable={list(trainable)} matches no per-domain parameter of {type(net).__name__}: {has}. "
                "Name some of them (e.g. stage.trainable=[*]), or use a multi-domain model= (e.g. model=ple)"
            )
        for name, param in net.named_parameters():
            param.requires_grad_(name in chosen)
        modules = dict(net.named_modules())
        self.frozen = [  # whole subtrees in eval mode
            name
            for name, m in modules.items()
            if name and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())
        ]
        self.stateful = [name for name, m in modules.items() if any(True for _ in m.buffers(recurse=False))]
        self.train(self.training)  # Lightning captures each submodule's mode before the first validation

    def train(self, mode: bool = True) -> SharedFrozen:
        super().train(mode)
        for name in self.frozen:
            self.net.get_submodule(name).eval()
        for name in self.stateful:  # this module only: its children keep their own mode
            self.net.get_submodule(name).training = False
        return self

    def forward(self, batch: Batch) -> ModelOutput:
        return self.net(batch)

    @torch.no_grad()
    def check(self, batch: Batch) -> None:
        """Refuse a network whose per-domain training would not stay per domain, on ``batch`` (rows of several
        domains, ids in ``0..K-1``):

        - a row's output must not depend on another domain's trainable slices (per-domain selection then keeps each
          domain's own best slices): for every bit of the domain id, each trainable parameter's slices of the
          domains with that bit set (then unset) get noise, and the other domains' rows must keep their outputs
          (eval mode). Any two domains differ in some bit, so any such dependence shows.
        - a forward pass in training mode must leave every buffer as it was.

        Raises:
            ValueError: naming the parameters (or buffers) and what to do.
        """
        was_training = self.training
        self.eval()
        params = {name: p for name, p in per_domain_parameters(self.net) if p.requires_grad}
        k = next(iter(params.values())).shape[0]
        base = self.net(batch).logits
        generator = torch.Generator().manual_seed(0)
        coupled: set[str] = set()
        for bit in range(max(1, (k - 1).bit_length())):
            upper = (torch.arange(k) >> bit) & 1 == 1
            for perturbed in (upper, ~upper):
                rows = ~perturbed.to(batch.domain.device)[batch.domain]
                if not rows.any() or not perturbed.any():
                    continue
                for name, param in params.items():
                    saved = param.detach().clone()
                    noise = torch.randn(param[perturbed].shape, generator=generator).to(param)
                    param[perturbed] += noise
                    out = self.net(batch).logits
                    param.copy_(saved)
                    if not torch.allclose(out[rows], base[rows], rtol=1e-5, atol=1e-6):
                        coupled.add(name)
        if coupled:
            raise ValueError(
                f"stage=specialise trains each domain's slices on its own rows and selects them per domain, but in "
                f"{type(self.net).__name__} rows depend on other domains' slices of {sorted(coupled)} (e.g. PLE's "
                "shared gates below its last level mix every domain's experts). Leave those out of stage.trainable, "
                "or use a form of the model that keeps domains apart (PLE: model.net.shared_gate_experts=own)"
            )
        self.train(True)
        buffers = {name: b.clone() for name, b in self.net.named_buffers()}
        self.net(batch)
        moved = sorted(name for name, b in self.net.named_buffers() if not torch.equal(b, buffers[name]))
        for name, b in self.net.named_buffers():
            b.copy_(buffers[name])
        self.train(was_training)
        if moved:
            raise ValueError(
                f"stage=specialise keeps {type(self.net).__name__}'s state as trained end to end, but a training "
                f"step changes its buffers {moved}: this model cannot be specialised"
            )
