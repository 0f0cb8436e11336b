"""ckptd: a checkpoint-management daemon for machine-learning training runs."""

__version__ = "0.1.0"
