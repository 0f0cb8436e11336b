"""The trash's write-ahead note: what a deletion is about to move, written before the first move.

A prune moves its doomed checkpoints into the trash one by one and then records them all in the
trash index at once (one index write per pass, not one per file). A process killed between the
moves and that write would leave files in the trash with no record of where they came from: not
lost, but not listed with their path and not restorable. So before the first move the pass writes
this note (atomically: every file's run-relative path, inode and device, sha256), and removes it
after the index is written. Whoever next reads the index while a note is there finds the trash
entries whose inode and device match a noted file (a rename keeps both), and records them under
their original paths; noted files that were never moved match nothing. The next deletion or
real purge in the run (every real prune purges) writes those records into the index and removes
the note, and with it any temp file a killed index or note write left (``deletion.settle_trash``;
docs/architecture.md, "Reliability rules").
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ckptd.errors import UnsafePathError
from ckptd.fs.files import is_temp_name
from ckptd.fs.runfs import relpath_problem
from ckptd.runs.statedir import MAX_STATE_FILE_BYTES, TRASH_DIR, StateLayout
from ckptd.timefmt import format_utc, parse_utc

logger = logging.getLogger(__name__)

TRASH_PENDING = ".pending.json"
PENDING_SCHEMA = "ckptd.trash-pending/1"


@dataclass(frozen=True)
class PendingMove:
    """A file or directory checkpoint a deletion is about to move into the trash."""

    original: str  # run-relative path
    inode: int
    device: int
    sha256: str | None
    group: int  # a checkpoint and its archived original share a group; the first is the zip


@dataclass(frozen=True)
class Recovered:
    """A trash entry found for a noted move: its trash name and what the note said of it."""

    name: str
    move: PendingMove
    trashed_at: datetime
    companion_of: str | None  # the trash name of its group's first entry, for an original


def write_pending(layout: StateLayout, moves: Sequence[PendingMove], at: datetime) -> None:
    document = {
        "schema": PENDING_SCHEMA,
        "trashed_at": format_utc(at),
        "moves": [
            {
                "original": move.original,
                "inode": move.inode,
                "device": move.device,
                "sha256": move.sha256,
                "group": move.group,
            }
            for move in moves
        ],
    }
    layout.fs.write_atomic(layout.rel(TRASH_DIR, TRASH_PENDING), json.dumps(document).encode())


def clear_pending(layout: StateLayout) -> None:
    layout.fs.unlink(layout.rel(TRASH_DIR, TRASH_PENDING), missing_ok=True)


def recover(
    layout: StateLayout, known: Mapping[str, object], own: frozenset[str]
) -> list[Recovered]:
    """The trash entries a killed deletion moved but never recorded: neither ``known`` to the
    index nor one of ckptd's ``own`` files there (the index, this note) or a temp file.

    A note that cannot be read is logged and ignored: it only ever adds records.
    """
    try:
        raw = layout.fs.read_bytes(layout.rel(TRASH_DIR, TRASH_PENDING), limit=MAX_STATE_FILE_BYTES)
    except FileNotFoundError:
        return []
    except (OSError, UnsafePathError) as err:
        logger.warning("%s: cannot read the trash's pending note (%s)", layout.trash, err)
        return []
    try:
        document = json.loads(raw)
        at = parse_utc(document["trashed_at"])
        moves = [
            PendingMove(
                str(item["original"]),
                int(item["inode"]),
                int(item["device"]),
                item["sha256"] if isinstance(item["sha256"], str) else None,
                int(item["group"]),
            )
            for item in document["moves"]
        ]
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("%s: the trash's pending note is not valid (%r); ignored", layout.trash, err)
        return []
    by_identity = {(move.inode, move.device): move for move in moves}
    position = {move: index for index, move in enumerate(moves)}
    named: dict[int, list[tuple[str, PendingMove]]] = {}
    with layout.fs.directory(layout.rel(TRASH_DIR)) as trash_fd:
        for name in sorted(os.listdir(trash_fd)):
            if name in known or name in own or is_temp_name(name):
                continue
            try:
                st = os.stat(name, dir_fd=trash_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            move = by_identity.get((st.st_ino, st.st_dev))
            if move is not None and relpath_problem(move.original) is None:
                named.setdefault(move.group, []).append((name, move))
    found: list[Recovered] = []
    for group in named.values():
        group.sort(key=lambda pair: position[pair[1]])
        first = group[0][0]
        for index, (name, move) in enumerate(group):
            found.append(Recovered(name, move, at, first if index else None))
    return found
