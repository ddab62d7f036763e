"""Print mean ± std over the runs below a directory (e.g. a seed sweep) as markdown tables.

Without --by: one table, a row per metric, a column per domain (overall first).
    python scripts/summarize_runs.py logs/ml1m_dnn/multiruns/<time> --domains age_under25 age_25_34 age_35plus
With --by: one comparison table, a row per group of runs (e.g. per experiment), a column per metric and domain.
    python scripts/summarize_runs.py logs/ml1m_zoo/multiruns/study --by experiment --metrics test/auc \
        --domains age_under25 age_25_34 age_35plus
With --method LABEL DIR [METRIC] (repeatable): a row per method, a column per domain; METRIC (default: the first
of --metrics) picks other figures of the same runs (zeroshot/test/auc: the model an adapt run started from).
    python scripts/summarize_runs.py --method IAK logs/a/iak --method zero-shot logs/a/iak zeroshot/test/auc \
        --method scratch logs/a/scratch --method oracle logs/a/scratch oracle/auc --domains d0 d1 d2 d3
"""

from __future__ import annotations

import argparse

from mdrec.eval.summary import comparison_table, group_runs, load_runs, mean_std_table, method_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="a run or multirun directory (every metrics.json below it is read)")
    parser.add_argument("--metrics", nargs="+", default=["test/auc", "test/logloss", "test/gauc"])
    parser.add_argument("--domains", nargs="*", default=[], help="domain names for per-domain columns")
    parser.add_argument("--by", nargs="*", default=[], help="override keys to compare runs by (e.g. model)")
    parser.add_argument("--method", nargs="+", action="append", help="LABEL DIR [METRIC]: a table row")
    args = parser.parse_args()
    if args.method:
        if any(len(m) not in (2, 3) for m in args.method):
            parser.error("--method takes LABEL DIR [METRIC]")
        methods = [(m[0], load_runs(m[1]), m[2] if len(m) == 3 else args.metrics[0]) for m in args.method]
        print(method_table(methods, ["", *args.domains]))
        return
    if args.root is None:
        parser.error("give a run directory, or --method rows")
    runs = load_runs(args.root)
    print(f"{len(runs)} runs below {args.root}\n")
    if args.by:
        keys = [f"{m}/{d}" if d else m for m in args.metrics for d in ["", *args.domains]]
        print(comparison_table(group_runs(runs, args.by), args.by, keys))
    else:
        print(mean_std_table(runs, args.metrics, ["", *args.domains]))


if __name__ == "__main__":
    main()
