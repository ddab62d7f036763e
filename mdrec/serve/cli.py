"""``mdrec-export <run dir>``: the run's backbone and all its domains' adapters as one TorchScript serving graph,
checked against the model as trained on validation batches (with unknown domain ids mixed in)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from mdrec.adapters.saved import ADAPTER, RUN_CONFIG, load_adapted
from mdrec.data.batch import Batch
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.serve.export import export, max_difference
from mdrec.serve.parallel import ParallelModel

TOLERANCE = 1e-5


def with_unknown_domains(batch: Batch, num_domains: int, every: int = 10) -> Batch:
    """``batch`` with every ``every``-th row's domain id replaced by ids the model does not know (K, -1)."""
    rows = torch.arange(batch.size)
    unknown = torch.where(rows % (2 * every) == 0, num_domains, -1)
    domain = torch.where(rows % every == 0, unknown, batch.domain)
    return Batch(batch.sparse, batch.dense, domain, batch.labels, batch.seq, batch.seq_lengths, batch.weight)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdrec-export", description=__doc__)
    parser.add_argument("run", type=Path, help="a stage=adapt (or onboard) run directory")
    parser.add_argument("--out", type=Path, help="the TorchScript file (default: <run>/serving.pt)")
    parser.add_argument("--batches", type=int, default=4, help="validation batches to check (default 4)")
    args = parser.parse_args(argv)
    missing = [name for name in (RUN_CONFIG, ADAPTER) if not (args.run / name).exists()]
    if missing:
        sys.exit(f"mdrec-export: {args.run} lacks {missing}; give the directory of a finished stage=adapt run")
    cfg = OmegaConf.load(args.run / RUN_CONFIG)
    datamodule: MultiDomainDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    schema = datamodule.schema
    net = load_adapted(args.run, schema).eval()
    model = ParallelModel(net, schema, hydra.utils.instantiate(cfg.adapter, _partial_=True))
    batches = []
    for i, batch in enumerate(datamodule.val_dataloader()):
        if i == args.batches:
            break
        batches.append(datamodule.on_before_batch_transfer(batch, 0))
    out = args.out or args.run / "serving.pt"
    served = export(model, batches[0], out)
    checked = [with_unknown_domains(b, schema.num_domains) for b in batches]
    difference = max(max_difference(served, net, b) for b in [*batches, *checked])
    report = {
        "file": str(out),
        "domains": list(schema.domains),
        "rows_checked": 2 * sum(b.size for b in batches),
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
