"""The Hydra config tree of mdrec (a package, so that Hydra finds it as pkg://mdrec.conf)."""
