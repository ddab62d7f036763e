"""Parameters stacked per domain, found by their type, and a network that trains only those."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fnmatch import fnmatch

from torch import nn

from mdrec.data.batch import Batch
from mdrec.models.output import ModelOutput


class DomainParameter(nn.Parameter):
    """A parameter stacked per domain: its first dimension is K, slice ``d`` belongs to domain ``d`` alone.

    Training code finds these by type (:func:`per_domain_parameters`): per-domain model selection, the dynamic
    learning rate and onboarding act on one domain's slice of each.

    Example:
        >>> table = DomainParameter(torch.zeros(3, 4))
        >>> isinstance(table, nn.Parameter), table.shape[0]
        (True, 3)
    """


def per_domain_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every :class:`DomainParameter` below ``module`` (names as in its state dict)."""
    for name, param in module.named_parameters():
        if isinstance(param, DomainParameter):
            yield name, param


class SharedFrozen(nn.Module):
    """``net`` with every parameter frozen except the per-domain ones whose names match a ``trainable`` glob.

    A submodule whose parameters are all frozen stays in eval mode while training (its dropout off, its batch norm
    statistics kept), so before any step the module computes what ``net`` computes in eval mode. ``net`` keeps its
    state-dict keys below ``net.``.

    Args:
        net: a multi-domain network (``forward(batch) -> ModelOutput``).
        trainable: glob patterns of :class:`DomainParameter` names below ``net`` (``["*"]``: all of them).

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
        self.frozen = [
            name
            for name, module in net.named_modules()
            if name and any(True for _ in module.parameters()) and not any(p.requires_grad for p in module.parameters())
        ]
        self.train(self.training)  # Lightning captures each submodule's mode before the first validation

    def train(self, mode: bool = True) -> SharedFrozen:
        super().train(mode)
        for name in self.frozen:
            self.net.get_submodule(name).eval()
        return self

    def forward(self, batch: Batch) -> ModelOutput:
        return self.net(batch)
