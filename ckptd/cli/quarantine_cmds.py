"""``ckptd quarantine list|show|release``: files the daemon refused as unsafe.

``list`` uses every run of ``-c CONFIG``, or else the run given by ``--run DIR``; ``show`` and
``release`` find the run from the path. Exit codes: 0 ok, 1 something failed, 2 bad usage or config. JSON shapes (times are ``...Z``
UTC strings, sizes bytes, paths relative to the run unless named ``run``/``root``, which are
absolute)::

    quarantine list:    {"items": [{"run", "name", "path", "size", "original", "refusal",
                                    "sha256", "quarantined_at", "problem"}], "errors": [str]}
    quarantine show:    one list item plus {"sha256_now", "intact", "inspect": <inspect --json>}
    quarantine release: {"run", "from", "to", "sha256", "refusal", "manifest_updated"}
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckptd.cli.command_logs import command_logging
from ckptd.cli.exits import ExitStatus
from ckptd.cli.ops_options import (
    SUBCOMMAND,
    ago,
    config_or_none,
    listing_options,
    now_utc,
    path_options,
    print_errors,
    run_handles,
)
from ckptd.cli.output import Column, print_json, print_table, say
from ckptd.ops.quarantine import list_quarantine, release, show
from ckptd.timefmt import format_utc
from ckptd.units import plural


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``quarantine`` and its actions."""
    quarantine = subparsers.add_parser(
        "quarantine",
        help="files refused as unsafe: list, show why, release",
        description="Files the daemon refused as unsafe and moved to the runs' quarantine.",
    )
    actions = quarantine.add_subparsers(dest=SUBCOMMAND, metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every quarantined file and why it was refused")
    listing_options(listing)
    listing.set_defaults(handler=run_quarantine_list)
    show = actions.add_parser(
        "show",
        help="what a quarantined file references and why it was refused (executes nothing)",
    )
    show.add_argument("path", type=Path, metavar="PATH")
    path_options(show)
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
    path_options(release)
    release.set_defaults(handler=run_quarantine_release)


def run_quarantine_list(args: argparse.Namespace) -> int:

    handles, errors, _ = run_handles(args)
    items = [item for handle in handles for item in list_quarantine(handle)]
    if args.json:
        print_json({"items": [item.to_json_obj() for item in items], "errors": errors})
    else:
        rows = [
            (
                item.run_dir.name,
                item.path,
                item.original or "?",
                _reason(item.refusal) or item.problem or "?",
                "?" if item.quarantined_at is None else ago(now_utc() - item.quarantined_at),
            )
            for item in items
        ]
        if rows:
            columns = [Column("run"), Column("file"), Column("from")]
            columns += [Column("refused because", wrap=True), Column("when")]
            print_table("ckptd quarantine", columns, rows)
        else:
            say(f"nothing is quarantined ({plural(len(handles), 'run')} looked at)")
    print_errors(errors)
    return ExitStatus.FAILED if errors else ExitStatus.OK


def run_quarantine_show(args: argparse.Namespace) -> int:

    shown = show(args.path, config_or_none(args))
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

    config = config_or_none(args)
    with command_logging(config):
        result = release(args.path, trusted=args.trusted, now=now_utc(), config=config)
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
