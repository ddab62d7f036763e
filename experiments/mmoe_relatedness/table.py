"""The table of the MMoE-vs-shared-bottom relatedness study from its sweep directories.

    python experiments/mmoe_relatedness/table.py logs/mmoe_relatedness/multiruns/shared_bottom \
        logs/mmoe_relatedness/multiruns/mmoe
"""

from __future__ import annotations

import argparse

from mdrec.eval.summary import group_runs, load_runs, mean_std

METRIC = "test/mean_auc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="sweep directories (runs of both models)")
    args = parser.parse_args()
    runs = [run for root in args.roots for run in load_runs(root)]
    by = group_runs(runs, ["data.source.relatedness", "model", "seed"])
    ps = sorted({p for p, _, _ in by}, key=float, reverse=True)
    seeds = sorted({s for _, _, s in by}, key=int)
    print(f"| relatedness p | shared-bottom {METRIC} | MMoE {METRIC} | MMoE gain (paired by seed) | seeds |")
    print("|---|---|---|---|---|")
    for p in ps:
        value = {
            (m, s): by[(p, m, s)][0].metrics[METRIC]
            for m in ("shared_bottom", "mmoe")
            for s in seeds
            if (p, m, s) in by
        }
        paired = [s for s in seeds if ("shared_bottom", s) in value and ("mmoe", s) in value]
        sb = [value[("shared_bottom", s)] for s in paired]
        mmoe = [value[("mmoe", s)] for s in paired]
        gain = [b - a for a, b in zip(sb, mmoe, strict=True)]
        print(f"| {p} | {mean_std(sb)} | {mean_std(mmoe)} | {mean_std(gain)} | {len(paired)} |")


if __name__ == "__main__":
    main()
