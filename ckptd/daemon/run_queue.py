"""Paths of each run waiting for a daemon worker, and which runs are in a batch right now.

A run is in at most one batch at a time, so conversions of one run never race and a file is never
processed twice at once; while it is, new paths of the run wait here (ready and vanished ones,
deduplicated, in arrival order), and the next batch takes at most ``BATCH_MAX_PATHS`` of them.
A run one of whose files went over a limit (``ckptd.isolation.supervisor``) is offered to the pool's slow lane
for ``SLOW_LANE_SECONDS``, so its next hostile file cannot hold an ordinary worker again.
A run may also want a manifest pass (a directory checkpoint of it is complete or gone): one
``RunManifest`` once the run is idle and its waiting paths are done, however many asked for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ckptd.config.model import Config, RootConfig
from ckptd.daemon.jobs import RunBatch, RunManifest
from ckptd.pipeline.discovery import run_of
from ckptd.pipeline.types import BatchResult
from ckptd.runs.roots import RunRef

BATCH_MAX_PATHS = 1000
# A run whose batch could not take the run lock is left alone this long before the next try.
LOCKED_RUN_BACKOFF_SECONDS = 5.0
# A run whose file exceeded a limit is served by the slow lane this long after the last such file.
SLOW_LANE_SECONDS = 600.0
_V = TypeVar("_V")


@dataclass
class RunQueue:
    """Ready and vanished paths of one run waiting for a worker (deduplicated, in arrival order)."""

    root: RootConfig
    run: RunRef
    ready: OrderedDict[Path, tuple[int, int]] = field(default_factory=OrderedDict)
    gone: OrderedDict[Path, None] = field(default_factory=OrderedDict)
    not_before: float = 0.0
    manifest: bool = False  # a manifest pass of the run is wanted

    def __len__(self) -> int:
        """Waiting paths (the manifest pass is not a path)."""
        return len(self.ready) + len(self.gone)

    def __bool__(self) -> bool:
        return bool(self.ready or self.gone or self.manifest)


class RunQueues:
    """Every run's :class:`RunQueue` (by run directory) and the runs whose batch is running."""

    def __init__(self) -> None:
        self.runs: dict[Path, RunQueue] = {}
        self.busy: set[Path] = set()
        # Runs served by the slow lane until then (monotonic); kept while their queue is empty.
        self.slow_until: dict[Path, float] = {}

    def queue_for(self, root: RootConfig, run: RunRef) -> RunQueue:
        run_queue = self.runs.get(run.run_dir)
        if run_queue is None:
            run_queue = self.runs[run.run_dir] = RunQueue(root, run)
        return run_queue

    def add_ready(
        self, root: RootConfig, run: RunRef, path: Path, settled: tuple[int, int]
    ) -> None:
        """Queue ``path`` as settled at (size, mtime_ns) ``settled``."""
        run_queue = self.queue_for(root, run)
        run_queue.gone.pop(path, None)
        run_queue.ready[path] = settled

    def add_gone(self, root: RootConfig, run: RunRef, path: Path) -> None:
        """Queue ``path`` as deleted (its manifest entry is dropped if it is really absent)."""
        run_queue = self.queue_for(root, run)
        run_queue.ready.pop(path, None)
        run_queue.gone[path] = None

    def want_manifest(self, root: RootConfig, run: RunRef) -> None:
        """Ask for one manifest pass of ``run`` (asking again before it ran changes nothing)."""
        self.queue_for(root, run).manifest = True

    def queued_paths(self) -> int:
        return sum(len(run_queue) for run_queue in self.runs.values())

    def dispatch(
        self,
        config: Config,
        now: float,
        offer: Callable[[RunBatch | RunManifest, bool], bool],
        room: Callable[[bool], bool] | None = None,
    ) -> None:
        """Offer a batch for each idle run with waiting paths, to its lane (``offer(batch, slow)``),
        until both lanes refuse one; an idle run with no waiting path but a wanted manifest pass
        gets that pass (on the ordinary lane). ``room(slow)``, when given, says beforehand whether
        a lane would take one: while a burst keeps the workers busy, every tick would otherwise
        take a thousand paths of each waiting run out of its queue and put them back."""
        full: set[bool] = set()  # the lanes (slow or not) that refused a batch this time
        for run_dir, run_queue in list(self.runs.items()):
            if not run_queue:
                del self.runs[run_dir]
                continue
            slow = self._slow(run_dir, now)
            if run_dir in self.busy or run_queue.not_before > now:
                continue
            if not len(run_queue):
                if False in full:
                    continue
                if offer(RunManifest(config, run_queue.root, run_queue.run), False):
                    run_queue.manifest = False
                    self.busy.add(run_dir)
                else:
                    full.add(False)
                continue
            if slow in full:
                continue
            if room is not None and not room(slow):
                full.add(slow)
                if len(full) == 2:
                    return
                continue
            ready = take(run_queue.ready, BATCH_MAX_PATHS)
            gone = tuple(take(run_queue.gone, BATCH_MAX_PATHS))
            batch = RunBatch(
                config, run_queue.root, run_queue.run, tuple(ready), dict(ready), gone, slow
            )
            if not offer(batch, slow):
                # Back-pressure: the lane is busy; the paths wait here, deduplicated.
                for path, identity in reversed(ready.items()):
                    run_queue.ready[path] = identity
                    run_queue.ready.move_to_end(path, last=False)
                for path in gone:
                    run_queue.gone[path] = None
                full.add(slow)
                if len(full) == 2:
                    return
                continue
            self.busy.add(run_dir)

    def mark_slow(self, run: RunRef, until: float) -> None:
        """Serve ``run`` on the slow lane until ``until`` (monotonic)."""
        self.slow_until[run.run_dir] = max(self.slow_until.get(run.run_dir, 0.0), until)

    def _slow(self, run_dir: Path, now: float) -> bool:
        until = self.slow_until.get(run_dir)
        if until is not None and until <= now:
            del self.slow_until[run_dir]
            return False
        return until is not None

    def batch_finished(self, item: RunBatch, result: BatchResult, now: float) -> None:
        """The run is free again; hand back what the batch did not reach (or could not lock)."""
        self.busy.discard(item.run.run_dir)
        if result.deferred or result.busy:
            run_queue = self.queue_for(item.root, item.run)
            for path in result.deferred:
                if path in item.expected:
                    run_queue.ready.setdefault(path, item.expected[path])
            if result.busy:
                for path in item.gone:
                    run_queue.gone.setdefault(path, None)
                run_queue.not_before = now + LOCKED_RUN_BACKOFF_SECONDS

    def manifest_finished(self, item: RunManifest) -> None:
        """The run's manifest pass is done: the run is free again."""
        self.busy.discard(item.run.run_dir)

    def keep_roots(self, wanted: set[Path]) -> None:
        """Drop the queues of runs whose root is no longer configured (after a reload)."""
        for run_dir in [d for d, q in self.runs.items() if q.root.path not in wanted]:
            del self.runs[run_dir]


class RunLocator:
    """Which run of which configured root a path belongs to, remembered per directory.

    ``ckptd.pipeline.discovery.run_of`` depends only on the root and the path's directory, and a
    burst brings thousands of files from a few directories: working it out once per directory
    instead of once per file saves the main loop ~20 us a file. Make a new one after a reload.
    """

    MAX_DIRECTORIES = 10_000  # forget them all past this (a tree of many small runs)

    def __init__(self, roots: Iterable[RootConfig], state_dir: str) -> None:
        self._roots = {root.path: root for root in roots}
        self._state_dir = state_dir
        self._known: dict[tuple[Path, Path], RunRef | None] = {}

    def locate(self, root_path: Path, path: Path) -> tuple[RootConfig, RunRef] | None:
        """The root config and run of ``path`` found under ``root_path``; None when the root is
        no longer configured (its pending work is dropped) or the path is in no run."""
        root = self._roots.get(root_path)
        if root is None:
            return None
        key = (root_path, path.parent)
        if key in self._known:
            run = self._known[key]
        else:
            located = run_of(root, path, self._state_dir)
            run = None if located is None else located[0]
            if len(self._known) >= self.MAX_DIRECTORIES:
                self._known.clear()
            self._known[key] = run
        return None if run is None else (root, run)


def take(ordered: OrderedDict[Path, _V], count: int) -> OrderedDict[Path, _V]:
    """Remove and return the first ``count`` items of ``ordered`` (all if fewer)."""
    taken: OrderedDict[Path, _V] = OrderedDict()
    while ordered and len(taken) < count:
        path, value = ordered.popitem(last=False)
        taken[path] = value
    return taken
