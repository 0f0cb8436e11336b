"""Spread independent per-run work over forked worker processes (CLI passes over big trees).

A warm ``prune --dry-run`` of 1,000 runs is CPU-bound Python (parse manifests, stat, plan): on
two cores, two processes halve it. Only the results travel back (pickled); the work function and
its inputs are inherited through ``fork``, so they need not be picklable.

Use from single-threaded processes only (the CLI): forking a process that runs threads (the
daemon's watcher and scheduler) can deadlock the child on a lock some thread held.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Below this many items per worker, starting processes costs more than it saves.
MIN_ITEMS_PER_WORKER = 50

# The job of the pool being run: set right before forking, read by the children, which inherit it.
_job: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def _run_chunk(bounds: tuple[int, int]) -> list[Any]:
    if _job is None:
        raise RuntimeError("fanout worker started without a job")
    func, items = _job
    return [func(item) for item in items[bounds[0] : bounds[1]]]


def map_in_order(
    func: Callable[[Item], Result], items: Sequence[Item], *, workers: int
) -> list[Result]:
    """``[func(item) for item in items]``, computed by up to ``workers`` forked processes.

    Runs inline when ``workers <= 1`` or there are too few items to be worth it. ``func`` must not
    raise (return errors as values): an exception in a worker propagates and loses its chunk.
    """
    workers = min(workers, len(items) // MIN_ITEMS_PER_WORKER)
    if workers <= 1:
        return [func(item) for item in items]
    global _job
    _job = (func, items)
    try:
        # More chunks than workers evens out runs of different sizes.
        chunks = workers * 4
        step = -(-len(items) // chunks)
        bounds = [(start, min(start + step, len(items))) for start in range(0, len(items), step)]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            return [result for chunk in pool.map(_run_chunk, bounds) for result in chunk]
    finally:
        _job = None
