"""The per-file budgets (``limits:``) of the config that ``-c`` names, for the file-level commands.

``ckptd convert -c CONFIG`` is handled here (``ckptd.cli.main.HANDLER_MODULES``): the config's
limits, then ``ckptd.cli.convert_cmds``. Without ``-c`` that module is imported alone, so a
conversion does not import the config loader (yaml and the schema: 0.01 CPU s of its start-up,
README, "Benchmarks"). ``inspect`` and ``verify`` take their limits here too.
"""

from __future__ import annotations

import argparse

from ckptd.cli import convert_cmds
from ckptd.config.load import load_config
from ckptd.limits import DEFAULT_LIMITS, Limits


def limits_of(args: argparse.Namespace) -> Limits:
    """The config's ``limits`` with -c, else the defaults (a bad config is a usage error, exit 2)."""
    if args.config is None:
        return DEFAULT_LIMITS
    return load_config(args.config, check_roots=False).limits  # only its limits: section


def handle(args: argparse.Namespace) -> int:
    """``ckptd convert -c CONFIG``: the conversion with that config's limits."""
    args.limits = limits_of(args)
    return convert_cmds.handle(args)
