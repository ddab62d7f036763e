"""IAK, the Information-Aware Adaptive Kernel (docs/methods.md, IAK): per domain, compress the backbone's
representation into a Gaussian bottleneck, decode the domain's missing knowledge, add it back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mdrec.adapters.base import Adapter, Route, select_modules, site_key
from mdrec.data.schema import Schema
from mdrec.models.backbone import Backbone
from mdrec.nn.domain import DomainGroups, DomainLinear, size_factors
from mdrec.nn.parameter import DomainParameter

Placement = Literal["head", "layers"]
Prior = Literal["standard", "learned"]
PLACEMENTS, PRIORS = get_args(Placement), get_args(Prior)


class Kernel(nn.Module):
    """One site's kernels for all K domains, stacked.

    ``[mu, log var] = enc2_d(relu(enc1_d(r)))``; ``z = mu + sigma * eps`` in training (``mu`` in eval or without
    KL); ``f = dec2_d(relu(dec1_d(z)))`` (``dec_d(z)``, one layer, when ``encoder_only``); ``r' = r + f``
    (``r' = f`` without ``residual``). The decoder's last layer starts at zero, so ``r' = r`` at step 0.

    Args:
        num_domains: K.
        width: H, the width of the representation r.
        bottleneck: k.
        hidden: width of the encoder's and decoder's hidden layers.
        prior: ``"standard"`` N(0, I) or ``"learned"`` N(m_d, s_d^2) per domain.
        kl: sample z and return the KL term (False: a deterministic bottleneck, KL 0).
        encoder_only: a single linear decoder layer instead of the matching MLP.
        residual: add f to r (False: replace r with f).
        logvar_init: initial bias of log var (small early noise).

    Shapes: ``forward(rs [B, ..., H], groups)`` (grouped order) -> ``(r' [B, ..., H], kl [B, ...])`` (the middle
    sizes: a site inside a sequence module, e.g. DIN's attention MLP on ``[B, L, 4D]``).
    """

    def __init__(
        self,
        num_domains: int,
        width: int,
        bottleneck: int,
        hidden: int,
        prior: Prior,
        kl: bool,
        encoder_only: bool,
        residual: bool,
        logvar_init: float,
    ) -> None:
        super().__init__()
        self.bottleneck, self.kl, self.residual = bottleneck, kl, residual
        self.enc1 = DomainLinear(num_domains, width, hidden)
        self.enc2 = DomainLinear(num_domains, hidden, 2 * bottleneck)
        with torch.no_grad():
            self.enc2.bias[:, bottleneck:] = logvar_init
        decoder = [] if encoder_only else [DomainLinear(num_domains, bottleneck, hidden)]
        decoder.append(DomainLinear(num_domains, hidden if decoder else bottleneck, width))
        nn.init.zeros_(decoder[-1].weight)
        nn.init.zeros_(decoder[-1].bias)
        self.decoder = nn.ModuleList(decoder)
        if prior == "learned":
            self.prior_mean = DomainParameter(torch.zeros(num_domains, bottleneck))
            self.prior_logvar = DomainParameter(torch.zeros(num_domains, bottleneck))

    def forward(self, rs: Tensor, groups: DomainGroups) -> tuple[Tensor, Tensor]:
        stats = self.enc2.grouped(torch.relu(self.enc1.grouped(rs, groups)), groups)  # [B, 2k]
        mu, logvar = stats[..., : self.bottleneck], stats[..., self.bottleneck :]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.kl and self.training else mu
        for i, layer in enumerate(self.decoder):
            z = layer.grouped(torch.relu(z) if i else z, groups)
        out = rs + z if self.residual else z
        if not self.kl:
            return out, rs.new_zeros(rs.shape[:-1])
        if hasattr(self, "prior_mean"):
            rows = (-1, *[1] * (mu.dim() - 2), self.bottleneck)  # [B, 1.., k]: a row's items share its domain's prior
            m, lv = self.prior_mean[groups.domain].view(rows), self.prior_logvar[groups.domain].view(rows)
            kl = 0.5 * (lv - logvar + (logvar.exp() + (mu - m) ** 2) / lv.exp() - 1)
        else:
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)
        return out, kl.sum(-1)  # [B, ...]


class ServingKernel(nn.Module):
    """One site's kernels as served (eval: ``z = mu``, no KL), the linear maps with no activation between them folded
    into one: ``a = relu(enc1_d(r))``, ``f = dec2_d(relu(M_d(a)))`` with ``M_d = dec1_d o enc2_d[:k]`` (enc2's mean
    half; ``encoder_only``: ``f = M_d(a)``, ``M_d = dec_d o enc2_d[:k]``). With ``head``, the linear layer whose input
    the kernel changes (``placement="head"``, residual), the last map is folded into it as well: ``head(r + f) =
    head(r) + f W_h^T``, so the kernel returns the change of the head's output, ``[B, T]`` instead of ``[B, H]``.

    Shapes: ``forward(rs [B, H], groups)`` (grouped order) -> ``r' [B, H]``; with ``head``: ``f W_h^T [B, T]``.
    """

    def __init__(self, kernel: Kernel, head: nn.Linear | None) -> None:
        super().__init__()
        self.residual, self.folded = kernel.residual, head is not None
        k, (first, *rest) = kernel.bottleneck, kernel.decoder
        with torch.no_grad():
            maps = [(kernel.enc1.weight, kernel.enc1.bias)]  # weights [K, out, in], biases [K, out]
            mean_w, mean_b = kernel.enc2.weight[:, :k], kernel.enc2.bias[:, :k, None]
            maps.append((first.weight @ mean_w, (first.weight @ mean_b).squeeze(2) + first.bias))
            maps += [(layer.weight, layer.bias) for layer in rest]
            if head is not None:
                w, b = maps[-1]
                maps[-1] = (head.weight @ w, (head.weight @ b[..., None]).squeeze(2))
            self.layers = nn.ModuleList(DomainLinear(w.shape[0], w.shape[2], w.shape[1]) for w, _ in maps)
            for layer, (w, b) in zip(self.layers, maps, strict=True):
                layer.weight.copy_(w)
                layer.bias.copy_(b)

    def forward(self, rs: Tensor, groups: DomainGroups) -> Tensor:
        f = rs
        for i, layer in enumerate(self.layers):
            f = layer.grouped(torch.relu(f) if i else f, groups)
        return rs + f if self.residual and not self.folded else f


class ServingIAK(Adapter):
    """IAK as served (:meth:`IAK.for_serving`): the same outputs in eval mode from fewer, smaller per-domain
    products (:class:`ServingKernel`); a kernel on a linear head's input acts on that head's output instead."""

    def __init__(self, iak: IAK, backbone: Backbone) -> None:
        super().__init__(iak.num_domains)
        modules = dict(backbone.named_modules())
        self.kernels = nn.ModuleDict()
        for name, place in iak.sites.items():
            kernel, module = iak.kernels[site_key(name)], modules[name]
            head = module if place == "input" and kernel.residual and isinstance(module, nn.Linear) else None
            self.kernels[site_key(name)] = ServingKernel(kernel, head)
            self.sites[name] = "output" if head is not None else place

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        kernel = self.kernels[site_key(name)]
        if kernel.folded:  # at the head's output: x is the representation, y the head's output
            return y + kernel(x, route.groups)
        return kernel(x if y is None else y, route.groups)


class IAK(Adapter):
    """Per-domain information-bottleneck kernels on the backbone's representation, ``beta * KL`` as auxiliary loss.

    Args:
        schema: the data's schema (K = ``schema.num_domains``).
        backbone: the backbone (``placement="head"`` hooks the input of its ``head``).
        bottleneck: k, the size of the Gaussian bottleneck (the paper's best point: 50).
        hidden: width of the encoder's and decoder's hidden layers.
        beta: weight of the KL term.
        beta_power: scales a row's KL weight by its domain's size, ``beta * (n_mean / n_d)^beta_power`` with ``n_d``
            the domain's rows in the batch (its share of the data, in expectation) and ``n_mean`` the batch's rows
            per present domain, both on this process: each domain's prior weighs more as its data shrink (0: the
            same ``beta`` for every row; 1: every domain's KL counts as much in the loss whatever its size).
        prior: ``"standard"`` N(0, I) or ``"learned"`` (a mean and variance per domain).
        placement: ``"head"``: on h, before the head (the default); ``"layers"``: after each linear layer named by
            ``layer_targets`` (on its pre-activation output).
        layer_targets: glob patterns of the linear layers for ``placement="layers"``.
        kl: False: the "no KL" ablation (deterministic bottleneck).
        encoder_only: the "encoder only" ablation (one linear decoder layer, no matching MLP).
        residual: False: the "no residual" ablation (r' = f; the model no longer starts as the backbone).
        logvar_init: initial log-variance bias.

    Example:
        >>> from mdrec.adapters.base import AdaptedNet
        >>> net = AdaptedNet(schema, backbone, IAK(schema, backbone, bottleneck=50)).eval()
        >>> torch.allclose(net(batch).logits, backbone.eval()(batch).logits)  # the residual starts at the identity
        True
    """

    def __init__(
        self,
        schema: Schema,
        backbone: Backbone,
        bottleneck: int = 50,
        hidden: int = 64,
        beta: float = 1e-3,
        beta_power: float = 0.0,
        prior: Prior = "standard",
        placement: Placement = "head",
        layer_targets: Sequence[str] = ("*mlp.layers.*",),
        kl: bool = True,
        encoder_only: bool = False,
        residual: bool = True,
        logvar_init: float = -4.0,
    ) -> None:
        super().__init__(schema.num_domains)
        if placement not in PLACEMENTS or prior not in PRIORS:
            raise ValueError(f"placement {placement!r} / prior {prior!r} must be one of {PLACEMENTS} / {PRIORS}")
        if bottleneck < 1 or hidden < 1 or beta < 0 or beta_power < 0:
            raise ValueError(
                f"bottleneck ({bottleneck}) and hidden ({hidden}) must be >= 1, beta ({beta}) and beta_power "
                f"({beta_power}) >= 0"
            )
        self.beta, self.beta_power = beta, beta_power
        if placement == "head":
            widths, place = {backbone.head_site(): backbone.hidden_size}, "input"
        else:
            linears = select_modules(backbone, layer_targets, nn.Linear)
            widths, place = {name: m.out_features for name, m in linears.items()}, "output"
        self.kernels = nn.ModuleDict()
        for name, width in widths.items():
            self.kernels[site_key(name)] = Kernel(
                self.num_domains, width, bottleneck, hidden, prior, kl, encoder_only, residual, logvar_init
            )
            self.sites[name] = place

    def apply(self, name: str, x: Tensor, y: Tensor | None, route: Route) -> Tensor:
        out, kl = self.kernels[site_key(name)](x if y is None else y, route.groups)  # kl [B, ...] grouped order
        if self.beta_power:
            kl = kl * self.size_weights(route.groups.domain).view(-1, *[1] * (kl.dim() - 1))
        route.aux.append(self.beta * kl.mean())
        return out

    def size_weights(self, domain: Tensor) -> Tensor:
        """``domain [B]`` -> each row's KL weight ``(n_mean / n_d)^beta_power`` ``[B]`` (``n_d`` its domain's rows
        in the batch, ``n_mean`` the batch's rows per present domain)."""
        counts = torch.bincount(domain, minlength=self.num_domains).to(torch.float32)  # [K]
        return size_factors(counts, self.beta_power)[domain]

    def for_serving(self, backbone: Backbone) -> ServingIAK:
        """The kernels folded for serving (:class:`ServingKernel`): at K = 100 domains, k = 50, hidden 64 on a
        128-wide h before a one-logit head, 12.4k instead of 26.2k multiply-adds per row (head included)."""
        return ServingIAK(self, backbone)
