"""The command line: a thin layer that parses arguments, calls the library and maps errors to exit codes."""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Callable, Sequence

from ckptd import __version__
from ckptd.errors import CkptdError, ConfigError
from ckptd.textsafe import shown


class ExitStatus(enum.IntEnum):
    """Exit codes (README, "Commands"): 0 ok, 1 some inputs failed, 2 bad usage or bad config."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130  # 128 + SIGINT


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each command module adds its own subcommands."""
    # Imported here, not at module load, so `import ckptd.cli` stays cheap and side-effect free.
    from ckptd.cli import config_cmd, convert_cmds, inspect_cmds, ops_cmds, prune_cmds, run_cmd

    parser = argparse.ArgumentParser(
        prog="ckptd",
        description="Checkpoint-management daemon: watch, convert, retain and describe training runs.",
    )
    parser.add_argument("--version", action="version", version=f"ckptd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run_cmd, convert_cmds, inspect_cmds, prune_cmds, config_cmd, ops_cmds):
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
