"""Parameters stacked per domain, found by their type."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


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
