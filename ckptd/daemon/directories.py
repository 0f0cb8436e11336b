"""The daemon's side of directory checkpoints: events and scans in, manifest passes out.

A directory checkpoint (``checkpoints.directories``; docs/architecture.md, "Watching") is never
handed to the file pipeline, nor is any file inside it. Events inside one mark it changed, scans
find the ones not recorded as they are, and the tracker (``ckptd.watch.dir_tracker``) lists each
until its trainer's marker is there and nothing in it changed for ``stable_for``. Then the run's
manifest pass is asked for, once per run however many of its directories completed meanwhile
(``RunQueues.want_manifest``); that pass records the directory as one entry. A complete directory
deleted or moved away asks for the pass too, so the manifest drops it; one that vanishes while
still being written is forgotten quietly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ckptd.config.model import Config, RootConfig
from ckptd.daemon.run_queue import RunQueues
from ckptd.fs.files import FoundFile
from ckptd.pipeline.discovery import checkpoint_dir_of, files_below, matcher_for, run_of
from ckptd.runs.roots import RunRef
from ckptd.watch.dir_tracker import DirTracker, TrackedDir
from ckptd.watch.events import WatchEvent

logger = logging.getLogger(__name__)


class DirectoryCheckpoints:
    """The tracker, and how the daemon's events, scans and ready paths reach it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._matcher = matcher_for(config)
        self.tracker = DirTracker(config.checkpoints.stable_for.total_seconds())

    def set_config(self, config: Config) -> None:
        """A reload: new globs and quiet period (tracked directories start over; the rescan the
        reload asks for finds them again)."""
        if config.checkpoints != self.config.checkpoints:
            self.tracker = DirTracker(config.checkpoints.stable_for.total_seconds())
        self.config = config
        self._matcher = matcher_for(config)

    def _root(self, root_path: Path) -> RootConfig | None:
        for root in self.config.roots:
            if root.path == root_path:
                return root
        return None  # removed by a reload

    def _locate(self, root_path: Path, path: Path) -> tuple[RootConfig, RunRef, str] | None:
        root = self._root(root_path)
        if root is None:
            return None
        located = run_of(root, path, self.config.state_dir)
        if located is None:
            return None
        return root, located[0], located[1]

    def handle(self, event: WatchEvent, runs: RunQueues, now: float) -> bool:
        """Act on a directory event (``now``: wall-clock seconds); False for any other event."""
        if event.kind == "dir_changed":
            self.track(event.root, event.path, now)
        elif event.kind == "dir_gone":
            # One still being written was never recorded complete: forgotten quietly. Another
            # (recorded, or trashed by a prune) leaves its run's manifest by the next pass.
            was_written = self.tracker.is_tracked(event.path)
            self.tracker.forget_below(event.path)
            located = self._locate(event.root, event.path)
            if located is not None and not was_written:
                runs.want_manifest(located[0], located[1])
        elif event.kind == "dir_marker":
            self.tracker.marker(event.path, now)
        else:
            return False
        return True

    def track(self, root_path: Path, path: Path, now: float) -> None:
        """Track the directory checkpoint ``path`` (an event in it, or a scan found it)."""
        located = self._locate(root_path, path)
        if located is None:
            return
        root, run, reldir = located
        if not self.tracker.touch(TrackedDir(root.path, run, reldir), now):
            logger.debug("%s: too many directories tracked; left to the rescan", path)

    def track_all(self, found: Iterable[tuple[Path, Path]], now: float) -> None:
        """Track each (root, directory checkpoint) a scan found."""
        for root_path, directory in found:
            self.track(root_path, directory, now)

    def new_directory(self, root_path: Path, path: Path, now: float) -> list[FoundFile]:
        """A directory just created or moved in below a root: its directory checkpoints are
        tracked; its other checkpoint files are returned, for the stabilizer."""
        root = self._root(root_path)
        if root is None:
            return []
        below = files_below(self.config, root, path)
        self.track_all(((root_path, directory) for directory in below.directories), now)
        return below.files

    def forget_below(self, path: Path) -> None:
        self.tracker.forget_below(path)

    def divert(self, root_path: Path, path: Path, now: float) -> bool:
        """True (and its directory tracked) when the file ``path`` lies inside a directory
        checkpoint: it is never a checkpoint of its own, whoever offered it (a scan, a hint)."""
        located = self._locate(root_path, path)
        if located is None:
            return False
        _, run, relpath = located
        reldir = checkpoint_dir_of(self._matcher, relpath)
        if reldir is None:
            return False
        self.track(root_path, run.run_dir / reldir, now)
        return True

    def tick(self, runs: RunQueues, now: float) -> None:
        """List the directories that are due; a complete one asks for its run's manifest pass."""
        for done in self.tracker.tick(now):
            where = done.where
            logger.info(
                "directory checkpoint complete: %s (%s: %s; %d files, %d bytes)",
                where.path,
                done.completion.format.value,
                done.completion.reason,
                done.files,
                done.size,
                extra={"run": where.run.relpath},
            )
            root = self._root(where.root)
            if root is not None:
                runs.want_manifest(root, where.run)
