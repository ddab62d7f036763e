"""The selection-guard table: per recipe (a sweep directory over seeds), test AUC overall and per domain, mean ±
sample std over seeds, the paired difference to the zero-shot model (the same runs before adapting) with its
paired t-test p-value, and how many seeds kept step 0 per domain.

    python experiments/selection_guard/table.py <sweep dir> <name> [<sweep dir> <name> ...]
"""

from __future__ import annotations

import sys

import numpy as np
from scipy import stats

from mdrec.eval.summary import load_runs


def main(args: list[str]) -> None:
    recipes = [(args[i + 1], load_runs(args[i])) for i in range(0, len(args), 2)]
    domains = sorted({k.split("/")[-1] for k in recipes[0][1][0].metrics if k.startswith("test/auc/")})
    keys = ["test/auc", *(f"test/auc/{d}" for d in domains)]
    print("| recipe | overall | " + " | ".join(domains) + " | seeds keeping step 0 |")
    print("|---|" + "---|" * (len(domains) + 2))
    first = [r.metrics for r in recipes[0][1]]
    zero = [np.array([m["zeroshot/" + k] for m in first]) for k in keys]
    print("| zero-shot | " + " | ".join(f"{z.mean():.4f} ± {z.std(ddof=1):.4f}" for z in zero) + " | |")
    for name, runs in recipes:
        ms = sorted((r.metrics for r in runs), key=lambda m: m["seed"])
        cells = []
        for key in keys:
            v, b = np.array([m[key] for m in ms]), np.array([m["zeroshot/" + key] for m in ms])
            p = stats.ttest_rel(v, b).pvalue if np.any(v != b) else 1.0
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1):.4f} ({(v - b).mean():+.4f}, p {p:.2f})")
        kept = [sum(m[f"selection/epoch/{d}"] == -1 for m in ms) for d in domains]
        kept_cell = ", ".join(f"{d} {k}/{len(ms)}" for d, k in zip(domains, kept, strict=True))
        print(f"| {name} | " + " | ".join(cells) + f" | {kept_cell} |")


if __name__ == "__main__":
    main(sys.argv[1:])
