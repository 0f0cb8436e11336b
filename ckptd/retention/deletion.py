"""Delete one checkpoint safely (to the run's trash or for good) and purge expired trash.

Safety rules, all enforced here rather than trusted from the caller:

* Every operation goes through directory file descriptors opened with ``O_NOFOLLOW`` one path
  component at a time, starting at the run dir (``ckptd.fs.runfs``), so no symlink anywhere in the
  path is followed and nothing outside the run can be touched, even if a directory is swapped for
  a link meanwhile. The trash index is read the same way and every name and path in it is checked
  (``runfs.relpath_problem``) before anything trusts it.
* Right before acting, the file is stat'ed again and its (size, mtime_ns, inode, device) must equal
  what was judged; otherwise ``FileChangedError`` and nothing is moved.
* A converted zip and its archived legacy original are one checkpoint: both are checked before
  either is moved, then both go to the trash (or both are unlinked).

Trash time: each move is recorded in ``<state>/trash/.index.json`` (name → original path, time
trashed, sha256). ``rename`` keeps the file's mtime (which restore and retention rely on) but sets
its ctime, so a file missing from the index (a crash between the move and the index write) falls
back to its ctime, which is never earlier than the move: a purge may come late, never early.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from ckptd.errors import FileChangedError, StateError, UnsafePathError
from ckptd.fs.files import FileIdentity, is_temp_name
from ckptd.fs.runfs import move_unique_at, relpath_problem
from ckptd.retention.dir_trash import move_directory, remove_tree_at, tree_size_at
from ckptd.retention.trash_journal import (
    TRASH_PENDING,
    PendingMove,
    clear_pending,
    recover,
    write_pending,
)
from ckptd.runs.access import RunHandle
from ckptd.runs.checkpoints import Checkpoint
from ckptd.runs.dir_checkpoints import DirCheckpoint
from ckptd.runs.statedir import MAX_STATE_FILE_BYTES, TRASH_DIR, StateLayout
from ckptd.timefmt import format_utc, parse_utc

logger = logging.getLogger(__name__)

DeleteMode = Literal["trash", "unlink"]
TRASH_INDEX = ".index.json"
# ckptd's own files in the trash dir: never trash entries.
TRASH_STATE_FILES = frozenset({TRASH_INDEX, TRASH_PENDING})
TRASH_SCHEMA = "ckptd.trash/1"


@dataclass(frozen=True)
class Deleted:
    """What one deletion did (run-relative paths; trash paths None when unlinked)."""

    path: str
    trash: str | None
    legacy_path: str | None
    legacy_trash: str | None
    bytes: int


@dataclass(frozen=True)
class TrashRecord:
    """One trash entry: where it came from and when it was trashed."""

    name: str  # file name inside the trash dir
    original: str  # run-relative path before the move
    trashed_at: datetime
    sha256: str | None = None
    companion_of: str | None = None  # an archived original: the trash name of its zip


@dataclass(frozen=True)
class PurgeResult:
    removed: tuple[str, ...]
    bytes: int


# ---- directory descriptors ----------------------------------------------------------------------


def _check_identity(dir_fd: int, name: str, judged: FileIdentity, shown: str) -> None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError("is a symlink; ckptd never deletes through links", path=shown)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError("is not a regular file", path=shown)
    now = FileIdentity.of(st)
    if now != judged:
        raise FileChangedError(
            f"changed since it was judged (size {judged.size}->{now.size}, "
            f"mtime_ns {judged.mtime_ns}->{now.mtime_ns}, inode {judged.inode}->{now.inode}); not deleted",
            path=shown,
        )


# ---- deletion -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    relpath: str
    identity: FileIdentity
    sha256: str | None


def delete_checkpoint(
    layout: StateLayout, checkpoint: Checkpoint, *, mode: DeleteMode, now: datetime
) -> Deleted:
    """Move ``checkpoint`` (and its archived original) to the trash, or unlink both.

    Hold the run lock. Raises FileChangedError when either file differs from what was judged,
    UnsafePathError for symlinks or non-regular files, FileNotFoundError when one vanished; in
    every case nothing has been moved. The trash index is updated before returning.
    """
    results = delete_checkpoints(layout, [checkpoint], mode=mode, now=now)
    outcome = results[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def delete_checkpoints(
    layout: StateLayout,
    checkpoints: Sequence[Checkpoint],
    *,
    mode: DeleteMode,
    now: datetime,
    run: str | None = None,
) -> list[Deleted | FileChangedError | UnsafePathError | OSError]:
    """Delete several checkpoints of one run; one outcome per input, in order.

    ``run`` (the run's path relative to its root) names the run in the deletion events.

    A failure (changed file, symlink, vanished file, I/O error) is returned in its slot, the file is
    left in place and the others go on. The trash index is written once at the end.
    """
    outcomes: list[Deleted | FileChangedError | UnsafePathError | OSError] = []
    records: list[TrashRecord] = []
    noted = mode == "trash" and bool(checkpoints)
    if noted:
        layout.ensure()
        settle_trash(layout)
        # Written before the first move, removed after the index (ckptd.retention.trash_journal).
        write_pending(layout, _pending_moves(checkpoints), now)
    for checkpoint in checkpoints:
        if isinstance(checkpoint, DirCheckpoint):
            try:
                outcomes.append(_delete_directory(layout, checkpoint, mode, now, records, run))
            except (FileChangedError, UnsafePathError, OSError) as err:
                logger.warning("not deleting %s: %s", checkpoint.path, err)
                outcomes.append(err)
            continue
        targets = [_Target(checkpoint.path, checkpoint.identity, checkpoint.sha256)]
        if checkpoint.legacy is not None:
            legacy = checkpoint.legacy
            targets.append(_Target(legacy.path, legacy.identity, legacy.sha256))
        try:
            outcomes.append(_delete_group(layout, targets, mode, now, records, run))
        except (FileChangedError, UnsafePathError, OSError) as err:
            logger.warning("not deleting %s: %s", checkpoint.path, err)
            outcomes.append(err)
    if records:
        _append_trash_records(layout, records)
    if noted:
        clear_pending(layout)
    return outcomes


def _pending_moves(checkpoints: Sequence[Checkpoint]) -> list[PendingMove]:
    moves = []
    for group, checkpoint in enumerate(checkpoints):
        path = checkpoint.reldir if isinstance(checkpoint, DirCheckpoint) else checkpoint.path
        identity = checkpoint.identity
        moves.append(PendingMove(path, identity.inode, identity.device, checkpoint.sha256, group))
        if checkpoint.legacy is not None:
            legacy = checkpoint.legacy
            moves.append(
                PendingMove(
                    legacy.path,
                    legacy.identity.inode,
                    legacy.identity.device,
                    legacy.sha256,
                    group,
                )
            )
    return moves


def settle_trash(layout: StateLayout) -> None:
    """Tidy what a deletion killed midway left in the trash; hold the run lock exclusively.

    Whatever writes into the trash (a deletion, its index and note, a restore, a purge) holds the
    run lock, so under it a ckptd temp file there is a dead writer's: removed now, whatever its
    age, rather than by the rescan's sweep of stale temp files 30 s later. A note left there is
    settled: what it recovers is written into the index, and the note removed.
    """
    trash = layout.rel(TRASH_DIR)
    for name in layout.fs.remove_stale_temps(trash, older_than_s=-math.inf, now=time.time()):
        logger.info("removed %s, left by a killed write", layout.trash / name)
    if layout.fs.exists(layout.rel(TRASH_DIR, TRASH_PENDING)):
        write_trash_index(layout, _read_index_or_empty(layout))
        clear_pending(layout)


def _delete_group(
    layout: StateLayout,
    targets: list[_Target],
    mode: DeleteMode,
    now: datetime,
    records: list[TrashRecord],
    run: str | None = None,
) -> Deleted:
    run_dir = layout.run_dir
    for target in targets:  # check all before touching any: the pair goes together or not at all
        with layout.fs.parent(target.relpath) as (dir_fd, name):
            _check_identity(dir_fd, name, target.identity, str(run_dir / target.relpath))
    moved: list[str | None] = []
    for index, target in enumerate(targets):
        trash_name = _remove_one(layout, target, mode)
        moved.append(None if trash_name is None else f"{layout.state_dir_name}/trash/{trash_name}")
        if trash_name is not None:
            companion = Path(moved[0]).name if index and moved[0] else None
            records.append(TrashRecord(trash_name, target.relpath, now, target.sha256, companion))
        event = "trashed" if trash_name is not None else "deleted"  # JSON logs' event field
        logger.info(
            "deleted %s (%s)",
            run_dir / target.relpath,
            moved[-1] or "unlinked",
            # JSON logs get run and file; the text line names the path in its message already.
            extra={"event": event, "run": run, "file": target.relpath, "named_in_msg": True},
        )
    return Deleted(
        path=targets[0].relpath,
        trash=moved[0],
        legacy_path=targets[1].relpath if len(targets) > 1 else None,
        legacy_trash=moved[1] if len(moved) > 1 else None,
        bytes=sum(target.identity.size for target in targets),
    )


def _delete_directory(
    layout: StateLayout,
    checkpoint: DirCheckpoint,
    mode: DeleteMode,
    now: datetime,
    records: list[TrashRecord],
    run: str | None = None,
) -> Deleted:
    """A directory checkpoint, whole (``ckptd.retention.dir_trash``)."""
    trash_name = move_directory(layout, checkpoint, unlink=mode == "unlink")
    trash = None if trash_name is None else f"{layout.state_dir_name}/{TRASH_DIR}/{trash_name}"
    if trash_name is not None:
        records.append(TrashRecord(trash_name, checkpoint.reldir, now, checkpoint.sha256))
    logger.info(
        "deleted %s (%s)",
        layout.run_dir / checkpoint.path,
        trash or "unlinked",
        # As a file's deletion: run and file for the JSON logs, the file being the manifest's
        # path of a directory checkpoint (ending in "/").
        extra={
            "event": "trashed" if trash else "deleted",
            "run": run,
            "file": checkpoint.path,
            "named_in_msg": True,
        },
    )
    return Deleted(checkpoint.path, trash, None, None, checkpoint.size)


def _remove_one(layout: StateLayout, target: _Target, mode: DeleteMode) -> str | None:
    with layout.fs.parent(target.relpath) as (dir_fd, name):
        # Checked again right before acting: the window is now one syscall wide.
        _check_identity(dir_fd, name, target.identity, str(layout.run_dir / target.relpath))
        if mode == "unlink":
            os.unlink(name, dir_fd=dir_fd)
            os.fsync(dir_fd)
            return None
        with layout.fs.directory(layout.rel(TRASH_DIR)) as trash_fd:
            trash_name = move_unique_at(dir_fd, name, trash_fd, name, shown=str(layout.trash))
            os.fsync(trash_fd)
        os.fsync(dir_fd)
        return trash_name


# ---- the trash index and purging ----------------------------------------------------------------


def read_trash_index(layout: StateLayout) -> dict[str, TrashRecord]:
    """The trash index by trash name; empty when absent.

    Raises StateError (naming the index) when it is unreadable, invalid, or names a trash entry,
    an original or a companion that is not a plain path inside the run (absolute, ``..``, NUL...):
    the index is a hint written into a directory others can write, never trusted as it stands.
    """
    path = layout.trash / TRASH_INDEX
    try:
        raw = layout.fs.read_bytes(layout.rel(TRASH_DIR, TRASH_INDEX), limit=MAX_STATE_FILE_BYTES)
        document = json.loads(raw)
    except FileNotFoundError:
        return _with_recovered(layout, {})
    except UnsafePathError as err:
        raise StateError(f"trash index unreadable ({err.message})", path=err.path) from err
    except (OSError, ValueError) as err:
        raise StateError(f"trash index unreadable ({err})", path=str(path)) from err
    try:
        entries = document["entries"]
        records = {
            name: TrashRecord(
                name=name,
                original=body["original"],
                trashed_at=parse_utc(body["trashed_at"]),
                sha256=body.get("sha256"),
                companion_of=body.get("companion_of"),
            )
            for name, body in entries.items()
        }
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise StateError(
            f"trash index does not match {TRASH_SCHEMA} ({err!r})", path=str(path)
        ) from err
    for record in records.values():
        _check_record(record, str(path))
    return _with_recovered(layout, records)


def _with_recovered(layout: StateLayout, records: dict[str, TrashRecord]) -> dict[str, TrashRecord]:
    """``records`` plus what a killed deletion moved before it could record it."""
    for found in recover(layout, records, TRASH_STATE_FILES):
        move = found.move
        records[found.name] = TrashRecord(
            found.name, move.original, found.trashed_at, move.sha256, found.companion_of
        )
    return records


def trash_entries_for(handle: RunHandle, relpath: str) -> list[str]:
    """Run-relative trash paths holding what was deleted from ``relpath``, oldest first."""
    try:
        index = read_trash_index(handle.layout)
    except StateError:
        return []
    matches = sorted(
        (record for record in index.values() if record.original == relpath),
        key=lambda record: record.trashed_at,
    )
    return [
        handle.state_relpath(TRASH_DIR, record.name)
        for record in matches
        if handle.layout.fs.exists(handle.state_relpath(TRASH_DIR, record.name))
    ]


def _check_record(record: TrashRecord, shown: str) -> None:
    problems = [
        ("entry", record.name, True),
        ("original of", record.original, False),
        ("companion_of of", record.companion_of, True),
    ]
    for what, value, single in problems:
        if value is None and what.startswith("companion"):
            continue
        problem = relpath_problem(value)
        if problem is None and single and "/" in str(value):
            problem = "is not a plain file name"
        if problem is not None:
            raise StateError(
                f"trash index: {what} {record.name!r}: {value!r} {problem}; not trusting it",
                path=shown,
            )
    if record.sha256 is not None and not isinstance(record.sha256, str):
        raise StateError(f"trash index: sha256 of {record.name!r} is not text", path=shown)


def write_trash_index(layout: StateLayout, records: Mapping[str, TrashRecord]) -> None:
    """Replace the trash index atomically (sorted by name)."""
    entries = {}
    for name in sorted(records):
        record = records[name]
        body: dict[str, str] = {
            "original": record.original,
            "trashed_at": format_utc(record.trashed_at),
        }
        if record.sha256 is not None:
            body["sha256"] = record.sha256
        if record.companion_of is not None:
            body["companion_of"] = record.companion_of
        entries[name] = body
    document = {"schema": TRASH_SCHEMA, "entries": entries}
    layout.fs.write_atomic(
        layout.rel(TRASH_DIR, TRASH_INDEX), (json.dumps(document, indent=2) + "\n").encode()
    )


def _read_index_or_empty(layout: StateLayout) -> dict[str, TrashRecord]:
    try:
        return read_trash_index(layout)
    except StateError as err:
        # Losing the index only delays purging (ctime fallback); it must not stop deletions.
        logger.error("%s; trash times fall back to ctime", err)
        return {}


def _append_trash_records(layout: StateLayout, records: Sequence[TrashRecord]) -> None:
    index = _read_index_or_empty(layout)
    index.update((record.name, record) for record in records)
    write_trash_index(layout, index)


def purge_trash(
    layout: StateLayout, ttl: timedelta, now: datetime, *, dry_run: bool = False
) -> PurgeResult:
    """Unlink trash entries trashed at least ``ttl`` before ``now``; hold the run lock (a shared
    one is enough for a ``dry_run``, which only lists what it would unlink).

    A real purge settles the trash first (``settle_trash``). Entries missing from the index use
    their ctime (set by the move). Symlinks found in the trash are removed as links (never
    followed); a directory is removed whole (no link below it followed) when the index records it
    (a directory checkpoint), else left alone.
    """
    if not layout.fs.is_real_dir(layout.rel(TRASH_DIR)):
        return PurgeResult((), 0)
    if not dry_run:  # every real prune purges: a run it deletes nothing from is settled too
        settle_trash(layout)
    index = _read_index_or_empty(layout)
    removed: list[str] = []
    freed = 0
    present: set[str] = set()
    with layout.fs.directory(layout.rel(TRASH_DIR)) as trash_fd:
        for name in sorted(os.listdir(trash_fd)):
            if name in TRASH_STATE_FILES or is_temp_name(name):
                continue
            st = os.stat(name, dir_fd=trash_fd, follow_symlinks=False)
            record = index.get(name)
            is_dir = stat.S_ISDIR(st.st_mode)
            if is_dir and record is None:
                continue  # only directory checkpoints ckptd moved here are removed
            present.add(name)
            trashed_at = record.trashed_at if record else datetime.fromtimestamp(st.st_ctime, UTC)
            if now - trashed_at >= ttl:
                size = tree_size_at(trash_fd, name) if is_dir else st.st_size
                if not dry_run:
                    if is_dir:
                        remove_tree_at(trash_fd, name)
                    else:
                        os.unlink(name, dir_fd=trash_fd)
                removed.append(name)
                freed += size if is_dir or stat.S_ISREG(st.st_mode) else 0
        if dry_run:
            return PurgeResult(tuple(removed), freed)
        if removed:
            os.fsync(trash_fd)
    remaining = {
        name: record for name, record in index.items() if name in present and name not in removed
    }
    if remaining != index:
        write_trash_index(layout, remaining)
    for name in removed:
        logger.info("purged %s from the trash of %s", name, layout.run_dir)
    return PurgeResult(tuple(removed), freed)
