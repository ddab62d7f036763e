"""The negative-transfer gate (docs/methods.md, Negative-transfer gate): per target domain, is the warm-started
(adapted) model at least as good as training from scratch and as the pre-trained model used as is (zero-shot)?

All models are scored on the same test rows; a paired bootstrap over each domain's rows gives a confidence
interval of ``AUC_warm - max(AUC_scratch, AUC_zero_shot)`` (without a scratch model: ``AUC_warm -
AUC_zero_shot``). A domain is flagged when the whole interval lies below ``-delta``: the warm start is worse than an
alternative by more than ``delta``, beyond the noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of each of M score vectors under each of R row weightings (ties count one half).

    Args:
        scores: ``[M, n]``.
        labels: ``[n]`` of 0/1.
        weights: ``[R, n]`` non-negative row weights (bootstrap counts; ones for the plain AUC).

    Returns:
        ``[M, R]`` AUCs (NaN where a weighting leaves a single class).

    Example:
        >>> s = np.array([[0.1, 0.4, 0.35, 0.8]]); y = np.array([0, 0, 1, 1])
        >>> weighted_auc(s, y, np.ones((1, 4))).tolist()
        [[0.75]]
    """
    labels = labels.astype(bool)
    out = np.empty((scores.shape[0], weights.shape[0]))
    for m, s in enumerate(scores):  # M is a handful of models
        order = np.argsort(s, kind="stable")
        sorted_scores = s[order]
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # groups of tied scores
        w = weights[:, order]  # [R, n]
        pos = np.add.reduceat(w * labels[order], starts, axis=1)  # [R, G] positive weight per tie group
        neg = np.add.reduceat(w * ~labels[order], starts, axis=1)  # [R, G]
        below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
        with np.errstate(invalid="ignore", divide="ignore"):
            out[m] = (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))
    return out


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``[M, R]`` AUCs of M score vectors on R paired bootstrap resamples of their n rows (the same resamples for
    every model), see :func:`weighted_auc`."""
    rng = np.random.default_rng((seed, 1))
    chunks = [weighted_auc(scores, labels, w) for w in resample_weights(labels.shape[0], num_resamples, rng)]
    return np.concatenate(chunks, axis=1)


def resample_weights(n: int, num_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap row weights (multinomial counts of n rows) as float64 ``[r, n]`` chunks of at most 100 resamples,
    ``num_resamples`` rows in all: chunks bound the memory to 100 x n weights."""
    for start in range(0, num_resamples, 100):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(100, num_resamples - start)).astype(np.float64)


@dataclass(frozen=True)
class GateRow:
    """One domain's verdict: the three AUCs (scratch NaN without a scratch model), the difference to the best
    alternative and its interval."""

    domain: str
    rows: int
    auc_warm: float
    auc_scratch: float
    auc_zero_shot: float
    diff: float
    low: float
    high: float
    flagged: bool


def negative_transfer(
    warm: np.ndarray,
    scratch: np.ndarray | None,
    zero_shot: np.ndarray,
    labels: np.ndarray,
    domain: np.ndarray,
    domains: Sequence[str],
    delta: float = 0.0,
    confidence: float = 0.95,
    num_resamples: int = 1000,
    seed: int = 0,
) -> list[GateRow]:
    """The gate for every domain that has test rows.

    Args:
        warm, scratch, zero_shot: ``[n]`` predicted probabilities of the three models on the same test rows
            (``scratch`` None: warm against zero-shot alone).
        labels: ``[n]`` 0/1.
        domain: ``[n]`` domain ids; ``domains``: their names.
        delta: tolerated AUC loss.
        confidence: of the percentile interval.
        num_resamples: bootstrap resamples per domain.
        seed: seed of the resamples.
    """
    rows = []
    tail = (1 - confidence) / 2 * 100
    for d, name in enumerate(domains):
        mask = domain == d
        if not mask.any():
            continue
        others = [zero_shot] if scratch is None else [scratch, zero_shot]
        scores, y = np.stack([warm[mask], *(o[mask] for o in others)]), labels[mask]
        aucs = weighted_auc(scores, y, np.ones((1, y.shape[0])))[:, 0]
        boot = bootstrap_auc(scores, y, num_resamples, seed + d)
        low, high = np.nanpercentile(boot[0] - boot[1:].max(0), [tail, 100 - tail])
        diff = aucs[0] - aucs[1:].max()
        auc_scratch = float(aucs[1]) if scratch is not None else float("nan")
        flagged = bool(high < -delta)
        row = (float(aucs[0]), auc_scratch, float(aucs[-1]), float(diff), float(low), float(high))
        rows.append(GateRow(name, int(mask.sum()), *row, flagged))
    return rows


def gate_table(rows: Sequence[GateRow], confidence: float = 0.95) -> str:
    """The gate's verdicts as a markdown table."""
    lines = [
        "| domain | test rows | AUC warm | AUC scratch | AUC zero-shot | warm - best other "
        f"| {confidence:.0%} interval | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "**negative transfer**" if r.flagged else "ok"
        scratch = "-" if math.isnan(r.auc_scratch) else f"{r.auc_scratch:.4f}"  # "-": no scratch model
        lines.append(
            f"| {r.domain} | {r.rows} | {r.auc_warm:.4f} | {scratch} | {r.auc_zero_shot:.4f} "
            f"| {r.diff:+.4f} | [{r.low:+.4f}, {r.high:+.4f}] | {verdict} |"
        )
    return "\n".join(lines)
