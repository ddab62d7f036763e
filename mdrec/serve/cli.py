"""Command lines of a run's serving side.

``mdrec-export <run dir> [--format torchscript|aoti|onnx|all]``: the run's model as one serving graph for all its
domains (an adapt or onboard run: the backbone and every domain's adapter, unknown domains served by the backbone;
any other run: its selected network), written in each format asked for (:mod:`mdrec.serve.export`), each file
loaded back and checked against the model as trained on validation batches: as they are, routed through every
domain in turn, and both with unknown domain ids mixed in. The report beside the files lists the request format.

``mdrec-trim <run dir>``: per-domain feature trimming on the validation rows (permutation or ablation importance, a
plan under an AUC-loss or a latency budget), the trimmed serving graph, optionally the per-domain variants (briefly
re-trained), and a report of features kept, AUC and latency per domain.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.eval.metrics import grouped_auc
from mdrec.eval.plots import tradeoff_plot
from mdrec.eval.trim import (
    LatencyModel,
    Predict,
    Retraining,
    TrimPlan,
    ablation_importance,
    auc_change_se,
    concat,
    domain_aucs,
    feature_names,
    permutation_importance,
    plan_trimming,
    predictions,
    read_budgets,
    read_domain_ms,
    read_feature_costs,
    split_halves,
    trim_table,
)
from mdrec.rundir import RunDir
from mdrec.serve.ablation import adapter_retrainer
from mdrec.serve.export import (
    FORMATS,
    SUFFIXES,
    export,
    input_names,
    max_difference,
    onnx_available,
    serving_inputs,
    write,
)
from mdrec.serve.parallel import TOLERANCE, AdapterFactory, NetworkModel, ParallelModel, ServingModel
from mdrec.serve.timing import percentile, time_calls
from mdrec.serve.variants import blanked_difference, export_variants, recovered, split_inputs, variant
from mdrec.train.checkpoint import load_selected


def with_unknown_domains(batch: Batch, num_domains: int, every: int = 10) -> Batch:
    """``batch`` with every ``every``-th row's domain id replaced by ids the model does not know (K, -1)."""
    rows = torch.arange(batch.size)
    unknown = torch.where(rows % (2 * every) == 0, num_domains, -1)
    domain = torch.where(rows % every == 0, unknown, batch.domain)
    return Batch(batch.sparse, batch.dense, domain, batch.labels, batch.seq, batch.seq_lengths, batch.weight)


def with_every_domain(batch: Batch, num_domains: int) -> Batch:
    """``batch`` with row i routed to domain ``i % num_domains``: every domain's adapter scores rows, whatever
    domains the data hold (an onboarding run's data may hold only its new domain)."""
    domain = torch.arange(batch.size) % num_domains
    return Batch(batch.sparse, batch.dense, domain, batch.labels, batch.seq, batch.seq_lengths, batch.weight)


@dataclass
class AdaptRun:
    """What the serving tools load from a run directory: an adapt run's adapted network and adapter factory (what
    :func:`load_run` gives by default), or any run's selected network (``make_adapter`` None)."""

    directory: Path
    datamodule: MultiDomainDataModule
    net: nn.Module
    make_adapter: AdapterFactory | None

    @property
    def schema(self) -> Schema:
        return self.datamodule.schema

    def batches(self, split: str, limit: int | None = None) -> list[Batch]:
        """Up to ``limit`` batches of ``split`` (``"train"``, ``"val"`` or ``"test"``; all when None), ids mapped as
        in training."""
        loaders = {
            "train": self.datamodule.train_dataloader,
            "val": self.datamodule.val_dataloader,
            "test": self.datamodule.test_dataloader,
        }
        loader = loaders[split]()
        out = []
        for i, batch in enumerate(loader):
            if i == limit:
                break
            out.append(self.datamodule.on_before_batch_transfer(batch, 0))
        return out

    def serving_model(self, drop: torch.Tensor | None = None, skip_lookups: bool = False) -> ServingModel:
        """The adapted network's :class:`ParallelModel` (trimmed with ``drop``), or the network's
        :class:`NetworkModel` (no trimming)."""
        if self.make_adapter is None:
            if drop is not None:
                raise ValueError("trimming serves an adapted network (a stage=adapt run)")
            return NetworkModel(self.net, self.schema)
        return ParallelModel(self.net, self.schema, self.make_adapter, drop, skip_lookups)


def load_run(directory: Path, tool: str, any_run: bool = False) -> AdaptRun:
    """The adapt run in ``directory`` (``any_run``: any finished run, its selected network,
    :func:`mdrec.train.checkpoint.load_selected`): its data (prepared as configured) and network."""
    run_dir = RunDir(directory)
    needed = (RunDir.CONFIG,) if any_run else (RunDir.CONFIG, RunDir.ADAPTER)
    missing = [name for name in needed if not run_dir.exists(name)]
    if missing:
        kind = "finished mdrec run" if any_run else "finished stage=adapt run"
        sys.exit(f"{tool}: {directory} lacks {missing}; give the directory of a {kind}")
    datamodule: MultiDomainDataModule = run_dir.instantiate("data")
    datamodule.prepare_data()
    datamodule.setup()
    if not any_run:
        net = run_dir.load_adapted(datamodule.schema).eval()
        return AdaptRun(directory, datamodule, net, run_dir.adapter_factory())
    try:
        net = load_selected(run_dir, datamodule.schema).eval()
    except FileNotFoundError as error:
        sys.exit(f"{tool}: {error}")
    adapted = isinstance(net, AdaptedNet) and net.adapter is not None
    return AdaptRun(directory, datamodule, net, run_dir.adapter_factory() if adapted else None)


def request_format(schema: Schema, example: Batch) -> dict[str, object]:
    """What every exported file takes and returns, by name, in order (the report's ``request``)."""
    columns: dict[str, object] = {
        "sparse": {"dtype": "int64", "shape": ["B", len(schema.sparse)], "columns": list(schema.sparse_names)},
        "dense": {"dtype": "float32", "shape": ["B", len(schema.dense)], "columns": list(schema.dense)},
        "domain": {"dtype": "int64", "shape": ["B"], "values": {d: i for i, d in enumerate(schema.domains)}},
    }
    if example.seq is not None:
        columns["seq"] = {"dtype": "int64", "shape": ["B", int(example.seq.shape[1])]}
        columns["seq_lengths"] = {"dtype": "int64", "shape": ["B"]}
    return {
        "inputs": {name: columns[name] for name in input_names(example)},
        "output": {"dtype": "float32", "shape": ["B", len(schema.labels)], "columns": list(schema.labels)},
    }


def unknown_domains(model: ServingModel) -> str:
    """How ``model`` serves a domain id outside ``0..K-1`` (the report's words)."""
    if isinstance(model, ParallelModel):
        return "the plain backbone"
    if not model.any_domain:
        return "NaN"
    if model.net.input.domain_as_feature:
        return "with the 'any domain' id (input.domain_dropout)"
    return "as any other row (the network does not read the domain)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdrec-export", description=__doc__)
    parser.add_argument("run", type=Path, help="a finished run directory (any stage, any model)")
    parser.add_argument(
        "--format",
        choices=[*FORMATS, "all"],
        default="torchscript",
        help="torchscript (.pt), aoti (.pt2: torch.export + AOTInductor, compiles C++), onnx (.onnx; needs "
        "'pip install mdrec[export]'), or all three (default torchscript)",
    )
    parser.add_argument(
        "--out", type=Path, help="the file to write, its suffix set by the format (default: <run>/serving.pt)"
    )
    parser.add_argument("--batches", type=int, default=4, help="validation batches to check (default 4)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be at least 1 (the export is checked on that many batches), got {args.batches}")
    formats = list(FORMATS) if args.format == "all" else [args.format]
    if "onnx" in formats and not onnx_available():
        parser.error("--format onnx needs the packages onnx and onnxscript: pip install 'mdrec[export]'")
    run = load_run(args.run, "mdrec-export", any_run=True)
    schema, net, model = run.schema, run.net, run.serving_model()
    batches = run.batches("val", args.batches)
    out = args.out or RunDir(args.run).file(RunDir.SERVING)
    routed = [with_every_domain(b, schema.num_domains) for b in batches]
    checked = [with_unknown_domains(b, schema.num_domains) for b in [*batches, *routed]]
    every = [*batches, *routed, *checked]
    unknown = sum(int(((b.domain < 0) | (b.domain >= schema.num_domains)).sum()) for b in every)
    files: dict[str, dict[str, object]] = {}
    for fmt in formats:
        path = out.with_suffix(SUFFIXES[fmt])
        served = write(fmt, model, batches[0], path)
        difference = (
            max(max_difference(served, net, b, schema.num_domains) for b in every) if served is not None else None
        )
        files[fmt] = {"file": str(path), "max_abs_difference": difference}
    checked_differences = [e["max_abs_difference"] for e in files.values() if e["max_abs_difference"] is not None]
    report = {
        "files": files,
        "max_abs_difference": max(checked_differences, default=None),
        "model": type(net).__name__,
        "domains": list(schema.domains),
        "unknown_domains": unknown_domains(model),
        "rows_checked": sum(b.size for b in every),
        "unknown_rows_checked": unknown,
        "tolerance": TOLERANCE,
        "request": request_format(schema, batches[0]),
    }
    (out.parent / f"{out.stem}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    failed = {f: e["max_abs_difference"] for f, e in files.items() if (e["max_abs_difference"] or 0.0) > TOLERANCE}
    for fmt, difference in failed.items():
        print(f"mdrec-export: the {fmt} file differs from the trained model by {difference:.2e}", file=sys.stderr)
    unchecked = [f for f, e in files.items() if e["max_abs_difference"] is None]
    if unchecked:
        print(f"mdrec-export: {unchecked} not run (onnxruntime is not installed): unchecked", file=sys.stderr)
    return 1 if failed else 0


def export_main() -> None:
    sys.exit(main())


def click_probability(model: torch.nn.Module) -> Predict:
    """The serving model as a trimming ``Predict``: a batch -> its rows' click probabilities ``[B]``."""
    return lambda batch: model(*serving_inputs(batch))[:, 0]


def domain_model_ms(
    models: dict[str, torch.nn.Module], data: Batch, num_domains: int, batch_rows: int
) -> dict[str, torch.Tensor]:
    """Per model, ``[K]`` p50 milliseconds per call on ``batch_rows`` rows of each domain (its rows of ``data``,
    repeated when it has fewer; 0 for a domain without rows); every model and domain take turns call by call."""
    calls = {}
    for d in range(num_domains):
        rows = torch.nonzero(data.domain == d).flatten()
        if rows.numel():
            inputs = serving_inputs(data.rows(rows[torch.arange(batch_rows) % rows.numel()]))
            calls |= {(name, d): functools.partial(m, *inputs) for name, m in models.items()}
    with torch.no_grad():
        times = time_calls(calls, repeats=30, warmup=3)
    return {
        name: torch.tensor(
            [percentile(times[name, d], 0.5) * 1e3 if (name, d) in times else 0.0 for d in range(num_domains)],
            dtype=torch.float64,
        )
        for name in models
    }


def trim(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdrec-trim", description=__doc__)
    parser.add_argument("run", type=Path, help="a stage=adapt run directory")
    parser.add_argument("--budget", type=float, default=0.001, help="AUC loss allowed per domain (default 0.001)")
    parser.add_argument("--min-rows", type=int, default=2000, help="domains with fewer validation rows keep all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations and of the two halves")
    parser.add_argument(
        "--latency-rows",
        type=int,
        default=512,
        help="rows of one request (one call of the model: e.g. the candidates of one auction) in the latency check "
        "(default 512)",
    )
    parser.add_argument(
        "--feature-costs",
        type=Path,
        help="CSV 'feature,microseconds': each feature's fetch + serialisation cost per request of --latency-rows rows "
        "(default 0)",
    )
    parser.add_argument(
        "--latency-budget-ms",
        help="latency mode: per domain, drop features until the model's time plus the features' costs meets this "
        "budget (milliseconds per request of --latency-rows rows; one number, or a CSV 'domain,budget_ms')",
    )
    parser.add_argument(
        "--model-ms",
        help="latency mode: the model's own time per request of --latency-rows rows on the serving system (one "
        "number, or a CSV 'domain,model_ms'; default: measured here, one call of the serving graph, p50)",
    )
    parser.add_argument(
        "--max-auc-loss",
        type=float,
        default=0.005,
        help="latency mode: the AUC loss allowed per domain; beyond it the budget is not reachable (default 0.005)",
    )
    parser.add_argument(
        "--drop-order",
        choices=["per-cost", "importance"],
        default="per-cost",
        help="latency mode: drop the feature with the least AUC lost per millisecond saved first (per-cost, default) "
        "or the least important first (importance)",
    )
    parser.add_argument(
        "--importance",
        choices=["permutation", "ablation"],
        default="permutation",
        help="permutation (default): the feature shuffled within the domain; ablation: the feature blanked and every "
        "domain's adapter briefly re-trained without it (--retrain-*; F + 1 re-trainings)",
    )
    parser.add_argument(
        "--retrain-steps",
        type=int,
        default=200,
        help="the brief re-training of ablation importance and of the variants (--variants; 0: variants as sliced): "
        "Adam steps (default 200)",
    )
    parser.add_argument(
        "--retrain-rows", type=int, default=256, help="re-training: training rows of each domain per step (256)"
    )
    parser.add_argument("--retrain-lr", type=float, default=1e-3, help="re-training: Adam's learning rate (1e-3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the whole run and its latency checks (default 1)"
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also write topology A: per domain a network without its dropped features, its dense layers re-trained "
        "on the domain's training rows where that helps on the checking half (variants/<domain>.pt, "
        "variants/routing.json; DNN backbone, adapter lora, mlora or none)",
    )
    parser.add_argument(
        "--tradeoff",
        type=float,
        nargs="+",
        metavar="BUDGET",
        help="also plan with each of these budgets: features kept and test AUC change per domain against the budget "
        "(trim_tradeoff.json, trim_tradeoff.png)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.latency_rows < 1:
        parser.error(f"--latency-rows must be at least 1 (the rows of one request), got {args.latency_rows}")
    if args.tradeoff and args.latency_budget_ms:
        parser.error("--tradeoff plans with AUC budgets: leave out --latency-budget-ms")
    if args.model_ms and not args.latency_budget_ms:
        parser.error("--model-ms is the model's time in a latency budget: give --latency-budget-ms too")
    run = load_run(args.run, "mdrec-trim")
    schema, full = run.schema, run.serving_model()
    features = feature_names(schema)
    try:
        costs = (
            read_feature_costs(args.feature_costs, features)
            if args.feature_costs
            else torch.zeros(len(features), dtype=torch.float64)
        )
        budgets = read_budgets(args.latency_budget_ms, list(schema.domains)) if args.latency_budget_ms else None
        given_ms = (
            read_domain_ms(args.model_ms, list(schema.domains), "--model-ms", "model_ms") if args.model_ms else None
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if args.variants:
        try:  # refused before any work: a backbone or adapter variants do not cover
            variant(run.net, schema, 0, torch.zeros(len(features), dtype=torch.bool))
        except ValueError as error:
            parser.error(str(error))
    try:
        how = Retraining(args.retrain_steps, args.retrain_rows, args.retrain_lr, args.seed)
    except ValueError as error:
        parser.error(str(error))
    fit, check = split_halves(concat(run.batches("val")), args.seed)
    test = concat(run.batches("test"))
    needs_train = args.importance == "ablation" or (args.variants and how.steps > 0)
    train = concat(run.batches("train")) if needs_train else None
    if args.importance == "ablation":
        try:  # refused before any work: a run without an adapter
            retrained = adapter_retrainer(run.net, train, how)
        except ValueError as error:
            parser.error(str(error))
    latency = None  # latency mode: the model's own time per domain, given or measured before planning
    if budgets is not None:
        if given_ms is None:
            given_ms = domain_model_ms({"full": full}, check, schema.num_domains, args.latency_rows)["full"]
        latency = LatencyModel(given_ms, costs, budgets)
    limit = args.max_auc_loss if latency is not None else args.budget
    per_cost = latency is not None and args.drop_order == "per-cost"
    with torch.no_grad():
        if args.importance == "ablation":
            importance = ablation_importance(retrained, fit, schema)
        else:
            importance = permutation_importance(click_probability(full), fit, schema, seed=args.seed)
        predict = click_probability(full)
        plan = plan_trimming(predict, fit, check, schema, importance, limit, args.min_rows, latency, per_cost)
        trimmed = run.serving_model(plan.drop)
        probs_before, probs_after = predictions(predict, test), predictions(click_probability(trimmed), test)
    labels = test.labels[:, 0]
    test_before, test_after = (
        grouped_auc(p, labels, test.domain, schema.num_domains)[0] for p in (probs_before, probs_after)
    )
    test_se = auc_change_se(probs_before, probs_after, test, schema.num_domains)
    timed = domain_model_ms({"full": full, "trimmed": trimmed}, check, schema.num_domains, args.latency_rows)
    export(trimmed, check.rows(torch.arange(min(64, check.size))), run.directory / "serving_trimmed.pt")
    variants = trimmed_variants(run, plan.drop, check, test, train, how) if args.variants else None
    fetch_before, fetch_after = costs.sum(), (costs * ~plan.drop).sum(1)
    order = "least AUC per millisecond saved first" if per_cost else "least important first"
    mode = (
        f"latency budget per domain ({args.latency_budget_ms} ms; the AUC loss allowed {limit:g}; {order}; the "
        f"model's time {f'given by --model-ms {args.model_ms}' if args.model_ms else 'measured here'})"
        if latency is not None
        else f"AUC loss <= {limit:g} per domain"
    )
    rows = [
        f"| {name} | " + " | ".join(f"{float(importance[f, d]):+.4f}" for d in range(schema.num_domains)) + " |"
        for f, name in enumerate(plan.features)
    ]
    full_ms, trimmed_ms = timed["full"], timed["trimmed"]
    per_domain = [
        f"| {d} | {float(test_before[i]):.4f} | {float(test_after[i]):.4f} | "
        f"{float(test_after[i] - test_before[i]):+.4f} ± {float(test_se[i]):.4f} | {float(full_ms[i]):.3f} | "
        f"{float(trimmed_ms[i]):.3f} | "
        f"{float(fetch_before):.3f} | {float(fetch_after[i]):.3f} |"
        for i, d in enumerate(schema.domains)
    ]
    report = "\n".join(
        [
            f"# Feature trimming of {run.directory}",
            "",
            f"Mode: {mode}. Each plan is chosen on one half of the validation rows ({fit.size} rows: the importance "
            f"and the greedy steps) and checked on the other ({check.size} rows), then cut back to its longest prefix "
            f"whose AUC loss on the checking half is within the limit. A domain with fewer than {args.min_rows} "
            "validation rows keeps every feature.",
            "",
            trim_table(plan),
            "",
            f"Test AUC and serving time per domain (model: the parallel serving graph, p50 of one call on "
            f"{args.latency_rows} of the domain's requests, one process; features: the per-feature costs of "
            f"{args.feature_costs or 'none given (0)'}, summed over the features sent). Blanked features are still "
            "looked up in this serving graph (id 0): the model time changes little; the saving is in the features "
            "no longer fetched. The change's ± is its standard error (paired bootstrap over the domain's test rows).",
            "",
            "| domain | test AUC | trimmed | change ± s.e. | model ms | trimmed model ms | features ms "
            "| trimmed features ms |",
            "|---|---|---|---|---|---|---|---|",
            *per_domain,
            *(variants_section(variants, run.directory / "variants", how) if variants is not None else []),
            "",
            IMPORTANCE_TITLES[args.importance],
            "",
            "| feature | " + " | ".join(schema.domains) + " |",
            "|---|" + "---|" * schema.num_domains,
            *rows,
        ]
    )
    (run.directory / "trim.md").write_text(report + "\n")
    by_domain = lambda t: dict(zip(schema.domains, t.tolist(), strict=True))  # noqa: E731
    (run.directory / "trim.json").write_text(
        json.dumps(
            {
                "budget": args.budget,
                "latency_budget_ms": by_domain(budgets) if budgets is not None else None,
                "auc_loss_limit": limit,
                "features": plan.features,
                "dropped": {d: plan.dropped(d) for d in schema.domains},
                "verdict": dict(zip(schema.domains, [v.value for v in plan.verdict], strict=True)),
                "val_auc_before": by_domain(plan.auc_before),
                "val_auc_after": by_domain(plan.auc_after),
                "check_auc_before": by_domain(plan.check_before),
                "check_auc_after": by_domain(plan.check_after),
                "test_auc_before": by_domain(test_before),
                "test_auc_after": by_domain(test_after),
                "model_ms": by_domain(latency.model_ms) if latency is not None else None,  # the latency plan's
                "timed_model_ms": {name: by_domain(t) for name, t in timed.items()},  # full and trimmed, in turns
                "features_ms": float(fetch_before),
                "trimmed_features_ms": by_domain(fetch_after),
                "test_auc_change_se": by_domain(test_se),
                "importance_method": args.importance,
                "importance": {f: by_domain(importance[i]) for i, f in enumerate(plan.features)},
                "variants": variants,
            },
            indent=2,
        )
    )
    print(report)
    if variants is not None and max(variants["sliced_difference"], variants["max_abs_difference"]) > TOLERANCE:
        difference = max(variants["sliced_difference"], variants["max_abs_difference"])
        print(f"mdrec-trim: a variant differs from what it must equal by {difference:.2e}", file=sys.stderr)
        return 1
    if args.tradeoff:
        tradeoff(run, full, fit, check, test_before, test, plan, sorted({args.budget, *args.tradeoff}), args.min_rows)
    return 0


IMPORTANCE_TITLES = {
    "permutation": "Permutation importance on the choosing half (AUC drop when the feature is shuffled within the "
    "domain):",
    "ablation": "Ablation importance on the choosing half (AUC drop when the feature is blanked and every domain's "
    "adapter briefly re-trained without it, against the same re-training with every feature):",
}


def trimmed_variants(
    run: AdaptRun, drop: torch.Tensor, check: Batch, test: Batch, train: Batch | None, how: Retraining
) -> dict[str, Any]:
    """Topology A: every domain's variant without its features ``drop`` (bool ``[K, F + N]``), checked against the
    blanked model on ``check`` (``sliced_difference``), then (``how.steps`` > 0) its dense layers re-trained on the
    domain's rows of ``train``; the re-trained variant is kept where its AUC on the domain's ``check`` rows is no
    lower than the sliced one's. Exported to ``<run>/variants`` (:func:`export_variants`); returns the routing
    report with, per domain, the AUC of the sliced and the re-trained variant on ``check`` and ``test`` and which
    was kept."""
    schema = run.schema
    sliced_difference = blanked_difference(run.net, schema, drop, check)
    chosen, results = {}, {}
    for d, name in enumerate(schema.domains):
        model = variant(run.net, schema, d, drop[d])
        aucs = {"sliced": [variant_auc(model, data, d, drop[d]) for data in (check, test)]}
        served = "sliced"
        if how.steps > 0 and train is not None and bool((train.domain == d).any()):
            rows = train.rows(torch.nonzero(train.domain == d).flatten())
            again, losses = recovered(model, rows, drop[d], how)
            aucs["retrained"] = [variant_auc(again, data, d, drop[d]) for data in (check, test)]
            if not aucs["retrained"][0] < aucs["sliced"][0]:  # kept unless it loses on the checking half (NaN: kept)
                model, served = again, "retrained"
            aucs["loss"] = [sum(losses[:10]) / 10, sum(losses[-10:]) / 10]  # the first and last ten steps
        chosen[name] = model
        results[name] = {
            "check_auc_sliced": aucs["sliced"][0],
            "test_auc_sliced": aucs["sliced"][1],
            "check_auc_retrained": aucs.get("retrained", [None, None])[0],
            "test_auc_retrained": aucs.get("retrained", [None, None])[1],
            "train_loss_first_last": aucs.get("loss"),
            "served": served,
        }
    routing = export_variants(chosen, drop, check, run.directory / "variants")
    return routing | {"sliced_difference": sliced_difference, "auc": results}


def variant_auc(model: torch.nn.Module, data: Batch, domain: int, drop: torch.Tensor) -> float:
    """AUC of a variant of ``domain`` (without ``drop``) on that domain's rows of ``data`` (NaN: one class)."""
    rows = data.rows(torch.nonzero(data.domain == domain).flatten())
    with torch.no_grad():
        probs = model(*split_inputs(rows, drop))[:, 0]
    return float(grouped_auc(probs, rows.labels[:, 0], torch.zeros_like(rows.domain), 1)[0][0])


def variants_section(variants: dict[str, Any], directory: Path, how: Retraining) -> list[str]:
    """trim.md's lines on topology A."""
    lines = [
        "",
        f"Topology A: a variant per domain without its dropped features in {directory} (routing.json: each domain's "
        f"file and the features its requests carry). As sliced, the variants equal the trimmed model (largest "
        f"difference {variants['sliced_difference']:.2e}); each was then re-trained ({how.steps} Adam steps of "
        f"{how.rows} of its domain's training rows, learning rate {how.lr:g}, its dense layers only) and the "
        "re-trained one is served unless it loses AUC on the checking half. Exported files match their modules to "
        f"{variants['max_abs_difference']:.2e}. Time them with scripts/bench_trim.py.",
        "",
        "| domain | AUC checking half: sliced | re-trained | test: sliced | re-trained | served |",
        "|---|---|---|---|---|---|",
    ]
    number = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for name, r in variants["auc"].items():
        cells = [r["check_auc_sliced"], r["check_auc_retrained"], r["test_auc_sliced"], r["test_auc_retrained"]]
        lines.append(f"| {name} | " + " | ".join(number(c) for c in cells) + f" | {r['served']} |")
    return lines


def tradeoff(
    run: AdaptRun,
    full: torch.nn.Module,
    fit: Batch,
    check: Batch,
    test_before: torch.Tensor,
    test: Batch,
    plan: TrimPlan,
    budgets: list[float],
    min_rows: int,
) -> None:
    """Plan with each budget (from ``plan``'s importances; ``plan`` itself is reused for its own budget); write
    features kept and the test AUC change per domain (``test_before [K]``: all features) against the budget:
    ``trim_tradeoff.json`` and the plot ``trim_tradeoff.png``."""
    schema, predict = run.schema, click_probability(full)
    with torch.no_grad():
        plans = [
            plan if b == plan.limit else plan_trimming(predict, fit, check, schema, plan.importance, b, min_rows)
            for b in budgets
        ]
        trimmed = [click_probability(run.serving_model(p.drop)) for p in plans]
        test_after = [domain_aucs(model, test, schema.num_domains) for model in trimmed]
    total = len(plans[0].features)
    kept = [[total - len(p.dropped(d)) for d in schema.domains] for p in plans]  # [budgets][K]
    change = [(after - test_before).tolist() for after in test_after]  # [budgets][K]
    (run.directory / "trim_tradeoff.json").write_text(
        json.dumps({"budgets": budgets, "domains": list(schema.domains), "kept": kept, "test_auc_change": change})
    )
    tradeoff_plot(budgets, kept, change, list(schema.domains), total, run.directory / "trim_tradeoff.png")
    print(f"trade-off over budgets {budgets}: {run.directory / 'trim_tradeoff.png'}")


def trim_main() -> None:
    sys.exit(trim())
