"""Command line of the evaluation tools: ``mdrec-gate`` (the negative-transfer gate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mdrec.eval.gate import gate_table, negative_transfer


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """A run's ``predictions.npz`` (written after its test)."""
    path = run_dir / "predictions.npz"
    if not path.exists():
        sys.exit(f"mdrec-gate: {path} does not exist; give the directory of a finished run that was tested")
    return dict(np.load(path))


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
