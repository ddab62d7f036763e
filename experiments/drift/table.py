"""The drift study's table and plot (experiments/drift/README.md): per adapter and drift amount of d2, how often
the check flagged d2 and the other domains (over seeds), and d2's test AUC: the adapt run's own test rows, the fresh
rows before re-adapting, after, and the oracle on the fresh rows; mean ± sample std over seeds, the re-adaptation's
paired gain with its paired t-test p-value; then the drifted domain's figures per seed. Writes auc.png beside it.

    python experiments/drift/table.py <root>     (<root>/<adapter>/drift_<seed>_<amount>/drift.json)
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

DRIFTED = "d2"


def cell(values: list[float]) -> str:
    v = np.array([x for x in values if not np.isnan(x)])
    if not len(v):
        return "-"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def main(root: Path) -> None:
    rows: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for path in sorted(root.glob("*/drift_*_*/drift.json")):
        seed, amount = re.fullmatch(r"drift_(\d+)_([\d.]+)", path.parent.name).groups()
        rows[(path.parent.parent.name, float(amount))].append({"seed": int(seed), **json.loads(path.read_text())})
    print(
        f"| adapter | drift of {DRIFTED} | seeds | {DRIFTED} flagged (inputs / quality / calibration) | other domains "
        f"flagged | {DRIFTED} max PSI | AUC run test | AUC fresh | AUC re-adapted | re-adapted - fresh (p) | oracle "
        "fresh | others' max change |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for (adapter, amount), records in sorted(rows.items()):
        n = len(records)
        d2 = [r["domains"][DRIFTED] for r in records]
        flagged = sum(DRIFTED in r["flagged"] for r in records)
        kinds = [sum(any(x.startswith(k) for x in d["reasons"]) for d in d2) for k in ("inputs", "quality", "calib")]
        others = sum(len([f for f in r["flagged"] if f != DRIFTED]) for r in records)
        n_others = sum(len([d for d in r["domains"] if d != DRIFTED]) for r in records)
        run = [d["auc"]["run"] for d in d2]
        fresh = [d["auc"]["fresh"] for d in d2]
        after = [r.get("readapt", {}).get(f"readapt/auc_after/{DRIFTED}", np.nan) for r in records]
        before = [r.get("readapt", {}).get(f"readapt/auc_before/{DRIFTED}", np.nan) for r in records]
        pairs = [(a, b) for a, b in zip(after, before, strict=True) if not np.isnan(a)]
        gain = "-"
        if len(pairs) > 1:
            a, b = np.array(pairs).T
            gain = f"{(a - b).mean():+.4f} (p {stats.ttest_rel(a, b).pvalue:.3f})"
        oracle = [r.get("oracle", {}).get(f"oracle/auc/{DRIFTED}", np.nan) for r in records]
        change = [r["readapt"]["readapt/other_domains_max_abs_change"] for r in records if "readapt" in r]
        psi = [max(d["psi"].values()) for d in d2]
        print(
            f"| {adapter} | {amount:g} | {n} | {flagged}/{n} ({' / '.join(map(str, kinds))}) | {others}/{n_others} "
            f"| {cell(psi)} | {cell(run)} | {cell(fresh)} | {cell(after)} ({len(pairs)} re-adapted) | {gain} "
            f"| {cell(oracle)} | {max(change) if change else '-'} |"
        )
        curve = curves[adapter]
        curve["amount"].append(amount)
        for name, values in (("fresh", fresh), ("re-adapted", after), ("oracle", oracle)):
            v = np.array([x for x in values if not np.isnan(x)])
            curve[name].append((v.mean(), v.std(ddof=1)) if len(v) > 1 else (np.nan, np.nan))
        curve["run"].append((np.mean(run), np.std(run, ddof=1)))
    print(f"\nPer seed, {DRIFTED} on the drifted fresh rows (AUC run / fresh / re-adapted / oracle; why flagged):\n")
    print("| adapter | drift | seed | AUC run test | AUC fresh | AUC re-adapted | oracle | flagged by |")
    print("|---|---|---|---|---|---|---|---|")
    for (adapter, amount), records in sorted(rows.items()):
        for r in sorted(records, key=lambda r: r["seed"]) if amount > 0 else []:
            d, after = r["domains"][DRIFTED], r.get("readapt", {}).get(f"readapt/auc_after/{DRIFTED}", np.nan)
            why = ", ".join(x.split(":")[0] for x in d["reasons"]) or "-"
            print(
                f"| {adapter} | {amount:g} | {r['seed']} | {d['auc']['run']:.4f} | {d['auc']['fresh']:.4f} | "
                f"{after:.4f} | {r['oracle'].get(f'oracle/auc/{DRIFTED}', np.nan):.4f} | {why} |"
            )
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), sharey=True, squeeze=False)
    for ax, (adapter, curve) in zip(axes[0], curves.items(), strict=True):
        x = np.array(curve["amount"])
        for i, name in enumerate(("run", "fresh", "re-adapted", "oracle")):
            mean, std = np.array(curve[name]).T
            label = {"run": "run's own test rows", "fresh": "fresh rows, as adapted"}.get(name, f"fresh rows, {name}")
            ax.errorbar(x + 0.01 * (i - 1.5), mean, yerr=std, marker="o", capsize=3, label=label)
        ax.set_title(f"adapter={adapter}: test AUC of {DRIFTED}")
        ax.set_xlabel(f"drift of {DRIFTED}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("AUC (mean ± std over seeds)")
    axes[0][0].legend(fontsize=7)
    print(f"\nwritten: {save(fig, Path(__file__).with_name('auc.png'))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
