"""Command line: ``python -m mdrec.train`` / ``mdrec-train`` (Hydra overrides as arguments)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mdrec.train.run import train

# the repository's conf/ (mdrec is installed in editable mode); `--config-dir` adds a directory of your own
CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one training job; return the metric named by ``optimized_metric`` (for hyper-parameter sweepers)."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
