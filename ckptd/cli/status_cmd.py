"""``ckptd status``: every run's state from its manifest and state dir (no daemon needed).

Exit codes: 0 ok, 1 something failed, 2 bad usage or config. JSON shapes (times are ``...Z``
UTC strings, sizes bytes, paths relative to the run unless named ``run``/``root``, which are
absolute)::

    status:   {"generated_at", "errors": [str],
               "runs": [{"root", "run", "manifest": "ok"|"missing"|"invalid", "generated_at",
                         "kept", "bytes", "newest": {"path", "step", "mtime", "age_seconds"}|null,
                         "last_prune": {"at", "removed", "bytes"|null, "guard"}|null,
                         "counts": {"pending", "refused", "broken", "held", "corrupt"},
                         "trash": {"files", "bytes"}, "quarantine": {"files", "bytes"},
                         "pins": [{"path", "reason", "pinned_at"}],
                         "last_scrub": {"at", "checked", "bytes", "corrupt"}|null,
                         "unrecorded", "problems": [str]}],
               "coordination": {"backend", "error", "roots": [{"root", "served_by", "cluster"}],
                                postgres: "nodes": [...], "runs": [...]}}
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from ckptd.cli.config_path import add_config_option, resolve_config
from ckptd.cli.coordination_out import print_coordination
from ckptd.cli.exits import ExitStatus
from ckptd.cli.ops_options import (
    ago,
    json_option,
    new_console,
    now_utc,
    print_errors,
)
from ckptd.cli.output import Column, cell, print_json, print_table
from ckptd.config.load import load_config
from ckptd.ops.coordination import coordination_status
from ckptd.ops.status import status_all
from ckptd.units import format_size_human, plural


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="per run: kept, bytes, newest age, last prune, problems",
        description="Show every run's state from its manifest and state dir (no daemon needed).",
    )
    add_config_option(parser)
    json_option(parser)
    parser.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:

    config = load_config(resolve_config(args.config))
    report = status_all(config, now=now_utc())
    served = coordination_status(config)
    if args.json:
        print_json({**report.to_json_obj(), "coordination": served.to_json_obj()})
    else:
        _print_status(report, new_console())
        print_coordination(served, new_console())
    print_errors(list(report.errors))
    return ExitStatus.FAILED if report.errors or served.error else ExitStatus.OK


def _print_status(report: Any, console: Console) -> None:
    """One table per root; runs with problems in bold red, their problems spelled out."""
    roots: dict[Path, list[Any]] = {}
    for run in report.runs:
        roots.setdefault(run.root, []).append(run)
    columns = [Column(name) for name in ("run", "kept", "size", "newest", "last prune")]
    columns += [Column("trash"), Column("quar."), Column("pins"), Column("problems", wrap=True)]
    for root, runs in roots.items():
        print_table(
            f"ckptd status: {root}",
            columns,
            [_status_row(run, report.generated_at) for run in runs],
            console=console,
            row_styles=["bold red" if run.problems else "" for run in runs],
        )
    flagged = sum(1 for run in report.runs if run.problems)
    console.print(cell(f"{plural(len(report.runs), 'run')}, {flagged} with problems"))


def _status_row(run: Any, now: datetime) -> list[str]:
    newest = "-" if run.newest is None else ago(run.newest.age)
    prune = "-"
    if run.last_prune is not None:
        freed = "?" if run.last_prune.bytes is None else format_size_human(run.last_prune.bytes)
        prune = f"{ago(now - run.last_prune.at)}: {plural(run.last_prune.removed, 'file')}, {freed}"
    return [
        run.run,
        str(run.kept),
        format_size_human(run.bytes),
        newest,
        prune,
        f"{run.trash.files} ({format_size_human(run.trash.bytes)})",
        str(run.quarantine.files),
        str(len(run.pins)),
        "; ".join(run.problems) or "ok",
    ]
