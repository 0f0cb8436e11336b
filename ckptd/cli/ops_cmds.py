"""The operator commands: ``status``, ``scrub``, ``pin``/``unpin``, ``trash``, ``quarantine``.

Every command works on a live daemon's directories (run locks shared with the daemon and prune,
atomic manifest updates), names the file in a one-line error for an unknown path, and prints one
JSON document on stdout with ``--json``. Commands that act on one run find it from the path; those
that list (``trash list``, ``trash purge``, ``quarantine list``) use every run of ``-c CONFIG``, or
else the run given by ``--run DIR`` (default: the current directory). ``-c CONFIG`` is also
accepted by the path commands, for runs whose state dir or manifest name differ from the defaults.
Exit codes: 0 ok, 1 something failed (scrub: any mismatch), 2 bad usage or config.

JSON shapes (times are ``...Z`` UTC strings, sizes bytes, paths relative to the run unless named
``run``/``root``, which are absolute)::

    status:   {"generated_at", "errors": [str],
               "runs": [{"root", "run", "manifest": "ok"|"missing"|"invalid", "generated_at",
                         "kept", "bytes", "newest": {"path", "step", "mtime", "age_seconds"}|null,
                         "last_prune": {"at", "removed", "bytes"|null, "guard"}|null,
                         "counts": {"pending", "refused", "broken", "held", "corrupt"},
                         "trash": {"files", "bytes"}, "quarantine": {"files", "bytes"},
                         "pins": [{"path", "reason", "pinned_at"}],
                         "last_scrub": {"at", "checked", "bytes", "corrupt"}|null,
                         "unrecorded", "problems": [str]}]}
    scrub:    {"ok", "checked", "bytes", "seconds", "corrupt", "interrupted", "errors": [str],
               "runs": [{"run", "root", "checked", "bytes", "healed": [path], "superseded": [path],
                         "error", "manifest_written", "interrupted",
                         "corrupt": [{"path", "role", "problems": [str], "expected_sha256",
                                      "actual_sha256"}]}]}
    pin/unpin: {"run", "path", "pinned", "reason", "pinned_at", "previous_reason",
                "manifest_updated", "note"}
    trash list:    {"items": [{"run", "name", "trash_path", "original", "trashed_at", "expires_at",
                               "size", "sha256", "companion_of"}], "errors": [str]}
    trash restore: {"run", "restored": [{"from", "to"}], "pinned", "manifest_updated"}
    trash purge:   {"runs": [{"run", "purged": [name], "bytes"}], "errors": [str]}
    quarantine list:    {"items": [{"run", "name", "path", "size", "original", "refusal",
                                    "sha256", "quarantined_at", "problem"}], "errors": [str]}
    quarantine show:    one list item plus {"sha256_now", "intact", "inspect": <inspect --json>}
    quarantine release: {"run", "from", "to", "sha256", "refusal", "manifest_updated"}
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ckptd import units
from ckptd.cli.exits import ExitStatus
from ckptd.cli.output import error_line, lit, print_json, progress_bar, say
from ckptd.config.load import load_config
from ckptd.config.model import Config, DeleteConfig
from ckptd.errors import CkptdError
from ckptd.ops.quarantine import list_quarantine, release, show
from ckptd.ops.ratelimit import RateLimiter
from ckptd.ops.scrub import scrub_all
from ckptd.ops.status import status_all
from ckptd.retention.pins import pin, unpin
from ckptd.retention.trash import list_trash, purge, restore
from ckptd.runs.access import RunHandle, handle_for_root, locate_run_dir, runs_of_all_roots
from ckptd.timefmt import format_utc
from ckptd.units import format_duration, format_size_human

SUBCOMMAND = "ops_command"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add status, scrub, pin, unpin, trash and quarantine."""
    _register_status(subparsers)
    _register_scrub(subparsers)
    _register_pins(subparsers)
    _register_trash(subparsers)
    _register_quarantine(subparsers)


def _config_option(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, required=required, help="the ckptd YAML config"
    )


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        help="the run to act on when no -c CONFIG is given (default: the current directory)",
    )


def _duration(text: str) -> timedelta:
    try:
        return units.parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _size(text: str) -> int:
    try:
        return units.parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _now() -> datetime:
    return datetime.now(UTC)


def _config_or_none(args: argparse.Namespace) -> Config | None:
    return load_config(args.config) if args.config is not None else None


def _handles(args: argparse.Namespace) -> tuple[list[RunHandle], list[str], Config | None]:
    """Every run of the config's roots, or the one run given by --run / the current directory."""
    config = _config_or_none(args)
    if config is None:
        return [locate_run_dir(args.run or Path.cwd())], [], None
    if args.run is not None:
        return [locate_run_dir(args.run, config)], [], config
    runs, errors = runs_of_all_roots(config)
    handles = [handle_for_root(config, root, run.run_dir, run.relpath) for root, run in runs]
    return handles, errors, config


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _print_errors(errors: list[str]) -> None:
    for error in errors:
        error_line(error)


def _age(delta: timedelta) -> str:
    return format_duration(timedelta(seconds=int(delta.total_seconds()))) + " ago"


# ---- status -------------------------------------------------------------------------------------


def _register_status(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="per run: kept, bytes, newest age, last prune, problems",
        description="Show every run's state from its manifest and state dir (no daemon needed).",
    )
    _config_option(parser, required=True)
    _json_option(parser)
    parser.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:

    config = load_config(args.config)
    report = status_all(config, now=_now())
    if args.json:
        print_json(report.to_json_obj())
    else:
        _print_status(report, _console())
    _print_errors(list(report.errors))
    return ExitStatus.FAILED if report.errors else ExitStatus.OK


def _print_status(report: Any, console: Console) -> None:
    """One table per root; runs with problems in bold red, their problems spelled out."""
    roots: dict[Path, list[Any]] = {}
    for run in report.runs:
        roots.setdefault(run.root, []).append(run)
    for root, runs in roots.items():
        table = Table(title=f"ckptd status: {lit(str(root))}", title_justify="left")
        for column in ("run", "kept", "size", "newest", "last prune", "trash", "quar.", "pins"):
            table.add_column(column, overflow="fold")
        table.add_column("problems", overflow="fold", ratio=2)
        for run in runs:
            table.add_row(
                *_status_row(run, report.generated_at), style="bold red" if run.problems else ""
            )
        console.print(table)
    flagged = sum(1 for run in report.runs if run.problems)
    console.print(f"{len(report.runs)} runs, {flagged} with problems")


def _status_row(run: Any, now: datetime) -> list[str]:
    newest = "-" if run.newest is None else _age(run.newest.age)
    prune = "-"
    if run.last_prune is not None:
        freed = "?" if run.last_prune.bytes is None else format_size_human(run.last_prune.bytes)
        prune = f"{_age(now - run.last_prune.at)}: {run.last_prune.removed} files, {freed}"
    return [
        lit(run.run),
        str(run.kept),
        format_size_human(run.bytes),
        newest,
        prune,
        f"{run.trash.files} ({format_size_human(run.trash.bytes)})",
        str(run.quarantine.files),
        str(len(run.pins)),
        lit("; ".join(run.problems)) or "ok",
    ]


# ---- scrub --------------------------------------------------------------------------------------


def _register_scrub(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "scrub",
        help="re-hash and re-verify every kept checkpoint against its manifest",
        description=(
            "Re-hash every kept checkpoint and archived original against its manifest's sha256 "
            "and re-verify its structure; record the results in the manifest. Exit 1 on any "
            "mismatch. Nothing is deleted or rewritten."
        ),
    )
    _config_option(parser, required=True)
    parser.add_argument("--run", metavar="GLOB", help="only runs whose path matches GLOB")
    parser.add_argument(
        "--max-rate",
        type=_size,
        metavar="SIZE",
        help="bytes per second to read (default: scrub.max_rate from the config; 0: unlimited)",
    )
    _json_option(parser)
    parser.set_defaults(handler=run_scrub)


class _BarProgress:
    """ScrubProgress on a rich progress bar (bytes and bytes/s)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("scrub", total=None, current="")

    def start(self, total_bytes: int, files: int) -> None:
        self.progress.update(self.task, total=total_bytes, description=f"scrub {files} files")

    def advance(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def current(self, label: str) -> None:
        self.progress.update(self.task, current=lit(label))


def run_scrub(args: argparse.Namespace) -> int:

    config = load_config(args.config)
    rate = config.scrub.max_rate if args.max_rate is None else (args.max_rate or None)
    with progress_bar(enabled=not args.json) as bar:
        report = scrub_all(config, args.run, _now(), RateLimiter(rate), progress=_BarProgress(bar))
    if args.json:
        print_json(report.to_json_obj())
    else:
        console = _console()
        for run in report.runs:
            for finding in run.corrupt:
                console.print(
                    f"[bold red]MISMATCH[/] {lit(str(run.run_dir / finding.path))} "
                    f"({finding.role}): {lit('; '.join(finding.problems))}"
                )
            if run.error:
                console.print(f"[bold red]error[/] {lit(str(run.run_dir))}: {lit(run.error)}")
        rate_text = format_size_human(int(report.bytes / report.seconds)) if report.seconds else "-"
        console.print(
            f"scrubbed {sum(r.checked for r in report.runs)} files in {len(report.runs)} runs, "
            f"{format_size_human(report.bytes)} in {report.seconds:.1f}s ({rate_text}/s): "
            f"{report.corrupt_count} mismatches"
        )
    _print_errors(list(report.errors))
    return ExitStatus.OK if report.ok else ExitStatus.FAILED


# ---- pin / unpin --------------------------------------------------------------------------------


def _register_pins(subparsers: argparse._SubParsersAction[Any]) -> None:
    pin = subparsers.add_parser(
        "pin",
        help="keep one checkpoint whatever the policy says",
        description="Pin a checkpoint: every prune keeps it with the reason 'pinned: <reason>'.",
    )
    pin.add_argument("path", type=Path, metavar="PATH")
    pin.add_argument("--reason", default=None, help="why it is kept (shown by prune and status)")
    _config_option(pin, required=False)
    _json_option(pin)
    pin.set_defaults(handler=run_pin)
    unpin = subparsers.add_parser(
        "unpin", help="remove a pin", description="Remove the pin on a checkpoint."
    )
    unpin.add_argument("path", type=Path, metavar="PATH")
    _config_option(unpin, required=False)
    _json_option(unpin)
    unpin.set_defaults(handler=run_unpin)


def run_pin(args: argparse.Namespace) -> int:

    result = pin(args.path, reason=args.reason, now=_now(), config=_config_or_none(args))
    if args.json:
        print_json(result.to_json_obj())
    else:
        reason = result.pin.reason if result.pin else ""
        say(f"pinned {result.run_dir / result.path} ({reason})")
        if result.note:
            say(f"note: {result.note}")
    return ExitStatus.OK


def run_unpin(args: argparse.Namespace) -> int:

    result = unpin(args.path, now=_now(), config=_config_or_none(args))
    if args.json:
        print_json(result.to_json_obj())
    else:
        previous = result.previous.reason if result.previous else ""
        say(f"unpinned {result.run_dir / result.path} (was: {previous})")
        if result.note:
            say(f"note: {result.note}")
    return ExitStatus.OK


# ---- trash --------------------------------------------------------------------------------------


def _register_trash(subparsers: argparse._SubParsersAction[Any]) -> None:
    trash = subparsers.add_parser(
        "trash",
        help="list, restore or purge deleted checkpoints",
        description="What prunes moved to the runs' trash: list it, restore from it, purge it.",
    )
    actions = trash.add_subparsers(dest=SUBCOMMAND, metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every file in the trash")
    _config_option(listing, required=False)
    _run_option(listing)
    _json_option(listing)
    listing.set_defaults(handler=run_trash_list)
    restore = actions.add_parser(
        "restore",
        help="put a checkpoint (and its archived original) back and pin it",
        description=(
            "Put a trashed checkpoint back where it was (with its archived legacy original), record "
            "it in the manifest and pin it so the next prune keeps it. PATH is the file in the "
            "trash or the checkpoint's original path. Never overwrites a live file."
        ),
    )
    restore.add_argument("path", type=Path, metavar="PATH")
    _config_option(restore, required=False)
    _json_option(restore)
    restore.set_defaults(handler=run_trash_restore)
    purge = actions.add_parser("purge", help="delete trash entries for good")
    purge.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only entries trashed at least this long ago (default: delete.trash_ttl, 7d)",
    )
    _config_option(purge, required=False)
    _run_option(purge)
    _json_option(purge)
    purge.set_defaults(handler=run_trash_purge)


def run_trash_list(args: argparse.Namespace) -> int:

    handles, errors, config = _handles(args)
    ttl = config.delete.trash_ttl if config is not None else None
    items = []
    for handle in handles:
        try:
            items.extend(list_trash(handle, ttl=ttl))
        except CkptdError as err:
            errors.append(str(err))
    if args.json:
        print_json({"items": [item.to_json_obj() for item in items], "errors": errors})
    else:
        table = Table(title="ckptd trash", title_justify="left")
        for column in ("run", "trash file", "deleted from", "trashed", "size"):
            table.add_column(column, overflow="fold")
        now = _now()
        for item in items:
            original = item.original or "?"
            if item.companion_of:
                original += f" (with {item.companion_of})"
            table.add_row(
                lit(item.run_dir.name),
                lit(item.trash_path),
                lit(original),
                _age(now - item.trashed_at),
                format_size_human(item.size),
            )
        _console().print(table)
    _print_errors(errors)
    return ExitStatus.FAILED if errors else ExitStatus.OK


def run_trash_restore(args: argparse.Namespace) -> int:

    result = restore(args.path, now=_now(), config=_config_or_none(args))
    if args.json:
        print_json(result.to_json_obj())
    else:
        for restored in result.files:
            say(f"restored {result.run_dir / restored.path} (from {restored.trash_path})")
        say(f"pinned: {result.pin_reason}")
    return ExitStatus.OK


def run_trash_purge(args: argparse.Namespace) -> int:

    handles, errors, config = _handles(args)
    older_than = args.older_than
    if older_than is None:
        older_than = (config.delete if config is not None else DeleteConfig()).trash_ttl
    outcomes = []
    now = _now()
    for handle in handles:
        try:
            outcomes.append(purge(handle, older_than=older_than, now=now))
        except CkptdError as err:
            errors.append(str(err))
    if args.json:
        print_json({"runs": [o.to_json_obj() for o in outcomes], "errors": errors})
    else:
        for outcome in outcomes:
            say(
                f"{outcome.run_dir}: purged {len(outcome.removed)} files "
                f"({format_size_human(outcome.bytes)}) trashed over {format_duration(older_than)} ago"
            )
    _print_errors(errors)
    return ExitStatus.FAILED if errors else ExitStatus.OK


# ---- quarantine ---------------------------------------------------------------------------------


def _register_quarantine(subparsers: argparse._SubParsersAction[Any]) -> None:
    quarantine = subparsers.add_parser(
        "quarantine",
        help="files refused as unsafe: list, show why, release",
        description="Files the daemon refused as unsafe and moved to the runs' quarantine.",
    )
    actions = quarantine.add_subparsers(dest=SUBCOMMAND, metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every quarantined file and why it was refused")
    _config_option(listing, required=False)
    _run_option(listing)
    _json_option(listing)
    listing.set_defaults(handler=run_quarantine_list)
    show = actions.add_parser(
        "show",
        help="what a quarantined file references and why it was refused (executes nothing)",
    )
    show.add_argument("path", type=Path, metavar="PATH")
    _config_option(show, required=False)
    _json_option(show)
    show.set_defaults(handler=run_quarantine_show)
    release = actions.add_parser(
        "release",
        help="move a quarantined file back (it stays refused: never converted or executed)",
    )
    release.add_argument("path", type=Path, metavar="PATH")
    release.add_argument(
        "--i-trust-this-file",
        dest="trusted",
        action="store_true",
        required=True,
        help="required: you have checked the file and accept the risk of keeping it",
    )
    _config_option(release, required=False)
    _json_option(release)
    release.set_defaults(handler=run_quarantine_release)


def run_quarantine_list(args: argparse.Namespace) -> int:

    handles, errors, _ = _handles(args)
    items = [item for handle in handles for item in list_quarantine(handle)]
    if args.json:
        print_json({"items": [item.to_json_obj() for item in items], "errors": errors})
    else:
        table = Table(title="ckptd quarantine", title_justify="left")
        for column in ("run", "file", "from", "refused because", "when"):
            table.add_column(column, overflow="fold")
        for item in items:
            table.add_row(
                lit(item.run_dir.name),
                lit(item.path),
                lit(item.original or "?"),
                lit(_reason(item.refusal) or item.problem or "?"),
                "?" if item.quarantined_at is None else _age(_now() - item.quarantined_at),
            )
        _console().print(table)
    _print_errors(errors)
    return ExitStatus.FAILED if errors else ExitStatus.OK


def run_quarantine_show(args: argparse.Namespace) -> int:

    shown = show(args.path, _config_or_none(args))
    if args.json:
        print_json(shown.to_json_obj())
        return ExitStatus.OK
    for line in _show_lines(shown):
        say(line)
    return ExitStatus.OK


def _show_lines(shown: Any) -> Iterator[str]:
    item, report = shown.item, shown.report
    yield f"file:        {item.run_dir / item.path}"
    yield f"from:        {item.original or '?'}"
    yield f"refused:     {_reason(item.refusal) or item.problem or '?'}"
    if item.quarantined_at is not None:
        yield f"quarantined: {format_utc(item.quarantined_at)}"
    intact = "matches the refused file" if shown.intact else f"CHANGED (recorded {item.sha256})"
    yield f"sha256:      {shown.sha256_now} ({intact})"
    yield f"format:      {report.format} ({report.format_note}); verdict now: {report.verdict}"
    if report.error:
        yield f"error:       {report.error}"
    if report.refusals:
        yield "refusals:"
        yield from (f"  {refusal.line()}" for refusal in report.refusals)
    if report.globals:
        yield "globals it references:"
        yield from (f"  {ref.name}  [{_allowed_text(ref.allowed)}]" for ref in report.globals)
    code = report.carries_code
    if code:
        yield f"data keys carrying code: {', '.join(code)}"


def _allowed_text(allowed: bool | None) -> str:
    if allowed is None:
        return "n/a"
    return "allowed" if allowed else "REFUSED"


def run_quarantine_release(args: argparse.Namespace) -> int:

    result = release(args.path, trusted=args.trusted, now=_now(), config=_config_or_none(args))
    if args.json:
        print_json(result.to_json_obj())
    else:
        say(
            f"released {result.run_dir / result.path} (from {result.quarantined_as}); it stays "
            "recorded as refused and ckptd will never convert or execute it"
        )
    return ExitStatus.OK


def _reason(refusal: str | None) -> str | None:
    """The refusal without its "refused: " lead, where a label already says so."""
    if refusal is None:
        return None
    return refusal.removeprefix("refused: ")
