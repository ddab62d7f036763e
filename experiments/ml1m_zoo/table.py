"""The zoo's cost table: per experiment (model), the runs, overall test AUC and logloss, parameters, epochs trained,
fit time and training throughput (training rows x epochs / fit wall time, validation included), mean over seeds;
with ``--baseline``, also the mean of the per-domain test AUCs and how many domains each model is ahead of the
baseline experiment on (mean over seeds per domain).

    python experiments/ml1m_zoo/table.py logs/ml1m_zoo/ages
    python experiments/ml1m_zoo/table.py logs/ml1m_zoo/occupation --baseline ml1m

A run launched with ``stage=`` (e.g. an adapt run of ``experiment=ml1m``) is a group of its own, named
``<experiment>, stage=<stage>``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from mdrec.eval.summary import Run, cell, group_runs, load_runs, mean_and_std, values_of

SPLITS = re.compile(r"splits \{'train': (\d+)")


def train_rows(run: Run) -> int:
    """The run's training rows, as its log records them."""
    found = SPLITS.search((run.path / "cli.log").read_text())
    if found is None:
        raise ValueError(f"{run.path / 'cli.log'} records no training split; was the run launched by mdrec.train?")
    return int(found.group(1))


def samples_per_second(run: Run) -> float:
    return train_rows(run) * run.metrics["train/epochs"] / run.metrics["time/fit_seconds"]


def domain_aucs(runs: list[Run]) -> dict[str, float]:
    """Per domain, the mean over ``runs`` of its test AUC (``test/auc/<domain>``)."""
    keys = sorted(k for k in runs[0].metrics if k.startswith("test/auc/"))
    return {k.split("/")[-1]: float(np.mean(values_of(runs, k))) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="directory of the runs (grouped by their experiment= override)")
    parser.add_argument("--baseline", help="an experiment: count the domains each model is ahead of it on")
    args = parser.parse_args()
    grouped = group_runs(load_runs(args.root), ["experiment", "stage"])
    groups = {", stage=".join(filter(None, key)): runs for key, runs in grouped.items()}
    extra = f" mean domain AUC | domains ahead of {args.baseline} |" if args.baseline else ""
    print(f"| experiment | runs | test AUC | test logloss | parameters | epochs | fit (s) | samples/s |{extra}")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.baseline else ""))
    base = domain_aucs(groups[args.baseline]) if args.baseline else {}
    for name, runs in groups.items():
        params = int(mean_and_std(values_of(runs, "params/total"))[0])
        epochs = mean_and_std(values_of(runs, "train/epochs"))[0]
        fit = mean_and_std(values_of(runs, "time/fit_seconds"))[0]
        speed = mean_and_std([samples_per_second(run) for run in runs])[0]
        row = (
            f"| {name} | {len(runs)} | {cell(runs, 'test/auc')} | {cell(runs, 'test/logloss')} | {params:,} | "
            f"{epochs:.1f} | {fit:.0f} | {speed:,.0f} |"
        )
        if base:
            own = domain_aucs(runs)
            ahead = sum(own[d] > base[d] for d in base)
            row += f" {np.mean(list(own.values())):.4f} | {ahead} of {len(base)} |"
        print(row)


if __name__ == "__main__":
    main()
