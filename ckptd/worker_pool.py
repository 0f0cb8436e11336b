"""The daemon's worker threads: a bounded work queue in, a results queue out.

``WORKER_COUNT`` threads take one item at a time; a worker logs an exception and carries on (the
item's result then carries the error). The main thread offers items without blocking (a full queue
is back-pressure), drains the results, and replaces a worker that died.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from ckptd.daemon_jobs import WorkItem, WorkResult, describe, failed

# Logs under the name these lines had before ckptd.daemon was split into modules: the log
# format shows it, and operators (and tests) match on it.
logger = logging.getLogger("ckptd.daemon")

WORKER_COUNT = 2


class WorkerPool:
    """``count`` worker threads running ``execute`` on the items offered, until ``stopping`` is set."""

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
        self.results: queue.SimpleQueue[WorkResult] = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self._count):
            self.workers.append(self._start_worker(index))

    def _start_worker(self, index: int) -> threading.Thread:
        worker = threading.Thread(
            target=self._worker_loop, name=f"ckptd-worker-{index}", daemon=True
        )
        worker.start()
        return worker

    def _worker_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                result = self._execute(item)
            except Exception as err:
                logger.exception("worker failed on %s", describe(item))
                result = failed(item, f"{type(err).__name__}: {err}")
            self.results.put(result)

    def offer(self, item: WorkItem) -> bool:
        """Queue ``item`` if a slot is free; False when the pool is busy (the caller keeps it)."""
        try:
            self._work.put_nowait(item)
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
