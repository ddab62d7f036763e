"""Human-readable tables of flat metric dictionaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mdrec.console import table


def domain_table(
    metrics: Mapping[str, float], domains: Sequence[str], stage: str = "test", baseline: str = "baseline"
) -> str:
    """A per-domain table of ``<stage>`` AUC, logloss and rows (aligned whatever the domain names' lengths); beside
    it, when present, the pre-trained model's AUC before adapting (``zeroshot/<stage>/auc...``), the end-to-end
    baseline's (``baseline/<stage>/auc...``, titled ``<baseline> AUC``, with this run's AUC minus it) and the oracle
    AUC (``oracle/auc...``, synthetic data).

    Example:
        >>> print(domain_table({"test/auc/a": 0.7, "test/logloss/a": 0.5, "test/rows/a": 10, "test/auc": 0.7,
        ...                     "test/logloss": 0.5}, ["a"]))
        domain    rows   test AUC   logloss
        ───────────────────────────────────
        a           10     0.7000    0.5000
        ───────────────────────────────────
        overall     10     0.7000    0.5000
    """
    has_oracle = f"oracle/auc/{domains[0]}" in metrics
    has_zeroshot = f"zeroshot/{stage}/auc/{domains[0]}" in metrics
    has_baseline = f"baseline/{stage}/auc/{domains[0]}" in metrics
    columns = ["domain", "rows", f"{stage} AUC", "logloss"]
    columns += ["zero-shot AUC", "gain"] if has_zeroshot else []
    columns += [f"{baseline} AUC", "ahead"] if has_baseline else []
    columns += ["oracle AUC", "gap"] if has_oracle else []
    total_rows = sum(int(metrics[f"{stage}/rows/{name}"]) for name in domains)
    lines = []
    for name in [*domains, None]:
        suffix = f"/{name}" if name is not None else ""
        rows = int(metrics[f"{stage}/rows/{name}"]) if name is not None else total_rows
        auc = metrics[f"{stage}/auc{suffix}"]
        line = [name or "overall", str(rows), f"{auc:.4f}", f"{metrics[f'{stage}/logloss{suffix}']:.4f}"]
        if has_zeroshot:
            zeroshot = metrics[f"zeroshot/{stage}/auc{suffix}"]
            line += [f"{zeroshot:.4f}", f"{auc - zeroshot:.4f}"]
        if has_baseline:
            baseline = metrics[f"baseline/{stage}/auc{suffix}"]
            line += [f"{baseline:.4f}", f"{auc - baseline:+.4f}"]
        if has_oracle:
            oracle = metrics[f"oracle/auc{suffix}"]
            line += [f"{oracle:.4f}", f"{oracle - auc:.4f}"]
        lines.append(line)
    return table(columns, lines[:-1], footer=lines[-1])


def domain_rows(
    metrics: Mapping[str, float], domains: Sequence[str], stage: str = "test"
) -> tuple[list[str], list[list]]:
    """Every per-domain ``<stage>`` metric as a table: columns ``domain`` and the metric names, a row per domain
    and one for ``overall`` (a metric counts when ``<stage>/<name>/<first domain>`` is present).

    Example:
        >>> domain_rows({"test/auc": 0.7, "test/auc/a": 0.6, "test/auc/b": 0.8, "val/auc/a": 0.5}, ["a", "b"])
        (['domain', 'auc'], [['a', 0.6], ['b', 0.8], ['overall', 0.7]])
    """
    suffix = f"/{domains[0]}"
    names = [k[len(stage) + 1 : -len(suffix)] for k in metrics if k.startswith(f"{stage}/") and k.endswith(suffix)]
    rows = [[d, *(metrics.get(f"{stage}/{n}/{d}") for n in names)] for d in domains]
    rows.append(["overall", *(metrics.get(f"{stage}/{n}") for n in names)])
    return ["domain", *names], rows
