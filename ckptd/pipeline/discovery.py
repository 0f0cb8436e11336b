"""Which run a path belongs to, and which files of a run need the pipeline (reconciliation).

:func:`run_of` and :func:`needs_processing` are pure; :func:`scan_run` (and :func:`find_work`, its
files) scans a run against its manifest (the daemon's start and rescan), :func:`files_below` lists
a directory just created or moved in. A finished verdict is not redone until the file's size or
mtime differ from the record.

A directory checkpoint (``checkpoints.directories``, docs/formats.md "Directory checkpoints") is
one unit: no walk here enters one, so no file inside it is ever handed to the pipeline as a
checkpoint of its own. The walks report the directories instead, for the daemon's directory
tracker (``ckptd.watch.dir_tracker``), which waits for the trainer's marker and quiet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ckptd.config.model import Config, RootConfig
from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity, FoundFile
from ckptd.fs.runfs import join
from ckptd.fs.walk import walk_entries
from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.store import try_load_manifest
from ckptd.pipeline.backoff import backing_off
from ckptd.pipeline.types import error_text
from ckptd.runs.checkpoints import RETRY_KEY, SNIFF_GENERATION, SNIFF_KEY
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef, skipped_dir
from ckptd.runs.statedir import STATE_SUBDIRS, StateLayout

logger = logging.getLogger(__name__)

# ---- which run a path belongs to, and whether it needs work (pure) -------------------------------


def run_of(root: RootConfig, path: Path, state_dir: str) -> tuple[RunRef, str] | None:
    """The run ``path`` belongs to and its run-relative posix path; None when it is in no run.

    A file shallower than ``run_depth``, inside a dot-directory or the state dir, or outside the
    root belongs to no run (the same directories the inventory never enters).
    """
    try:
        parts = path.relative_to(root.path).parts
    except ValueError:
        return None
    if len(parts) <= root.run_depth:
        return None
    directories = parts[:-1]
    if any(part.startswith(".") or part == state_dir for part in directories):
        return None
    run_parts = parts[: root.run_depth]
    run_dir = root.path.joinpath(*run_parts)
    relpath = "/".join(run_parts) if run_parts else "."
    return RunRef(root.path, run_dir, relpath), "/".join(parts[root.run_depth :])


def checkpoint_dir_of(matcher: CheckpointMatcher, relpath: str) -> str | None:
    """The outermost directory checkpoint holding the run-relative file ``relpath``; None if none."""
    parts = relpath.split("/")[:-1]
    for index, name in enumerate(parts):
        if matcher.matches_directory(name):
            return "/".join(parts[: index + 1])
    return None


def directory_needs_work(entry: ManifestEntry | None, size: int, newest_mtime_ns: int) -> bool:
    """True unless ``entry`` records the directory checkpoint as it is now (the sum of its files'
    sizes and the newest mtime of its files and directories, as its entry's ``size`` and
    ``mtime_ns``) in a final state; a ``pending`` one (incomplete when last seen) needs work."""
    if entry is None or entry.state == "pending" or entry.extra.get(RETRY_KEY):
        return True
    return entry.size != size or entry.mtime_ns not in (None, newest_mtime_ns)


def needs_processing(
    entry: ManifestEntry | None,
    identity: FileIdentity,
    config: Config,
    *,
    now: datetime | None = None,
) -> bool:
    """True unless ``entry`` is a final verdict on exactly this (size, mtime) of the file.

    Not final: no entry, ``pending``, an entry marked for retry (unless, at ``now``, its retry
    waits: ``ckptd.pipeline.backoff``), or a legacy pickle still recorded ``kept`` while
    conversion is enabled (a manifest pass saw it before the daemon converted it), or an
    ``unknown`` file identified by an older ckptd (or a pass) before plain pickles, joblib and
    torch files got verdicts.
    """
    if entry is None or entry.state == "pending":
        return True
    if entry.size != identity.size or entry.mtime_ns != identity.mtime_ns:
        return True
    if entry.extra.get(RETRY_KEY):
        return now is None or not backing_off(entry, now)
    if entry.state == "kept" and entry.format is Format.UNKNOWN:
        return entry.extra.get(SNIFF_KEY) != SNIFF_GENERATION  # judged by an older ckptd
    return entry.state == "kept" and entry.format is Format.SB2_PICKLE and config.convert.enabled


def matcher_for(config: Config) -> CheckpointMatcher:
    return CheckpointMatcher(config.checkpoints, config.manifest.filename)


def load_run_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None when there is none or it is broken (logged, then rebuilt)."""
    return try_load_manifest(path, logger, "starting a new one")


# ---- reconciliation: which files of a run need a look -------------------------------------------


@dataclass
class _Walk:
    """One reconciliation walk: regular files, never through symlinks, dot-dirs or the state dir;
    directory checkpoints are collected in ``directories`` and not entered.

    ``is_checkpoint_dir`` is asked with a subdirectory's absolute path. ``walk_entries`` calls
    ``visit_dir`` with each directory right before it lists it and asks ``skip_dir`` about that
    directory's subdirectories while listing it, so the last visited directory is their parent.
    """

    state_dir: str
    is_checkpoint_dir: Callable[[str], bool]
    visit_dir: Callable[[str], None]
    directories: list[Path] = field(default_factory=list)
    _current: str = ""

    def files(self, directory: Path) -> Iterator[Path]:
        for entry in walk_entries(str(directory), self._skip, _cannot_list, visit_dir=self._visit):
            if entry.is_file(follow_symlinks=False):
                yield Path(entry.path)

    def _visit(self, directory: str) -> None:
        self._current = directory
        self.visit_dir(directory)

    def _skip(self, name: str) -> bool:
        if skipped_dir(name, self.state_dir):
            return True
        path = os.path.join(self._current, name)
        if self.is_checkpoint_dir(path):
            self.directories.append(Path(path))
            return True
        return False


def directory_summary(directory: Path) -> tuple[int, int]:
    """(sum of the sizes of the regular files below ``directory``, newest mtime of them and of
    the directories), as ``DirListing.size`` and ``newest_mtime_ns`` say, in one no-follow walk
    that reads nothing; (0, 0) when it cannot be listed."""
    size = newest = 0

    def visit(path: str) -> None:
        nonlocal newest
        with contextlib.suppress(OSError):
            newest = max(newest, os.lstat(path).st_mtime_ns)

    with contextlib.suppress(OSError):
        for entry in walk_entries(
            str(directory), lambda _: False, lambda _d, _e: None, visit_dir=visit
        ):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    size += st.st_size
                    newest = max(newest, st.st_mtime_ns)
    return size, newest


def _cannot_list(directory: str, err: OSError) -> None:
    logger.warning("%s: cannot list directory (%s)", directory, error_text(err))


def _relative(directory: Path, run_dir: Path) -> str:
    """``directory`` relative to the run ("" for the run itself), as RunFS takes it."""
    return "" if directory == run_dir else directory.relative_to(run_dir).as_posix()


@dataclass(frozen=True)
class RunWork:
    """What a reconciliation scan of one run found to look at."""

    files: list[FoundFile]
    directories: list[Path]  # directory checkpoints not recorded as they are now


def find_work(
    config: Config,
    run: RunRef,
    *,
    stale_temp_age: float | None = None,
    now: float | None = None,
) -> list[FoundFile]:
    """Every checkpoint file of ``run`` whose manifest entry is missing, not final, or out of
    date (:func:`scan_run`'s files)."""
    return scan_run(config, run, stale_temp_age=stale_temp_age, now=now).files


def scan_run(
    config: Config,
    run: RunRef,
    *,
    stale_temp_age: float | None = None,
    now: float | None = None,
) -> RunWork:
    """Every checkpoint of ``run`` whose manifest entry is missing, not final, or out of date:
    files, and directory checkpoints (never the files inside them).

    With ``stale_temp_age``, ckptd temp files older than that (left by a killed conversion or
    manifest write) are removed from every directory visited, and from the state dir's own
    subdirectories. Raises OSError when the run directory cannot be listed.
    """
    matcher = matcher_for(config)
    manifest = load_run_manifest(run.run_dir / config.manifest.filename)
    recorded = manifest.by_path() if manifest else {}
    wall = time.time() if now is None else now
    moment = datetime.fromtimestamp(wall, UTC)

    layout = StateLayout(run.run_dir, config.state_dir)

    def clean(reldir: str) -> None:
        # From the run's directory, no symlink followed: a directory swapped for a link after the
        # walk listed it must not get files outside the run removed.
        if stale_temp_age is None:
            return
        try:
            names = layout.fs.remove_stale_temps(reldir, older_than_s=stale_temp_age, now=wall)
        except (FileNotFoundError, CkptdError):
            return  # gone since it was listed, or a link in the way: nothing to clean there
        for name in names:
            removed = layout.fs.show(join(reldir, name))
            logger.info("removed stale temp file %s", removed, extra={"run": run.relpath})

    if stale_temp_age is not None:
        for sub in ("", *STATE_SUBDIRS):
            with contextlib.suppress(OSError):
                clean(layout.rel(sub))
    found: list[FoundFile] = []
    walk = _Walk(
        config.state_dir,
        lambda path: matcher.matches_directory(os.path.basename(path)),
        lambda d: clean(_relative(Path(d), run.run_dir)),
    )
    for path in walk.files(run.run_dir):
        if not matcher.matches(path.name):
            continue
        try:
            identity = FileIdentity.of(os.lstat(path))
        except FileNotFoundError:
            continue
        relpath = path.relative_to(run.run_dir).as_posix()
        if needs_processing(recorded.get(relpath), identity, config, now=moment):
            found.append(FoundFile(path, identity))
    directories = []
    for directory in walk.directories:
        entry = recorded.get(directory.relative_to(run.run_dir).as_posix() + "/")
        if directory_needs_work(entry, *directory_summary(directory)):
            directories.append(directory)
    return RunWork(found, directories)


@dataclass(frozen=True)
class Below:
    """What a directory just created or moved in holds: checkpoint files and directories."""

    files: list[FoundFile]
    directories: list[Path]


def files_below(config: Config, root: RootConfig, directory: Path) -> Below:
    """Checkpoint-named regular files below ``directory`` (a directory just created or moved in
    below ``root``), and the directory checkpoints there, whose files are not listed.

    A subdirectory is a checkpoint only below the run directory (deeper than ``run_depth``).
    """
    matcher = matcher_for(config)

    def is_checkpoint_dir(path: str) -> bool:
        try:
            depth = len(Path(path).relative_to(root.path).parts)
        except ValueError:
            return False
        return depth > root.run_depth and matcher.matches_directory(os.path.basename(path))

    walk = _Walk(config.state_dir, is_checkpoint_dir, lambda _: None)
    files: list[FoundFile] = []
    try:
        for path in walk.files(directory):
            if matcher.matches(path.name):
                with contextlib.suppress(FileNotFoundError):
                    files.append(FoundFile(path, FileIdentity.of(os.lstat(path))))
    except OSError as err:
        logger.warning("%s: cannot list directory (%s)", directory, error_text(err))
    return Below(files, walk.directories)
