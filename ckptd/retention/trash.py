"""``ckptd trash list | restore | purge``: see, undo and empty what prunes moved to the trash.

The trash is ``<run>/.ckptd/trash/`` with its index ``.index.json`` (written by ``deletion``: trash
name -> original run-relative path, time trashed, sha256, and ``companion_of`` for an archived legacy
original that went with its zip). A converted zip and its archived original are one checkpoint, so
they are listed, restored and purged together.

Restore (under the run lock, so it never races a prune or a daemon batch):

1. find the entry (by its trash path, or by the checkpoint's original path: the newest such entry);
2. refuse if a live file already has the original name, or if the trash copy's sha256 is not what
   was recorded when it was deleted (it would not be the checkpoint that was deleted); every name
   the trash index gives (entry, original, companion) must be a plain path inside the run, else
   the whole restore is refused (``deletion.read_trash_index``);
3. move the archived original, then the checkpoint, back (never overwriting, never through a
   symlinked directory: every move walks from the run's directory with no-follow opens,
   ``ckptd.fs.runfs``; mtimes are kept, so retention judges it exactly as before);
4. drop the entries from the trash index; add them to the manifest again (``kept``, verified for
   zips; the original ``converted``) and mark the manifest's ``removed`` record ``restored_at``;
5. pin the checkpoint (``restored from trash <when>``) so the next prune does not delete it again.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ckptd.config.model import Config
from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.formats.verify import verify_zip
from ckptd.fs.files import FileIdentity, is_temp_name
from ckptd.manifest.model import Manifest, ManifestEntry, ParamsSummary
from ckptd.manifest.updates import set_entry
from ckptd.retention.deletion import (
    TRASH_STATE_FILES,
    PurgeResult,
    TrashRecord,
    purge_trash,
    read_trash_index,
    trash_entries_for,
    write_trash_index,
)
from ckptd.retention.dir_trash import digest_of, restored_entry, tree_size_at
from ckptd.retention.pins import PIN_KEY, set_pin
from ckptd.runs.access import (
    OPS_LOCK_TIMEOUT,
    RunHandle,
    load_manifest_or_none,
    locate,
    require_plain_relpath,
    save_manifest,
    sha256_in_run,
)
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.statedir import LEGACY_DIR, TRASH_DIR, Pin, run_lock
from ckptd.timefmt import format_utc, from_ns

logger = logging.getLogger(__name__)

RESTORED_KEY = "restored_at"


@dataclass(frozen=True)
class TrashItem:
    """One file in a run's trash."""

    run_dir: Path
    name: str  # the file name inside the trash dir
    trash_path: str  # run-relative, e.g. ".ckptd/trash/rl_model_5000_steps.zip"
    original: str | None  # run-relative path it was deleted from (None: not in the index)
    trashed_at: datetime  # from the index, else the file's ctime (set by the move)
    size: int
    sha256: str | None
    companion_of: str | None  # for an archived original: the trash name of its checkpoint
    expires_at: datetime | None  # trashed_at + trash_ttl, when a ttl is known

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": str(self.run_dir),
            "name": self.name,
            "trash_path": self.trash_path,
            "original": self.original,
            "trashed_at": format_utc(self.trashed_at),
            "expires_at": None if self.expires_at is None else format_utc(self.expires_at),
            "size": self.size,
            "sha256": self.sha256,
            "companion_of": self.companion_of,
        }


@dataclass(frozen=True)
class RestoredFile:
    trash_path: str
    path: str  # where it is now (run-relative)


@dataclass(frozen=True)
class RestoreResult:
    run_dir: Path
    files: tuple[RestoredFile, ...]  # the checkpoint first, then its archived original
    pin_reason: str
    manifest_updated: bool

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": str(self.run_dir),
            "restored": [{"from": f.trash_path, "to": f.path} for f in self.files],
            "pinned": self.pin_reason,
            "manifest_updated": self.manifest_updated,
        }


# ---- listing ------------------------------------------------------------------------------------


def list_trash(handle: RunHandle, *, ttl: timedelta | None = None) -> list[TrashItem]:
    """Every file in the run's trash, sorted by name; an empty list when there is no trash.

    Raises StateError when the trash index exists but is invalid.
    """
    layout = handle.layout
    names = layout.fs.listdir(layout.rel(TRASH_DIR))
    if not names:
        return []
    index = read_trash_index(layout)
    items = []
    for name in names:
        if name in TRASH_STATE_FILES or is_temp_name(name):
            continue
        st = layout.fs.lstat(layout.rel(TRASH_DIR, name))
        record = index.get(name)
        if st is None:
            continue
        size = st.st_size
        if stat.S_ISDIR(st.st_mode) and record is not None:  # a directory checkpoint, whole
            with layout.fs.directory(layout.rel(TRASH_DIR)) as trash_fd:
                size = tree_size_at(trash_fd, name)
        elif not stat.S_ISREG(st.st_mode):
            continue
        trashed_at = record.trashed_at if record else datetime.fromtimestamp(st.st_ctime, UTC)
        items.append(
            TrashItem(
                run_dir=handle.run_dir,
                name=name,
                trash_path=handle.state_relpath(TRASH_DIR, name),
                original=record.original if record else None,
                trashed_at=trashed_at,
                size=size,
                sha256=record.sha256 if record else None,
                companion_of=record.companion_of if record else None,
                expires_at=None if ttl is None else trashed_at + ttl,
            )
        )
    return items


# ---- restore ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One file of the group being restored."""

    name: str  # in the trash
    original: str  # run-relative destination
    sha256: str | None
    directory: bool = False  # a directory checkpoint, restored whole


def restore(
    path: Path,
    *,
    now: datetime,
    config: Config | None = None,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
) -> RestoreResult:
    """Put a trashed checkpoint (and its archived original) back, record it, and pin it.

    ``path`` is the file in the trash or the checkpoint's original path. Raises CkptdError (naming
    the file) when it is not in the trash, would overwrite a live file, or no longer matches the
    sha256 recorded when it was deleted; nothing is moved then.
    """
    handle, relpath = locate(path, config)
    require_plain_relpath(handle, relpath)
    layout = handle.layout
    with run_lock(layout, timeout=lock_timeout):
        index = read_trash_index(layout)
        manifest = load_manifest_or_none(handle)
        main_name = _trash_name_for(handle, relpath, index)
        group = _group(handle, main_name, index, manifest)
        for member in group:
            _check_member(handle, member)
        restored = []
        for member in reversed(group):  # the archived original first: a zip never lacks its source
            destination = handle.run_dir / member.original
            try:
                layout.fs.move(
                    handle.state_relpath(TRASH_DIR, member.name),
                    member.original,
                    create_parents=True,
                )
            except FileExistsError:
                raise CkptdError(
                    "a file of that name is already there; refusing to overwrite it",
                    path=str(destination),
                ) from None
            restored.append(
                RestoredFile(handle.state_relpath(TRASH_DIR, member.name), member.original)
            )
            logger.info(
                "restored %s from the trash (%s)",
                destination,
                member.name,
                extra={
                    "event": "restored",
                    "run": handle.relpath,
                    # A directory checkpoint as its manifest path (and deletion event) names it.
                    "file": member.original + ("/" if member.directory else ""),
                    "named_in_msg": True,
                },
            )
        remaining = {name: r for name, r in index.items() if name not in {m.name for m in group}}
        write_trash_index(layout, remaining)
        reason = f"restored from trash {format_utc(now)}"
        pinned = group[0].original + ("/" if group[0].directory else "")
        set_pin(layout, pinned, Pin(reason=reason, pinned_at=now))
        updated = False
        if manifest is not None:
            new = _record_restore(handle, manifest, group, now, reason)
            updated = save_manifest(handle, new, manifest, now)
    return RestoreResult(handle.run_dir, tuple(reversed(restored)), reason, updated)


def _trash_name_for(handle: RunHandle, relpath: str, index: dict[str, TrashRecord]) -> str:
    trash_prefix = handle.state_relpath(TRASH_DIR) + "/"
    shown = str(handle.run_dir / relpath)
    if relpath.startswith(trash_prefix):
        name = relpath[len(trash_prefix) :]
        if "/" in name or name in TRASH_STATE_FILES:
            raise CkptdError("is not a trash entry", path=shown)
        if not handle.layout.fs.exists(relpath):
            raise CkptdError("no such file in the trash", path=shown)
        return name
    candidates = trash_entries_for(handle, relpath)
    if not candidates:
        raise CkptdError("is not in the trash of its run (see `ckptd trash list`)", path=shown)
    return candidates[-1].rpartition("/")[2]


def _group(
    handle: RunHandle, name: str, index: dict[str, TrashRecord], manifest: Manifest | None
) -> list[_Member]:
    """The checkpoint named ``name`` and its companions (an archived original moves with its zip)."""
    record = index.get(name)
    if record is not None and record.companion_of is not None and record.companion_of in index:
        logger.info("%s is the archived original of %s; restoring both", name, record.companion_of)
        name, record = record.companion_of, index[record.companion_of]
    original = record.original if record else _original_from_manifest(handle, name, manifest)
    if original is None:
        raise CkptdError(
            "trash entry has no record of where it came from (no trash index entry and no "
            "manifest removal names it); move it back by hand",
            path=str(handle.layout.trash / name),
        )
    trash_st = handle.layout.fs.lstat(handle.state_relpath(TRASH_DIR, name))
    is_dir = trash_st is not None and stat.S_ISDIR(trash_st.st_mode) and record is not None
    members = [_Member(name, original, record.sha256 if record else None, is_dir)]
    members.extend(
        _Member(other.name, other.original, other.sha256)
        for other in sorted(index.values(), key=lambda r: r.name)
        if other.companion_of == name
    )
    return members


def _original_from_manifest(handle: RunHandle, name: str, manifest: Manifest | None) -> str | None:
    trash_path = handle.state_relpath(TRASH_DIR, name)
    for removed in reversed(manifest.removed if manifest else ()):
        if removed.trash == trash_path:
            return removed.path
        if removed.converted_from_trash == trash_path:
            return removed.converted_from
    return None


def _check_member(handle: RunHandle, member: _Member) -> None:
    # The index's names were checked when it was read; a name from the manifest was not.
    require_plain_relpath(handle, member.original)
    legacy_prefix = handle.state_relpath(LEGACY_DIR) + "/"
    if handle.in_state_dir(member.original) and not member.original.startswith(legacy_prefix):
        raise CkptdError(
            f"trash index names {member.original!r} as its origin, which is inside the state dir",
            path=str(handle.layout.trash / member.name),
        )
    fs = handle.layout.fs
    destination = handle.run_dir / member.original
    if fs.exists(member.original):
        raise CkptdError(
            "a live file has this name; refusing to overwrite it with the trash copy "
            f"{handle.state_relpath(TRASH_DIR, member.name)}",
            path=str(destination),
        )
    source_rel = handle.state_relpath(TRASH_DIR, member.name)
    source = handle.run_dir / source_rel
    if not member.directory:
        fs.regular(source_rel)
    if member.sha256 is not None:
        digest = (
            digest_of(fs, source_rel) if member.directory else sha256_in_run(handle, source_rel)
        )
        if digest != member.sha256:
            raise CkptdError(
                f"sha256 {digest} differs from {member.sha256} recorded when it was deleted; "
                "not restoring a file that is not the deleted checkpoint",
                path=str(source),
            )


def _record_restore(
    handle: RunHandle,
    manifest: Manifest,
    group: Sequence[_Member],
    now: datetime,
    reason: str,
) -> Manifest:
    legacy_prefix = handle.state_relpath(LEGACY_DIR) + "/"
    main, companions = group[0], group[1:]
    archived = next((m for m in companions if m.original.startswith(legacy_prefix)), None)
    converted_from = archived.original[len(legacy_prefix) :] if archived else None
    if main.directory:
        matcher = CheckpointMatcher(handle.checkpoints, handle.manifest_filename)
        entry = restored_entry(
            handle.layout.fs, main.original, matcher, handle.state_dir_name, (f"pinned: {reason}",)
        )
        pin = {PIN_KEY: {"reason": reason, "pinned_at": format_utc(now)}}
        updated = manifest
        if entry is not None:
            updated = set_entry(manifest, dataclasses.replace(entry, extra={**entry.extra, **pin}))
    else:
        updated = set_entry(manifest, _checkpoint_entry(handle, main, converted_from, reason, now))
    for member in companions:
        updated = set_entry(updated, _original_entry(handle, member))
    trash_paths = {handle.state_relpath(TRASH_DIR, m.name) for m in group}
    removed = tuple(
        dataclasses.replace(entry, extra={**entry.extra, RESTORED_KEY: format_utc(now)})
        if entry.trash in trash_paths and RESTORED_KEY not in entry.extra
        else entry
        for entry in updated.removed
    )
    return dataclasses.replace(updated, removed=removed)


def _identity(handle: RunHandle, relpath: str) -> FileIdentity:
    return FileIdentity.of(handle.layout.fs.regular(relpath))


def _checkpoint_entry(
    handle: RunHandle, member: _Member, converted_from: str | None, reason: str, now: datetime
) -> ManifestEntry:

    path = handle.run_dir / member.original
    identity = _identity(handle, member.original)
    fmt = identify(path).format
    matcher = CheckpointMatcher(handle.checkpoints, handle.manifest_filename)
    entry = ManifestEntry(
        path=member.original,
        step=matcher.step_of(path.name),
        size=identity.size,
        mtime=from_ns(identity.mtime_ns),
        mtime_ns=identity.mtime_ns,
        sha256=member.sha256 or sha256_in_run(handle, member.original),
        format=Format(fmt),
        state="kept",
        reasons=(f"pinned: {reason}",),
        converted_from=converted_from,
        extra={PIN_KEY: {"reason": reason, "pinned_at": format_utc(now)}},
    )
    if entry.format in (Format.SB2_ZIP, Format.SB3_ZIP):
        report = verify_zip(path)
        if not report.ok:
            return dataclasses.replace(
                entry, state="broken", error="; ".join(report.problems) or "does not verify"
            )
        if entry.format is Format.SB2_ZIP:
            entry = dataclasses.replace(
                entry,
                params=ParamsSummary(report.params_count, report.params_bytes),
                carries_code=report.carries_code,
            )
    return entry


def _original_entry(handle: RunHandle, member: _Member) -> ManifestEntry:
    identity = _identity(handle, member.original)
    return ManifestEntry(
        path=member.original,
        step=None,
        size=identity.size,
        mtime=from_ns(identity.mtime_ns),
        mtime_ns=identity.mtime_ns,
        sha256=member.sha256 or sha256_in_run(handle, member.original),
        format=Format.SB2_PICKLE,  # only legacy pickles are archived
        state="converted",
    )


# ---- purge --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeOutcome:
    run_dir: Path
    removed: tuple[str, ...]
    bytes: int

    def to_json_obj(self) -> dict[str, object]:
        return {"run": str(self.run_dir), "purged": list(self.removed), "bytes": self.bytes}


def purge(
    handle: RunHandle,
    *,
    older_than: timedelta,
    now: datetime,
    dry_run: bool = False,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
) -> PurgeOutcome:
    """Delete for good every trash entry of the run trashed at least ``older_than`` ago (with
    ``dry_run``, only say which: nothing is unlinked or rewritten)."""
    if not handle.layout.fs.is_real_dir(handle.layout.rel(TRASH_DIR)):
        return PurgeOutcome(handle.run_dir, (), 0)  # nothing was ever deleted here
    with run_lock(handle.layout, timeout=lock_timeout, shared=dry_run, create=not dry_run):
        result: PurgeResult = purge_trash(handle.layout, older_than, now, dry_run=dry_run)
    return PurgeOutcome(handle.run_dir, result.removed, result.bytes)
