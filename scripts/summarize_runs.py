"""Print mean ± std over the runs below a directory (e.g. a seed sweep) as markdown tables.

Without --by: one table, a row per metric, a column per domain (overall first).
    python scripts/summarize_runs.py logs/ml1m_dnn/multiruns/<time> --domains age_under25 age_25_34 age_35plus
With --by: one comparison table, a row per group of runs (e.g. per experiment), a column per metric and domain.
    python scripts/summarize_runs.py logs/ml1m_zoo/multiruns/study --by experiment --metrics test/auc \
        --domains age_under25 age_25_34 age_35plus
"""

from __future__ import annotations

import argparse

from mdrec.eval.summary import comparison_table, group_runs, load_runs, mean_std_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="a run or multirun directory (every metrics.json below it is read)")
    parser.add_argument("--metrics", nargs="+", default=["test/auc", "test/logloss", "test/gauc"])
    parser.add_argument("--domains", nargs="*", default=[], help="domain names for per-domain columns")
    parser.add_argument("--by", nargs="*", default=[], help="override keys to compare runs by (e.g. model)")
    args = parser.parse_args()
    runs = load_runs(args.root)
    print(f"{len(runs)} runs below {args.root}\n")
    if args.by:
        keys = [f"{m}/{d}" if d else m for m in args.metrics for d in ["", *args.domains]]
        print(comparison_table(group_runs(runs, args.by), args.by, keys))
    else:
        print(mean_std_table(runs, args.metrics, ["", *args.domains]))


if __name__ == "__main__":
    main()
