"""``ckptd prune`` (one retention pass) and ``ckptd manifest`` (write every manifest now)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import shlex
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptd.cli.command_logs import command_logging
from ckptd.cli.config_path import add_config_option, resolve_config
from ckptd.cli.exits import ExitStatus
from ckptd.cli.output import Column, cell, error_line, print_table, say, stdout_console
from ckptd.config.load import load_config
from ckptd.config.model import Config
from ckptd.retention.manifest_pass import write_manifests
from ckptd.retention.passes import PassOptions
from ckptd.retention.prune import RenderedPass, prune_all, prune_all_rendered
from ckptd.retention.report import PruneReport, RunReport
from ckptd.textsafe import shown
from ckptd.units import plural

if TYPE_CHECKING:
    from rich.console import Console


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``prune`` and ``manifest``."""
    prune = subparsers.add_parser(
        "prune",
        help="one retention pass over every run",
        description="Apply each run's retention policy once; every checkpoint is listed with its reasons.",
    )
    add_config_option(prune)
    prune.add_argument(
        "--dry-run", action="store_true", help="decide and report; change nothing on disk"
    )
    prune.add_argument(
        "--run",
        metavar="GLOB",
        help="only runs whose path (relative to its root, or absolute) matches GLOB",
    )
    prune.add_argument(
        "--max-fraction",
        type=_fraction,
        metavar="F",
        help="the guard for this pass only (0-1): a run whose deletions would exceed this share "
        "of its series deletes nothing (default: delete.max_fraction from the config)",
    )
    prune.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    prune.set_defaults(handler=run_prune)
    manifest = subparsers.add_parser(
        "manifest",
        help="write every run's manifest now",
        description="Write each run's manifest and each root's index from the files on disk.",
    )
    add_config_option(manifest)
    manifest.set_defaults(handler=run_manifest)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def run_prune(args: argparse.Namespace) -> int:
    config = load_config(resolve_config(args.config))
    now = datetime.now(UTC)
    options = dataclasses.replace(
        cli_pass_options(), run_glob=args.run, max_fraction=args.max_fraction
    )
    with cyclic_gc_paused(), command_logging(config):
        code = _prune_and_report(
            config, now, dry_run=args.dry_run, as_json=args.json, options=options
        )
    return code


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one bounded CLI pass.

    A pass over 100,000 checkpoints allocates a few hundred thousand acyclic objects and keeps
    most of them until it reports: every automatic collection re-walks all of them for nothing
    (measured: ~20% of a warm pass). Reference counting still frees everything as usual; only
    cycles wait until the pass ends. Forked workers inherit the pause.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _prune_and_report(
    config: Config, now: datetime, *, dry_run: bool, as_json: bool, options: PassOptions
) -> int:
    if as_json:
        rendered = prune_all_rendered(
            config, now=now, dry_run=dry_run, render=run_json, options=options
        )
        for chunk in prune_json_chunks(rendered):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        if not rendered.runs and options.run_glob is not None:
            error_line(f"no run matches --run {options.run_glob}")
        return ExitStatus.OK if rendered.ok else ExitStatus.FAILED
    report = prune_all(config, now=now, dry_run=dry_run, options=options)
    print_prune_report(report, stdout_console(), config=config.source)
    if not report.runs and options.run_glob is not None:
        error_line(f"no run matches --run {options.run_glob}")
    return ExitStatus.OK if report.ok else ExitStatus.FAILED


def run_json(run: RunReport) -> str:
    """One run's part of the ``--json`` document, rendered by the worker that judged the run.

    Compact on purpose (``json.dumps(run.to_json_obj())``, byte for byte, without the dicts: see
    RunReport.to_json_text); with indent, json's C encoder does not run (100,000 decisions: 4 s
    instead of 0.2 s). Pipe through `jq` to read it.
    """
    return run.to_json_text()


def prune_json_chunks(rendered: RenderedPass[str]) -> Iterator[str]:
    """The text of ``json.dumps(PruneReport.to_json_obj())`` from runs already rendered by
    :func:`run_json` (the same keys in the same order; tests compare the two byte for byte)."""
    errors = [{"root": str(p.root), "error": p.message} for p in rendered.problems]
    yield f'{{"dry_run": {json.dumps(rendered.dry_run)}, "runs": ['
    for index, run in enumerate(rendered.runs):
        yield run if index == 0 else ", " + run
    yield f'], "errors": {json.dumps(errors)}}}'


def run_manifest(args: argparse.Namespace) -> int:
    config = load_config(resolve_config(args.config))
    with cyclic_gc_paused(), command_logging(config):
        report = write_manifests(config, now=datetime.now(UTC), options=cli_pass_options())
    for root in config.roots:
        say(manifest_summary(root.path, report))
    for problem in report.problems:
        error_line(f"{problem.root}: {problem.message}")
    return ExitStatus.OK if report.ok else ExitStatus.FAILED


def cli_pass_options() -> PassOptions:
    """The CLI is single-threaded, so it may fork: one worker per core (at most 8) on big trees."""
    return PassOptions(workers=min(os.cpu_count() or 1, 8))


def manifest_summary(root: Path, report: PruneReport) -> str:
    """``<root>: 12 runs, 1200 checkpoints, 3.4 GiB, 10 manifests written, 0 failed``."""
    runs = [run for run in report.runs if run.root == root]
    manifests = [run.manifest for run in runs if run.manifest is not None]
    checkpoints = sum(1 for m in manifests for e in m.checkpoints if e.state != "converted")
    size = sum(e.size for m in manifests for e in m.checkpoints)
    written = sum(1 for run in runs if run.manifest_written)
    failed = sum(1 for run in runs if run.error is not None)
    return (
        f"{root}: {plural(len(runs), 'run')}, {plural(checkpoints, 'checkpoint')}, {human_size(size)}, "
        f"{written} manifests written ({len(manifests) - written} unchanged), {failed} failed"
    )


def human_size(size: int) -> str:
    """``3.4 GiB`` — for people; config and reasons use ckptd.units' exact form."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def print_prune_report(
    report: PruneReport, console: Console, *, config: Path | None = None
) -> None:
    """A table per run (path, action, reasons) and a summary under it; a guarded run says so
    once, with the command that lets this pass through, instead of on every row."""
    from rich.text import Text  # only here: prune --json never loads rich (ckptd.cli.output)

    for run in report.runs:
        _print_run_table(run, report.dry_run, console)
        console.print(Text(_run_summary(run, report.dry_run)))
        if run.guard is not None:
            console.print(Text("  " + _guard_line(run, report.dry_run, config)))
    for problem in report.problems:
        console.print(Text("error", style="red") + cell(f" {problem.root}: {problem.message}"))


_ACTION_STYLE = {"keep": "green", "delete": "red", "skip": "yellow", "guarded": "yellow"}


def _print_run_table(run: RunReport, dry_run: bool, console: Console) -> None:
    title = f"{run.root}/{run.run}" if run.run != "." else str(run.root)
    rows = []
    for decision in run.decisions:
        reasons = decision.reasons
        action = decision.action
        if decision.guarded:
            # The guard's text is said once under the table: here, what the rules alone decided.
            action, reasons = "guarded", reasons[1:]
        shown_action = "would delete" if dry_run and action == "delete" else action
        # A zip's legacy original goes with it, so the dry run names every file that would move.
        path = decision.path
        if decision.original is not None:
            path += f" (with {decision.original})"
        rows.append(
            (
                cell(path),
                cell(shown_action, style=_ACTION_STYLE.get(action, "")),
                cell("; ".join(reasons)),
            )
        )
    print_table(
        f"{title}{' (dry run)' if dry_run else ''}",
        (Column("checkpoint"), Column("action"), Column("reasons", wrap=True)),
        rows,
        console=console,
    )


def _guard_line(run: RunReport, dry_run: bool, config: Path | None) -> str:
    """``guard: ...: this run is left as it is; to delete them once: ckptd prune ... --run RUN
    --max-fraction F`` (F: the smallest guard, in hundredths, that lets this pass through)."""
    held = sum(1 for decision in run.decisions if decision.guarded)
    series = _guard_series(run.guard or "")
    needed = -(-held * 100 // series) / 100 if series else 1.0  # integer ceil: 17/20 is 0.85
    target = shlex.quote(run.run if run.run != "." else str(run.root))
    where = f" -c {shlex.quote(str(config))}" if config is not None else ""
    dry = " --dry-run" if dry_run else ""
    return shown(
        f"{run.guard}: this run is left as it is; to delete them once: "
        f"ckptd prune{where} --run {target} --max-fraction {needed:g}{dry}"
    )


def _guard_series(guard: str) -> int:
    """The series length from ``guard: max_fraction 0.5 (would delete 16 of 20)``."""
    _, _, tail = guard.rpartition(" of ")
    return int(tail.rstrip(")")) if tail.rstrip(")").isdigit() else 0


def _run_summary(run: RunReport, dry_run: bool) -> str:
    if run.error is not None:
        return f"  error: {shown(run.error)}"
    guarded = sum(1 for decision in run.decisions if decision.guarded)
    parts = [
        f"kept {run.count('keep') - guarded}",
        f"{'would delete' if dry_run else 'deleted'} {run.count('delete')}",
    ]
    if guarded:
        parts.append(f"held back by the guard {guarded}")
    parts.append(f"skipped {run.count('skip')}")
    if not dry_run:
        parts.append(f"freed {human_size(run.bytes_freed)}")
        if run.deleted and run.deleted[0].trash is not None:
            parts[-1] += " (moved to trash)"
        if run.purged:
            parts.append(f"purged {len(run.purged)} from trash ({human_size(run.bytes_purged)})")
    lines = ["  " + ", ".join(parts)]
    lines.extend(f"  {shown(line)}" for line in run.notes if line)
    return "\n".join(lines)
