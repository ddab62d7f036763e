"""Per-domain adapters on a pre-trained backbone: how they attach, freeze the backbone and route rows by domain.

An adapter acts at named modules of the backbone ("sites"): on a module's input (IAK before the heads) or on
its output (LoRA on a linear layer, IAK after each layer, the Wide&Deep head on the logits). ``AdaptedNet`` puts
the batch's rows in grouped domain order once (:class:`~mdrec.nn.domain.DomainGroups`) and runs the backbone with
forward hooks on the sites, registered for that pass only, that call the adapter with the groups: every
per-domain parameter stays stacked ``[K, ...]`` and each present domain costs one matmul per layer. The backbone
keeps its module names and state-dict keys (a pre-trained checkpoint loads into it strictly) and is a plain
backbone outside the pass; the adapter's state dict holds only the adapter (it saves and loads on its own).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.models.output import ModelOutput
from mdrec.nn.domain import DomainGroups

SITE_PLACES = ("input", "output")
# the domain slot a serving graph adds after the K trained ones for domain ids it does not know
# (:mod:`mdrec.serve.parallel`): a freshly built adapter slice must be the identity there and must not change the
# adapter's stacked layout (an adapter with per-domain options gives this name none of them)
FALLBACK_DOMAIN = "<unknown>"


@dataclass
class Route:
    """What the sites of one forward pass see: the rows' domain groups, the batch in grouped order, the auxiliary
    losses the adapter adds (e.g. IAK's beta * KL), and what one site hands to a later site of the same pass by that
    site's name (MLoRA computes its delta from a linear layer's input and adds it at the activation's input)."""

    groups: DomainGroups
    batch: Batch
    aux: list[Tensor] = field(default_factory=list)
    handoff: dict[str, Tensor] = field(default_factory=dict)


def select_modules(root: nn.Module, patterns: Sequence[str], kind: type[nn.Module]) -> dict[str, nn.Module]:
    """The ``kind`` modules below ``root`` whose names match any of the glob ``patterns`` (e.g. ``"mlp.*"``).

    Raises a ``ValueError`` that lists every available ``kind`` module name when nothing matches.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> list(select_modules(mlp, ["*"], nn.Linear))
        ['0', '2']
    """
    names = {name: m for name, m in root.named_modules() if isinstance(m, kind)}
    chosen = {name: m for name, m in names.items() if any(fnmatch(name, p) for p in patterns)}
    if not chosen:
        raise ValueError(
            f"no {kind.__name__} module of {type(root).__name__} matches {list(patterns)}; "
            f"available {kind.__name__} modules: {list(names)}"
        )
    return chosen


def site_key(name: str) -> str:
    """A backbone module name as a ``ModuleDict`` key (dots are not allowed there)."""
    return name.replace(".", "/")


class Adapter(nn.Module):
    """Base of the per-domain adapters.

    A subclass fills ``sites`` (backbone module name -> ``"input"`` or ``"output"``) and implements ``apply``.
    Every parameter it owns is a :class:`~mdrec.nn.domain.DomainParameter` (stacked per domain, first dimension K),
    unless the method shares it by definition (HAMUR's hyper-network), and starts so that the adapted model equals
    the backbone.
    """

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        self.num_domains = num_domains
        self.sites: dict[str, str] = {}

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        """At site ``name``: the new input (``y`` None, an ``"input"`` site) or the new output ``y``.

        ``x`` and ``y`` are in the grouped order of ``route.groups``.
        """
        raise NotImplementedError

    def for_serving(self, backbone: Backbone) -> Adapter:
        """An adapter that computes what this one computes in eval mode, in the form serving runs (IAK folds its
        linear maps); the default is the adapter itself."""
        return self


# an adapter class with its options bound (the `adapter` config node): ``factory(schema, backbone)``
AdapterFactory = Callable[[Schema, Backbone], Adapter]


class Stacked(Adapter):
    """Several adapters on one backbone, each at its own sites (e.g. per-domain embedding deltas under LoRA).

    Args:
        schema: the data's schema.
        backbone: the backbone every part is built on.
        parts: name -> adapter factory; no two parts may act at the same site (the error names both).

    Example:
        >>> from mdrec.adapters.embedding import EmbeddingDelta
        >>> from mdrec.adapters.lora import LoRA
        >>> stacked = Stacked(schema, backbone, {"embeddings": EmbeddingDelta, "adapter": LoRA})
        >>> sorted(stacked.parts)
        ['adapter', 'embeddings']
    """

    def __init__(self, schema: Schema, backbone: Backbone, parts: dict[str, AdapterFactory]) -> None:
        super().__init__(schema.num_domains)
        self.parts = nn.ModuleDict({name: make(schema, backbone) for name, make in parts.items()})
        self.owner: dict[str, str] = {}  # site -> the part acting there
        for part_name, part in self.parts.items():
            for site, place in part.sites.items():
                if site in self.owner:
                    raise ValueError(f"adapter parts {self.owner[site]!r} and {part_name!r} both act at site {site!r}")
                self.sites[site], self.owner[site] = place, part_name

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        return self.parts[self.owner[name]].apply(name, x, y, route)

    def for_serving(self, backbone: Backbone) -> Adapter:
        served = copy.copy(self)  # a shallow copy whose parts are the parts' serving forms
        served._modules = dict(self._modules)
        served.parts = nn.ModuleDict({name: part.for_serving(backbone) for name, part in self.parts.items()})
        return served


@torch.no_grad()
def grow(adapter: Adapter, fresh: Adapter) -> Adapter:
    """``fresh``, an adapter of the same kind built for K + n domains (the K domains of ``adapter`` first), with
    ``adapter``'s K slices: every stacked ``[K, ...]`` entry of ``adapter``'s state is copied bit for bit into the
    first K slices of ``fresh``'s ``[K + n, ...]`` entry; the n new slices keep ``fresh``'s initial values (the
    identity: every adapter starts as the backbone). Entries of the same shape in both (not stacked per domain) are
    copied whole.

    Raises:
        ValueError: an entry neither keeps its shape nor grows along its first dimension by n (names the entry).

    Example:
        >>> from dataclasses import replace
        >>> from mdrec.adapters.lora import LoRA
        >>> old = LoRA(schema, backbone, rank=2)
        >>> grown = grow(old, LoRA(replace(schema, domains=(*schema.domains, "new")), backbone, rank=2))
        >>> a = grown.deltas["mlp/layers/0"].a
        >>> a.shape[0], torch.equal(a[:3], old.deltas["mlp/layers/0"].a)
        (4, True)
    """
    k, total = adapter.num_domains, fresh.num_domains
    own, trained = fresh.state_dict(), adapter.state_dict()
    for key, value in trained.items():
        if own[key].shape == value.shape:
            own[key] = value
        elif own[key].shape == (total, *value.shape[1:]):
            own[key] = torch.cat([value, own[key][k:]])
        else:
            raise ValueError(
                f"adapter entry {key}: {tuple(value.shape)} does not stack per domain ({k} domains, growing to "
                f"{total}: {tuple(own[key].shape)})"
            )
    fresh.load_state_dict(own)
    return fresh


class AdaptedNet(nn.Module):
    """A backbone, frozen where ``freeze`` says, with a per-domain adapter attached at its sites.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: a pre-trained backbone (returns ``ModelOutput`` with ``h``).
        adapter: the adapter, built on the same backbone.
        freeze: glob patterns of backbone module names to freeze (``"*"``: all of it; ``[]``: nothing). A frozen
            module's parameters get no gradient and the module stays in eval mode while training (batch
            normalisation keeps its pre-trained statistics, dropout is off), so the adapted model equals the
            backbone at step 0.

    Shapes: ``forward(batch)`` -> ``ModelOutput`` with logits ``[B, T]`` and h ``[B, H]`` in the batch's order.

    Example:
        >>> from mdrec.adapters.lora import LoRA
        >>> net = AdaptedNet(schema, backbone, LoRA(schema, backbone, rank=4))
        >>> net(batch).logits.shape
        torch.Size([8, 1])
    """

    def __init__(self, schema: Schema, backbone: Backbone, adapter: Adapter | None, freeze: Sequence[str] = ("*",)):
        super().__init__()
        self.num_domains = schema.num_domains
        self.backbone = backbone
        self.adapter = adapter
        modules = dict(backbone.named_modules())
        self.frozen = sorted(name for name in modules if any(fnmatch(name, p) for p in freeze))
        unmatched = [p for p in freeze if not any(fnmatch(name, p) for name in modules)]
        if unmatched:
            raise ValueError(f"freeze patterns {unmatched} match no module of the backbone; modules: {list(modules)}")
        for name in self.frozen:
            modules[name].requires_grad_(False)
        sites = adapter.sites if adapter is not None else {}
        for name, place in sites.items():
            if place not in SITE_PLACES or name not in modules:
                raise ValueError(f"adapter site {name!r} ({place!r}): needs a backbone module and one of {SITE_PLACES}")
        self.site_modules = {name: (modules[name], place) for name, place in sites.items()}  # a plain dict
        # frozen modules in eval mode from the start: Lightning restores each submodule's captured mode after a
        # validation pass (without calling train()), so the mode must be right before it first captures it
        self.train(self.training)

    def train(self, mode: bool = True) -> AdaptedNet:
        super().train(mode)
        modules = dict(self.backbone.named_modules())
        for name in self.frozen:
            modules[name].eval()
        return self

    def _hook_sites(self, route: Route) -> list[RemovableHandle]:
        """Hooks for one forward pass: the backbone is a plain backbone again once they are removed."""
        adapter, handles = self.adapter, []
        for name, (module, place) in self.site_modules.items():
            if place == "input":
                hook = lambda m, args, name=name: (adapter.apply(name, args[0], None, route), *args[1:])  # noqa: E731
                handles.append(module.register_forward_pre_hook(hook))
            else:
                hook = lambda m, args, y, name=name: adapter.apply(name, args[0], y, route)  # noqa: E731
                handles.append(module.register_forward_hook(hook))
        return handles

    def forward(self, batch: Batch, static: bool = False) -> ModelOutput:
        """``static``: group rows for a traced serving graph (per-row products on the stacked weights; see
        :class:`~mdrec.nn.domain.DomainGroups`); the domain ids must then be in ``0..K-1``."""
        groups = DomainGroups(batch.domain, self.num_domains, static)
        route = Route(groups, batch if groups.single else batch.rows(groups.order))
        handles = self._hook_sites(route)
        try:
            out = self.backbone(route.batch)
        finally:
            for handle in handles:
                handle.remove()
        aux = out.aux_loss + sum(route.aux) if route.aux else out.aux_loss
        h = groups.ungroup(out.h) if out.h is not None else None
        return ModelOutput(logits=groups.ungroup(out.logits), aux_loss=aux, h=h)
