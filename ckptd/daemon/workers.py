"""The daemon's worker threads: bounded work queues in, a results queue out.

``WORKER_COUNT`` threads take one item at a time; a worker logs an exception and carries on (the
item's result then carries the error). The main thread offers items without blocking (a full queue
is back-pressure), drains the results, and replaces a worker that died.

Two more threads keep one slow file from holding the pool (docs/security.md, Isolation): a
**spare** worker takes ordinary items only while every ordinary worker has been on its current
item for ``SPARE_AFTER_SECONDS`` (a file being parsed up to ``limits.max_seconds``), and a **slow
lane** worker alone takes the items offered with ``slow=True`` (the daemon sends there the runs
whose files went over a limit), so hostile runs wait behind each other, not in front of the rest.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable

from ckptd.daemon.jobs import WorkItem, WorkResult, describe, failed

logger = logging.getLogger(__name__)

WORKER_COUNT = 2
# The spare worker steps in once every ordinary worker has been this long on one item.
SPARE_AFTER_SECONDS = 0.5
_IDLE_POLL_SECONDS = 0.5


class WorkerPool:
    """``count`` workers, a spare and a slow-lane worker running ``execute``, until ``stopping``."""

    def __init__(
        self,
        execute: Callable[[WorkItem], WorkResult],
        stopping: threading.Event,
        count: int = WORKER_COUNT,
    ) -> None:
        self._execute = execute
        self._stopping = stopping
        self._count = count
        self._work: queue.Queue[WorkItem] = queue.Queue(count)
        self._slow_work: queue.Queue[WorkItem] = queue.Queue(1)
        self.results: queue.SimpleQueue[WorkResult] = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []
        # When each ordinary worker took its current item (monotonic); None while it waits.
        self._busy_since: list[float | None] = [None] * count

    def start(self) -> None:
        for index in range(self._count + 2):
            self.workers.append(self._start_worker(index))

    def _start_worker(self, index: int) -> threading.Thread:
        target: Callable[[], None]
        if index < self._count:
            name, target = f"ckptd-worker-{index}", functools.partial(self._worker_loop, index)
        elif index == self._count:
            name, target = "ckptd-worker-spare", self._spare_loop
        else:
            name, target = "ckptd-worker-slow", self._slow_loop
        worker = threading.Thread(target=target, name=name, daemon=True)
        worker.start()
        return worker

    def _worker_loop(self, index: int) -> None:
        while not self._stopping.is_set():
            try:
                item = self._work.get(timeout=_IDLE_POLL_SECONDS)
            except queue.Empty:
                continue
            self._busy_since[index] = time.monotonic()
            try:
                self._run(item)
            finally:
                self._busy_since[index] = None

    def _spare_loop(self) -> None:
        while not self._stopping.is_set():
            if not self._all_held(time.monotonic()):
                # Look often only while some worker is busy (an idle daemon stays idle).
                busy = any(since is not None for since in self._busy_since)
                self._stopping.wait(0.1 if busy else _IDLE_POLL_SECONDS)
                continue
            try:
                item = self._work.get(timeout=0.1)
            except queue.Empty:
                continue
            self._run(item)

    def _slow_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._slow_work.get(timeout=_IDLE_POLL_SECONDS)
            except queue.Empty:
                continue
            self._run(item)

    def _all_held(self, now: float) -> bool:
        return all(
            since is not None and now - since >= SPARE_AFTER_SECONDS for since in self._busy_since
        )

    def _run(self, item: WorkItem) -> None:
        try:
            result = self._execute(item)
        except Exception as err:
            logger.exception("worker failed on %s", describe(item))
            result = failed(item, f"{type(err).__name__}: {err}")
        self.results.put(result)

    def has_room(self, slow: bool = False) -> bool:
        """Whether :meth:`offer` on that lane would take an item now (only the main thread
        offers; workers only take items out, so the answer holds until it offers)."""
        return not (self._slow_work if slow else self._work).full()

    def offer(self, item: WorkItem, *, slow: bool = False) -> bool:
        """Queue ``item`` (on the slow lane if ``slow``) if a slot is free; False when that lane is
        busy (the caller keeps it)."""
        try:
            (self._slow_work if slow else self._work).put_nowait(item)
        except queue.Full:
            return False
        return True

    def replace_dead(self) -> list[str]:
        """Start a new worker for each one that died (not while stopping); the problems found."""
        problems: list[str] = []
        for index, worker in enumerate(self.workers):
            if not worker.is_alive() and not self._stopping.is_set():
                problems.append(f"{worker.name} died")
                logger.error("%s died; starting a new one", worker.name)
                self.workers[index] = self._start_worker(index)
        return problems

    def join(self, deadline: float) -> list[str]:
        """Wait for the workers until ``deadline`` (monotonic); the names of those still busy."""
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return [worker.name for worker in self.workers if worker.is_alive()]
