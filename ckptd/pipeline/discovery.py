"""Which run a path belongs to, and which files of a run need the pipeline (reconciliation).

:func:`run_of` and :func:`needs_processing` are pure; :func:`find_work` scans a run against its
manifest (the daemon's start and rescan), :func:`files_below` lists a directory just created or
moved in. A finished verdict is not redone until the file's size or mtime differ from the record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
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


def _walk(directory: Path, state_dir: str, visit_dir: Callable[[str], None]) -> Iterator[Path]:
    """Regular files below ``directory``, never through symlinks, dot-dirs or the state dir."""
    for entry in walk_entries(
        str(directory), lambda name: skipped_dir(name, state_dir), _cannot_list, visit_dir=visit_dir
    ):
        if entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _cannot_list(directory: str, err: OSError) -> None:
    logger.warning("%s: cannot list directory (%s)", directory, error_text(err))


def _relative(directory: Path, run_dir: Path) -> str:
    """``directory`` relative to the run ("" for the run itself), as RunFS takes it."""
    return "" if directory == run_dir else directory.relative_to(run_dir).as_posix()


def find_work(
    config: Config,
    run: RunRef,
    *,
    stale_temp_age: float | None = None,
    now: float | None = None,
) -> list[FoundFile]:
    """Every checkpoint of ``run`` whose manifest entry is missing, not final, or out of date.

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
    for path in _walk(
        run.run_dir, config.state_dir, lambda d: clean(_relative(Path(d), run.run_dir))
    ):
        if not matcher.matches(path.name):
            continue
        try:
            identity = FileIdentity.of(os.lstat(path))
        except FileNotFoundError:
            continue
        relpath = path.relative_to(run.run_dir).as_posix()
        if needs_processing(recorded.get(relpath), identity, config, now=moment):
            found.append(FoundFile(path, identity))
    return found


def files_below(config: Config, directory: Path) -> Iterable[FoundFile]:
    """Checkpoint-named regular files below ``directory`` (a directory just created or moved in)."""
    matcher = matcher_for(config)
    try:
        for path in _walk(directory, config.state_dir, lambda _: None):
            if matcher.matches(path.name):
                with contextlib.suppress(FileNotFoundError):
                    yield FoundFile(path, FileIdentity.of(os.lstat(path)))
    except OSError as err:
        logger.warning("%s: cannot list directory (%s)", directory, error_text(err))
