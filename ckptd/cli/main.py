"""``ckptd``: build the parser from each command module, run one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import NoReturn

from ckptd import __version__
from ckptd.cli.exits import ExitStatus
from ckptd.errors import CkptdError, ConfigError
from ckptd.textsafe import shown

Handler = Callable[[argparse.Namespace], int]

# The module of each command, in the order ``ckptd --help`` lists them. Only the typed command's
# module is imported: importing all ten loaded the daemon, the converter, watchdog, APScheduler
# and numpy for every ``ckptd prune`` (0.2 s of a 1 s target). The modules are named here, not
# imported at the top, so tests/test_layering.py reads this table as this module's imports.
COMMAND_MODULES: dict[str, str] = {
    "run": "ckptd.cli.run_cmd",
    "convert": "ckptd.cli.convert_args",
    "inspect": "ckptd.cli.inspect_cmds",
    "verify": "ckptd.cli.inspect_cmds",
    "prune": "ckptd.cli.prune_cmds",
    "manifest": "ckptd.cli.prune_cmds",
    "config": "ckptd.cli.config_cmd",
    "status": "ckptd.cli.status_cmd",
    "scrub": "ckptd.cli.scrub_cmd",
    "pin": "ckptd.cli.pin_cmds",
    "unpin": "ckptd.cli.pin_cmds",
    "trash": "ckptd.cli.trash_cmds",
    "quarantine": "ckptd.cli.quarantine_cmds",
}

# Commands whose module above only registers their arguments: their work is in one of the modules
# named here, imported once the arguments are parsed. The registering module's ``prepare(args)``
# starts what needs none of it and names the module to import: ``ckptd convert`` hashes its first
# input in a child process while this process imports the converter, and imports the config
# loader only with ``-c`` (ckptd.cli.convert_args). Such a module has a ``handle(args)``; the
# table is read by tests/test_layering.py as this module's imports too.
HANDLER_MODULES: dict[str, tuple[str, ...]] = {
    "convert": ("ckptd.cli.convert_cmds", "ckptd.cli.convert_config"),
}


# Commands that leave nothing for the interpreter's teardown: every file they write is fsynced and
# closed, every thread joined, every child reaped before their handler returns. Run from the
# console script (``console``), they end at once: tearing down numpy and the converter's modules
# took 0.015 s of a 0.35 s ``ckptd convert`` of 200 MiB (README, "Benchmarks").
EXIT_AT_ONCE = frozenset({"convert"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; each command module adds its own subcommands. With the name of a known
    ``command``, only that command's module is loaded and registered; otherwise all of them
    (``ckptd --help``, a mistyped command: argparse then lists every choice)."""
    parser = argparse.ArgumentParser(
        prog="ckptd",
        description="Checkpoint-management daemon: watch, convert, retain and describe training runs.",
    )
    parser.add_argument("--version", action="version", version=f"ckptd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in command_modules(command):
        module.register(subparsers)
    return parser


def command_modules(command: str | None = None) -> list[ModuleType]:
    """The modules registering ``command`` (every command's when it is None or unknown)."""
    wanted = COMMAND_MODULES.get(command) if command is not None else None
    names = [wanted] if wanted is not None else list(dict.fromkeys(COMMAND_MODULES.values()))
    return [importlib.import_module(name) for name in names]


# ckptd does no linear algebra, but numpy's OpenBLAS starts a thread per core when numpy is
# imported, and they spin: 0.05-0.09 CPU s of a 0.6 s ``ckptd convert`` of 200 MiB, on the cores
# the conversion's own threads need (README, "Benchmarks"). Set before any command module (and
# numpy) is imported; the daemon's parser processes inherit it. A value the user set is kept.
BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1"}


def _handler(args: argparse.Namespace) -> Handler:
    """The parsed command's handler: its own, or (``HANDLER_MODULES``) the ``handle`` of the
    module its ``prepare(args)`` names, imported after that."""
    modules = HANDLER_MODULES.get(args.command)
    if modules is None:
        handler: Handler = args.handler
        return handler
    chosen = args.prepare(args)
    if chosen not in modules:
        raise RuntimeError(f"{args.command}: prepare named {chosen!r}, not one of {modules}")
    handler = importlib.import_module(chosen).handle
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ckptd command; returns the exit status instead of raising for user errors."""
    for name, value in BLAS_THREADS.items():
        os.environ.setdefault(name, value)
    argv = sys.argv[1:] if argv is None else list(argv)
    # Importing a command's modules creates ~100,000 objects that live as long as the process: a
    # collection among them finds nothing (10 ms of ``ckptd convert``'s start-up), and frozen
    # they are not walked by later ones either.
    gc.disable()
    try:
        parser = build_parser(argv[0] if argv else None)
        args = parser.parse_args(argv)
        handler = _handler(args)
    finally:
        gc.freeze()
        gc.enable()
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


def console() -> NoReturn:
    """The ``ckptd`` console script and ``python -m ckptd``: ``main``, then the process's exit.

    After a command in ``EXIT_AT_ONCE`` the process ends without the interpreter's teardown
    (``os._exit``), once logging is shut down and stdout and stderr are flushed; not if a thread
    other than daemon threads is still alive, or a flush fails (a closed pipe): then as usual.
    """
    status = main()
    if sys.argv[1:2] and sys.argv[1] in EXIT_AT_ONCE and _only_daemon_threads_left():
        logging.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(status)
        os._exit(status)
    sys.exit(status)


def _only_daemon_threads_left() -> bool:
    current = threading.current_thread()
    return all(thread.daemon or thread is current for thread in threading.enumerate())
