"""The initialisation study's table and plot (experiments/onboard_init/README.md): per share of d4's training rows
and stage.init, d4's test AUC after onboarding and at step 0 (the start itself), mean ± sample std over seeds, the
paired difference to identity with its paired t-test p-value, and which source domain the warm starts lean on.

    python experiments/onboard_init/table.py <root>     (<root>/onboard_<seed>_<fraction>_<init>/metrics.json)
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from mdrec.eval.plots import save  # noqa: E402

INITS = ("identity", "nearest", "weighted")
NEW, CANDIDATES = "d4", ("d0", "d1", "d2", "d3", "identity")  # the warm starts' candidates


def cell(v: np.ndarray) -> str:
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def main(root: Path) -> None:
    runs: dict[tuple[float, str], dict[int, dict]] = defaultdict(dict)
    for path in root.glob("onboard_*_*_*/metrics.json"):
        seed, fraction, init = re.fullmatch(r"onboard_(\d+)_([\d.]+)_(\w+)", path.parent.name).groups()
        runs[(float(fraction), init)][int(seed)] = json.loads(path.read_text())
    fractions = sorted({f for f, _ in runs})
    print(
        f"| share of {NEW}'s training rows | init | seeds | test AUC | - identity (p) | step 0 AUC "
        "| nearest's pick (seeds) | weights d0 / d1 / d2 / d3 / identity |"
    )
    print("|---|---|---|---|---|---|---|---|")
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for f in fractions:
        base = runs[(f, "identity")]
        for init in INITS:
            by_seed = runs[(f, init)]
            seeds = sorted(set(by_seed) & set(base))
            auc = np.array([by_seed[s][f"test/auc/{NEW}"] for s in seeds])
            ref = np.array([base[s][f"test/auc/{NEW}"] for s in seeds])
            start = np.array([by_seed[s][f"zeroshot/test/auc/{NEW}"] for s in seeds])
            diff = "-"
            if init != "identity":
                p = stats.ttest_rel(auc, ref).pvalue if np.any(auc != ref) else 1.0
                diff = f"{(auc - ref).mean():+.4f} (p {p:.2f})"
            weights = np.array(
                [[by_seed[s].get(f"onboard/init_weight/{NEW}/{d}", np.nan) for d in CANDIDATES] for s in seeds]
            )
            picked, mean_weights = "-", "-"
            if init != "identity":
                counts = np.bincount(np.nanargmax(weights, axis=1), minlength=len(CANDIDATES))
                picked = ", ".join(f"{d} {c}" for d, c in zip(CANDIDATES, counts, strict=True) if c)
                mean_weights = " / ".join(f"{w:.2f}" for w in weights.mean(0))
            print(
                f"| {f:g} | {init} | {len(seeds)} | {cell(auc)} | {diff} | {cell(start)} "
                f"| {picked if init == 'nearest' else '-'} | {mean_weights if init == 'weighted' else '-'} |"
            )
            curves[init].append((auc.mean(), auc.std(ddof=1)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, init in enumerate(INITS):
        mean, std = np.array(curves[init]).T
        ax.errorbar(np.array(fractions) * (1 + 0.04 * (i - 1)), mean, yerr=std, marker="o", capsize=3, label=init)
    ax.set_xscale("log")
    ax.set_xlabel(f"share of {NEW}'s training rows used")
    ax.set_ylabel(f"{NEW} test AUC (mean ± std over seeds)")
    ax.set_title("onboarding a new domain: stage.init")
    ax.grid(alpha=0.3)
    ax.legend()
    print(f"\nwritten: {save(fig, Path(__file__).with_name('auc.png'))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
