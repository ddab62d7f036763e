"""Command lines: ``python -m mdrec.train`` / ``mdrec-train`` (Hydra overrides as arguments) and ``mdrec-eval``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

import mdrec
from mdrec.conf import CONFIG_DIR
from mdrec.console import quiet_third_party
from mdrec.eval.report import domain_table
from mdrec.rundir import RunDir
from mdrec.train.evaluate import evaluate_run
from mdrec.train.extras import Extras
from mdrec.train.run import record_failure, train
from mdrec.train.typecheck import check_types


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def run(cfg: DictConfig) -> float | None:
    """Run one training job; return the metric named by ``optimized_metric`` (for hyper-parameter sweepers).

    A job that raises leaves ``failure.json`` (the error and its traceback) in its run directory, then re-raises:
    Hydra's launcher goes on with the sweep's other jobs, and ``mdrec-report`` lists the failure.
    """
    name = cfg.get("optimized_metric")
    try:
        apply_extras(cfg)
        metrics = train(cfg)
        if name and name not in metrics:
            raise ValueError(
                f"optimized_metric {name!r} is not among the run's metrics "
                f"({sorted(k for k in metrics if '/' in k)[:12]} ...); the val/ and test/ figures of the selected "
                "model need test=true"
            )
    except Exception as error:
        record_failure(Path(cfg.paths.output_dir), error)
        raise
    return metrics[name] if name else None


def apply_extras(cfg: DictConfig) -> None:
    """The job's ``extras`` (:class:`~mdrec.train.extras.Extras`: tags, the config tree), its types checked first."""
    if cfg.get("extras") is None:
        return
    check_types(cfg)
    extras: Extras = hydra.utils.instantiate(cfg.extras)
    job = HydraConfig.get()
    can_ask = job.mode == RunMode.RUN and sys.stdin.isatty() and sys.stdout.isatty()
    extras.apply(cfg, job.runtime.choices.get("experiment"), can_ask)


def main() -> None:
    """Entry point of ``mdrec-train``: ``--version`` prints mdrec's version; otherwise check that the config tree is
    there and hand over to Hydra."""
    if sys.argv[1:] == ["--version"]:
        print(f"mdrec {mdrec.__version__}")
        return
    if not (CONFIG_DIR / "train.yaml").exists():
        sys.exit(
            f"mdrec: no config tree at {CONFIG_DIR}: the installation is incomplete; reinstall mdrec "
            "(`pip install --force-reinstall <mdrec>`)"
        )
    quiet_third_party()
    run()


EVAL_USAGE = """usage: mdrec-eval <run dir> [key=value ...]

Evaluate the model a finished mdrec run selected (any stage: train, pretrain, adapt, onboard) and write its
per-domain metrics (metrics.json) and the eval's config.yaml into output_dir (default <run dir>/eval/<time>).
Hydra overrides of mdrec/conf/eval.yaml: split=val|test (default test), data.<key>=... (the run's own data config,
e.g. data.batch_size=4096), data=<option> (another data config on the run's schema), output_dir=<dir>,
trainer.accelerator=gpu, threads=<n>.
"""


def evaluate(argv: list[str] | None = None) -> int:
    """``mdrec-eval <run dir> [overrides]``: print the per-domain table, write ``metrics.json``; 0 on success."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(EVAL_USAGE)
        return 0 if args else 2
    run_dir = Path(args[0])
    if not run_dir.is_dir():
        sys.exit(f"mdrec-eval: {run_dir} is not a directory; give the directory of a finished mdrec run")
    quiet_third_party()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        result = evaluate_run(run_dir, args[1:])
    except (FileNotFoundError, ValueError, TypeError, HydraException) as error:
        sys.exit(f"mdrec-eval: {error}")
    print(f"per-domain {result.split} metrics of {run_dir}:")
    print(domain_table(result.metrics, result.domains, stage=result.split))
    print(f"written: {result.output_dir / RunDir.METRICS}")
    return 0


def eval_main() -> None:
    """Entry point of ``mdrec-eval``."""
    sys.exit(evaluate())


if __name__ == "__main__":
    main()
