"""Command line: ``python -m mdrec.train`` / ``mdrec-train`` (Hydra overrides as arguments)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import mdrec
from mdrec.console import quiet_third_party
from mdrec.train.extras import Extras
from mdrec.train.run import record_failure, train
from mdrec.train.typecheck import check_types

# the config tree shipped inside the package; `--config-dir <dir>` puts a directory of your own in front of it
CONFIG_PATH = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path=str(CONFIG_PATH), config_name="train")
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
    if not (CONFIG_PATH / "train.yaml").exists():
        sys.exit(
            f"mdrec: no config tree at {CONFIG_PATH}: the installation is incomplete; reinstall mdrec "
            "(`pip install --force-reinstall <mdrec>`)"
        )
    quiet_third_party()
    run()


if __name__ == "__main__":
    main()
