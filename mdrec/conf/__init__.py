"""The Hydra config tree of mdrec (a package, so that Hydra also finds it as ``pkg://mdrec.conf``)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
