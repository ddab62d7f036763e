"""The table of the MMoE-vs-shared-bottom relatedness study from its sweep directories.

    python experiments/mmoe_relatedness/table.py logs/mmoe_relatedness/multiruns/shared_bottom \
        logs/mmoe_relatedness/multiruns/mmoe
"""

from __future__ import annotations

import argparse

from mdrec.eval.summary import group_runs, load_runs, mean_std

METRIC = "test/mean_auc"
MODELS = ("shared_bottom", "mmoe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="sweep directories (runs of both models)")
    args = parser.parse_args()
    runs = [run for root in args.roots for run in load_runs(root)]
    by = group_runs(runs, ["data.source.relatedness", "model", "seed"])
    ps = sorted({p for p, _, _ in by}, key=float, reverse=True)
    seeds = sorted({s for _, _, s in by}, key=int)

    def gains(p: str) -> dict[str, float]:
        """MMoE minus shared-bottom per seed that has both runs at relatedness p."""
        value = {(m, s): by[(p, m, s)][0].metrics[METRIC] for m in MODELS for s in seeds if (p, m, s) in by}
        return {
            s: value[("mmoe", s)] - value[("shared_bottom", s)] for s in seeds if all((m, s) in value for m in MODELS)
        }

    top = gains(ps[0])
    print(
        f"| relatedness p | shared-bottom {METRIC} | MMoE {METRIC} | MMoE gain (paired by seed) "
        f"| gain - gain at p = {ps[0]} (paired by seed) | seeds where the gain grew | seeds |"
    )
    print("|---|---|---|---|---|---|---|")
    for p in ps:
        gain = gains(p)
        sb = [by[(p, "shared_bottom", s)][0].metrics[METRIC] for s in gain]
        mmoe = [by[(p, "mmoe", s)][0].metrics[METRIC] for s in gain]
        growth = [gain[s] - top[s] for s in gain if s in top]
        grew = f"{sum(g > 0 for g in growth)} of {len(growth)}" if p != ps[0] else ""
        row = [p, mean_std(sb), mean_std(mmoe), mean_std(list(gain.values()))]
        print("| " + " | ".join([*row, mean_std(growth) if p != ps[0] else "", grew, str(len(gain))]) + " |")


if __name__ == "__main__":
    main()
