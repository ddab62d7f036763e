"""The ML-1M adapter table: per domain (and overall), the test AUC of every zoo baseline's best, zero-shot (the
pre-trained backbone as is) and each adapter, mean ± std over seeds; then on how many domains each adapter's mean
holds or beats the best baseline's, its largest shortfall, and its gain over zero-shot.

    python experiments/ml1m_adapt/table.py --zoo logs/ml1m_zoo/multiruns/study \
        --adapt logs/ml1m_adapt/multiruns/age logs/ml1m_adapt/multiruns/age_lora
"""

from __future__ import annotations

import argparse

import numpy as np

from mdrec.eval.summary import Run, cell, group_runs, load_runs

ADAPTERS = {"iak": "IAK", "mlora": "MLoRA", "lora": "LoRA", "head": "W&D head"}


def mean(runs: list[Run], key: str) -> float:
    return float(np.mean([r.metrics[key] for r in runs if key in r.metrics]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", required=True, help="sweep directory of the zoo runs (grouped by experiment)")
    parser.add_argument("--adapt", nargs="+", required=True, help="sweep directories of the adapt runs")
    parser.add_argument("--metric", default="test/auc")
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
    best = {c: max(zoo, key=lambda name, c=c: mean(zoo[name], key[c])) for c in columns}
    zeroshot = next(iter(adapters.values()))
    print("| domain | best zoo baseline | its AUC | zero-shot | " + " | ".join(ADAPTERS[a] for a in adapters) + " |")
    print("|---" * (4 + len(adapters)) + "|")
    for c in columns:
        cells = [cell(runs, key[c]) for runs in adapters.values()]
        print(
            f"| {c or 'overall'} | {best[c]} | {cell(zoo[best[c]], key[c])} | "
            f"{cell(zeroshot, 'zeroshot/' + key[c])} | " + " | ".join(cells) + " |"
        )
    print()
    print(
        "| adapter | domains >= best baseline (means) | largest shortfall | gain over zero-shot: mean (largest) "
        "| overall - best baseline |"
    )
    print("|---|---|---|---|---|")
    for name, runs in adapters.items():
        vs_best = np.array([mean(runs, key[d]) - mean(zoo[best[d]], key[d]) for d in domains])
        gains = np.array([mean(runs, key[d]) - mean(runs, "zeroshot/" + key[d]) for d in domains])
        overall = mean(runs, key[""]) - mean(zoo[best[""]], key[""])
        print(
            f"| {ADAPTERS[name]} | {int((vs_best >= 0).sum())} of {len(domains)} | {min(vs_best.min(), 0.0):+.4f} | "
            f"{gains.mean():+.4f} ({gains.max():+.4f}) | {overall:+.4f} |"
        )


if __name__ == "__main__":
    main()
