"""mdrec: multi-domain recommendation: pre-train a backbone once, adapt each domain with a small adapter."""

import os

from omegaconf import OmegaConf

__version__ = "0.1.0"

# the directory a run was launched from, resolvable before Hydra has a job (a multirun's sweep directory needs it)
OmegaConf.register_new_resolver("mdrec.cwd", os.getcwd, replace=True)
