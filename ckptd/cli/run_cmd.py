"""``ckptd run -c CONFIG``: the daemon in the foreground (what systemd's ``Type=notify`` unit runs)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ckptd.cli.config_path import add_config_option, resolve_config
from ckptd.cli.exits import ExitStatus
from ckptd.daemon.service import Daemon
from ckptd.errors import RootBusyError
from ckptd.textsafe import shown


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
    try:
        return Daemon(resolve_config(args.config)).run()
    except RootBusyError as err:
        # Another daemon serves a root of this config: a usage problem, not a failed input.
        print(f"ckptd: {shown(err)}", file=sys.stderr)
        return ExitStatus.USAGE
