"""Directory checkpoints being written, tracked until their trainer says they are complete.

A directory checkpoint (``checkpoints.directories``) is one unit (docs/formats.md, "Directory
checkpoints"): events inside it only mark it changed (``ckptd.watch.events``), and this tracker
decides when it is complete: its trainer's marker is there (``trainer_dirs.judge``) AND its
listing (every file's path, size and mtime, the directories' mtimes) was seen unchanged for
``stable_for`` (``trainer_dirs.observe`` / ``is_quiet``). Each complete directory is returned
once by :meth:`DirTracker.tick`; the daemon then asks for its run's manifest pass.

Listings are the truth, events only say when to look: a directory is listed soon after an event
(at most every ``MIN_RELIST_SECONDS``), again when it could have become quiet, and, while it has
no marker, at growing intervals (DeepSpeed's ``latest`` lies outside it and may come later); one
unchanged and unmarked for ``GIVE_UP_SECONDS`` is dropped until its next event or rescan. Each
listing walks from the run's directory with nothing followed (``runs.dir_listing``); a directory
that vanished is forgotten quietly, one that became a link or cannot be listed is logged once
and forgotten. ``now`` is wall-clock seconds (the quiet rule compares it with file mtimes).
Tracked directories are bounded by ``max_tracked``; beyond it new ones are refused and counted,
and the reconciliation scan offers them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckptd.errors import CkptdError
from ckptd.formats.trainer_dirs import Completion, Quiet, is_quiet, judge, observe
from ckptd.fs.runfs import RunFS
from ckptd.runs.dir_listing import Walked, list_directory
from ckptd.runs.roots import RunRef

logger = logging.getLogger(__name__)

MIN_RELIST_SECONDS = 0.5  # a directory written file by file is listed at most this often
MAX_RELIST_SECONDS = 30.0  # an unmarked, quiet directory is listed at least this often
GIVE_UP_SECONDS = 3600.0  # unchanged and unmarked this long: dropped until an event or rescan
DEFAULT_MAX_TRACKED = 10_000
# Listings per tick at most: a start-up scan that finds thousands of directories must not hold
# the daemon's main loop for seconds; the rest are listed on the next ticks.
MAX_LISTINGS_PER_TICK = 100

Lister = Callable[[RunFS, str], Walked]


@dataclass(frozen=True)
class TrackedDir:
    """Where a directory checkpoint is: its root, its run, its path relative to the run."""

    root: Path
    run: RunRef
    reldir: str

    @property
    def path(self) -> Path:
        return self.run.run_dir / self.reldir


@dataclass(frozen=True)
class CompleteDir:
    """A directory checkpoint found complete: where, what its trainer's marker said, its size."""

    where: TrackedDir
    completion: Completion
    files: int
    size: int


@dataclass
class _Track:
    where: TrackedDir
    next_list: float
    last_listed: float | None = None
    record: Quiet | None = None
    wait: float = 0.0  # the current interval between listings of an unmarked, quiet directory


class DirTracker:
    """Directory checkpoints until complete; driven by the daemon's main thread."""

    def __init__(
        self,
        stable_for: float,
        *,
        lister: Lister = list_directory,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        give_up_after: float = GIVE_UP_SECONDS,
    ) -> None:
        self.stable_for = stable_for
        self._lister = lister
        self.max_tracked = max_tracked
        self.give_up_after = max(give_up_after, stable_for)
        self.dropped = 0  # directories refused because max_tracked was reached
        self._tracks: dict[Path, _Track] = {}

    def touch(self, where: TrackedDir, now: float) -> bool:
        """Something in ``where`` changed (or a scan found it): list it soon. False if refused."""
        path = where.path
        track = self._tracks.get(path)
        if track is None:
            if len(self._tracks) >= self.max_tracked:
                self.dropped += 1
                return False
            self._tracks[path] = _Track(where, now)
            return True
        soonest = now if track.last_listed is None else track.last_listed + MIN_RELIST_SECONDS
        track.next_list = min(track.next_list, max(now, soonest))
        track.wait = 0.0
        return True

    def marker(self, parent: Path, now: float) -> None:
        """A marker beside tracked directories changed (DeepSpeed's ``latest`` in ``parent``):
        judge every tracked directory directly in ``parent`` again at once."""
        for path, track in self._tracks.items():
            if path.parent == parent:
                track.next_list = min(track.next_list, now)

    def forget_below(self, prefix: Path) -> None:
        """Stop tracking ``prefix`` and every directory below it (deleted or moved away)."""
        for path in [p for p in self._tracks if p.is_relative_to(prefix)]:
            del self._tracks[path]

    def is_tracked(self, path: Path) -> bool:
        return path in self._tracks

    def pending(self) -> int:
        return len(self._tracks)

    def tick(self, now: float) -> list[CompleteDir]:
        """List every directory that is due; the complete ones, each once (then forgotten)."""
        done: list[CompleteDir] = []
        listings = 0
        latest = now + MAX_RELIST_SECONDS + self.stable_for
        for path, track in list(self._tracks.items()):
            if track.next_list > latest:
                track.next_list = now  # the wall clock went back: never wait past the longest
            if track.next_list > now:
                continue
            if listings >= MAX_LISTINGS_PER_TICK:
                break
            listings += 1
            walked = self._list(track.where)
            if walked is None:
                del self._tracks[path]
                continue
            complete = self._judge(track, walked, now)
            if complete is not None:
                del self._tracks[path]
                done.append(complete)
            elif self._gave_up(track, now):
                logger.debug(
                    "%s: unchanged for %.0f s without being complete; left to the rescan",
                    path,
                    self.give_up_after,
                )
                del self._tracks[path]
        return done

    def _list(self, where: TrackedDir) -> Walked | None:
        fs = RunFS(where.run.run_dir)
        try:
            return self._lister(fs, where.reldir)
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed (a trainer rotating its checkpoints): nothing to say
        except CkptdError as err:
            logger.warning("directory checkpoint not tracked: %s", err, extra=_run(where))
        except OSError as err:
            logger.warning(
                "directory checkpoint %s not tracked: %s",
                fs.show(where.reldir),
                err.strerror or err,
                extra=_run(where),
            )
        return None

    def _judge(self, track: _Track, walked: Walked, now: float) -> CompleteDir | None:
        listing = walked.listing
        previous = track.record
        if previous is not None and previous.since > now:
            previous = None  # the wall clock went back: the quiet period starts over from now
        track.record = record = observe(previous, listing, now)
        track.last_listed = now
        completion = judge(listing)
        quiet = is_quiet(listing, now, self.stable_for, record)
        if completion.complete and quiet:
            return CompleteDir(track.where, completion, len(listing.files), listing.size)
        changed = previous is None or previous.signature != record.signature
        if changed or not quiet:
            # Quiet at the earliest once the listing has been seen, and its newest mtime has
            # been, ``stable_for`` ago; never wait longer than stable_for for the next look.
            when = max(record.since, listing.newest_mtime_ns / 1e9) + self.stable_for
            soonest = now + MIN_RELIST_SECONDS
            track.next_list = min(max(when, soonest), max(now + self.stable_for, soonest))
            track.wait = 0.0
        else:
            # Quiet with no marker: its trainer has not finished, or marks completion outside it.
            track.wait = min(max(2 * track.wait, self.stable_for, 1.0), MAX_RELIST_SECONDS)
            track.next_list = now + track.wait
        return None

    def _gave_up(self, track: _Track, now: float) -> bool:
        record = track.record
        return record is not None and now - record.since >= self.give_up_after


def _run(where: TrackedDir) -> dict[str, str]:
    return {"run": where.run.relpath}
