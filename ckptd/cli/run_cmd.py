"""``ckptd run -c CONFIG``: the daemon in the foreground (what systemd's ``Type=notify`` unit runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
    parser.add_argument("-c", "--config", required=True, type=Path, help="the ckptd YAML config")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:

    return Daemon(args.config).run()
