"""Print mean ± std over the runs below a directory (e.g. a seed sweep) as a markdown table.

python scripts/summarize_runs.py logs/ml1m_dnn/multiruns/<time> --domains age_under25 age_25_34 age_35plus
"""

from __future__ import annotations

import argparse

from mdrec.eval.summary import group_runs, load_runs, mean_std_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="a run or multirun directory (every metrics.json below it is read)")
    parser.add_argument("--metrics", nargs="+", default=["test/auc", "test/logloss", "test/gauc"])
    parser.add_argument("--domains", nargs="*", default=[], help="domain names for per-domain columns")
    parser.add_argument("--by", nargs="*", default=[], help="override keys to group runs by (e.g. model)")
    args = parser.parse_args()
    runs = load_runs(args.root)
    print(f"{len(runs)} runs below {args.root}")
    for values, group in group_runs(runs, args.by).items():
        title = ", ".join(f"{k}={v}" for k, v in zip(args.by, values, strict=True)) or "all runs"
        print(f"\n{title} ({len(group)} runs)\n")
        print(mean_std_table(group, args.metrics, ["", *args.domains]))


if __name__ == "__main__":
    main()
