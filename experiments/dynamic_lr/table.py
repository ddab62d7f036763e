"""The learning-rate ablation table: per domain, test AUC with a constant and with the dynamic batch-aware learning
rate (mean ± std over seeds), the paired difference per seed, on how many seeds dynamic wins, and the mean step
factor the dynamic runs applied to each domain (``lr_scale/<domain>``, averaged over their epochs).

    python experiments/dynamic_lr/table.py logs/dynamic_lr/multiruns/study
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from mdrec.eval.summary import Run, group_runs, load_runs, mean_std


def mean_scale(run: Run, domain: str) -> float:
    """The run's ``lr_scale/<domain>`` averaged over its training epochs (from its CSV log)."""
    rows = csv.DictReader((run.path / "csv" / "version_0" / "metrics.csv").open())
    values = [float(r[f"lr_scale/{domain}"]) for r in rows if r.get(f"lr_scale/{domain}")]
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep directory with callbacks=default,dynamic_lr runs over seeds")
    parser.add_argument("--metric", default="test/auc")
    args = parser.parse_args()
    groups = group_runs(load_runs(args.sweep), ["callbacks", "seed"])
    seeds = sorted({s for c, s in groups if c == "dynamic_lr" and ("default", s) in groups}, key=int)
    constant = [groups[("default", s)][0] for s in seeds]
    dynamic = [groups[("dynamic_lr", s)][0] for s in seeds]
    domains = [k.split("/", 2)[2] for k in constant[0].metrics if k.startswith(f"{args.metric}/")]
    print(f"{len(seeds)} seeds: {', '.join(seeds)}\n")
    print(
        "| domain | share of rows | constant | dynamic | dynamic - constant (paired) | dynamic wins "
        "| mean step factor |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = {d: constant[0].metrics.get(f"test/rows/{d}", float("nan")) for d in domains}
    total = sum(rows.values())
    for d in ["", *domains]:
        key = f"{args.metric}/{d}" if d else args.metric
        c = np.array([r.metrics[key] for r in constant])
        y = np.array([r.metrics[key] for r in dynamic])
        scale = "" if not d else f"{np.mean([mean_scale(r, d) for r in dynamic]):.2f}"
        share = "" if not d else f"{rows[d] / total:.0%}"
        print(
            f"| {d or 'overall'} | {share} | {mean_std(c)} | {mean_std(y)} | {mean_std(y - c)} | "
            f"{int((y > c).sum())} of {len(seeds)} | {scale} |"
        )


if __name__ == "__main__":
    main()
