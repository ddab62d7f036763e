"""Drift of a served model's data and quality (docs/methods.md, Drift re-evaluation): the figures, without data
loading or models (``mdrec.train.drift`` runs the check).

- Feature drift: the population stability index of each field between the training rows (the reference, stored in
  the run directory when the model was adapted) and fresh rows, per domain,

      PSI = sum_b (q_b - p_b) ln(q_b / p_b)      p_b, q_b: the reference's and the fresh rows' shares of bin b,

  a share below ``PSI_FLOOR`` counted as ``PSI_FLOOR`` (an empty bin). A sparse field's bins are the reference's
  ``TOP_IDS`` most frequent ids (as the model sees them) and one bin "other" for every other id; a dense field's
  are the reference's ``DENSE_BINS`` quantile bins (edges at its inner quantiles, repeated edges merged).
  Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 moved. Finite samples alone give about
  ``(bins - 1) (1 / n_reference + 1 / n_fresh)`` (``psi_noise``).
- Quality: AUC and log loss of the first label on fresh test rows against the run's own test rows. The two sets of
  rows differ, so the bootstrap is unpaired: each side is resampled on its own (``resamples`` multinomial draws of
  its rows) and the i-th draws are subtracted; the percentile interval of ``fresh - run`` is reported.
- Calibration: the ratio of the mean predicted to the observed click rate (1: calibrated) on the fresh rows, its
  change from the run's test rows (unpaired bootstrap, as above: a model miscalibrated from the start is not drift),
  and the fresh rows in ``bins`` equal-mass bins of the predicted probability (a reliability diagram).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mdrec.eval.gate import resample_weights, weighted_auc

TOP_IDS = 20  # a sparse field's bins: its reference's most frequent ids, and "other"
DENSE_BINS = 10  # a dense field's bins: quantiles of its reference
PSI_FLOOR = 1e-4  # an empty bin's share in the PSI
LOG_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] in the log loss (as mdrec.eval.metrics)


@dataclass(frozen=True)
class SparseHistogram:
    """A sparse field's reference histogram: ``ids [N]``, the N most frequent ids (most frequent first, ties by id),
    and ``counts [N + 1]``: their rows, then the rows of every other id."""

    ids: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, top: int = TOP_IDS) -> SparseHistogram:
        """The histogram of the ids ``[n]`` of the reference rows.

        Example:
            >>> h = SparseHistogram.of(np.array([3, 3, 3, 1, 1, 7, 9]), top=2)
            >>> h.ids.tolist(), h.counts.tolist()
            ([3, 1], [3, 2, 2])
        """
        values, counts = np.unique(ids, return_counts=True)
        order = np.lexsort((values, -counts))[:top]  # most rows first, then the smaller id
        return cls(values[order].astype(np.int64), np.append(counts[order], len(ids) - counts[order].sum()))

    def count(self, ids: np.ndarray) -> np.ndarray:
        """``[N + 1]``: the rows of ``ids [n]`` in this histogram's bins."""
        order = np.argsort(self.ids)
        sorted_ids = self.ids[order]
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        hit = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.bincount(np.where(hit, order[at], len(self.ids)), minlength=len(self.ids) + 1)


@dataclass(frozen=True)
class DenseHistogram:
    """A dense field's reference histogram: ``edges [E]`` (increasing) cut the line into ``E + 1`` bins
    ``(-inf, e_1), [e_1, e_2), ..., [e_E, inf)``; ``counts [E + 1]`` the reference's rows in them."""

    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, bins: int = DENSE_BINS) -> DenseHistogram:
        """The quantile histogram of the reference's ``values [n]``.

        Example:
            >>> h = DenseHistogram.of(np.arange(10.0), bins=2)
            >>> h.edges.tolist(), h.counts.tolist()
            ([4.5], [5, 5])
        """
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])).astype(np.float64)
        return cls(edges, bin_counts(edges, values))

    def count(self, values: np.ndarray) -> np.ndarray:
        """``[E + 1]``: the rows of ``values [n]`` in this histogram's bins."""
        return bin_counts(self.edges, values)


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[E + 1]``: the rows of ``values`` in the bins ``edges [E]`` cut (a value equal to an edge: the bin above)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


Histogram = SparseHistogram | DenseHistogram
KINDS = {SparseHistogram: "sparse", DenseHistogram: "dense"}  # how drift_reference.npz names them


def psi(reference: np.ndarray, fresh: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """The population stability index of the bin counts ``fresh [B]`` against ``reference [B]`` (module docstring);
    NaN when either side has no rows.

    Example:
        >>> round(psi(np.array([50, 50]), np.array([80, 20])), 4)  # 0.3 ln 1.6 + 0.3 ln 2.5
        0.4159
    """
    if reference.sum() == 0 or fresh.sum() == 0:
        return math.nan
    p = np.maximum(reference / reference.sum(), floor)
    q = np.maximum(fresh / fresh.sum(), floor)
    return float(((q - p) * np.log(q / p)).sum())


def psi_noise(bins: int, reference_rows: int, fresh_rows: int) -> float:
    """About the PSI that two samples of one distribution show: ``(bins - 1) (1 / n_ref + 1 / n_fresh)``."""
    return (bins - 1) * (1 / max(reference_rows, 1) + 1 / max(fresh_rows, 1))


@dataclass(frozen=True)
class DomainReference:
    """What a drift check compares a domain's fresh rows with, stored when the model was adapted.

    Args:
        rows: the domain's training rows.
        histograms: per field (sparse and dense), its histogram over those rows.
        test_prob, test_label: ``[n]`` the first label's predicted probability and label on the run's test rows of
            the domain (None: the run was not tested, or held no test row of it).
    """

    rows: int
    histograms: dict[str, Histogram]
    test_prob: np.ndarray | None = None
    test_label: np.ndarray | None = None


def reference_arrays(reference: Mapping[str, DomainReference]) -> dict[str, np.ndarray]:
    """``reference`` (domain name -> its reference) as the plain arrays of ``drift_reference.npz``: ``domains``,
    ``fields`` and ``kinds`` (``sparse`` / ``dense``) name them; ``<i>/rows``, ``<i>/<j>/keys`` (ids or edges),
    ``<i>/<j>/counts``, ``<i>/test_prob``, ``<i>/test_label`` hold domain i's entries for field j."""
    histograms = next(iter(reference.values())).histograms if reference else {}
    fields = list(histograms)
    out: dict[str, np.ndarray] = {
        "domains": np.asarray(list(reference), dtype=str),
        "fields": np.asarray(fields, dtype=str),
        "kinds": np.asarray([KINDS[type(h)] for h in histograms.values()], dtype=str),
    }
    for i, ref in enumerate(reference.values()):
        out[f"{i}/rows"] = np.asarray(ref.rows, dtype=np.int64)
        for j, f in enumerate(fields):
            h = ref.histograms[f]
            out[f"{i}/{j}/keys"] = h.ids if isinstance(h, SparseHistogram) else h.edges
            out[f"{i}/{j}/counts"] = h.counts.astype(np.int64)
        if ref.test_prob is not None:
            out[f"{i}/test_prob"] = ref.test_prob.astype(np.float32)
            out[f"{i}/test_label"] = ref.test_label.astype(np.float32)
    return out


def reference_of(arrays: Mapping[str, np.ndarray], source: Path) -> dict[str, DomainReference]:
    """The reference ``reference_arrays`` wrote, read back from ``arrays`` (of the file ``source``; untrusted: every
    entry's presence, type and shape is checked).

    Raises:
        ValueError: naming the file and the entry that is malformed.
    """

    def bad(what: str) -> ValueError:
        remedy = "the file was edited or not written by mdrec: re-run the job that wrote it"
        return ValueError(f"{source}: {what}; {remedy}")

    def get(key: str, kind: str) -> np.ndarray:
        if key not in arrays:
            raise bad(f"entry {key!r} is missing")
        value = arrays[key]
        if value.dtype.kind not in kind:
            raise bad(f"entry {key!r} has dtype {value.dtype}, not {kind}")
        return value

    domains, fields, kinds = (get(k, "U").tolist() for k in ("domains", "fields", "kinds"))
    if len(kinds) != len(fields) or set(kinds) - set(KINDS.values()):
        raise bad(f"kinds {kinds} are not one of sparse/dense per field {fields}")
    out: dict[str, DomainReference] = {}
    for i, d in enumerate(domains):
        histograms: dict[str, Histogram] = {}
        for j, (f, kind) in enumerate(zip(fields, kinds, strict=True)):
            keys = get(f"{i}/{j}/keys", "i" if kind == "sparse" else "f")
            counts = get(f"{i}/{j}/counts", "i")
            if keys.ndim != 1 or counts.shape != (len(keys) + 1,) or (counts < 0).any():
                raise bad(f"the histogram of field {f!r} of domain {d!r} is not keys [n] with counts [n + 1] >= 0")
            histograms[f] = SparseHistogram(keys, counts) if kind == "sparse" else DenseHistogram(keys, counts)
        prob = label = None
        if f"{i}/test_prob" in arrays:
            prob, label = get(f"{i}/test_prob", "f"), get(f"{i}/test_label", "f")
            if prob.ndim != 1 or prob.shape != label.shape:
                raise bad(f"the test predictions of domain {d!r} are not prob [n] and label [n]")
        out[d] = DomainReference(int(get(f"{i}/rows", "i")), histograms, prob, label)
    return out


# ---- quality and calibration -------------------------------------------------------------------------------------


def logloss(prob: np.ndarray, label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[R]``: the mean log loss of ``prob [n]`` against ``label [n]`` under each row weighting ``weights [R, n]``."""
    p = np.clip(prob.astype(np.float64), LOG_EPS, 1 - LOG_EPS)
    loss = -(label * np.log(p) + (1 - label) * np.log1p(-p))
    return weights @ loss / weights.sum(1)


def bootstrap_figures(
    prob: np.ndarray, label: np.ndarray, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(auc [R], logloss [R], calibration [R])`` on R bootstrap resamples of the rows (``calibration``: the mean
    predicted over the observed rate, inf where a resample holds no positive)."""
    rng = np.random.default_rng((seed, 3))
    aucs, losses, ratios = [], [], []
    for w in resample_weights(len(label), resamples, rng):
        aucs.append(weighted_auc(prob[None, :], label, w)[0])
        losses.append(logloss(prob, label, w))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append((w @ prob) / (w @ label))
    return np.concatenate(aucs), np.concatenate(losses), np.concatenate(ratios)


def point_figures(prob: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """``(AUC, log loss)`` of ``prob [n]`` against ``label [n]``."""
    ones = np.ones((1, len(label)))
    return float(weighted_auc(prob[None], label, ones)[0, 0]), float(logloss(prob, label, ones)[0])


def calibration_ratio(prob: np.ndarray, label: np.ndarray) -> float:
    """The mean predicted over the observed rate (1: calibrated; inf without a positive)."""
    positives = float(label.sum())
    return float(prob.sum()) / positives if positives > 0 else math.inf


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of a reliability diagram: its rows, their mean predicted probability and observed rate."""

    rows: int
    predicted: float
    observed: float


def calibration_bins(prob: np.ndarray, label: np.ndarray, bins: int) -> list[CalibrationBin]:
    """``bins`` equal-mass bins of the rows sorted by ``prob`` (sizes differ by at most one; fewer rows than bins:
    a bin per row).

    Example:
        >>> [(b.rows, b.predicted, b.observed) for b in calibration_bins(np.array([.4, .1, .3, .2]),
        ...                                                              np.array([1, 0, 0, 1]), 2)]
        [(2, 0.15, 0.5), (2, 0.35, 0.5)]
    """
    order = np.argsort(prob, kind="stable")
    parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)] if len(order) else []
    return [CalibrationBin(len(p), round(float(prob[p].mean()), 12), float(label[p].mean())) for p in parts]


def interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of ``values`` (NaNs left out)."""
    tail = (1 - confidence) / 2 * 100
    finite = values[~np.isnan(values)]
    if not len(finite):
        return math.nan, math.nan
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Thresholds:
    """When a domain is flagged.

    Args:
        delta: quality: the whole interval of ``AUC_fresh - AUC_run`` lies below ``-delta``.
        calibration: calibration: the whole interval of the change of mean predicted / observed (fresh - run) lies
            outside ``+-calibration``.
        psi: inputs: a field's PSI exceeds it.
        confidence: of the percentile intervals.
    """

    delta: float = 0.01
    calibration: float = 0.1
    psi: float = 0.2
    confidence: float = 0.95


@dataclass(frozen=True)
class Change:
    """A figure on the run's test rows and on the fresh ones, their difference and its interval."""

    run: float
    fresh: float
    low: float
    high: float

    @property
    def diff(self) -> float:
        return self.fresh - self.run


@dataclass
class DomainDrift:
    """One domain's drift check: what was compared, the figures and why it is flagged (``reasons``, empty: not).

    ``auc``, ``logloss``, ``calibration`` (mean predicted / observed): the run's test rows against the fresh ones
    (None: not compared); ``ratio``: the fresh rows' mean predicted / observed with its interval."""

    domain: str
    fresh_rows: int
    test_rows: int
    reference_rows: int
    psi: dict[str, float] = field(default_factory=dict)
    psi_noise: float = math.nan
    auc: Change | None = None
    logloss: Change | None = None
    calibration: Change | None = None
    ratio: float = math.nan
    ratio_low: float = math.nan
    ratio_high: float = math.nan
    bins: list[CalibrationBin] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)


def check_domain(
    name: str,
    reference: DomainReference,
    fresh: Mapping[str, np.ndarray],
    test_prob: np.ndarray,
    test_label: np.ndarray,
    thresholds: Thresholds,
    bins: int,
    resamples: int,
    seed: int,
) -> DomainDrift:
    """The drift check of one domain.

    Args:
        name: the domain.
        reference: its reference (training histograms, the run's test predictions).
        fresh: per field of ``reference.histograms``, the fresh rows' values ``[m]`` (ids as the model sees them).
        test_prob, test_label: ``[t]`` the model's first-label probability and the label on the fresh test rows.
        thresholds: when it is flagged.
        bins: calibration bins.
        resamples, seed: of the bootstraps.
    """
    m = len(next(iter(fresh.values()))) if fresh else 0
    out = DomainDrift(name, m, len(test_label), reference.rows)
    out.psi = {f: psi(h.counts, h.count(fresh[f])) for f, h in reference.histograms.items()}
    widest = max((len(h.counts) for h in reference.histograms.values()), default=1)
    out.psi_noise = psi_noise(widest, reference.rows, m)
    moved = {f: v for f, v in out.psi.items() if v > thresholds.psi}
    if moved:
        listed = ", ".join(f"{f} {v:.3f}" for f, v in sorted(moved.items(), key=lambda kv: -kv[1]))
        out.reasons.append(f"inputs: PSI > {thresholds.psi} ({listed})")
    if not len(test_label):
        out.note = "no fresh test rows: quality and calibration not checked"
        return out
    aucs, losses, ratios = bootstrap_figures(test_prob, test_label, resamples, seed)
    out.ratio = calibration_ratio(test_prob, test_label)
    out.ratio_low, out.ratio_high = interval(ratios, thresholds.confidence)
    out.bins = calibration_bins(test_prob, test_label, bins)
    if reference.test_prob is None or not len(reference.test_label):
        out.note = "the run has no test rows of this domain: nothing compared but the inputs"
        return out
    run_prob, run_label = reference.test_prob.astype(np.float64), reference.test_label.astype(np.float64)
    run_aucs, run_losses, run_ratios = bootstrap_figures(run_prob, run_label, resamples, seed + 1)
    run_auc, run_loss = point_figures(run_prob, run_label)
    fresh_auc, fresh_loss = point_figures(test_prob, test_label)
    level = thresholds.confidence
    out.auc = Change(run_auc, fresh_auc, *interval(aucs - run_aucs, level))
    out.logloss = Change(run_loss, fresh_loss, *interval(losses - run_losses, level))
    out.calibration = Change(calibration_ratio(run_prob, run_label), out.ratio, *interval(ratios - run_ratios, level))
    if out.auc.high < -thresholds.delta:
        out.reasons.append(
            f"quality: AUC {out.auc.diff:+.4f} [{out.auc.low:+.4f}, {out.auc.high:+.4f}] below -{thresholds.delta}"
        )
    tol, c = thresholds.calibration, out.calibration
    if c.low > tol or c.high < -tol:
        out.reasons.append(
            f"calibration: predicted / observed {c.run:.3f} -> {c.fresh:.3f}, {c.diff:+.3f} [{c.low:+.3f}, "
            f"{c.high:+.3f}] beyond ±{tol}"
        )
    return out


# ---- the report --------------------------------------------------------------------------------------------------


def drift_json(checks: Sequence[DomainDrift], skipped: Mapping[str, str], thresholds: Thresholds) -> dict:
    """The check as plain JSON values: thresholds, flagged domains, skipped domains (with why), per domain figures."""

    def change(c: Change | None) -> dict | None:
        return None if c is None else {"run": c.run, "fresh": c.fresh, "diff": c.diff, "low": c.low, "high": c.high}

    return {
        "thresholds": vars(thresholds),
        "flagged": [c.domain for c in checks if c.flagged],
        "skipped": dict(skipped),
        "domains": {
            c.domain: {
                "flagged": c.flagged,
                "reasons": c.reasons,
                "note": c.note,
                "rows": {"fresh": c.fresh_rows, "fresh_test": c.test_rows, "reference": c.reference_rows},
                "auc": change(c.auc),
                "logloss": change(c.logloss),
                "calibration": change(c.calibration),
                "predicted_over_observed": {"fresh": c.ratio, "low": c.ratio_low, "high": c.ratio_high},
                "calibration_bins": [vars(b) for b in c.bins],
                "psi": c.psi,
                "psi_noise": c.psi_noise,
            }
            for c in checks
        },
    }


def drift_markdown(
    checks: Sequence[DomainDrift], skipped: Mapping[str, str], thresholds: Thresholds, title: str
) -> str:
    """The check as markdown: a table of the quality, calibration and largest PSI per domain, the verdicts, the
    skipped domains and every field's PSI."""
    conf = f"{thresholds.confidence:.0%}"
    lines = [
        f"# {title}",
        "",
        f"Flagged when the {conf} interval of AUC fresh - run lies below -{thresholds.delta}, the {conf} interval of "
        f"its change of mean predicted / observed CTR lies beyond ±{thresholds.calibration}, or a field's PSI exceeds "
        f"{thresholds.psi} (unpaired bootstrap; PSI against the training rows, docs/methods.md).",
        "",
        f"| domain | fresh rows | test rows | AUC run | AUC fresh | diff [{conf}] | logloss diff [{conf}] "
        f"| pred / obs CTR run -> fresh [{conf}] | largest PSI | PSI noise | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        auc = (
            ("-", "-", "-")
            if c.auc is None
            else (f"{c.auc.run:.4f}", f"{c.auc.fresh:.4f}", f"{c.auc.diff:+.4f} [{c.auc.low:+.4f}, {c.auc.high:+.4f}]")
        )
        loss = "-" if c.logloss is None else f"{c.logloss.diff:+.4f} [{c.logloss.low:+.4f}, {c.logloss.high:+.4f}]"
        cal = "-" if math.isnan(c.ratio) else f"{c.ratio:.3f} [{c.ratio_low:.3f}, {c.ratio_high:.3f}]"
        if c.calibration is not None:
            cal = f"{c.calibration.run:.3f} -> {cal}"
        top = max(c.psi.items(), key=lambda kv: -math.inf if math.isnan(kv[1]) else kv[1], default=("-", math.nan))
        verdict = "**" + "; ".join(c.reasons) + "**" if c.reasons else "ok"
        lines.append(
            f"| {c.domain} | {c.fresh_rows} | {c.test_rows} | {' | '.join(auc)} | {loss} | {cal} "
            f"| {top[0]} {top[1]:.3f} | {c.psi_noise:.3f} | {verdict}{' (' + c.note + ')' if c.note else ''} |"
        )
    flagged = [c.domain for c in checks if c.flagged]
    lines += ["", f"Flagged: {', '.join(flagged) if flagged else 'none'}"]
    if skipped:
        lines += ["", "Skipped:", *(f"- {d}: {why}" for d, why in skipped.items())]
    if checks:
        fields = list(checks[0].psi)
        lines += ["", "PSI per field:", "", f"| domain | {' | '.join(fields)} |", "|---|" + "---|" * len(fields)]
        lines += [f"| {c.domain} | {' | '.join(f'{c.psi[f]:.3f}' for f in fields)} |" for c in checks]
    return "\n".join(lines) + "\n"
