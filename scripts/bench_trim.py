"""Serving latency of trimmed domains: the full model, the trimmed mask (topology B) and the per-domain variants
(topology A), in the same run, beside the predicted end-to-end time with per-feature fetch costs.

Given a run on which ``mdrec-trim <run dir> --variants`` has run (``trim.json``: each domain's dropped features;
``variants/``: topology A), per domain and batch size B (the domain's validation rows, repeated up to B), one thread,
``torch.inference_mode``, the exported forms:

- ``full``: the parallel serving graph with every feature (``mdrec.serve.parallel.ParallelModel``), traced;
- ``mask``: the same graph with the domain's plan as a feature mask (topology B: the dropped features are blanked,
  still looked up as id 0), traced;
- ``skip``: the same mask with the dropped lookups left out (``ParallelModel(skip_lookups=True)``: a gather of the
  kept ids only; DNN/DCNv2 backbones with LoRA, MLoRA or IAK), traced;
- ``variant``: the domain's own network without its dropped features (topology A, ``variants/<domain>.pt``: its
  adapter merged, the first layer narrowed), taking only the kept features;
- ``merged``: the same network with every feature (the domain's adapter merged, nothing dropped), traced: what the
  variant gains by the merge alone; ``variant / merged`` is what trimming itself saves.

The five take turns call by call (``mdrec.serve.timing.time_calls``), ``--repeats`` calls each after ``--warmup``;
p50 and p99 in ms and p50 over the full model's; the fastest call's ratios too (``min``: on a machine other
processes share, a call longer than the scheduler's slice is preempted at random, which inflates p50 of the slower
models). With ``--feature-costs costs.csv`` (``feature,microseconds`` per request) each line also gives the predicted
time of a request: the model's p50 plus the costs of the features the request carries (every feature for ``full``,
the kept ones otherwise).

Goal (issue 20): for a domain whose plan drops at least a third of its features, ``variant`` p50 at B = 512 at most
0.85x ``full``'s (PASS/FAIL per such domain).

Usage::

    mdrec-train stage=adapt input=embedded adapter=lora hydra.run.dir=logs/trimming/synthetic
    mdrec-trim logs/trimming/synthetic --budget 0.005 --variants
    python scripts/bench_trim.py logs/trimming/synthetic
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import torch

from mdrec.eval.trim import concat, feature_names, read_feature_costs
from mdrec.rundir import RunDir, load_checked
from mdrec.serve.cli import load_run
from mdrec.serve.export import export, serving_inputs
from mdrec.serve.timing import percentile, time_calls
from mdrec.serve.variants import ROUTING, split_inputs, variant


def read_plan(run: RunDir, features: list[str], domains: list[str]) -> torch.Tensor:
    """bool ``[K, F + N]``: the features each domain drops, from the run's ``trim.json`` (checked against the
    model's features and domains)."""
    dropped = run.read_json("trim.json").get("dropped")
    if not isinstance(dropped, dict) or set(dropped) != set(domains):
        raise ValueError(f"{run.file('trim.json')}: 'dropped' must list every domain {domains}; run mdrec-trim again")
    drop = torch.zeros(len(domains), len(features), dtype=torch.bool)
    for d, name in enumerate(domains):
        names = dropped[name]
        if not isinstance(names, list) or not set(names) <= set(features):
            raise ValueError(f"{run.file('trim.json')}: the dropped features of {name!r} are not among {features}")
        drop[d] = torch.tensor([f in names for f in features])
    return drop


# the ratios of the fastest calls printed last: (model, reference)
RATIOS = [("mask", "full"), ("skip", "full"), ("variant", "full"), ("variant", "merged")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory on which mdrec-trim --variants has run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--feature-costs", type=Path, help="CSV 'feature,microseconds' per request")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run, "bench_trim")
    schema, features = run.schema, feature_names(run.schema)
    run_dir = RunDir(args.run)
    drop = read_plan(run_dir, features, list(schema.domains))
    routes = run_dir.read_json(f"variants/{ROUTING}")["domains"]
    costs = read_feature_costs(args.feature_costs, features) if args.feature_costs else torch.zeros(len(features))
    val = concat(run.batches("val"))
    example = val.rows(torch.arange(min(64, val.size)))
    with tempfile.TemporaryDirectory() as scratch:  # the traced graphs, loaded back as a server would
        full = export(run.serving_model(), example, Path(scratch) / "full.pt")
        mask = export(run.serving_model(drop), example, Path(scratch) / "mask.pt")
        skip = export(run.serving_model(drop, skip_lookups=True), example, Path(scratch) / "skip.pt")
    print(
        f"{args.run}: one thread, {args.repeats} calls per model after {args.warmup}, p50 (p99) ms; predicted: "
        f"+ the per-request costs of {args.feature_costs or 'no cost file (0)'}"
    )
    print(
        f"{'domain':>8} {'kept':>6} {'B':>5} {'full':>15} {'mask':>15} {'skip':>15} {'merged':>15} {'variant':>15} "
        f"{'mask/full':>9} {'skip/full':>9} {'var/full':>8} {'var/merged':>10} {'predicted full / variant ms':>28} "
        f"{'min: mask/full skip/full var/full var/merged':>44}"
    )
    verdicts = []
    for d, name in enumerate(schema.domains):
        rows = torch.nonzero(val.domain == d).flatten()
        path = run_dir.path / "variants" / routes[name]["file"]
        served = load_checked(path, torch.jit.load, "a TorchScript module", "run mdrec-trim --variants again")
        kept = int((~drop[d]).sum())
        nothing = torch.zeros(len(features), dtype=torch.bool)
        example_d = val.rows(rows[:64])
        with torch.no_grad(), tempfile.TemporaryDirectory() as scratch:  # saved and loaded back, as the variants
            traced = torch.jit.trace(variant(run.net, schema, d, nothing), split_inputs(example_d, nothing))
            torch.jit.save(traced, Path(scratch) / "merged.pt")
            merged = torch.jit.load(Path(scratch) / "merged.pt")
        for b in args.batch_sizes:
            batch = val.rows(rows[torch.arange(b) % rows.numel()])
            inputs = serving_inputs(batch)
            calls = {
                "full": functools.partial(full, *inputs),
                "mask": functools.partial(mask, *inputs),
                "skip": functools.partial(skip, *inputs),
                "merged": functools.partial(merged, *split_inputs(batch, nothing)),
                "variant": functools.partial(served, *split_inputs(batch, drop[d])),
            }
            with torch.inference_mode():
                times = time_calls(calls, args.repeats, args.warmup)
            p50 = {k: percentile(v, 0.5) * 1e3 for k, v in times.items()}
            p99 = {k: percentile(v, 0.99) * 1e3 for k, v in times.items()}
            fastest = {k: min(v) for k, v in times.items()}
            predicted = (p50["full"] + float(costs.sum()), p50["variant"] + float((costs * ~drop[d]).sum()))
            print(
                f"{name:>8} {kept:>3}/{len(features):<2} {b:>5} "
                + " ".join(f"{p50[k]:>7.3f} ({p99[k]:>5.2f})" for k in ("full", "mask", "skip", "merged", "variant"))
                + f" {p50['mask'] / p50['full']:>9.2f} {p50['skip'] / p50['full']:>9.2f}"
                + f" {p50['variant'] / p50['full']:>8.2f}"
                + f" {p50['variant'] / p50['merged']:>10.2f}"
                + f" {predicted[0]:>13.3f} / {predicted[1]:.3f}"
                + "      "
                + " ".join(f"{fastest[a] / fastest[b]:>4.2f}" for a, b in RATIOS)
            )
            if b == 512 and kept <= len(features) * 2 / 3:
                verdicts.append((name, p50["variant"] / p50["full"], fastest["variant"] / fastest["full"]))
    for name, ratio, low in verdicts:
        verdict = "PASS" if ratio <= 0.85 else "FAIL"
        print(
            f"goal: {name} drops >= 1/3 of its features; variant p50 at B = 512 <= 0.85x full: {verdict} {ratio:.2f} "
            f"(fastest calls: {low:.2f})"
        )
    if not verdicts:
        print("goal: no domain drops a third of its features at B = 512 (plan with a larger budget): not judged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
