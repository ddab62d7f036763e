"""The drift check of an adapted (or onboarded) run on fresh data, and the re-adaptation of the domains that moved
(``mdrec-drift <run dir> [--readapt] [overrides]`` or ``python -m mdrec.train.drift ...``, docs/methods.md, Drift
re-evaluation).

The fresh data come as ``mdrec-eval``'s do (:func:`~mdrec.train.evaluate.compose_eval` of ``mdrec/conf/drift.yaml``:
the run's own data config with other rows, or ``data=aligned`` files encoded with the run's ``encoding.json``) and
must read as the run's own (same fields, vocabulary sizes, labels; domains starting with the run's). Per domain of
the run (``mdrec.eval.drift``): AUC and log loss of the fresh ``split`` rows against the run's own test rows
(unpaired bootstrap), calibration (overall and in bins, ``reliability.png``), and the PSI of every field over all the
fresh rows against the run's training rows, both stored in the run's ``drift_reference.npz`` when it was adapted.
Domains without fresh rows, without a reference, or unknown to the run are skipped and listed. ``readapt=true``
(``--readapt``) then trains exactly the flagged domains' adapter slices on the fresh rows with stage=onboard
(``stage.domains=<flagged>``: every other domain's predictions stay bit-identical), in ``<output_dir>/readapt``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from mdrec.conf import CONFIG_DIR
from mdrec.console import quiet_third_party
from mdrec.data.alignment import Encoding
from mdrec.data.datamodule import MultiDomainDataModule
from mdrec.eval.drift import (
    DomainDrift,
    DomainReference,
    Thresholds,
    check_domain,
    drift_json,
    drift_markdown,
    reference_arrays,
    reference_of,
)
from mdrec.eval.plots import reliability_plot
from mdrec.rundir import RunDir, check_targets
from mdrec.train.checkpoint import load_selected
from mdrec.train.evaluate import compose_eval, job_config, prepared_data
from mdrec.train.onboarding import batches, drift_reference, model_columns
from mdrec.train.run import oracle_metrics, train
from mdrec.train.stages import Runner, check_same_fields
from mdrec.train.typecheck import check_types

log = logging.getLogger(__name__)

DRIFT_JSON, DRIFT_MD, RELIABILITY_PNG, READAPT_DIR = "drift.json", "drift.md", "reliability.png", "readapt"


@dataclass(frozen=True)
class DriftResult:
    """What :func:`check_drift` found: the per-domain checks, the domains skipped (with why), the flagged ones, the
    re-adapted run's figures (``readapt/...``; empty without ``readapt``) and where it wrote them."""

    checks: list[DomainDrift]
    skipped: dict[str, str]
    flagged: list[str]
    readapt: dict[str, float]
    output_dir: Path


@torch.no_grad()
def first_label_probabilities(net: torch.nn.Module, data: MultiDomainDataModule, rows: np.ndarray) -> np.ndarray:
    """``[n]``: the network's probability of the first label on the store's ``rows`` (eval mode, the CPU)."""
    net.eval()
    probs = [torch.sigmoid(net(batch).logits[:, 0]) for batch in batches(data, rows)]
    return torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros(0)


def check_drift(run_path: Path, overrides: Sequence[str], run: Runner = train) -> DriftResult:
    """Check the run in ``run_path`` on the fresh data ``overrides`` compose (module docstring); write
    ``drift.json`` (with ``oracle``: the true probabilities' figures on synthetic data), ``drift.md``,
    ``reliability.png`` and ``config.yaml`` into ``output_dir`` (default ``<run dir>/drift/<time>``); with ``readapt``
    re-adapt the flagged domains with ``run`` (a config to completion).

    Raises:
        FileNotFoundError: the run has no ``drift_reference.npz`` or ``encoding.json`` (the error says what to do).
        ValueError: a bad split, data with other fields than the run's, or a file refused by :mod:`mdrec.rundir`.
    """
    run_dir = RunDir(run_path)
    cfg = job_config(run_dir, overrides, "drift")
    out = Path(cfg.paths.output_dir)
    reference = reference_of(run_dir.read_drift_reference(), run_dir.file(RunDir.DRIFT_REFERENCE))
    encoding = Encoding.of_run(run_dir.path)
    thresholds: Thresholds = hydra.utils.instantiate(cfg.thresholds)
    data = prepared_data(run_dir, cfg)
    schema = data.schema
    check_same_fields(encoding.schema, schema, run_dir.path, "mdrec.train.drift")
    k = encoding.schema.num_domains
    net = load_selected(run_dir, replace(schema, domains=schema.domains[:k]))
    checks, skipped = domain_checks(cfg, data, net, reference, k, thresholds)
    for name, why in skipped.items():
        log.warning("drift check of %s: %s skipped: %s", run_dir.path, name, why)
    flagged = [c.domain for c in checks if c.flagged]
    report = RunDir(out)
    report.write_config(cfg)
    record = drift_json(checks, skipped, thresholds)
    record["oracle"] = oracle_metrics(data, cfg.split)  # the true probabilities' metrics (synthetic data only)
    markdown = drift_markdown(checks, skipped, thresholds, f"Drift check of {run_dir.path}")
    reliability_plot(
        {c.domain: [(b.predicted, b.observed) for b in c.bins] for c in checks},
        out / RELIABILITY_PNG,
        f"fresh {cfg.split} rows, {cfg.calibration_bins} equal-mass bins",
    )
    readapted: dict[str, float] = {}
    if cfg.readapt and flagged:
        readapted = readapt(run_dir, cfg, flagged, out / READAPT_DIR, run)
        record["readapt"] = readapted
        markdown += readapt_markdown(readapted, flagged, out / READAPT_DIR)
    elif cfg.readapt:
        markdown += "\nNothing flagged: nothing re-adapted.\n"
    report.write_json(DRIFT_JSON, record)
    report.file(DRIFT_MD).write_text(markdown)
    return DriftResult(checks, skipped, flagged, readapted, out)


def domain_checks(
    cfg: DictConfig,
    data: MultiDomainDataModule,
    net: torch.nn.Module,
    reference: dict[str, DomainReference],
    k: int,
    thresholds: Thresholds,
) -> tuple[list[DomainDrift], dict[str, str]]:
    """The check of each of the run's ``k`` domains on ``data`` (``mdrec.eval.drift.check_domain``: every fresh row
    for the PSI, the ``cfg.split`` rows for quality and calibration), and the domains skipped with why: without a
    reference, without fresh rows, or unknown to the run (the data's domains after the first ``k``)."""
    schema = data.schema
    domain = np.asarray(data.store.column(schema.domain_field))
    split_rows = data.splits[cfg.split]
    checks, skipped = [], {}
    for d, name in enumerate(schema.domains[:k]):
        rows = np.flatnonzero(domain == d)
        if name not in reference:
            skipped[name] = "the run's reference (drift_reference.npz) has no rows of it"
        elif not len(rows):
            skipped[name] = "the fresh data hold no row of it"
        else:
            test = split_rows[domain[split_rows] == d]
            labels = np.asarray(data.store.column(schema.labels[0])[test], dtype=np.float64)
            probs = first_label_probabilities(net, data, test)
            check = check_domain(
                name,
                reference[name],
                model_columns(data, rows),
                probs,
                labels,
                thresholds,
                cfg.calibration_bins,
                cfg.resamples,
                cfg.seed,
            )
            checks.append(check)
    for name in schema.domains[k:]:
        skipped[name] = "a domain the run does not know: onboard it (stage=onboard)"
    return checks, skipped


def readapt(run_dir: RunDir, cfg: DictConfig, flagged: list[str], out: Path, run: Runner) -> dict[str, float]:
    """Train the ``flagged`` domains' adapter slices of the run on the fresh data with ``run``
    (:func:`readapt_config`) into ``out``; return the figures per flagged domain on the fresh test rows, before (the
    run's model: the onboard run's step 0) and after, and the largest change of any other domain's prediction."""
    log.info("re-adapting %s of %s on the fresh data into %s", flagged, run_dir.path, out)
    metrics = run(readapt_config(run_dir, cfg, flagged, out))
    figures = {"readapt/other_domains_max_abs_change": metrics["onboard/other_domains_max_abs_change"]}
    for d in flagged:
        figures[f"readapt/auc_before/{d}"] = metrics[f"zeroshot/test/auc/{d}"]
        figures[f"readapt/auc_after/{d}"] = metrics[f"test/auc/{d}"]
    return figures


# options of the run's trainer and callbacks that name classes or the run's own directory: the package's are used
OWN_OPTIONS = ("_target_", "default_root_dir", "plugins", "dirpath", "save_dir")


def readapt_config(run_dir: RunDir, cfg: DictConfig, flagged: list[str], out: Path) -> DictConfig:
    """The stage=onboard training config that re-adapts ``flagged`` into ``out``: mdrec's ``train.yaml`` with the
    drift check's ``stage`` (``domains=flagged``), data, paths and seed, and the run's own settings from its
    ``config.yaml``: its ``model`` node, its trainer's options (epochs, limits, precision) and its callbacks'
    (those it dropped dropped), over the package's classes (``OWN_OPTIONS`` are the package's): a config read from a
    file instantiates no class but mdrec's."""
    ran = OmegaConf.to_container(run_dir.read_config(), resolve=True)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = compose("train", overrides=["stage=onboard", f"paths.output_dir={out}"])
    plain = lambda node: {k: v for k, v in (node or {}).items() if k not in OWN_OPTIONS}  # noqa: E731
    trainer = plain(ran.get("trainer"))
    callbacks = {name: plain(c) for name, c in (ran.get("callbacks") or {}).items() if c is not None}
    kept = {"model": ran["model"], "trainer": trainer, "callbacks": callbacks}
    check_targets(kept, run_dir.file(RunDir.CONFIG), "")
    with open_dict(base):
        base.paths = {**OmegaConf.to_container(cfg.paths, resolve=True), "output_dir": str(out)}
        base.stage = {**OmegaConf.to_container(cfg.stage, resolve=True), "domains": list(flagged)}
        base.data = OmegaConf.to_container(cfg.data, resolve=True)
        base.model = kept["model"]
        base.trainer = OmegaConf.merge(base.trainer, trainer)
        for name in list(base.callbacks or {}):
            if name in callbacks:
                base.callbacks[name] = OmegaConf.merge(base.callbacks[name], callbacks[name])
            else:
                del base.callbacks[name]
        base.seed = cfg.seed
        base.test = True
    return base


def readapt_markdown(figures: dict[str, float], flagged: list[str], out: Path) -> str:
    """The re-adaptation's figures as markdown."""
    lines = [
        "",
        f"## Re-adapted: {', '.join(flagged)} ({out})",
        "",
        "| domain | AUC before (fresh test rows) | AUC after | change |",
        "|---|---|---|---|",
    ]
    for d in flagged:
        before, after = figures[f"readapt/auc_before/{d}"], figures[f"readapt/auc_after/{d}"]
        lines.append(f"| {d} | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
    change = figures["readapt/other_domains_max_abs_change"]
    lines += ["", f"Every other domain's largest prediction change: {change} (bit-identical: 0.0)"]
    return "\n".join(lines) + "\n"


def write_reference(run_path: Path, overrides: Sequence[str]) -> list[str]:
    """Write ``drift_reference.npz`` into a run made without one, from its own data config (``overrides``: e.g.
    ``data.data_dir=...``; its training rows must still be there) and its ``predictions.npz``; return the domains
    written (those with training rows in that data)."""
    run_dir = RunDir(run_path)
    cfg = compose_eval(run_dir, overrides, "drift")
    check_types(cfg)
    data = prepared_data(run_dir, cfg)
    encoding = Encoding.of_run(run_dir.path)
    check_same_fields(encoding.schema, data.schema, run_dir.path, "--write-reference")
    predictions = run_dir.read_predictions() if run_dir.exists(RunDir.PREDICTIONS) else {}
    reference = drift_reference(data, predictions, list(encoding.schema.domains))
    run_dir.write_drift_reference(reference_arrays(reference))
    return list(reference)


USAGE = """usage: mdrec-drift <run dir> [--readapt] [key=value ...]      (or python -m mdrec.train.drift ...)
       mdrec-drift <run dir> --write-reference [key=value ...]

Check an adapted (or onboarded) run on fresh data, per domain: AUC and log loss against the run's own test rows,
calibration, and the PSI of every field against the run's training rows; name the domains that moved and write
drift.json, drift.md and reliability.png into output_dir (default <run dir>/drift/<time>). --readapt (readapt=true)
re-adapts exactly the flagged domains on the fresh rows (stage=onboard; the others stay bit-identical).
--write-reference writes the reference (drift_reference.npz) of a run made without one, from its own data.
Hydra overrides of mdrec/conf/drift.yaml: data=<option> / data.<key>=... (the fresh data), split=val|test,
thresholds.delta|calibration|psi|confidence=..., resamples=..., output_dir=..., stage.<key>=... (the re-adaptation).
"""


def main(argv: list[str] | None = None) -> int:
    """The command line (``USAGE``): print the drift table; 0 on success, whatever was flagged."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    run_dir, rest = Path(args[0]), args[1:]
    if not run_dir.is_dir():
        sys.exit(f"mdrec-drift: {run_dir} is not a directory; give the directory of a stage=adapt or onboard run")
    overrides = ["readapt=true" if a == "--readapt" else a for a in rest if a != "--write-reference"]
    quiet_third_party()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        if "--write-reference" in rest:
            written = write_reference(run_dir, overrides)
            print(f"written: {RunDir(run_dir).file(RunDir.DRIFT_REFERENCE)} (domains {written})")
            return 0
        result = check_drift(run_dir, overrides)
    except (FileNotFoundError, ValueError, TypeError, HydraException) as error:
        sys.exit(f"mdrec-drift: {error}")
    print((result.output_dir / DRIFT_MD).read_text())
    print(f"written: {result.output_dir / DRIFT_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
