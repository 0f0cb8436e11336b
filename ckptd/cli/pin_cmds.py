"""``ckptd pin`` and ``ckptd unpin``: keep one checkpoint whatever the policy says, or stop keeping it.

The run is found from the path; ``-c CONFIG`` is accepted for runs whose state dir or manifest name
differ from the defaults. Exit codes: 0 ok, 1 something failed, 2 bad usage or config. JSON shapes (times are ``...Z``
UTC strings, sizes bytes, paths relative to the run unless named ``run``/``root``, which are
absolute)::

    pin/unpin: {"run", "path", "pinned", "reason", "pinned_at", "previous_reason",
                "manifest_updated", "note"}
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ckptd.cli.command_logs import command_logging
from ckptd.cli.exits import ExitStatus
from ckptd.cli.ops_options import (
    config_or_none,
    now_utc,
    path_options,
)
from ckptd.cli.output import print_json, say
from ckptd.retention.pins import pin, unpin


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``pin`` and ``unpin``."""
    pin = subparsers.add_parser(
        "pin",
        help="keep one checkpoint whatever the policy says",
        description="Pin a checkpoint: every prune keeps it with the reason 'pinned: <reason>'.",
    )
    pin.add_argument("path", type=Path, metavar="PATH")
    pin.add_argument("--reason", default=None, help="why it is kept (shown by prune and status)")
    path_options(pin)
    pin.set_defaults(handler=run_pin)
    unpin = subparsers.add_parser(
        "unpin", help="remove a pin", description="Remove the pin on a checkpoint."
    )
    unpin.add_argument("path", type=Path, metavar="PATH")
    path_options(unpin)
    unpin.set_defaults(handler=run_unpin)


def run_pin(args: argparse.Namespace) -> int:

    config = config_or_none(args)
    with command_logging(config):
        result = pin(args.path, reason=args.reason, now=now_utc(), config=config)
    if args.json:
        print_json(result.to_json_obj())
    else:
        reason = result.pin.reason if result.pin else ""
        already = result.previous is not None and result.previous == result.pin
        say(
            f"{'already pinned' if already else 'pinned'} {result.run_dir / result.path} ({reason})"
        )
        if result.note:
            say(f"note: {result.note}")
    return ExitStatus.OK


def run_unpin(args: argparse.Namespace) -> int:

    config = config_or_none(args)
    with command_logging(config):
        result = unpin(args.path, now=now_utc(), config=config)
    if args.json:
        print_json(result.to_json_obj())
    else:
        previous = result.previous.reason if result.previous else ""
        say(f"unpinned {result.run_dir / result.path} (was: {previous})")
        if result.note:
            say(f"note: {result.note}")
    return ExitStatus.OK
