"""The pool's lanes: runs over a limit go to the slow lane, a spare steps in for held workers.

In-process, with a fake ``execute`` that holds an item until the test lets it go (the real
daemon's behaviour under hostile files is in tests/test_daemon_isolation.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ckptd.config.model import Config, RootConfig
from ckptd.daemon.jobs import BatchDone, RunBatch, WorkItem, WorkResult
from ckptd.daemon.run_queue import RunLocator, RunQueues
from ckptd.daemon.workers import SPARE_AFTER_SECONDS, WORKER_COUNT, WorkerPool
from ckptd.pipeline.types import BatchResult
from ckptd.runs.roots import RunRef
from tests.helpers import wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

ROOT = RootConfig(path=Path("/r"))
CONFIG = Config(roots=(ROOT,))


def run(name: str) -> RunRef:
    return RunRef(Path("/r"), Path("/r") / name, name)


def queues_with(*names: str) -> RunQueues:
    queues = RunQueues()
    for name in names:
        queues.add_ready(ROOT, run(name), Path("/r") / name / "m.pkl", (1, 1))
    return queues


def test_a_run_marked_slow_is_offered_to_the_slow_lane_until_the_mark_expires() -> None:
    queues = queues_with("hostile", "genuine")
    queues.mark_slow(run("hostile"), until=10.0)
    offered: list[tuple[str, bool]] = []

    def offer(batch: RunBatch, slow: bool) -> bool:
        offered.append((batch.run.relpath, slow))
        assert batch.slow is slow
        return True

    queues.dispatch(CONFIG, 5.0, offer)
    assert offered == [("hostile", True), ("genuine", False)]
    for name in ("hostile", "genuine"):
        batch = RunBatch(CONFIG, ROOT, run(name), ())
        queues.batch_finished(batch, BatchResult(run(name)), 6.0)
    # The mark outlives the run's empty queue, and ends at its time.
    queues.add_ready(ROOT, run("hostile"), Path("/r/hostile/n.pkl"), (1, 1))
    queues.dispatch(CONFIG, 9.0, offer)
    queues.batch_finished(
        RunBatch(CONFIG, ROOT, run("hostile"), ()), BatchResult(run("hostile")), 9.5
    )
    queues.add_ready(ROOT, run("hostile"), Path("/r/hostile/o.pkl"), (1, 1))
    queues.dispatch(CONFIG, 10.0, offer)
    assert offered[2:] == [("hostile", True), ("hostile", False)]


def test_a_full_slow_lane_does_not_stop_ordinary_runs_being_offered() -> None:
    queues = queues_with("hostile-a", "hostile-b", "genuine")
    queues.mark_slow(run("hostile-a"), until=10.0)
    queues.mark_slow(run("hostile-b"), until=10.0)
    accepted: list[str] = []

    def offer(batch: RunBatch, slow: bool) -> bool:
        if slow and any(name.startswith("hostile") for name in accepted):
            return False  # the slow lane holds one item
        accepted.append(batch.run.relpath)
        return True

    queues.dispatch(CONFIG, 1.0, offer)
    assert accepted == ["hostile-a", "genuine"]
    assert len(queues.runs[Path("/r/hostile-b")].ready) == 1  # still waiting, not lost


def test_a_full_lane_leaves_the_waiting_paths_untouched_and_is_not_offered_to() -> None:
    """While a burst keeps the lanes full, a tick must not take each run's paths out and put
    them back: ``room`` is asked first, and a lane without room is offered nothing."""
    queues = queues_with("a", "b")
    for index in range(3):
        queues.add_ready(ROOT, run("a"), Path(f"/r/a/{index}.zip"), (1, index))
    before = list(queues.runs[Path("/r/a")].ready.items())
    offered: list[str] = []

    def offer(batch: RunBatch, slow: bool) -> bool:
        offered.append(batch.run.relpath)
        return False

    asked: list[bool] = []

    def room(slow: bool) -> bool:
        asked.append(slow)
        return False

    queues.dispatch(CONFIG, 1.0, offer, room)
    assert offered == [] and asked == [False]
    assert list(queues.runs[Path("/r/a")].ready.items()) == before
    queues.dispatch(CONFIG, 1.0, offer, lambda slow: True)
    assert offered == ["a"]  # the lane that refuses is tried once; the paths go back in order
    assert list(queues.runs[Path("/r/a")].ready.items()) == before


def test_the_run_of_a_path_is_found_once_per_directory() -> None:
    root = RootConfig(path=Path("/r"), run_depth=1)
    locator = RunLocator((root,), ".ckptd")
    found = locator.locate(Path("/r"), Path("/r/ppo/sub/m_1.zip"))
    assert found is not None and found[1] == RunRef(Path("/r"), Path("/r/ppo"), "ppo")
    assert locator.locate(Path("/r"), Path("/r/ppo/sub/m_2.zip")) == found
    assert locator.locate(Path("/r"), Path("/r/top.zip")) is None  # above run_depth
    assert locator.locate(Path("/r"), Path("/r/ppo/.ckptd/x.zip")) is None  # the state dir
    assert locator.locate(Path("/gone"), Path("/gone/ppo/m.zip")) is None  # root not configured


class Holding:
    """``execute`` that records which thread took each item and holds it until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.taken: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, item: WorkItem) -> WorkResult:
        assert isinstance(item, RunBatch)
        with self.lock:
            self.taken[item.run.relpath] = threading.current_thread().name
        self.release.wait(10)
        return BatchDone(item, BatchResult(item.run))


@pytest.mark.timeout(30)
def test_the_spare_takes_ordinary_work_only_while_every_worker_is_held() -> None:
    execute = Holding()
    stopping = threading.Event()
    pool = WorkerPool(execute, stopping)
    pool.start()
    try:
        batches = [RunBatch(CONFIG, ROOT, run(f"r{i}"), ()) for i in range(WORKER_COUNT + 1)]
        started = time.monotonic()
        for batch in batches[:WORKER_COUNT]:
            assert pool.offer(batch)
            wait_until(lambda batch=batch: batch.run.relpath in execute.taken)
        assert pool.offer(batches[-1])
        wait_until(lambda: batches[-1].run.relpath in execute.taken)
        assert time.monotonic() - started >= SPARE_AFTER_SECONDS
        assert execute.taken[batches[-1].run.relpath] == "ckptd-worker-spare"
        assert pool.offer(RunBatch(CONFIG, ROOT, run("slow"), (), slow=True), slow=True)
        wait_until(lambda: "slow" in execute.taken)
        assert execute.taken["slow"] == "ckptd-worker-slow"
    finally:
        execute.release.set()
        stopping.set()
        assert pool.join(time.monotonic() + 5) == []
