"""Command lines of an adapt run's serving side.

``mdrec-export <run dir>``: the run's backbone and all its domains' adapters as one TorchScript serving graph,
checked against the model as trained on validation batches: as they are, routed through every domain in turn, and
both with unknown domain ids mixed in.

``mdrec-trim <run dir>``: per-domain feature trimming on the validation rows (permutation importance, a plan
under an AUC-loss budget), the trimmed serving graph, and a report of features kept, AUC and latency per domain.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mdrec.adapters.base import AdaptedNet
from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.data.schema import Schema
from mdrec.eval.plots import tradeoff_plot
from mdrec.eval.trim import (
    Predict,
    TrimPlan,
    concat,
    domain_aucs,
    permutation_importance,
    plan_trimming,
    trim_table,
)
from mdrec.rundir import RunDir
from mdrec.serve.export import export, max_difference, serving_inputs
from mdrec.serve.parallel import TOLERANCE, AdapterFactory, ParallelModel
from mdrec.serve.timing import percentile, time_calls


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
    """What the serving tools load from an adapt run directory."""

    directory: Path
    datamodule: MultiDomainDataModule
    net: AdaptedNet
    make_adapter: AdapterFactory

    @property
    def schema(self) -> Schema:
        return self.datamodule.schema

    def batches(self, split: str, limit: int | None = None) -> list[Batch]:
        """Up to ``limit`` batches of ``split`` (``"val"`` or ``"test"``; all when None), ids mapped as in training."""
        loader = {"val": self.datamodule.val_dataloader, "test": self.datamodule.test_dataloader}[split]()
        out = []
        for i, batch in enumerate(loader):
            if i == limit:
                break
            out.append(self.datamodule.on_before_batch_transfer(batch, 0))
        return out

    def serving_model(self, drop: torch.Tensor | None = None) -> ParallelModel:
        return ParallelModel(self.net, self.schema, self.make_adapter, drop)


def load_run(directory: Path, tool: str) -> AdaptRun:
    """The adapt run in ``directory``: its data (prepared as configured), adapted network and adapter factory."""
    run_dir = RunDir(directory)
    missing = [name for name in (RunDir.CONFIG, RunDir.ADAPTER) if not run_dir.exists(name)]
    if missing:
        sys.exit(f"{tool}: {directory} lacks {missing}; give the directory of a finished stage=adapt run")
    datamodule: MultiDomainDataModule = run_dir.instantiate("data")
    datamodule.prepare_data()
    datamodule.setup()
    net = run_dir.load_adapted(datamodule.schema).eval()
    return AdaptRun(directory, datamodule, net, run_dir.adapter_factory())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdrec-export", description=__doc__)
    parser.add_argument("run", type=Path, help="a stage=adapt (or onboard) run directory")
    parser.add_argument("--out", type=Path, help="the TorchScript file (default: <run>/serving.pt)")
    parser.add_argument("--batches", type=int, default=4, help="validation batches to check (default 4)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be at least 1 (the export is checked on that many batches), got {args.batches}")
    run = load_run(args.run, "mdrec-export")
    schema, net, model = run.schema, run.net, run.serving_model()
    batches = run.batches("val", args.batches)
    out = args.out or RunDir(args.run).file(RunDir.SERVING)
    served = export(model, batches[0], out)
    routed = [with_every_domain(b, schema.num_domains) for b in batches]
    checked = [with_unknown_domains(b, schema.num_domains) for b in [*batches, *routed]]
    difference = max(max_difference(served, net, b) for b in [*batches, *routed, *checked])
    report = {
        "file": str(out),
        "domains": list(schema.domains),
        "rows_checked": 4 * sum(b.size for b in batches),
        "unknown_rows_checked": int(served.unknown_rows),
        "max_abs_difference": difference,
        "tolerance": TOLERANCE,
    }
    (out.parent / f"{out.stem}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if difference > TOLERANCE:
        print(f"mdrec-export: the exported model differs from the trained one by {difference:.2e}", file=sys.stderr)
        return 1
    return 0


def export_main() -> None:
    sys.exit(main())


def click_probability(model: torch.nn.Module) -> Predict:
    """The serving model as a trimming ``Predict``: a batch -> its rows' click probabilities ``[B]``."""
    return lambda batch: model(*serving_inputs(batch))[:, 0]


def p50_latency(models: dict[str, torch.nn.Module], batch: Batch, repeats: int = 50) -> dict[str, float]:
    """Median seconds per call of each model on ``batch``, the models taking turns."""
    inputs = serving_inputs(batch)
    with torch.no_grad():
        times = time_calls({name: functools.partial(m, *inputs) for name, m in models.items()}, repeats, warmup=3)
    return {name: percentile(values, 0.5) for name, values in times.items()}


def trim(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdrec-trim", description=__doc__)
    parser.add_argument("run", type=Path, help="a stage=adapt run directory")
    parser.add_argument("--budget", type=float, default=0.001, help="AUC loss allowed per domain (default 0.001)")
    parser.add_argument("--min-rows", type=int, default=2000, help="domains with fewer validation rows keep all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    parser.add_argument("--latency-rows", type=int, default=512, help="batch size of the latency check")
    parser.add_argument(
        "--tradeoff",
        type=float,
        nargs="+",
        metavar="BUDGET",
        help="also plan with each of these budgets: features kept and test AUC change per domain against the budget "
        "(trim_tradeoff.json, trim_tradeoff.png)",
    )
    args = parser.parse_args(argv)
    run = load_run(args.run, "mdrec-trim")
    schema, full = run.schema, run.serving_model()
    val = concat(run.batches("val"))
    test = concat(run.batches("test"))
    with torch.no_grad():
        importance = permutation_importance(click_probability(full), val, schema, seed=args.seed)
        plan = plan_trimming(click_probability(full), val, schema, args.budget, importance, args.min_rows)
        trimmed = run.serving_model(plan.drop)
        test_before = domain_aucs(click_probability(full), test, schema.num_domains)
        test_after = domain_aucs(click_probability(trimmed), test, schema.num_domains)
    latency = p50_latency({"full": full, "trimmed": trimmed}, val.rows(torch.arange(min(args.latency_rows, val.size))))
    export(trimmed, val.rows(torch.arange(min(64, val.size))), run.directory / "serving_trimmed.pt")
    rows = [
        f"| {name} | " + " | ".join(f"{float(importance[f, d]):+.4f}" for d in range(schema.num_domains)) + " |"
        for f, name in enumerate(plan.features)
    ]
    report = "\n".join(
        [
            f"# Feature trimming of {run.directory}",
            "",
            f"Per domain, on the validation rows (budget: AUC loss <= {args.budget:g} per domain; a domain with "
            f"fewer than {args.min_rows} validation rows keeps every feature):",
            "",
            trim_table(plan),
            "",
            "Test AUC per domain, all features -> trimmed: "
            + ", ".join(
                f"{d} {float(test_before[i]):.4f} -> {float(test_after[i]):.4f}" for i, d in enumerate(schema.domains)
            ),
            "",
            f"Serving latency (parallel model, {min(args.latency_rows, val.size)} validation rows, p50): all features "
            f"{latency['full'] * 1e3:.2f} ms, trimmed {latency['trimmed'] * 1e3:.2f} ms. Blanked features are "
            "still looked up (id 0): the saving is in the features a serving system no longer fetches.",
            "",
            "Permutation importance (validation AUC drop when the feature is shuffled within the domain):",
            "",
            "| feature | " + " | ".join(schema.domains) + " |",
            "|---|" + "---|" * schema.num_domains,
            *rows,
        ]
    )
    (run.directory / "trim.md").write_text(report + "\n")
    (run.directory / "trim.json").write_text(
        json.dumps(
            {
                "budget": args.budget,
                "features": plan.features,
                "dropped": {d: plan.dropped(d) for d in schema.domains},
                "val_auc_before": dict(zip(schema.domains, plan.auc_before.tolist(), strict=True)),
                "val_auc_after": dict(zip(schema.domains, plan.auc_after.tolist(), strict=True)),
                "test_auc_before": dict(zip(schema.domains, test_before.tolist(), strict=True)),
                "test_auc_after": dict(zip(schema.domains, test_after.tolist(), strict=True)),
                "latency_p50_s": latency,
            },
            indent=2,
        )
    )
    print(report)
    if args.tradeoff:
        tradeoff(run, full, val, test_before, test, plan, sorted({args.budget, *args.tradeoff}), args.min_rows)
    return 0


def tradeoff(
    run: AdaptRun,
    full: torch.nn.Module,
    val: Batch,
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
            plan if b == plan.budget else plan_trimming(predict, val, schema, b, plan.importance, min_rows)
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
