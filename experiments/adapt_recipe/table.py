"""The adaptation-recipe table: per recipe (sweep directories over seeds), test AUC overall and per domain (mean ±
sample std over seeds), the paired difference to a reference recipe and to the end-to-end target, seed by seed (mean,
paired t-test p-value, seeds ahead), the trainable parameters (per domain and shared) and the fit time.

    python experiments/adapt_recipe/table.py --reference LoRA --target PLE <name>=<dir>[,<dir>...] ...
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from mdrec.eval.summary import load_runs


def by_seed(dirs: str) -> dict[int, dict[str, float]]:
    """The metrics of the finished runs below the comma-separated ``dirs``, by seed."""
    out: dict[int, dict[str, float]] = {}
    for d in dirs.split(","):
        for run in load_runs(d):
            out[int(run.metrics["seed"])] = run.metrics
    return out


def paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], key: str) -> str:
    """``mean diff (p, ahead/n)`` of ``a - b`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s][key] - b[s][key] for s in seeds])
    if len(seeds) < 2 or not diff.any():
        return f"{diff.mean():+.4f}" if len(seeds) else ""
    p = stats.ttest_rel([a[s][key] for s in seeds], [b[s][key] for s in seeds]).pvalue
    return f"{diff.mean():+.4f} (p {p:.3f}, {int((diff > 0).sum())}/{len(seeds)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipes", nargs="+", help="name=dir[,dir...]")
    parser.add_argument("--reference", required=True, help="the recipe the levers are compared with")
    parser.add_argument("--target", required=True, help="the end-to-end model to reach")
    args = parser.parse_args()
    recipes = {name: by_seed(dirs) for name, dirs in (r.split("=", 1) for r in args.recipes)}
    first = next(iter(next(iter(recipes.values())).values()))
    domains = sorted(k.split("/")[-1] for k in first if k.startswith("test/auc/"))
    keys = ["test/auc", *(f"test/auc/{d}" for d in domains)]
    head = "| recipe | seeds | overall | " + " | ".join(domains)
    print(head + " | trainable per domain | shared trainable | fit s |")
    print("|---|---|" + "---|" * (len(keys) + 3))
    for name, runs in recipes.items():
        ms = [runs[s] for s in sorted(runs)]
        cells = [f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for v in ([m[k] for m in ms] for k in keys)]
        per_domain = np.mean([m["params/added_per_domain"] for m in ms])
        shared = np.mean([m["params/trainable"] - m["params/added_per_domain"] * len(domains) for m in ms])
        fit = np.mean([m["time/fit_seconds"] for m in ms])
        print(f"| {name} | {len(ms)} | " + " | ".join(cells) + f" | {per_domain:,.0f} | {shared:,.0f} | {fit:.0f} |")
    for other in (args.reference, args.target):
        print(f"\nPaired by seed, recipe minus {other}: mean difference (p-value, seeds ahead / seeds)\n")
        print("| recipe | overall | " + " | ".join(domains) + " |")
        print("|---|" + "---|" * len(keys))
        for name, runs in recipes.items():
            if name != other:
                print(f"| {name} | " + " | ".join(paired(runs, recipes[other], k) for k in keys) + " |")


if __name__ == "__main__":
    main()
