"""What the operator commands share: their options, the runs they act on, ages and error lines.

Commands that act on one run find it from the path; those that list use every run of ``-c CONFIG``,
or else the run given by ``--run DIR`` (default: the current directory).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from ckptd import units
from ckptd.cli.config_path import add_config_option, resolve_optional_config
from ckptd.cli.output import error_line
from ckptd.config.load import load_config
from ckptd.config.model import Config
from ckptd.runs.access import RunHandle, handle_for_root, locate_run_dir, runs_of_all_roots
from ckptd.units import format_duration

SUBCOMMAND = "ops_command"


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def listing_options(parser: argparse.ArgumentParser) -> None:
    """A command that lists: every run of ``-c CONFIG``, or the run of ``--run DIR``; ``--json``."""
    add_config_option(parser)
    run_option(parser)
    json_option(parser)


def path_options(parser: argparse.ArgumentParser) -> None:
    """A command that acts on one PATH: its run is found from the path; ``-c CONFIG`` optional."""
    add_config_option(parser)
    json_option(parser)


def run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        help="the run to act on when no -c CONFIG is given (default: the current directory)",
    )


def duration_arg(text: str) -> timedelta:
    try:
        return units.parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def size_arg(text: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def now_utc() -> datetime:
    return datetime.now(UTC)


def config_or_none(args: argparse.Namespace) -> Config | None:
    """The config from -c, $CKPTD_CONFIG or the system config; None when there is none (the
    command then works from the run directory alone, with the default state dir)."""
    path = resolve_optional_config(args.config)
    return load_config(path) if path is not None else None


def run_handles(args: argparse.Namespace) -> tuple[list[RunHandle], list[str], Config | None]:
    """Every run of the config's roots, or the one run given by --run / the current directory."""
    config = config_or_none(args)
    if config is None:
        return [locate_run_dir(args.run or Path.cwd())], [], None
    if args.run is not None:
        return [locate_run_dir(args.run, config)], [], config
    runs, errors = runs_of_all_roots(config)
    handles = [handle_for_root(config, root, run.run_dir, run.relpath) for root, run in runs]
    return handles, errors, config


def new_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def print_errors(errors: list[str]) -> None:
    for error in errors:
        error_line(error)


def ago(delta: timedelta) -> str:
    return format_duration(timedelta(seconds=int(delta.total_seconds()))) + " ago"
