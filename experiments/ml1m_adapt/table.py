"""The ML-1M adapter table: per domain (and overall), the test AUC of the best multi-domain baseline (shared-bottom,
MMoE, PLE, STAR), of the best model of the whole zoo, of zero-shot (the pre-trained backbone as is) and of each
adapter, mean ± std over seeds (each column's best: the highest mean in that column); then, against each of the two,
on how many domains each adapter's mean holds or beats it, the largest shortfall, and the gain over zero-shot.
With ``--plot``, the same figures as bars (the two references, zero-shot and each adapter; overall, then a cluster
per domain).

    python experiments/ml1m_adapt/table.py --zoo logs/ml1m_zoo/multiruns/study \
        --adapt logs/ml1m_adapt/multiruns/age --plot experiments/ml1m_adapt/age.png
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from mdrec.eval.plots import bar_plot
from mdrec.eval.summary import Run, cell, group_runs, load_runs, mean_and_std, values_of

ADAPTERS = {"iak": "IAK", "mlora": "MLoRA", "lora": "LoRA", "head": "W&D head"}
MULTI_DOMAIN = ["ml1m_shared_bottom", "ml1m_mmoe", "ml1m_ple", "ml1m_star"]


def mean(runs: list[Run], key: str) -> float:
    return mean_and_std(values_of(runs, key))[0]


def best_of(zoo: dict[str, list[Run]], names: list[str], key: str) -> str:
    """The zoo model among ``names`` with the highest mean ``key``."""
    return max(names, key=lambda name: mean(zoo[name], key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True, help="sweep directory of the zoo runs (grouped by experiment)")
    parser.add_argument("--adapt", nargs="+", required=True, help="sweep directories of the adapt runs")
    parser.add_argument("--multi-domain", nargs="+", default=MULTI_DOMAIN, help="the multi-domain baselines")
    parser.add_argument("--metric", default="test/auc")
    parser.add_argument("--plot", type=Path, help="also draw the figures as bars into this PNG")
    args = parser.parse_args()
    zoo = {key[0]: runs for key, runs in group_runs(load_runs(args.zoo), ["experiment"]).items()}
    adapt_runs = [run for directory in args.adapt for run in load_runs(directory)]
    adapters = {key[0]: runs for key, runs in group_runs(adapt_runs, ["adapter"]).items()}
    adapters = {name: adapters[name] for name in ADAPTERS if name in adapters}
    first = next(iter(adapters.values()))[0].metrics
    prefix = f"{args.metric}/"
    domains = sorted(  # largest domain first
        (k[len(prefix) :] for k in first if k.startswith(prefix)), key=lambda d: -first.get(f"test/rows/{d}", 0)
    )
    columns = ["", *domains]
    key = {c: f"{args.metric}/{c}" if c else args.metric for c in columns}
    multi = [name for name in args.multi_domain if name in zoo]
    best = {"multi-domain": {c: best_of(zoo, multi, key[c]) for c in columns}}
    best["zoo"] = {c: best_of(zoo, list(zoo), key[c]) for c in columns}
    zeroshot = next(iter(adapters.values()))
    print(
        "| domain | best multi-domain baseline | best of the zoo | zero-shot | "
        + " | ".join(ADAPTERS[a] for a in adapters)
        + " |"
    )
    print("|---" * (4 + len(adapters)) + "|")
    for c in columns:
        cells = [cell(runs, key[c]) for runs in adapters.values()]
        m, z = best["multi-domain"][c], best["zoo"][c]
        print(
            f"| {c or 'overall'} | {cell(zoo[m], key[c])} ({m}) | {cell(zoo[z], key[c])} ({z}) | "
            f"{cell(zeroshot, 'zeroshot/' + key[c])} | " + " | ".join(cells) + " |"
        )
    print()
    print(
        "| adapter | against | domains >= it (means) | largest shortfall | overall - it "
        "| gain over zero-shot: mean (largest) |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in adapters.items():
        gains = np.array([mean(runs, key[d]) - mean(runs, "zeroshot/" + key[d]) for d in domains])
        for against, chosen in best.items():
            vs = np.array([mean(runs, key[d]) - mean(zoo[chosen[d]], key[d]) for d in domains])
            overall = mean(runs, key[""]) - mean(zoo[chosen[""]], key[""])
            print(
                f"| {ADAPTERS[name]} | best {against} | {int((vs >= 0).sum())} of {len(domains)} | "
                f"{min(vs.min(), 0.0):+.4f} | {overall:+.4f} | {gains.mean():+.4f} ({gains.max():+.4f}) |"
            )
    if args.plot is not None:
        prefix = "zeroshot/"  # the zero-shot figures of the adapt runs, read under the plain metric names
        as_zeroshot = [
            dataclasses.replace(r, metrics={k[len(prefix) :]: v for k, v in r.metrics.items() if k.startswith(prefix)})
            for r in zeroshot
        ]
        m, z = best["multi-domain"][""], best["zoo"][""]
        bars = {f"best multi-domain overall ({m})": zoo[m], f"best of the zoo overall ({z})": zoo[z]}
        bars.update({"zero-shot": as_zeroshot, **{ADAPTERS[a]: runs for a, runs in adapters.items()}})
        print(f"\nwritten: {bar_plot(bars, args.metric, domains, args.plot)}")


if __name__ == "__main__":
    main()
