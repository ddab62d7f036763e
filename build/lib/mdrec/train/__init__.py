"""Training: the LightningModule, the run, the command line (``python -m mdrec.train``)."""
