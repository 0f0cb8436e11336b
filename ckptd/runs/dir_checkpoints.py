"""Directory checkpoints in the inventory: one ``Checkpoint`` per directory named by
``checkpoints.directories``, and its manifest entry.

A directory whose name matches (``CheckpointMatcher.matches_directory``) is one unit
(docs/formats.md, "Directory checkpoints"): the inventory's walk does not enter it (its files are
never checkpoints of their own, whatever ``patterns`` say), and it is found here instead. Its
listing (``ckptd.runs.dir_listing``, no-follow) is judged by its trainer's completion rule
(``ckptd.formats.trainer_dirs.judge``); it is complete only when the marker says so *and* nothing
in it changed for ``stable_for``. A complete directory is hashed file by file on a cold pass (its
``sha256`` is ``manifest.model.directory_digest`` of the files' hashes) and each pickle-bearing
file gets its verdict; a warm pass reuses the previous entry when the listing's signature (every
file's path, size and mtime) is unchanged, so it is stat-only. Files whose verdict is not safe
(a Trainer's ``training_args.bin``, DeepSpeed's loss scaler) leave the directory ``kept``, with the
verdicts in its entry: a directory is never quarantined (docs/security.md, "Verdicts").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ckptd.errors import CkptdError, FileChangedError, UnsafePathError
from ckptd.formats.sniff import identify_open
from ckptd.formats.trainer_dirs import DirListing, judge
from ckptd.fs.files import FileIdentity
from ckptd.fs.runfs import RunFS
from ckptd.manifest.model import FileRecord, ManifestEntry, ManifestState, directory_digest
from ckptd.pickles.verdict import Verdict
from ckptd.runs.checkpoints import (
    INCOMPLETE,
    OK,
    RETRY_KEY,
    UNREADABLE,
    Checkpoint,
    InventoryOptions,
    cannot_read,
    first_entry,
    is_final_verdict,
    utc_from_ns,
)
from ckptd.runs.dir_listing import hash_listed, list_directory
from ckptd.runs.listing import CheckpointMatcher

logger = logging.getLogger(__name__)

# The entry key listing what a directory holds besides regular files (symlinks, FIFOs...): moved
# with it, never followed or read.
IRREGULAR_KEY = "irregular"


@dataclass(frozen=True)
class DirCheckpoint(Checkpoint):
    """A directory checkpoint: ``path`` ends in ``/``; ``identity`` holds the sum of its files'
    sizes, the newest mtime and the directory's own inode and device."""

    signature: str = ""  # DirListing.signature(): checked again right before it is moved
    files: tuple[FileRecord, ...] | None = None  # None until hashed
    completion: str = ""  # which marker decided, one line
    irregular: tuple[str, ...] = ()

    @property
    def reldir(self) -> str:
        """The run-relative directory without its trailing ``/``."""
        return self.path.rstrip("/")


def is_directory_path(path: str) -> bool:
    return path.endswith("/")


class DirectoryFinder:
    """Collects the directory checkpoints the inventory's walk meets, and keeps the walk out of them.

    ``visit`` (the walk's ``visit_dir``) says which directory is being listed; ``skipper`` wraps
    the walk's ``skip_dir`` so a directory checkpoint is recorded and not entered.
    """

    def __init__(self, run_dir: Path, matcher: CheckpointMatcher) -> None:
        self._cut = len(str(run_dir)) + 1
        self._matcher = matcher
        self._current = ""
        self.found: list[str] = []

    @classmethod
    def for_run(cls, run_dir: Path, matcher: CheckpointMatcher) -> DirectoryFinder | None:
        return cls(run_dir, matcher) if matcher.has_directories else None

    def visit(self, directory: str) -> None:
        self._current = directory[self._cut :]

    def skipper(self, skip: Callable[[str], bool]) -> Callable[[str], bool]:
        def skip_or_record(name: str) -> bool:
            if skip(name):
                return True
            if self._matcher.matches_directory(name):
                self.found.append(f"{self._current}/{name}" if self._current else name)
                return True
            return False

        return skip_or_record


def directory_checkpoints(
    run_dir: Path,
    reldirs: Sequence[str],
    options: InventoryOptions,
    now_ns: int,
    previous: Mapping[str, ManifestEntry],
) -> list[Checkpoint]:
    """One checkpoint per directory of ``reldirs`` that is still there."""
    fs = RunFS(run_dir)
    found: list[Checkpoint] = []
    for reldir in reldirs:
        checkpoint = directory_checkpoint(fs, reldir, options, now_ns, previous.get(reldir + "/"))
        if checkpoint is not None:
            found.append(checkpoint)
    return found


def directory_checkpoint(
    fs: RunFS,
    reldir: str,
    options: InventoryOptions,
    now_ns: int,
    cached: ManifestEntry | None,
) -> DirCheckpoint | None:
    """The directory ``reldir`` as one checkpoint; None when it vanished or cannot be trusted."""
    path = reldir + "/"
    step = options.matcher.step_of(reldir.rpartition("/")[2])
    try:
        walked = list_directory(fs, reldir)
        st = fs.lstat(reldir)
    except FileNotFoundError:
        return None
    except UnsafePathError as err:
        logger.warning("%s; not inventoried", err)
        return None
    except OSError as err:
        logger.info("%s: cannot list (%s); will retry", fs.show(reldir), err)
        return DirCheckpoint(
            path,
            step,
            FileIdentity(0, 0, 0, 0),
            judge(DirListing(reldir, ())).format,
            None,
            True,
            UNREADABLE,
            cached=cached,
            error=cannot_read(err),
        )
    if st is None:
        return None
    listing = walked.listing
    completion = judge(listing)
    signature = listing.signature()
    identity = FileIdentity(listing.size, listing.newest_mtime_ns, st.st_ino, st.st_dev)
    valid = cached if cached is not None and cached.signature == signature else None
    base = DirCheckpoint(
        path,
        step,
        identity,
        completion.format,
        None,
        False,
        INCOMPLETE,
        cached=valid,
        signature=signature,
        completion=completion.reason,
        irregular=walked.irregular,
    )
    quiet = (now_ns - listing.newest_mtime_ns) >= options.stable_for_ns
    if not (completion.complete and quiet):
        return base  # never read a directory that may still be written
    complete = dataclasses.replace(base, complete=True, status=OK)
    if valid is not None and valid.sha256 is not None and valid.files is not None:
        # A scrub's ``broken`` keeps retention's hands off it until the files heal.
        status = valid.state if valid.state == "broken" else OK
        return dataclasses.replace(complete, sha256=valid.sha256, files=valid.files, status=status)
    if not options.hash_files:
        return complete
    try:
        files = hash_and_judge(fs, reldir, listing)
    except FileNotFoundError:
        return base  # a file went away since the listing: it is being changed
    except FileChangedError as err:
        logger.info("%s; looking again later", err)
        return base
    except UnsafePathError as err:
        logger.warning("%s; not inventoried", err)
        return None
    except OSError as err:
        logger.info("%s: cannot read (%s); will retry", fs.show(reldir), err)
        return dataclasses.replace(complete, status=UNREADABLE, error=cannot_read(err))
    digest = directory_digest((item.path, item.sha256 or "") for item in files)
    return dataclasses.replace(complete, sha256=digest, files=files)


def hash_and_judge(fs: RunFS, reldir: str, listing: DirListing) -> tuple[FileRecord, ...]:
    """Every file of ``listing`` hashed (no-follow) and, when it holds pickles, judged.

    FileChangedError names a file whose size or mtime is no longer the listing's.
    """
    records = []
    for item in listing.files:
        relpath = f"{reldir}/{item.path}"
        with fs.open_read(relpath) as handle:
            sha256 = hash_listed(handle, item, fs.show(relpath))
            handle.seek(0)
            verdict = _verdict_of(handle, fs.show(relpath))
        records.append(FileRecord(item.path, item.size, sha256, verdict))
    return tuple(records)


def _verdict_of(handle: BinaryIO, shown: str) -> Verdict | None:
    try:
        return identify_open(handle, shown).verdict
    except CkptdError as err:
        logger.info("%s: no verdict (%s)", shown, err)
        return None


def unsafe_files(files: Sequence[FileRecord] | None) -> list[FileRecord]:
    """The files whose verdict says loading them could run code."""
    return [item for item in files or () if item.verdict is not None and not item.verdict.safe]


# ---- the manifest entry ---------------------------------------------------------------------------


def directory_entry(checkpoint: DirCheckpoint, reasons: tuple[str, ...] | None) -> ManifestEntry:
    """The manifest entry of a directory checkpoint (see ``ckptd.runs.rebuild``)."""
    cached = checkpoint.cached
    state: ManifestState
    if checkpoint.status == UNREADABLE or not checkpoint.complete:
        state = "pending"
    elif cached is not None and is_final_verdict(cached) and cached.sha256 is not None:
        state = cached.state  # e.g. broken by a scrub, with the evidence in its entry
    else:
        state = "kept"  # unsafe files inside are recorded per file, never refused as a whole
    base = cached or first_entry(checkpoint, state)
    extra = {key: value for key, value in base.extra.items() if key not in (IRREGULAR_KEY,)}
    if checkpoint.irregular:
        extra[IRREGULAR_KEY] = list(checkpoint.irregular)
    error = base.error
    if checkpoint.status == UNREADABLE:
        error, extra = checkpoint.error, {**extra, RETRY_KEY: True}
    elif state in ("kept", "pending"):
        error = None
        extra.pop(RETRY_KEY, None)
    return dataclasses.replace(
        base,
        path=checkpoint.path,
        step=checkpoint.step,
        size=checkpoint.size,
        mtime=utc_from_ns(checkpoint.identity.mtime_ns),
        mtime_ns=checkpoint.identity.mtime_ns,
        sha256=checkpoint.sha256,
        format=checkpoint.format,
        state=state,
        reasons=reasons if reasons is not None else base.reasons,
        error=error,
        files=checkpoint.files,
        signature=checkpoint.signature if checkpoint.complete else None,
        extra=extra,
    )
