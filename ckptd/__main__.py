"""``python -m ckptd``."""

from ckptd.cli.main import console

console()
