"""``ckptd``: build the parser from each command module, run one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ckptd import __version__
from ckptd.cli import (
    config_cmd,
    convert_cmds,
    inspect_cmds,
    pin_cmds,
    prune_cmds,
    quarantine_cmds,
    run_cmd,
    scrub_cmd,
    status_cmd,
    trash_cmds,
)
from ckptd.cli.exits import ExitStatus
from ckptd.errors import CkptdError, ConfigError
from ckptd.textsafe import shown

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each command module adds its own subcommands."""
    parser = argparse.ArgumentParser(
        prog="ckptd",
        description="Checkpoint-management daemon: watch, convert, retain and describe training runs.",
    )
    parser.add_argument("--version", action="version", version=f"ckptd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = (run_cmd, convert_cmds, inspect_cmds, prune_cmds, config_cmd)
    operator_commands = (status_cmd, scrub_cmd, pin_cmds, trash_cmds, quarantine_cmds)
    for module in commands + operator_commands:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ckptd command; returns the exit status instead of raising for user errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as err:
        for line in err.lines():
            print(f"ckptd: {shown(line)}", file=sys.stderr)
        return ExitStatus.USAGE
    except CkptdError as err:
        print(f"ckptd: {shown(err)}", file=sys.stderr)
        return ExitStatus.FAILED
    except KeyboardInterrupt:
        print("ckptd: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`ckptd status --json | head`): end quietly. Python's exit flush
        # would hit the closed pipe again and print a traceback, so stdout goes to /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return ExitStatus.PIPE_CLOSED
