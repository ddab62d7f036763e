"""The warm-start-under-scarcity table: per target fraction and target domain, zero-shot vs from scratch vs warm
start (adapted), and the negative-transfer gate's verdict on each seed.

    python experiments/warm_start/table.py logs/warm_start/multiruns/warm logs/warm_start/multiruns/scratch
"""

from __future__ import annotations

import argparse

import numpy as np

from mdrec.eval.gate import negative_transfer
from mdrec.eval.summary import group_runs, load_runs, mean_std

TARGETS = ("d3", "d4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warm", help="sweep directory of the stage=adapt runs")
    parser.add_argument("scratch", help="sweep directory of the from-scratch runs (same fractions and seeds)")
    parser.add_argument("--delta", type=float, default=0.0)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    keys = ["target_fraction", "seed"]
    warm, scratch = group_runs(load_runs(args.warm), keys), group_runs(load_runs(args.scratch), keys)
    print(
        "| target fraction | domain | zero-shot | from scratch | warm start | warm - best other | gate: seeds flagged |"
    )
    print("|---|---|---|---|---|---|---|")
    for fraction in sorted({f for f, _ in warm}, key=float):
        seeds = sorted((s for f, s in warm if f == fraction and (f, s) in scratch), key=int)
        verdicts = {}
        for s in seeds:
            w = dict(np.load(warm[(fraction, s)][0].path / "predictions.npz"))
            c = dict(np.load(scratch[(fraction, s)][0].path / "predictions.npz"))
            names = [str(d) for d in w["domains"]]
            rows = negative_transfer(
                w["prob"][:, 0], c["prob"][:, 0], w["zeroshot_prob"][:, 0], w["label"][:, 0], w["domain"], names,
                args.delta, num_resamples=args.resamples, seed=int(s),
            )  # fmt: skip
            verdicts[s] = {r.domain: r for r in rows}
        for d in TARGETS:
            rows = [verdicts[s][d] for s in seeds]
            columns = ("auc_zero_shot", "auc_scratch", "auc_warm", "diff")
            cells = [mean_std([getattr(r, a) for r in rows]) for a in columns]
            flagged = f"{sum(r.flagged for r in rows)} of {len(rows)}"
            print(f"| {fraction} | {d} | " + " | ".join(cells) + f" | {flagged} |")


if __name__ == "__main__":
    main()
