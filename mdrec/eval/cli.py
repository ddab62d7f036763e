"""Command line of the evaluation tools: ``mdrec-gate`` (the negative-transfer gate) and ``mdrec-report`` (sweep
reports)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from mdrec.eval.gate import gate_table, negative_transfer
from mdrec.eval.plots import bar_plot, curve_plot, numeric
from mdrec.eval.summary import Failure, Run, load_sweep
from mdrec.eval.sweep import labelled_groups, run_domains, sweep_report, varying_keys
from mdrec.rundir import RunDir


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """A run's ``predictions.npz`` (written after its test)."""
    try:
        return RunDir(run_dir).read_predictions()
    except FileNotFoundError as error:
        sys.exit(f"mdrec-gate: {error}; give the directory of a finished run that was tested")


def gate(argv: list[str] | None = None) -> int:
    """``mdrec-gate <adapted run> <scratch run>``: per target domain, warm vs scratch vs zero-shot; 1 if flagged
    and ``--strict``."""
    parser = argparse.ArgumentParser(prog="mdrec-gate", description=__doc__)
    parser.add_argument("adapted", type=Path, help="a stage=adapt run directory (its zero-shot predictions included)")
    parser.add_argument("scratch", type=Path, help="a run trained from scratch on the same data (same test rows)")
    parser.add_argument("--domains", nargs="*", help="the target domains to judge (default: all)")
    parser.add_argument("--delta", type=float, default=0.0, help="tolerated AUC loss (default 0)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any judged domain is flagged")
    args = parser.parse_args(argv)

    warm, scratch = load_predictions(args.adapted), load_predictions(args.scratch)
    if "zeroshot_prob" not in warm:
        sys.exit(f"mdrec-gate: {args.adapted} is not a stage=adapt run (no zero-shot predictions)")
    if not (np.array_equal(warm["label"], scratch["label"]) and np.array_equal(warm["domain"], scratch["domain"])):
        sys.exit("mdrec-gate: the two runs were tested on different rows; use the same data and split config")
    names = [str(d) for d in warm["domains"]]
    unknown = sorted(set(args.domains or []) - set(names))
    if unknown:
        sys.exit(f"mdrec-gate: unknown domain(s) {unknown}; domains: {names}")
    rows = negative_transfer(
        warm["prob"][:, 0],
        scratch["prob"][:, 0],
        warm["zeroshot_prob"][:, 0],
        warm["label"][:, 0],
        warm["domain"],
        names,
        args.delta,
        args.confidence,
        args.resamples,
    )
    rows = [r for r in rows if not args.domains or r.domain in args.domains]
    flagged = [r.domain for r in rows if r.flagged]
    report = (
        f"Negative-transfer gate: {args.adapted} (warm) vs {args.scratch} (scratch) vs zero-shot, "
        f"delta {args.delta}, paired bootstrap over test rows ({args.resamples} resamples)\n\n"
        f"{gate_table(rows, args.confidence)}\n\n"
        f"Flagged (do not promote): {', '.join(flagged) if flagged else 'none'}\n"
    )
    print(report)
    if args.out:
        args.out.write_text(report)
    return 1 if flagged and args.strict else 0


def gate_main() -> None:
    sys.exit(gate())


def report(argv: list[str] | None = None) -> int:
    """``mdrec-report <dir> [<dir> ...]``: the runs below the directories as markdown tables and PNG plots."""
    parser = argparse.ArgumentParser(
        prog="mdrec-report",
        description="Aggregate the runs below Hydra sweep directories (or W&B run directories) into markdown "
        "tables (mean ± std over seeds, per domain and overall, best marked, paired tests against a baseline) "
        "and PNG plots.",
    )
    parser.add_argument("roots", nargs="+", type=Path, help="sweep, run or W&B directories (searched recursively)")
    parser.add_argument(
        "--metrics", nargs="+", help="metric keys to tabulate (default: test/auc and test/logloss, those reported)"
    )
    parser.add_argument(
        "--domains", nargs="*", help="domain columns (default: the runs' domains, in id order; none: overall only)"
    )
    parser.add_argument("--by", nargs="*", help="override keys that form the groups (default: those that vary)")
    parser.add_argument("--baseline", help="a group's name (as the tables print it) to test the others against")
    parser.add_argument(
        "--x", help="a numeric override: also plot the metrics against it (curve.png, a line per group)"
    )
    parser.add_argument(
        "--name",
        action="append",
        metavar="GROUP=NAME",
        help="rename a group (its label without ', x=value'), e.g. 'default=warm start' (repeatable)",
    )
    parser.add_argument("--title", default="Sweep report")
    parser.add_argument("--out", type=Path, help="where report.md and the plots go (default: <first dir>/report)")
    args = parser.parse_args(argv)

    runs: list[Run] = []
    failures: list[Failure] = []
    for root in args.roots:
        if not root.is_dir():
            sys.exit(f"mdrec-report: {root} is not a directory; give a sweep, run or W&B directory")
        try:
            found, failed = load_sweep(root)
        except ValueError as error:  # a malformed .hydra/overrides.yaml: the groups would be wrong
            sys.exit(f"mdrec-report: {error}")
        runs += found
        failures += failed
    if not runs:
        detail = f"; {len(failures)} failed runs" if failures else ""
        sys.exit(f"mdrec-report: no finished run (metrics.json) below {[str(r) for r in args.roots]}{detail}")
    reported = lambda m: any(m in r.metrics for r in runs)  # noqa: E731
    args.metrics = args.metrics or [m for m in ("test/auc", "test/logloss") if reported(m)] or ["test/auc"]
    try:
        domains = args.domains if args.domains is not None else run_domains(runs, args.metrics[0])
    except ValueError as error:  # a malformed data_report.json
        sys.exit(f"mdrec-report: {error}")
    if args.x is not None and "=" in args.x:  # KEY=DEFAULT: the value of the runs that leave KEY at its default
        args.x, default = args.x.split("=", 1)
        runs = [dataclasses.replace(r, overrides={args.x: default, **r.overrides}) for r in runs]
    by = [k for k in (args.by if args.by is not None else varying_keys(runs)) if k != args.x]
    unset = [k for k in [*by, *([args.x] if args.x else [])] if not any(k in r.overrides for r in runs)]
    unreported = [m for m in args.metrics if not reported(m)]
    if unset or unreported:
        sys.exit(
            f"mdrec-report: no run sets the override(s) {unset} / reports the metric(s) {unreported}; check the "
            "spelling (the keys of .hydra/overrides.yaml and metrics.json)"
        )
    if args.x is not None:
        try:
            [numeric(r, args.x) for r in runs]  # before anything is written
        except ValueError as error:
            sys.exit(f"mdrec-report: {error}")
    if any("=" not in name for name in args.name or []):
        sys.exit(f"mdrec-report: --name takes GROUP=NAME, got {args.name}")
    names = dict(name.rsplit("=", 1) for name in args.name or [])
    groups = labelled_groups(runs, by, names, args.x)  # the tables keep each x apart
    methods = list(labelled_groups(runs, by))  # the group names before renaming, without x
    if set(names) - set(methods):
        sys.exit(f"mdrec-report: --name: no group is called {sorted(set(names) - set(methods))}; groups: {methods}")
    try:
        text = sweep_report(runs, failures, args.metrics, domains, groups, args.baseline, args.title)
    except ValueError as error:
        sys.exit(f"mdrec-report: {error}")
    out = args.out or args.roots[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = [bar_plot(groups, args.metrics[0], domains, out / "bars.png")]
    if args.x is not None:  # a line per group, x along the axis
        plots.append(curve_plot(labelled_groups(runs, by, names), args.x, args.metrics, domains, out / "curve.png"))
    text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    print(f"written: {out / 'report.md'}, " + ", ".join(str(p) for p in plots))
    return 0


def report_main() -> None:
    sys.exit(report())
