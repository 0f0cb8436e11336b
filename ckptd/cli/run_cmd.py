"""``ckptd run -c CONFIG``: the daemon in the foreground (what systemd's ``Type=notify`` unit runs)."""

from __future__ import annotations

import argparse
from typing import Any

from ckptd.cli.config_path import add_config_option, resolve_config
from ckptd.daemon.service import Daemon


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run the daemon in the foreground",
        description=(
            "Watch the configured roots, convert legacy checkpoints, apply retention on schedule "
            "and keep manifests. Stops on SIGTERM/SIGINT; SIGHUP reloads the config."
        ),
    )
    add_config_option(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:

    return Daemon(resolve_config(args.config)).run()
