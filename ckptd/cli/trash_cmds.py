"""``ckptd trash list|restore|purge``: what prunes moved to the runs' trash.

``list`` and ``purge`` use every run of ``-c CONFIG``, or else the run given by ``--run DIR``;
``restore`` finds the run from the path. Exit codes: 0 ok, 1 something failed, 2 bad usage or config. JSON shapes (times are ``...Z``
UTC strings, sizes bytes, paths relative to the run unless named ``run``/``root``, which are
absolute)::

    trash list:    {"items": [{"run", "name", "trash_path", "original", "trashed_at", "expires_at",
                               "size", "sha256", "companion_of"}], "errors": [str]}
    trash restore: {"run", "restored": [{"from", "to"}], "pinned", "manifest_updated"}
    trash purge:   {"dry_run", "runs": [{"run", "purged": [name], "bytes"}], "errors": [str]}
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ckptd.cli.command_logs import command_logging
from ckptd.cli.exits import ExitStatus
from ckptd.cli.ops_options import (
    SUBCOMMAND,
    ago,
    config_or_none,
    duration_arg,
    listing_options,
    now_utc,
    path_options,
    print_errors,
    run_handles,
)
from ckptd.cli.output import Column, print_json, print_table, say
from ckptd.config.model import DeleteConfig
from ckptd.errors import CkptdError
from ckptd.retention.trash import list_trash, purge, restore
from ckptd.units import format_duration, format_size_human, plural


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``trash`` and its actions."""
    trash = subparsers.add_parser(
        "trash",
        help="list, restore or purge deleted checkpoints",
        description="What prunes moved to the runs' trash: list it, restore from it, purge it.",
    )
    actions = trash.add_subparsers(dest=SUBCOMMAND, metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every file in the trash")
    listing_options(listing)
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
    path_options(restore)
    restore.set_defaults(handler=run_trash_restore)
    purge = actions.add_parser(
        "purge",
        help="delete trash entries for good",
        description="Delete trash entries for good (they cannot be restored afterwards); "
        "--dry-run lists what would go.",
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="list what would be purged; delete nothing"
    )
    purge.add_argument(
        "--older-than",
        type=duration_arg,
        metavar="DURATION",
        help="only entries trashed at least this long ago (default: delete.trash_ttl, 7d)",
    )
    listing_options(purge)
    purge.set_defaults(handler=run_trash_purge)


def run_trash_list(args: argparse.Namespace) -> int:

    handles, errors, config = run_handles(args)
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
        now = now_utc()
        rows = []
        for item in items:
            original = item.original or "?"
            if item.companion_of:
                original += f" (with {item.companion_of})"
            rows.append(
                (
                    item.run_dir.name,
                    original,
                    item.name,
                    ago(now - item.trashed_at),
                    format_size_human(item.size),
                )
            )
        if rows:
            titles = ("run", "deleted from", "name in the trash", "trashed", "size")
            print_table("ckptd trash", [Column(title) for title in titles], rows)
        else:
            say(f"the trash is empty ({plural(len(handles), 'run')} looked at)")
    print_errors(errors)
    return ExitStatus.FAILED if errors else ExitStatus.OK


def run_trash_restore(args: argparse.Namespace) -> int:

    config = config_or_none(args)
    with command_logging(config):
        result = restore(args.path, now=now_utc(), config=config)
    if args.json:
        print_json(result.to_json_obj())
    else:
        for restored in result.files:
            say(f"restored {result.run_dir / restored.path} (from {restored.trash_path})")
        say(f"pinned: {result.pin_reason}")
    return ExitStatus.OK


def run_trash_purge(args: argparse.Namespace) -> int:

    handles, errors, config = run_handles(args)
    older_than = args.older_than
    if older_than is None:
        older_than = (config.delete if config is not None else DeleteConfig()).trash_ttl
    outcomes = []
    now = now_utc()
    trash_dirs = {}
    with command_logging(config):
        for handle in handles:
            trash_dirs[handle.run_dir] = handle.layout.trash
            try:
                outcomes.append(purge(handle, older_than=older_than, now=now, dry_run=args.dry_run))
            except CkptdError as err:
                errors.append(str(err))
    if args.json:
        document = {"runs": [o.to_json_obj() for o in outcomes], "errors": errors}
        print_json({"dry_run": args.dry_run, **document})
    else:
        verb = "would purge" if args.dry_run else "purged"
        for outcome in outcomes:
            if args.dry_run:
                for name in outcome.removed:
                    say(f"would purge {trash_dirs[outcome.run_dir] / name}")
            say(
                f"{outcome.run_dir}: {verb} {plural(len(outcome.removed), 'file')} "
                f"({format_size_human(outcome.bytes)}) trashed over {format_duration(older_than)} ago"
            )
    print_errors(errors)
    return ExitStatus.FAILED if errors else ExitStatus.OK
