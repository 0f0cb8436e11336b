"""When is a checkpoint complete? A pure state machine over (size, mtime, close events, time).

docs/architecture.md ("Manifest and index", ``pending``): a file is complete when its size and mtime
have not changed for ``stable_for`` seconds. On inotify roots the close-after-write or
rename-into-place event starts that clock; polling roots have no such event and rely on the quiet
period alone.

The caller owns all I/O and the clock: it stats files and passes ``now`` (monotonic seconds) in.
"Not changed for ``stable_for``" has to be *seen*, so a path is only ready once an observation made
at least ``stable_for`` after the clock started still shows the same size and mtime; ``due(now)``
lists the paths worth re-statting. A file on an inotify root for which no close/rename event ever
arrives (it was found by a scan, or renamed in from an unwatched directory, or the event was lost
in a queue overflow) is accepted after the longer ``unclosed_after`` quiet period, so it is never
pending forever.

Memory is bounded by ``max_tracked`` entries (about 200 bytes each plus the path object); beyond
that ``observe`` refuses new paths and counts them in ``dropped``, and the caller's reconciliation
scan offers them again later. Nothing here reads the clock or the filesystem.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

PathT = TypeVar("PathT", bound=Hashable)

DEFAULT_MAX_TRACKED = 100_000


@dataclass(slots=True)
class _Track:
    size: int
    mtime_ns: int
    clock_start: float  # last change, or the close/rename event after it
    last_seen: float  # time of the latest observation
    closed: bool  # a close/rename event was seen since the last change
    expect_close: bool  # the path is on an inotify root, so a close event should come


class Stabilizer(Generic[PathT]):
    """Tracks files until they have been quiet long enough to be read.

    ``observe`` every time something is known about a path (an event, a scan, a re-stat), then
    take ``ready(now)``: each ready path is returned once and no longer tracked.
    """

    def __init__(
        self,
        stable_for: float,
        *,
        unclosed_after: float | None = None,
        max_tracked: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        if stable_for < 0:
            raise ValueError(f"stable_for must be >= 0 (got {stable_for})")
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be >= 1 (got {max_tracked})")
        self.stable_for = stable_for
        # Without a close event we cannot tell a finished file from a writer that paused, so
        # demand a longer silence (4x is a judgement call: long enough to ride out a slow
        # writer's pause, short enough that files found by a scan do not wait for long).
        self.unclosed_after = max(
            stable_for, unclosed_after if unclosed_after is not None else 4 * stable_for
        )
        self.max_tracked = max_tracked
        self.dropped = 0  # observations refused because max_tracked was reached
        self._tracks: dict[PathT, _Track] = {}

    def observe(
        self,
        path: PathT,
        size: int,
        mtime_ns: int,
        now: float,
        *,
        closed: bool = False,
        expect_close: bool = False,
    ) -> bool:
        """Record what ``path`` looks like at ``now``; return False if it was refused (table full).

        ``closed``: a close-after-write or rename-into-place event for this path was just seen.
        ``expect_close``: the path is on an inotify root, where such an event is the normal signal.
        A change of size or mtime restarts the clock and cancels an earlier close event.
        """
        track = self._tracks.get(path)
        if track is None:
            if len(self._tracks) >= self.max_tracked:
                self.dropped += 1
                return False
            self._tracks[path] = _Track(size, mtime_ns, now, now, closed, expect_close)
            return True
        track.expect_close = track.expect_close or expect_close
        track.last_seen = max(track.last_seen, now)
        if (size, mtime_ns) != (track.size, track.mtime_ns):
            track.size, track.mtime_ns = size, mtime_ns
            track.clock_start = now
            track.closed = closed
        elif closed:
            # The clock starts at the close event even if the content looked settled before.
            track.clock_start = max(track.clock_start, now)
            track.closed = True
        return True

    def _quiet_needed(self, track: _Track) -> float:
        if track.expect_close and not track.closed:
            return self.unclosed_after
        return self.stable_for

    def _confirmed(self, track: _Track, now: float) -> bool:
        needed = self._quiet_needed(track)
        return min(track.last_seen, now) - track.clock_start >= needed

    def ready(self, now: float) -> list[PathT]:
        """Paths seen unchanged for long enough as of ``now``; each is returned once, then forgotten."""
        done = [path for path, track in self._tracks.items() if self._confirmed(track, now)]
        for path in done:
            del self._tracks[path]
        return done

    def due(self, now: float) -> list[PathT]:
        """Paths whose quiet period has run out but have not been seen since: re-stat and observe them."""
        return [
            path
            for path, track in self._tracks.items()
            if now - track.clock_start >= self._quiet_needed(track)
            and not self._confirmed(track, now)
        ]

    def waiting(self) -> list[PathT]:
        """Every tracked path (for a caller that simply re-stats everything each tick)."""
        return list(self._tracks)

    def forget(self, path: PathT) -> None:
        """Stop tracking ``path`` (deleted, moved away, or its root removed); unknown paths are fine."""
        self._tracks.pop(path, None)

    def pending(self) -> int:
        """How many paths are being tracked."""
        return len(self._tracks)
