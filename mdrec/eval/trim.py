"""Per-domain feature trimming (docs/methods.md, Feature trimming): permutation importance of every feature within
each domain on validation data, then a per-domain plan that drops the least important features while the domain's
AUC loss stays within a budget.

A dropped feature is served blank: a sparse field's id becomes 0 (the unknown id every vocabulary reserves), a
dense feature 0. The plan is checked with the blanked features, not estimated from the importances: each step
evaluates every domain's next candidate in one pass over the validation rows (rows only read their own domain's
mask), so a plan costs at most F passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from mdrec.data.batch import Batch
from mdrec.data.schema import Schema
from mdrec.eval.metrics import grouped_auc

# a model's click probability per row: ``Batch`` -> ``[B]``
Predict = Callable[[Batch], Tensor]


def feature_names(schema: Schema) -> list[str]:
    """The trimmable features: the sparse fields, then the dense features (F in all)."""
    return [*schema.sparse_names, *schema.dense]


def concat(batches: Iterable[Batch]) -> Batch:
    """One batch of all rows (sparse, dense, domain, labels; the trimming path needs no sequence)."""
    parts = list(batches)
    if any(b.seq is not None for b in parts):
        raise ValueError("feature trimming covers sparse and dense features; this data has a sequence field")
    return Batch(*(torch.cat([getattr(b, name) for b in parts]) for name in ("sparse", "dense", "domain", "labels")))


@torch.no_grad()
def domain_aucs(predict: Predict, data: Batch, num_domains: int, chunk: int = 16384) -> Tensor:
    """Per-domain AUC ``[K]`` of ``predict`` on ``data``, predicted in chunks of ``chunk`` rows."""
    index = torch.arange(data.size)
    probs = torch.cat([predict(data.rows(rows)) for rows in index.split(chunk)])
    return grouped_auc(probs, data.labels[:, 0], data.domain, num_domains)[0]


def permuted_within_domains(column: Tensor, domain: Tensor, generator: torch.Generator) -> Tensor:
    """``column [n, ...]`` with its values shuffled among the rows of each domain (each domain keeps its values)."""
    key = domain.double() + torch.rand(domain.shape[0], generator=generator, dtype=torch.float64)
    source = torch.argsort(key)  # each domain's rows, in random order
    target = torch.argsort(domain, stable=True)  # each domain's rows, in their order
    out = column.clone()
    out[target] = column[source]
    return out


def permutation_importance(predict: Predict, data: Batch, schema: Schema, seed: int = 0) -> Tensor:
    """``[F, K]``: domain d's AUC minus its AUC with feature f shuffled among d's rows (F passes over ``data``)."""
    k, f_sparse = schema.num_domains, len(schema.sparse)
    base = domain_aucs(predict, data, k)
    g = torch.Generator().manual_seed(seed)
    drops = []
    for f in range(len(feature_names(schema))):
        table, col = ("sparse", f) if f < f_sparse else ("dense", f - f_sparse)
        values = getattr(data, table).clone()
        values[:, col] = permuted_within_domains(values[:, col], data.domain, g)
        drops.append(base - domain_aucs(predict, dataclasses.replace(data, **{table: values}), k))
    return torch.stack(drops)


@dataclasses.dataclass
class TrimPlan:
    """Per domain, the features to drop and the validation AUC before and after (blanked features).

    Attributes:
        features: the F feature names; ``domains``: the K domain names.
        importance: ``[F, K]`` permutation importance (AUC drop).
        drop: bool ``[K, F]``, the features each domain drops.
        auc_before, auc_after: ``[K]`` validation AUC with all features and with the plan.
        budget: the largest AUC loss allowed per domain.
    """

    features: list[str]
    domains: list[str]
    importance: Tensor
    drop: Tensor
    auc_before: Tensor
    auc_after: Tensor
    budget: float

    def dropped(self, domain: str) -> list[str]:
        """The features ``domain`` drops."""
        row = self.drop[self.domains.index(domain)]
        return [name for name, gone in zip(self.features, row.tolist(), strict=True) if gone]


def plan_trimming(
    predict: Predict, data: Batch, schema: Schema, budget: float, importance: Tensor, min_rows: int = 2000
) -> TrimPlan:
    """Greedy per domain: drop features from the least important up, each step checked with the features blanked,
    and stop at the first one that would take the domain's AUC more than ``budget`` below its full-feature AUC.

    A domain with fewer than ``min_rows`` validation rows keeps every feature: on a few hundred rows the AUC
    changes of single features are noise, and a plan fitted to them over-fits the validation set.
    """
    if budget < 0:
        raise ValueError(f"budget (the AUC loss allowed per domain) must be >= 0, got {budget}")
    k, f = schema.num_domains, importance.shape[0]
    base = domain_aucs(predict, data, k)
    order = torch.argsort(importance.T, dim=1, stable=True)  # [K, F], least important first
    drop = torch.zeros(k, f, dtype=torch.bool)
    after = base.clone()
    # a domain without both classes in validation, or with too few rows, keeps every feature
    open_ = ~torch.isnan(base) & (torch.bincount(data.domain, minlength=k) >= min_rows)
    rows = torch.arange(k)
    for step in range(f):
        if not open_.any():
            break
        candidate = drop.clone()
        candidate[rows, order[:, step]] = True
        auc = domain_aucs(lambda b, c=candidate: predict(b.blanked(c)), data, k)
        accept = open_ & (base - auc <= budget)
        drop[accept] = candidate[accept]
        after[accept] = auc[accept]
        open_ &= accept
    return TrimPlan(feature_names(schema), list(schema.domains), importance, drop, base, after, budget)


def trim_table(plan: TrimPlan) -> str:
    """Markdown: per domain, features kept, AUC before / after / change, and the dropped features."""
    lines = [
        f"| domain | features kept | val AUC | trimmed AUC | change (budget {plan.budget:g}) | dropped |",
        "|---|---|---|---|---|---|",
    ]
    total = len(plan.features)
    for d, name in enumerate(plan.domains):
        before, after = float(plan.auc_before[d]), float(plan.auc_after[d])
        gone = plan.dropped(name)
        lines.append(
            f"| {name} | {total - len(gone)} / {total} | {before:.4f} | {after:.4f} | {after - before:+.4f} | "
            f"{', '.join(gone) or '-'} |"
        )
    return "\n".join(lines)
