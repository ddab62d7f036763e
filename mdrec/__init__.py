"""mdrec: multi-domain recommendation: pre-train a backbone once, adapt each domain with a small adapter."""

__version__ = "0.1.0"
