"""Per-domain feature trimming (docs/methods.md, Feature trimming): the importance of every feature within each
domain on validation data (permutation: the feature shuffled among the domain's rows; ablation: the feature blanked and
the domain's adapter briefly re-trained without it), then a per-domain plan that drops the least important features
while the domain's AUC loss stays within a budget.

A dropped feature is served blank: a sparse field's id becomes 0 (the unknown id every vocabulary reserves), a
dense feature 0. The plan is checked with the blanked features, not estimated from the importances: each step
evaluates every domain's next candidate in one pass over the validation rows (rows only read their own domain's
mask), so a plan costs at most F passes.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import math
from collections.abc import Callable, Iterable
from pathlib import Path

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
def predictions(predict: Predict, data: Batch, chunk: int = 16384) -> Tensor:
    """``[n]`` ``predict`` on every row of ``data``, in chunks of ``chunk`` rows."""
    return torch.cat([predict(data.rows(rows)) for rows in torch.arange(data.size).split(chunk)])


def domain_aucs(predict: Predict, data: Batch, num_domains: int) -> Tensor:
    """Per-domain AUC ``[K]`` of ``predict`` on ``data``."""
    return grouped_auc(predictions(predict, data), data.labels[:, 0], data.domain, num_domains)[0]


def auc_change_se(before: Tensor, after: Tensor, data: Batch, num_domains: int, replicates: int = 200) -> Tensor:
    """``[K]`` standard error of each domain's AUC change ``after - before`` (predictions ``[n]`` on ``data``'s
    rows): the spread over ``replicates`` paired bootstrap resamples of each domain's rows (seeded; NaN where a
    domain lacks a class). One grouped AUC over all replicates: ``replicates * n`` rows."""
    n, k = data.size, num_domains
    g = torch.Generator().manual_seed(0)
    order = torch.argsort(data.domain, stable=True)
    counts = torch.bincount(data.domain, minlength=k)
    start = torch.cumsum(counts, 0) - counts
    # each replicate draws each row's stand-in among the rows of the row's domain
    u = torch.rand(replicates, n, generator=g, dtype=torch.float64)
    domain = data.domain[None].expand(replicates, n)
    rows = order[start[domain] + (u * counts[domain]).long()]  # [R, n]
    groups = (torch.arange(replicates)[:, None] * k + domain).flatten()
    labels = data.labels[rows.flatten(), 0]
    change = [
        grouped_auc(p[rows.flatten()], labels, groups, replicates * k)[0].view(replicates, k) for p in (before, after)
    ]
    return (change[1] - change[0]).std(0)


@dataclasses.dataclass(frozen=True)
class Retraining:
    """A brief re-training: ``steps`` Adam steps of learning rate ``lr``, each on ``rows`` rows of every domain
    (drawn with replacement from the domain's rows, seeded by ``seed``)."""

    steps: int = 200
    rows: int = 256
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.rows < 1 or not self.lr > 0:
            raise ValueError(f"re-training needs steps >= 0, rows >= 1 and lr > 0, got {self}")


def retrain(logits: Callable[[Batch], Tensor], params: list[Tensor], data: Batch, how: Retraining) -> list[float]:
    """Fit ``params`` (and nothing else) to ``data``: ``how.steps`` Adam steps on the binary cross-entropy of
    ``logits(batch)`` (``[B, T]``) against the batch's first T label columns, each batch ``how.rows`` rows of every
    domain in ``data`` (so every domain weighs the same); the draws and any dropout are seeded by ``how.seed`` (the
    global generator is left as it was). Returns the loss of each step (before its update)."""
    if not params:
        raise ValueError("nothing to re-train: no parameters given")
    g = torch.Generator().manual_seed(how.seed)
    order = torch.argsort(data.domain, stable=True)
    counts = torch.bincount(data.domain)
    counts, start = counts[counts > 0], (torch.cumsum(counts, 0) - counts)[counts > 0]  # the domains with rows
    opt = torch.optim.Adam(params, lr=how.lr)
    losses = []
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):  # dropout draws from the seeded global generator
        torch.manual_seed(how.seed)
        for _ in range(how.steps):
            u = torch.rand(counts.numel(), how.rows, generator=g, dtype=torch.float64)
            batch = data.rows(order[(start[:, None] + (u * counts[:, None]).long()).flatten()])
            out = logits(batch)  # the model's T tasks: the first T label columns
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, batch.labels[:, : out.shape[1]].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def permuted_within_domains(column: Tensor, domain: Tensor, generator: torch.Generator) -> Tensor:
    """``column [n, ...]`` with its values shuffled among the rows of each domain (each domain keeps its values)."""
    key = domain.double() + torch.rand(domain.shape[0], generator=generator, dtype=torch.float64)
    source = torch.argsort(key)  # each domain's rows, in random order
    target = torch.argsort(domain, stable=True)  # each domain's rows, in their order
    out = column.clone()
    out[target] = column[source]
    return out


def _auc_drops(base: Tensor, without: Callable[[int], Tensor], features: int) -> Tensor:
    """``[F, K]``: ``base [K]`` minus ``without(f) [K]`` (the domains' AUCs without feature f) for every f."""
    return torch.stack([base - without(f) for f in range(features)])


def permutation_importance(predict: Predict, data: Batch, schema: Schema, seed: int = 0) -> Tensor:
    """``[F, K]``: domain d's AUC minus its AUC with feature f shuffled among d's rows (F passes over ``data``)."""
    k, f_sparse = schema.num_domains, len(schema.sparse)
    g = torch.Generator().manual_seed(seed)

    def shuffled(f: int) -> Tensor:
        table, col = ("sparse", f) if f < f_sparse else ("dense", f - f_sparse)
        values = getattr(data, table).clone()
        values[:, col] = permuted_within_domains(values[:, col], data.domain, g)
        return domain_aucs(predict, dataclasses.replace(data, **{table: values}), k)

    return _auc_drops(domain_aucs(predict, data, k), shuffled, len(feature_names(schema)))


def ablation_importance(retrained: Callable[[Tensor], Predict], data: Batch, schema: Schema) -> Tensor:
    """``[F, K]``: domain d's AUC after the brief re-training with every feature (``retrained`` of no drop) minus
    its AUC after the same re-training with feature f blanked (``retrained`` of f alone, e.g.
    :func:`mdrec.serve.ablation.adapter_retrainer`): what the domain loses when f is gone and its model has adapted
    to that, not what a shuffle costs a model that still reads f. F + 1 re-trainings, one pass over ``data`` each."""
    k, f = schema.num_domains, len(feature_names(schema))
    one_hot = torch.eye(f, dtype=torch.bool)
    base = domain_aucs(retrained(torch.zeros(f, dtype=torch.bool)), data, k)
    return _auc_drops(base, lambda i: domain_aucs(retrained(one_hot[i]), data, k), f)


def split_halves(data: Batch, seed: int = 0) -> tuple[Batch, Batch]:
    """Two disjoint halves of ``data``, each domain's rows split evenly at random: the rows a plan is chosen on
    (importance, greedy steps) and the rows it is checked on. A plan judged on the rows that chose it over-fits them:
    the AUC change of a feature that does nothing is noise, and the greedy keeps the noise that helped."""
    g = torch.Generator().manual_seed(seed)
    key = data.domain.double() + torch.rand(data.size, generator=g, dtype=torch.float64)
    order = torch.argsort(key)  # each domain's rows together, in random order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(data.size)
    start = torch.searchsorted(data.domain[order].contiguous(), data.domain)  # the domain's first position in order
    first = (rank - start) % 2 == 0
    return data.rows(torch.nonzero(first).flatten()), data.rows(torch.nonzero(~first).flatten())


class Verdict(enum.Enum):
    """What became of a domain's plan."""

    TRIMMED = "trimmed"  # the plan drops features (AUC mode), or meets the latency budget (latency mode)
    NOTHING_TO_DROP = "nothing to drop"  # AUC mode: every feature costs more AUC than the budget allows
    REFUSED = "the checking half refused every drop: keeps every feature"  # AUC mode: chosen, not confirmed
    MEETS_UNTRIMMED = "meets the budget with every feature"
    NOT_REACHABLE = "budget not reachable within the AUC limit"
    TOO_FEW_ROWS = "too few validation rows: keeps every feature"
    UNRANKABLE = "no validation AUC (one class): keeps every feature"


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """Predicted serving time per domain: the model's own time for the domain's requests plus the fetch and
    serialisation cost of every feature the domain still sends.

    Args:
        model_ms: ``[K]`` the model's measured time for one request of each domain (milliseconds per call on the
            request's rows, e.g. the candidates of one auction).
        cost_ms: ``[F]`` per feature, milliseconds per request (fetch + serialisation of the feature for all the
            request's rows; 0 for a free feature).
        budget_ms: ``[K]`` each domain's latency budget.
    """

    model_ms: Tensor
    cost_ms: Tensor
    budget_ms: Tensor

    def predicted_ms(self, drop: Tensor) -> Tensor:
        """``[K]`` predicted time of each domain with ``drop`` (bool ``[K, F]``) left out."""
        return self.model_ms + (self.cost_ms * ~drop).sum(1)


@dataclasses.dataclass
class TrimPlan:
    """Per domain, the features to drop, chosen on one half of the validation rows and checked on the other.

    Attributes:
        features: the F feature names; ``domains``: the K domain names.
        importance: ``[F, K]`` permutation importance (AUC drop) on the choosing half.
        drop: bool ``[K, F]``, the features each domain drops.
        auc_before, auc_after: ``[K]`` AUC with all features and with the plan, on the choosing half.
        check_before, check_after: the same on the checking half (the plan's honest AUC change).
        limit: the largest AUC loss allowed per domain (``budget`` in AUC mode, ``max_auc_loss`` in latency mode).
        verdict: per domain, what became of its plan.
        latency: the latency model of a latency budget (None: AUC mode).
    """

    features: list[str]
    domains: list[str]
    importance: Tensor
    drop: Tensor
    auc_before: Tensor
    auc_after: Tensor
    check_before: Tensor
    check_after: Tensor
    limit: float
    verdict: list[Verdict]
    latency: LatencyModel | None = None

    def dropped(self, domain: str) -> list[str]:
        """The features ``domain`` drops."""
        row = self.drop[self.domains.index(domain)]
        return [name for name, gone in zip(self.features, row.tolist(), strict=True) if gone]


def plan_trimming(
    predict: Predict,
    fit: Batch,
    check: Batch,
    schema: Schema,
    importance: Tensor,
    limit: float,
    min_rows: int = 2000,
    latency: LatencyModel | None = None,
    per_cost: bool = False,
) -> TrimPlan:
    """Greedy per domain on the ``fit`` rows, from the least important feature up, each step checked with the
    features blanked; then the plan is checked on the ``check`` rows and cut back to its longest prefix whose AUC
    loss there is within ``limit``.

    AUC mode (``latency`` None): drop features while the domain's AUC loss stays within ``limit``.
    Latency mode: drop the least important features that cost something (``latency.cost_ms > 0``) until the
    domain's predicted time meets its budget; when the next drop would cost more than ``limit`` AUC, or nothing is
    left to drop, the budget is not reachable and the plan keeps what it dropped within the limit. With
    ``per_cost`` the order is the importance per millisecond the feature costs (the least AUC lost per millisecond
    saved first: an expensive feature of little importance goes before a cheap one of none).

    A domain with fewer than ``min_rows`` validation rows (both halves together) keeps every feature: on a few
    hundred rows the AUC changes of single features are noise.

    Args:
        predict: the model's click probability per row.
        fit, check: the two halves of the validation rows (:func:`split_halves`).
        importance: ``[F, K]`` on ``fit`` (:func:`permutation_importance`).
        limit: the AUC loss allowed per domain (>= 0).
    """
    if limit < 0:
        raise ValueError(f"the AUC loss allowed per domain must be >= 0, got {limit}")
    k, f = schema.num_domains, importance.shape[0]
    rows = torch.bincount(fit.domain, minlength=k) + torch.bincount(check.domain, minlength=k)
    if per_cost and latency is None:
        raise ValueError("per_cost orders the drops by what they save in a latency budget: give a latency model")
    free = torch.zeros(f, dtype=torch.bool) if latency is None else latency.cost_ms <= 0
    key = importance.T / torch.where(free, 1.0, latency.cost_ms) if per_cost else importance.T  # [K, F]
    # least important (per millisecond) first; in latency mode the free features last (never dropped)
    order = torch.argsort(torch.where(free, torch.inf, key.double()), dim=1, stable=True)  # [K, F]
    candidates = f - int(free.sum())
    base = domain_aucs(predict, fit, k)
    steps, fit_auc = _greedy(predict, fit, k, order, base, limit, candidates, latency, rows >= min_rows)
    # the honest check: each domain's prefix of its greedy sequence, on the rows that did not choose it
    check_base = domain_aucs(predict, check, k)
    within = torch.zeros(k, f + 1, dtype=torch.bool)  # [K, prefix length]: AUC loss on check within the limit
    within[:, 0] = True
    check_auc = check_base[:, None].repeat(1, f + 1)
    for n in range(1, int(steps.max()) + 1):  # K >= 1
        drop = _prefix(order, torch.minimum(steps, torch.tensor(n)))
        check_auc[:, n] = domain_aucs(lambda b, c=drop: predict(b.blanked(c)), check, k)
        within[:, n] = check_base - check_auc[:, n] <= limit
    lengths = torch.arange(f + 1)
    kept = torch.where(within & (lengths <= steps[:, None]), lengths, 0).max(1).values  # [K] longest passing prefix
    drop = _prefix(order, kept)
    domains = torch.arange(k)
    verdict = _verdicts(base, rows >= min_rows, kept, steps, drop, latency)
    return TrimPlan(
        feature_names(schema),
        list(schema.domains),
        importance,
        drop,
        base,
        fit_auc[domains, kept],
        check_base,
        check_auc[domains, kept],
        limit,
        verdict,
        latency,
    )


def _prefix(order: Tensor, lengths: Tensor) -> Tensor:
    """bool ``[K, F]``: each domain drops the first ``lengths[d]`` features of its ``order[d]``."""
    k, f = order.shape
    drop = torch.zeros(k, f, dtype=torch.bool)
    drop.scatter_(1, order, torch.arange(f).expand(k, f) < lengths[:, None])
    return drop


def _greedy(
    predict: Predict,
    data: Batch,
    k: int,
    order: Tensor,
    base: Tensor,
    limit: float,
    candidates: int,
    latency: LatencyModel | None,
    allowed: Tensor,
) -> tuple[Tensor, Tensor]:
    """``[K]`` how many features of its ``order`` each domain drops, and ``[K, F + 1]`` the AUC on ``data`` with the
    first n dropped (filled for n up to the domain's drops): every step evaluates every open domain's next candidate
    in one pass over ``data`` (rows read only their own domain's mask)."""
    steps = torch.zeros(k, dtype=torch.long)
    aucs = base[:, None].repeat(1, order.shape[1] + 1)
    open_ = allowed & ~torch.isnan(base)
    for _ in range(candidates):
        if latency is not None:
            open_ &= latency.predicted_ms(_prefix(order, steps)) > latency.budget_ms  # met: stop dropping
        if not open_.any():
            break
        candidate = _prefix(order, torch.where(open_, steps + 1, steps))
        auc = domain_aucs(lambda b, c=candidate: predict(b.blanked(c)), data, k)
        accept = open_ & (base - auc <= limit)
        steps += accept.long()
        aucs[accept, steps[accept]] = auc[accept]
        open_ &= accept
    return steps, aucs


def _verdicts(
    base: Tensor, enough: Tensor, kept: Tensor, steps: Tensor, drop: Tensor, latency: LatencyModel | None
) -> list[Verdict]:
    met = latency.predicted_ms(drop) <= latency.budget_ms if latency is not None else None
    out = []
    for d in range(base.shape[0]):
        if not enough[d]:
            out.append(Verdict.TOO_FEW_ROWS)
        elif torch.isnan(base[d]):
            out.append(Verdict.UNRANKABLE)
        elif met is None:
            out.append(Verdict.TRIMMED if kept[d] > 0 else Verdict.REFUSED if steps[d] > 0 else Verdict.NOTHING_TO_DROP)
        elif met[d]:
            out.append(Verdict.TRIMMED if kept[d] > 0 else Verdict.MEETS_UNTRIMMED)
        else:
            out.append(Verdict.NOT_REACHABLE)
    return out


def trim_table(plan: TrimPlan) -> str:
    """Markdown: per domain, features kept, the AUC change on the choosing and on the checking half, with a latency
    budget the predicted time (model + feature costs) against the budget, the verdict and the dropped features."""
    latency = plan.latency
    head = "| domain | features kept | AUC change, chosen on | AUC change, checked on |"
    if latency is not None:
        head += " model ms | features ms | total ms | budget ms |"
    lines = [head + " verdict | dropped |", "|---" * (head.count("|") + 1) + "|"]
    total = len(plan.features)
    predicted = latency.predicted_ms(plan.drop) if latency is not None else None
    for d, name in enumerate(plan.domains):
        gone = plan.dropped(name)
        chosen = float(plan.auc_after[d] - plan.auc_before[d])
        checked = float(plan.check_after[d] - plan.check_before[d])
        cells = [name, f"{total - len(gone)} / {total}", f"{chosen:+.4f}", f"{checked:+.4f}"]
        if latency is not None:
            model, budget = float(latency.model_ms[d]), float(latency.budget_ms[d])
            cells += [f"{model:.3f}", f"{float(predicted[d]) - model:.3f}", f"{float(predicted[d]):.3f}", f"{budget:g}"]
        cells += [plan.verdict[d].value, ", ".join(gone) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _read_pairs(path: str | Path, header: tuple[str, str], known: list[str]) -> dict[str, float]:
    """The rows of a two-column CSV file ``path`` (first line ``header``) as ``{name: value}``: every name one of
    ``known`` and listed once, every value a finite number >= 0; errors name the file and the line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # a byte-order mark (Excel's CSV) is read past
            lines = list(csv.reader(file))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error}); save it as UTF-8 CSV") from None
    if not lines or tuple(c.strip() for c in lines[0]) != header:
        raise ValueError(f"{path}: the first line must be the header {','.join(header)!r}, got {lines[:1]}")
    values: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if len(line) != 2:
            raise ValueError(f"{path}, line {number}: expected {','.join(header)!r}, got {line}")
        name, text = line[0].strip(), line[1].strip()
        if name not in known:
            raise ValueError(f"{path}, line {number}: unknown {header[0]} {name!r}; the model's: {known}")
        if name in values:
            raise ValueError(f"{path}, line {number}: {header[0]} {name!r} is listed twice")
        try:
            values[name] = float(text)
        except ValueError:
            raise ValueError(f"{path}, line {number}: {header[1]} of {name!r} is not a number: {text!r}") from None
        if not math.isfinite(values[name]) or values[name] < 0:
            raise ValueError(f"{path}, line {number}: {header[1]} of {name!r} must be a finite number >= 0, got {text}")
    return values


def read_feature_costs(path: str | Path, features: list[str]) -> Tensor:
    """``[F]`` milliseconds per request of each feature, from a CSV file with the header ``feature,microseconds``
    (fetch + serialisation per request); features the file does not name cost 0.

    Raises:
        ValueError: naming the file and line: another header, a feature the model does not have (listing those it
            has), a feature listed twice, a cost that is not a finite number >= 0.
    """
    costs = _read_pairs(path, ("feature", "microseconds"), features)
    return torch.tensor([costs.get(f, 0.0) / 1000.0 for f in features], dtype=torch.float64)


def read_budgets(value: str, domains: list[str]) -> Tensor:
    """``[K]`` latency budgets in milliseconds: ``value`` is one number for every domain, or a CSV file with the
    header ``domain,budget_ms`` naming every domain once.

    Raises:
        ValueError: a budget that is not a positive finite number; a file with another header, a domain missing,
            unknown or repeated (naming the file and line).
    """
    return read_domain_ms(value, domains, "--latency-budget-ms", "budget_ms")


def read_domain_ms(value: str, domains: list[str], option: str, column: str) -> Tensor:
    """``[K]`` milliseconds per domain given to ``option``: one number for every domain, or a CSV file with the header
    ``domain,<column>`` naming every domain once; each a positive finite number.

    Raises:
        ValueError: naming ``option`` or the file (and line): not a number nor a file, another header, a domain
            missing, unknown or repeated, a value that is not a positive finite number.
    """
    try:
        values, where = dict.fromkeys(domains, float(value)), option
    except ValueError:
        if not Path(value).is_file():
            raise ValueError(f"{option} {value!r} is neither a number of milliseconds nor a file") from None
        values, where = _read_pairs(value, ("domain", column), domains), value
        missing = [d for d in domains if d not in values]
        if missing:
            raise ValueError(f"{value} gives no {option} for domains {missing}: list every domain") from None
    bad = {d: b for d, b in values.items() if not (math.isfinite(b) and b > 0)}
    if bad:
        raise ValueError(f"{where}: every value must be positive milliseconds, got {bad}")
    return torch.tensor([values[d] for d in domains], dtype=torch.float64)
