"""Per-domain layers on mixed-domain batches: stacked ``[K, ...]`` parameters, rows grouped by domain once.

A per-domain layer holds every domain's parameters in one stacked tensor and applies to each row only its own
domain's slice. Small per-domain tensors (biases, normalisation scales, embeddings) are gathered per row. Full
weight matrices never are (``W[domain]`` of shape ``[B, in, out]``): the batch's rows are grouped by domain once
per forward (:class:`DomainGroups`: a stable sort and the counts) and every layer of a stack runs one matmul per
domain PRESENT in the batch on its contiguous block of rows. A stack of layers stays in grouped row order between
layers (``grouped``) and returns to the batch's order once at the end.

Why a loop over the present domains rather than one batched kernel: the batched alternatives pay for padding
(ruinous under skewed domain shares), for gather / index-put backward passes, or for K times the compute; the loop
runs only the useful matmuls, and its overhead per present domain does not grow with B (the comparison is in
``scripts/README.md``). The loop takes each domain's slice of a parameter with one ``unbind``: ``param[d]`` would
make autograd build a full ``[K, ...]`` zero gradient per domain. Grouping costs one host synchronisation per
forward (the per-domain row counts), shared by every layer that reuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdrec.nn.norm import PartitionedNorm
from mdrec.nn.parameter import DomainParameter

STATIC: ContextVar[bool] = ContextVar("static_groups", default=False)  # set by static_groups()


@contextmanager
def static_groups() -> Iterator[None]:
    """Every :class:`DomainGroups` built inside is static: a network that groups its own rows (a multi-domain model)
    traces into a serving graph that holds for any batch (``mdrec.serve.parallel.NetworkModel``)."""
    token = STATIC.set(True)
    try:
        yield
    finally:
        STATIC.reset(token)


class DomainGroups:
    """A batch's rows grouped by domain: computed once per forward and passed to every per-domain layer.

    Training runs one matmul per present domain (``map``; the module docstring says why). A *static* grouping
    (``static=True``) is for serving graphs that are traced once and must hold for any batch (TorchScript): no
    host synchronisation, every domain counts as present (P = K), and every per-domain product runs row by row on
    the stacked weights in place (:func:`rows_matmul`), whatever K and the domain mix. The rows are still sorted by
    domain, so each domain's weights are read once per layer, while they are in cache. Per-domain layers go through
    ``linear`` and ``matmul``, which serve both.

    Args:
        domain: int64 ``[B]`` domain ids in ``0..num_domains-1``.
        num_domains: K.
        static: group for a traced serving graph (see above; also inside :func:`static_groups`); ids are not
            checked (a traced graph cannot raise): callers map unknown ids first, as ``ParallelModel`` does.
            ``map`` then runs ``fn`` on every row with every domain's slices and keeps each row's own (K times the
            work: a serving graph of a layer that is not a product, such as per-domain experts).

    Attributes:
        order: ``[B]`` row indices sorted by domain (stable), so ``x[order]`` holds each domain's rows contiguously
            (None when grouped order is the batch order).
        domain: ``[B]`` the domain ids in grouped order.
        present: ``[P]`` the domains that have rows, ascending (static: all K).
        sizes: the row count of each present domain (Python ints; static: None).

    Example:
        >>> g = DomainGroups(torch.tensor([1, 0, 1]), num_domains=3)
        >>> g.present.tolist(), g.sizes, g.group(torch.tensor([10, 20, 30])).tolist()
        ([0, 1], [1, 2], [20, 10, 30])
    """

    def __init__(self, domain: Tensor, num_domains: int, static: bool = False) -> None:
        if domain.dim() != 1:
            raise ValueError(f"domain must be a 1-D tensor of ids, got shape {tuple(domain.shape)}")
        static = static or STATIC.get()
        self.num_domains, self.static = num_domains, static
        self.sizes: list[int] | None = None
        self.order: Tensor | None = None
        self.domain = domain
        if static:  # no data-dependent Python: the traced graph holds for every batch
            self.present = torch.arange(num_domains, device=domain.device)  # [K]
        else:
            counts = torch.bincount(domain, minlength=num_domains)  # [K]
            if counts.shape[0] != num_domains:
                raise ValueError(f"domain holds ids >= num_domains ({num_domains}): max id {counts.shape[0] - 1}")
            self.present = torch.nonzero(counts).squeeze(1)  # [P]
            if self.present.numel() == 0:  # an empty batch: domain 0 with no rows, so every layer keeps its shapes
                self.present = counts.new_zeros(1)
            self.sizes = counts[self.present].tolist()  # the one host sync per forward
            if len(self.sizes) <= 1:  # one domain: grouped order is the batch order
                return
        self.domain, self.order = torch.sort(domain, stable=True)  # [B] grouped order, [B] its rows

    @property
    def single(self) -> bool:
        """True when grouped order is the batch order (at most one domain present)."""
        return self.order is None

    def group(self, x: Tensor) -> Tensor:
        """Rows of ``x [B, ...]`` in grouped order."""
        return x if self.order is None else x.index_select(0, self.order)

    def ungroup(self, y: Tensor) -> Tensor:
        """Rows of ``y [B, ...]`` (grouped order) back in the batch's order: row i goes to row ``order[i]``."""
        return y if self.order is None else torch.empty_like(y).index_copy_(0, self.order, y)

    def take(self, param: Tensor) -> Tensor:
        """The present domains' slices of a stacked ``[K, ...]`` parameter: ``[P, ...]`` (no copy if all present)."""
        return param if self.static or len(self.sizes) == self.num_domains else param[self.present]

    def flat_rows(self, xs: Tensor) -> tuple[Tensor, Tensor]:
        """``xs [B, ..., in]`` (grouped order) as rows ``[R, in]`` and each row's domain ``[R]`` (R = B times the
        middle sizes: a sequence's items go with their batch row's domain)."""
        if xs.dim() == 2:
            return xs, self.domain
        domain = self.domain.view(-1, *[1] * (xs.dim() - 2)).expand(xs.shape[:-1])
        return xs.reshape(-1, xs.shape[-1]), domain.reshape(-1)

    def map(self, fn: Callable[..., Tensor], xs: Tensor, *params: Tensor) -> Tensor:
        """``fn(rows, *param slices)`` on each present domain's block of ``xs`` (grouped order), concatenated.

        Args:
            fn: maps one domain's rows ``[n_d, ...]`` and its slices of ``params`` to ``[n_d, ...]``.
            xs: ``[B, ...]`` in grouped order.
            params: per present domain ``[P, ...]`` (see ``take``), in ``present`` order.
        """
        per_domain = [p.unbind(0) for p in params]  # one autograd node per parameter, not one per domain
        if self.static:  # every domain on every row: [K, B, ...], row i keeps slice domain[i]
            every = torch.stack([fn(xs, *ps) for ps in zip(*per_domain, strict=True)])
            return every[self.domain, torch.arange(xs.shape[0], device=xs.device)]
        if self.single:
            return fn(xs, *(s[0] for s in per_domain))
        return torch.cat([fn(rows, *ps) for rows, *ps in zip(xs.split(self.sizes), *per_domain, strict=True)])

    def linear(self, xs: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Each domain's ``F.linear``: ``xs [B, ..., in]`` (grouped order), ``weight [P, out, in]``, ``bias [P, out]``
        (see ``take``) -> ``[B, ..., out]``."""
        if self.static:
            rows, domain = self.flat_rows(xs)
            out = rows_matmul(rows, weight.mT, domain) + bias.index_select(0, domain)
            return out.reshape(*xs.shape[:-1], out.shape[-1])
        return self.map(F.linear, xs, weight, bias)

    def matmul(self, xs: Tensor, *weights: Tensor) -> Tensor:
        """Each domain's product ``xs W1_d W2_d ...``: ``xs [B, ..., in]`` (grouped order), weights
        ``[P, in, out]``."""
        if self.static:
            rows, domain = self.flat_rows(xs)
            for w in weights:
                rows = rows_matmul(rows, w, domain)
            return rows.reshape(*xs.shape[:-1], rows.shape[-1])

        def chain(rows: Tensor, *ws: Tensor) -> Tensor:
            for w in ws:
                rows = rows @ w
            return rows

        return self.map(chain, xs, *weights)


def rows_matmul(x: Tensor, weight: Tensor, domain: Tensor) -> Tensor:
    """Row i times its own domain's matrix: ``x [B, in]``, ``weight [K, in, out]``, ``domain [B]`` -> ``[B, out]``.

    One ``embedding_bag`` over ``weight`` read as a table of ``K * in`` rows of width ``out``: row i sums table rows
    ``domain[i] * in + j`` weighted by ``x[i, j]``. The weights are read in place (no ``[B, in, out]`` gather, no
    per-domain call), so the work is that of a plain ``[B, in] @ [in, out]`` whatever K and the domain mix. A
    one-column output is instead a dot product per row with its gathered column (``[B, in]``), cheaper than a lookup
    per input. ``weight`` should be contiguous (it is copied per call otherwise).

    Example:
        >>> x, weight, domain = torch.randn(4, 3), torch.randn(2, 3, 5), torch.tensor([1, 0, 1, 1])
        >>> out = rows_matmul(x, weight, domain)
        >>> out.shape, torch.allclose(out[0], x[0] @ weight[1], atol=1e-6)
        (torch.Size([4, 5]), True)
    """
    k, n_in, n_out = weight.shape
    if n_out == 1:
        return torch.bmm(x[:, None], weight.index_select(0, domain)).squeeze(1)  # [B, 1, in] @ [B, in, 1]
    # int32 ids (half the bytes of int64): row i's bag is table rows domain[i] * in + j; arange into new_empty, so
    # that a traced graph builds them on its inputs' device (``device=`` would fix the example's in the graph)
    cols = torch.arange(n_in, out=domain.new_empty(n_in, dtype=torch.int32))
    ids = torch.add(cols, domain.to(torch.int32)[:, None], alpha=n_in).reshape(-1)  # [B * in]
    offsets = torch.arange(0, ids.shape[0], n_in, out=domain.new_empty(0, dtype=torch.int32))  # [B]
    table = weight.reshape(k * n_in, n_out)
    return F.embedding_bag(ids, table, offsets, mode="sum", per_sample_weights=x.reshape(-1))  # a bag per row


def as_groups(domain: Tensor | DomainGroups, num_domains: int) -> DomainGroups:
    """``domain`` itself if already grouped, else its :class:`DomainGroups`."""
    if isinstance(domain, DomainGroups):
        if domain.num_domains != num_domains:
            raise ValueError(f"groups were built for {domain.num_domains} domains, the layer has {num_domains}")
        return domain
    return DomainGroups(domain, num_domains)


def size_factors(counts: Tensor, power: float) -> Tensor:
    """``(n_mean / n_d)^power`` per domain from its rows ``counts [K]`` (``n_mean`` their mean over the domains that
    have rows; 0 for a domain without): how much more a prior should weigh for a smaller domain.

    Example:
        >>> size_factors(torch.tensor([300.0, 100.0, 0.0]), 1.0).tolist()
        [0.6666666865348816, 2.0, 0.0]
    """
    present = counts > 0
    mean = counts[present].mean()
    return torch.where(present, (mean / counts.clamp(min=1)).pow(power), torch.zeros_like(counts))


def init_like_linear(weight: Tensor, bias: Tensor) -> None:
    """Initialise each slice ``weight[..., out, in]`` / ``bias[..., out]`` as ``nn.Linear`` does."""
    with torch.no_grad():
        for w, b in zip(weight.reshape(-1, *weight.shape[-2:]), bias.reshape(-1, bias.shape[-1]), strict=True):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            bound = 1 / math.sqrt(w.shape[1])
            nn.init.uniform_(b, -bound, bound)


class DomainLinear(nn.Module):
    """One ``nn.Linear`` per domain, stacked: row i gets ``x_i W[d_i]^T + b[d_i]``.

    Args:
        num_domains: K.
        in_features: input width.
        out_features: output width.
        per_domain: the K stacked slices belong to the domains (:class:`DomainParameter`: per-domain selection, the
            dynamic learning rate and onboarding treat them per domain); False for other groups of rows (AdaptDHM's
            clusters): plain parameters.

    Shapes: weight ``[K, out, in]``, bias ``[K, out]``; ``forward(x [B, in], domain [B] or DomainGroups)`` ->
    ``[B, out]``; ``grouped(xs, groups)`` does the same on rows already in grouped order; ``every_domain(x [B, in]
    or [B, K, in])`` -> ``[B, K, out]``, every domain's output on every row.

    Example:
        >>> layer = DomainLinear(num_domains=3, in_features=4, out_features=2)
        >>> layer(torch.zeros(5, 4), torch.tensor([0, 2, 2, 1, 0])).shape
        torch.Size([5, 2])
        >>> layer.every_domain(torch.zeros(5, 4)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(self, num_domains: int, in_features: int, out_features: int, per_domain: bool = True) -> None:
        super().__init__()
        for name, value in (("num_domains", num_domains), ("in_features", in_features), ("out_features", out_features)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.num_domains = num_domains
        self.in_features = in_features
        self.out_features = out_features
        stacked = DomainParameter if per_domain else nn.Parameter
        self.weight = stacked(torch.empty(num_domains, out_features, in_features))
        self.bias = stacked(torch.empty(num_domains, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_like_linear(self.weight, self.bias)

    def effective(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """The weights ``[n, out, in]`` and biases ``[n, out]`` the layer applies, from slices of its own stacked
        ``weight`` and ``bias`` (here: those slices)."""
        return weight, bias

    def domain_weights(self, groups: DomainGroups) -> tuple[Tensor, Tensor]:
        """The present domains' weights ``[P, out, in]`` and biases ``[P, out]``."""
        return self.effective(groups.take(self.weight), groups.take(self.bias))

    def grouped(self, xs: Tensor, groups: DomainGroups) -> Tensor:
        """``xs [B, in]`` in grouped order -> ``[B, out]`` in grouped order."""
        return groups.linear(xs, *self.domain_weights(groups))

    def every_domain(self, x: Tensor) -> Tensor:
        """Every domain's output on every row, in any row order: ``x [B, in]`` (one input for all domains) or
        ``[B, K, in]`` (domain k's input in column k) -> ``[B, K, out]``.

        K times the compute of ``grouped``: for methods whose equations read every domain's output for every row.
        One matmul on the stacked weights (one batched matmul over the domains for ``[B, K, in]``).
        """
        weight, bias = self.effective(self.weight, self.bias)  # [K, out, in], [K, out]
        k, n_out, n_in = weight.shape
        if x.dim() == 2:
            return F.linear(x, weight.reshape(k * n_out, n_in), bias.reshape(-1)).view(x.shape[0], k, n_out)
        return torch.baddbmm(bias[:, None], x.transpose(0, 1), weight.mT).transpose(0, 1)  # [K, B, out] -> [B, K, out]

    def forward(self, x: Tensor, domain: Tensor | DomainGroups) -> Tensor:
        groups = as_groups(domain, self.num_domains)
        return groups.ungroup(self.grouped(groups.group(x), groups))


class StarLinear(DomainLinear):
    """STAR's star-topology layer: domain d uses ``W ⊙ W_d`` and ``b + b_d`` (docs/methods.md, STAR).

    The shared ``shared_weight`` / ``shared_bias`` start as ``nn.Linear``; the per-domain ``weight`` (W_d) starts at
    ones and ``bias`` (b_d) at zeros, so every domain starts at the shared layer. ``W ⊙ W_d`` is formed once per
    present domain, never per row.

    Args:
        num_domains: K.
        in_features: input width.
        out_features: output width.
        per_domain: the stacked factors are per domain (see :class:`DomainLinear`); False for other groups of rows
            (AdaptDHM's clusters).

    Example:
        >>> layer = StarLinear(num_domains=2, in_features=4, out_features=3)
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(layer(x, torch.tensor([0, 1, 1, 0, 1])), x @ layer.shared_weight.T + layer.shared_bias)
        True
    """

    def __init__(self, num_domains: int, in_features: int, out_features: int, per_domain: bool = True) -> None:
        super().__init__(num_domains, in_features, out_features, per_domain)
        self.shared_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.shared_bias = nn.Parameter(torch.empty(out_features))
        init_like_linear(self.shared_weight, self.shared_bias)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def effective(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """``W ⊙ W_d`` ``[n, out, in]`` and ``b + b_d`` ``[n, out]`` of the given slices, in one op each."""
        return self.shared_weight * weight, self.shared_bias + bias


class DomainMLP(nn.Module):
    """One MLP per domain: ``DomainLinear -> [PartitionedNorm] -> ReLU -> [Dropout]`` per layer.

    The rows are grouped once for the whole stack. With ``star=True`` the layers are :class:`StarLinear` and the
    normalisation has shared plus per-domain scales (STAR's FCN); otherwise every parameter is per-domain (one
    independent tower per domain, normalised with its own domain's statistics).

    Args:
        num_domains: K.
        in_features: input width.
        layer_sizes: width of each layer; the output width is the last one.
        dropout: dropout after each activation (0 disables).
        batch_norm: partitioned normalisation before each activation.
        star: star-topology layers (shared ⊙ per-domain weights) instead of independent per-domain layers.

    Example:
        >>> mlp = DomainMLP(num_domains=3, in_features=8, layer_sizes=[16, 4], batch_norm=True)
        >>> mlp(torch.randn(6, 8), torch.tensor([0, 1, 2, 2, 1, 0])).shape
        torch.Size([6, 4])
    """

    def __init__(
        self,
        num_domains: int,
        in_features: int,
        layer_sizes: list[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        star: bool = False,
    ) -> None:
        super().__init__()
        if not layer_sizes or min(layer_sizes) < 1:
            raise ValueError(f"layer_sizes must be a non-empty list of positive widths, got {layer_sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_domains = num_domains
        linear = StarLinear if star else DomainLinear
        widths = [in_features, *layer_sizes]
        self.linears = nn.ModuleList(linear(num_domains, i, o) for i, o in zip(widths[:-1], widths[1:], strict=True))
        self.norms = (
            nn.ModuleList(PartitionedNorm(num_domains, o, shared_affine=star) for o in layer_sizes)
            if batch_norm
            else None
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = layer_sizes[-1]

    def grouped(self, xs: Tensor, groups: DomainGroups) -> Tensor:
        """``xs [B, in]`` in grouped order -> ``[B, layer_sizes[-1]]`` in grouped order."""
        for i, linear in enumerate(self.linears):
            xs = linear.grouped(xs, groups)
            if self.norms is not None:
                xs = self.norms[i](xs, groups.domain)
            xs = self.dropout(torch.relu(xs))
        return xs

    def forward(self, x: Tensor, domain: Tensor | DomainGroups) -> Tensor:
        groups = as_groups(domain, self.num_domains)
        return groups.ungroup(self.grouped(groups.group(x), groups))


class DomainTower(nn.Module):
    """A per-domain tower ending in one logit: :class:`DomainMLP` (if any hidden layers), then a per-domain linear
    output layer.

    Args:
        num_domains: K.
        in_features: input width.
        layer_sizes: hidden widths (empty: the output layer reads the input directly).
        dropout: dropout after each hidden activation.
        batch_norm: partitioned normalisation in the hidden layers.
        star: star-topology layers (STAR) instead of independent per-domain layers.

    Shapes: ``grouped(xs [B, in], groups)`` (grouped order) -> ``(hidden [B, H], logits [B, 1])``, H the last
    hidden width (``in_features`` without hidden layers).

    Example:
        >>> tower = DomainTower(num_domains=2, in_features=8, layer_sizes=[4])
        >>> g = DomainGroups(torch.tensor([1, 0, 1]), 2)
        >>> [t.shape for t in tower.grouped(torch.randn(3, 8), g)]
        [torch.Size([3, 4]), torch.Size([3, 1])]
    """

    def __init__(
        self,
        num_domains: int,
        in_features: int,
        layer_sizes: list[int],
        dropout: float = 0.0,
        batch_norm: bool = False,
        star: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = DomainMLP(num_domains, in_features, layer_sizes, dropout, batch_norm, star) if layer_sizes else None
        hidden = self.mlp.out_features if self.mlp is not None else in_features
        self.output = (StarLinear if star else DomainLinear)(num_domains, hidden, 1)

    def grouped(self, xs: Tensor, groups: DomainGroups) -> tuple[Tensor, Tensor]:
        hidden = self.mlp.grouped(xs, groups) if self.mlp is not None else xs  # [B, H]
        return hidden, self.output.grouped(hidden, groups)
