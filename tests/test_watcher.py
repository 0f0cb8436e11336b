"""The watchdog adapter with real InotifyObserver and PollingObserver threads on tmp_path."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
)

from ckptd.watch.events import INOTIFY_EVENTS, NameFilter, WatchEvent, translate_event
from ckptd.watch.mounts import choose_observer_kind
from ckptd.watch.watcher import WatchRoot, WatchSet
from tests.helpers import wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

DEADLINE_SECONDS = 4.0
POLL_SECONDS = 0.1
FILTER = NameFilter(("*.zip", "*.pkl"), ("*.tmp", "*.part", "tmp-*"), ".ckptd")


class Harness:
    """A WatchSet on one root plus helpers to wait for what it enqueues."""

    def __init__(
        self, root: Path, kind: str, name_filter: NameFilter = FILTER, maxsize: int = 0
    ) -> None:
        self.root = root
        self.events: queue.Queue[WatchEvent] = queue.Queue(maxsize)
        self.watchset = WatchSet(self.events, name_filter)
        self.spec = WatchRoot(root, "inotify" if kind == "inotify" else "polling", POLL_SECONDS)
        self.seen: list[WatchEvent] = []
        self.barriers = 0

    def wait_for(
        self, predicate: Callable[[WatchEvent], bool], timeout: float = DEADLINE_SECONDS
    ) -> WatchEvent:
        for event in self.seen:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no matching event within {timeout} s; saw {self.seen}")

    def wait_until_live(self) -> None:
        """Return once the observer demonstrably delivers events.

        ``observer.start()`` returns before the emitter has placed its watches; on a loaded machine a
        file written right after it is missed (the daemon's reconciliation scan covers that case,
        these tests need the watch itself). A probe file outside any run is written until seen.
        """
        for attempt in range(40):
            probe = self.root / f"warmup-{attempt}.zip"
            probe.write_bytes(b"x")
            try:
                self.wait_for_path(probe, timeout=0.5)
            except AssertionError:
                continue
            finally:
                probe.unlink()
            break
        else:
            raise AssertionError("the observer never delivered an event")
        # Events arrive in order: once the probe's deletion is in, every earlier probe's is too.
        self.wait_for_path(probe, "deleted")
        while not self.events.empty():
            self.events.get_nowait()
        self.seen.clear()

    def wait_for_path(
        self, path: Path, kind: str | None = None, timeout: float = DEADLINE_SECONDS
    ) -> WatchEvent:
        return self.wait_for(
            lambda e: e.path == path and (kind is None or e.kind == kind), timeout=timeout
        )

    def wait_healthy(self, timeout: float = DEADLINE_SECONDS) -> dict[Path, str]:
        deadline = time.monotonic() + timeout
        while (problems := self.watchset.heal()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return problems

    def barrier(self) -> None:
        """Return once every event caused before this call has been received (into ``seen``).

        A fresh file is written and waited for: inotify delivers in order, and a poller reports
        it in a later snapshot than anything done before (whose events it queued first).
        """
        self.barriers += 1
        marker = self.root / f"barrier-{self.barriers}.zip"
        marker.write_bytes(b"x")
        self.wait_for_path(marker)


@pytest.fixture(params=["inotify", "polling"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "runs"
    (root / "run1").mkdir(parents=True)
    h = Harness(root, request.param)
    assert h.watchset.add_root(h.spec)
    h.wait_until_live()
    try:
        yield h
    finally:
        h.watchset.stop()


@pytest.fixture
def inotify_harness(tmp_path: Path) -> Iterator[Harness]:
    root = tmp_path / "runs"
    (root / "run1").mkdir(parents=True)
    h = Harness(root, "inotify")
    assert h.watchset.add_root(h.spec)
    h.wait_until_live()
    try:
        yield h
    finally:
        h.watchset.stop()


def write_in_chunks(path: Path, chunks: int = 4, size: int = 64 * 1024) -> None:
    with path.open("wb") as handle:
        for _ in range(chunks):
            handle.write(os.urandom(size))
            handle.flush()


def test_chunked_write_then_close_gives_a_closed_event_on_inotify(inotify_harness: Harness) -> None:
    target = inotify_harness.root / "run1" / "rl_model_100_steps.zip"
    write_in_chunks(target)
    event = inotify_harness.wait_for_path(target, "closed")
    assert event == WatchEvent("closed", target, True, inotify_harness.root)


def test_a_written_file_is_reported_by_either_observer(harness: Harness) -> None:
    target = harness.root / "run1" / "rl_model_100_steps.zip"
    write_in_chunks(target)
    event = harness.wait_for(lambda e: e.path == target and e.kind in {"closed", "created"})
    assert event.root == harness.root


def test_rename_into_place_reports_the_destination_as_closed(harness: Harness) -> None:
    run = harness.root / "run1"
    temp = run / "rl_model_200_steps.zip.part"
    write_in_chunks(temp, chunks=2)
    os.replace(temp, run / "rl_model_200_steps.zip")
    event = harness.wait_for(lambda e: e.path == run / "rl_model_200_steps.zip")
    if harness.spec.kind == "inotify":
        assert (event.kind, event.closed) == ("moved", True)
    else:  # a poller sees the final name appear, or the move when a snapshot caught the temp name
        assert event.kind in {"created", "moved"}
    assert not [e for e in harness.seen if e.path == temp]


def test_temp_ignored_unmatched_and_state_dir_names_are_filtered(harness: Harness) -> None:
    run = harness.root / "run1"
    (run / ".ckptd" / "trash").mkdir(parents=True)
    noise = [
        run / "a.tmp",
        run / "tmp-b.zip",
        run / ".ckptd-tmp-c.zip.1a2b3c4d.tmp",
        run / "notes.txt",
        run / "ckptd-manifest.json",
        run / ".ckptd" / "trash" / "d.zip",
    ]
    for path in noise:
        path.write_bytes(b"x")
    sentinel = run / "z.pkl"
    sentinel.write_bytes(b"x")
    harness.wait_for_path(sentinel)
    harness.barrier()  # every event the noise caused has arrived by now
    assert not [
        e for e in harness.seen if e.path in noise or e.path.parent.name in {".ckptd", "trash"}
    ]


def test_a_run_directory_created_after_start_is_watched(harness: Harness) -> None:
    run2 = harness.root / "run2"
    run2.mkdir()
    harness.wait_for_path(run2, "dir_created")
    target = run2 / "ckpt.zip"
    write_in_chunks(target, chunks=1)
    harness.wait_for(lambda e: e.path == target and e.kind in {"closed", "created"})


def test_a_directory_renamed_into_place_is_reported_for_scanning(harness: Harness) -> None:
    staging = harness.root / "run1" / "step-400.tmp"
    staging.mkdir()
    (staging / "shard.zip").write_bytes(b"x")
    final = harness.root / "run1" / "step-400"
    os.rename(staging, final)
    harness.wait_for(lambda e: e.path == final and e.kind in {"dir_moved", "dir_created"})


class ExplodingFilter(NameFilter):
    """A filter that fails on one name, standing in for any bug in the handler path."""

    def accepts_file(self, path: Path, root: Path) -> bool:
        if path.name == "boom.zip":
            raise RuntimeError("filter bug")
        return super().accepts_file(path, root)


def test_a_handler_error_is_logged_and_does_not_kill_the_observer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(
        tmp_path, "inotify", ExplodingFilter(FILTER.patterns, FILTER.ignore, FILTER.state_dir)
    )
    assert h.watchset.add_root(h.spec)
    try:
        with caplog.at_level(logging.ERROR, logger="ckptd.watch.watcher"):
            (tmp_path / "boom.zip").write_bytes(b"x")
            (tmp_path / "fine.zip").write_bytes(b"x")
            h.wait_for_path(tmp_path / "fine.zip", "closed")
        assert "dropped file-system event" in caplog.text
        assert h.watchset.unhealthy_roots() == {}
    finally:
        h.watchset.stop()


def test_a_full_queue_sets_the_rescan_flag_instead_of_blocking(tmp_path: Path) -> None:
    h = Harness(tmp_path, "inotify", maxsize=1)
    assert h.watchset.add_root(h.spec)
    try:
        for index in range(5):
            (tmp_path / f"{index}.zip").write_bytes(b"x")
        assert h.watchset.rescan_requested.wait(DEADLINE_SECONDS)
        assert h.watchset.unhealthy_roots() == {}
    finally:
        h.watchset.stop()


def test_deleted_and_recreated_root_is_reported_then_restarted(harness: Harness) -> None:
    shutil.rmtree(harness.root)
    wait_until(harness.watchset.unhealthy_roots, DEADLINE_SECONDS, "the root reported unhealthy")
    assert harness.watchset.unhealthy_roots() == {harness.root: "root does not exist"}
    assert harness.watchset.heal() == {harness.root: "root does not exist"}  # retried, not fatal

    (harness.root / "run1").mkdir(parents=True)
    assert harness.wait_healthy() == {}
    harness.wait_for(lambda e: e.kind == "rescan" and e.path == harness.root)
    assert harness.watchset.restart_count >= 1
    target = harness.root / "run1" / "after.zip"
    target.write_bytes(b"x")
    harness.wait_for_path(target)


def test_root_replaced_between_health_checks_is_detected(inotify_harness: Harness) -> None:
    h = inotify_harness
    moved_away = h.root.with_name("old-runs")
    os.rename(h.root, moved_away)
    h.root.mkdir()
    assert h.watchset.unhealthy_roots() == {h.root: "root was replaced"}
    assert h.wait_healthy() == {}
    (h.root / "new.zip").write_bytes(b"x")
    h.wait_for_path(h.root / "new.zip", "closed")


def test_a_root_missing_at_start_is_reported_and_picked_up_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "not-mounted-yet"
    h = Harness(root, "inotify")
    try:
        with caplog.at_level(logging.WARNING, logger="ckptd.watch.watcher"):
            assert not h.watchset.add_root(h.spec)
        assert f"cannot watch {root}: root does not exist" in caplog.text
        assert h.watchset.unhealthy_roots() == {root: "root does not exist"}
        root.mkdir()
        assert h.wait_healthy() == {}
        h.wait_for(lambda e: e.kind == "rescan" and e.path == root)
        (root / "x.zip").write_bytes(b"x")
        h.wait_for_path(root / "x.zip", "closed")
    finally:
        h.watchset.stop()


def test_roots_can_be_added_and_removed_at_runtime(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    h = Harness(first, "inotify")
    try:
        h.watchset.set_roots(
            [WatchRoot(first, "inotify"), WatchRoot(second, "polling", POLL_SECONDS)]
        )
        assert h.watchset.roots() == [first, second]
        assert h.watchset.kind_in_use(second) == "polling"
        (second / "x.zip").write_bytes(b"x")
        h.wait_for_path(second / "x.zip")
        h.watchset.set_roots([WatchRoot(second, "polling", POLL_SECONDS)])
        assert h.watchset.roots() == [second]
        (first / "gone.zip").write_bytes(b"x")
        (second / "y.zip").write_bytes(b"x")
        h.wait_for_path(second / "y.zip")
        assert not [e for e in h.seen if e.path == first / "gone.zip"]
    finally:
        h.watchset.stop()


def test_the_inotify_mask_is_pushed_down_to_the_emitter(inotify_harness: Harness) -> None:
    watcher = inotify_harness.watchset._watchers[inotify_harness.root]
    assert watcher.observer is not None
    watches = [emitter.watch for emitter in watcher.observer.emitters]
    assert [w.event_filter for w in watches] == [frozenset(INOTIFY_EVENTS)]


def test_an_inotify_overflow_warning_requests_a_rescan(inotify_harness: Harness) -> None:
    # Overflowing the kernel queue needs a lowered sysctl; the hook only sees watchdog's log line.
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    event = inotify_harness.wait_for(lambda e: e.kind == "rescan")
    assert event.path == inotify_harness.root
    for _ in range(50):  # the rest of the burst is covered by that one rescan
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
    assert [e.kind for e in drain(inotify_harness.events)].count("rescan") == 0


def drain(events: queue.Queue[WatchEvent]) -> list[WatchEvent]:
    drained: list[WatchEvent] = []
    while True:
        try:
            drained.append(events.get_nowait())
        except queue.Empty:
            return drained


ROOT = Path("/data/runs")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (FileClosedEvent("/data/runs/r/a.zip"), [("closed", "/data/runs/r/a.zip", True)]),
        (FileCreatedEvent("/data/runs/r/a.pkl"), [("created", "/data/runs/r/a.pkl", False)]),
        (FileModifiedEvent("/data/runs/r/a.pkl"), [("modified", "/data/runs/r/a.pkl", False)]),
        (FileDeletedEvent("/data/runs/r/a.zip"), [("deleted", "/data/runs/r/a.zip", False)]),
        (
            FileMovedEvent("/data/runs/r/a.zip.part", "/data/runs/r/a.zip"),
            [("moved", "/data/runs/r/a.zip", True)],
        ),
        (
            FileMovedEvent("/data/runs/r/a.zip", "/data/runs/r/.ckptd/trash/a.zip"),
            [("deleted", "/data/runs/r/a.zip", False)],
        ),
        (DirCreatedEvent("/data/runs/r2"), [("dir_created", "/data/runs/r2", False)]),
        (
            DirMovedEvent("/data/runs/r/s.tmp", "/data/runs/r/s"),
            [("dir_moved", "/data/runs/r/s", True)],
        ),
        (
            DirMovedEvent("/data/runs/old", "/data/runs/new"),
            [("dir_deleted", "/data/runs/old", False), ("dir_moved", "/data/runs/new", True)],
        ),
        (DirDeletedEvent("/data/runs"), [("dir_deleted", "/data/runs", False)]),
        (DirCreatedEvent("/data/runs/r/.ckptd"), []),
        (FileClosedEvent("/data/runs/r/README.md"), []),
        (FileOpenedEvent("/data/runs/r/a.zip"), []),
        (FileClosedEvent("/elsewhere/a.zip"), []),
    ],
)
def test_translate_event(event: FileSystemEvent, expected: list[tuple[str, str, bool]]) -> None:
    got = translate_event(event, ROOT, FILTER)
    assert [(e.kind, str(e.path), e.closed) for e in got] == expected
    assert all(e.root == ROOT for e in got)


MOUNTINFO = "\n".join(
    [
        "22 1 0:21 / /proc rw,relatime - proc proc rw",
        "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        "40 27 0:40 / /data rw,relatime shared:2 master:1 - nfs4 server:/export rw,vers=4.2",
        "41 40 254:1 / /data/local rw,relatime - xfs /dev/vdb rw",
        "42 27 0:42 / /mnt/lustre rw - lustre 10.0.0.1@tcp:/fs rw",
        "43 27 0:43 / /mnt/bucket rw - fuse.gcsfuse bucket rw",
        "44 27 0:44 / /mnt/ntfs rw - fuseblk /dev/sdc1 rw",
        r"45 27 0:45 / /mnt/my\040share rw - cifs //srv/share rw",
        "46 27 0:46 / /mnt/stack rw - ext4 /dev/vdc rw",
        "47 46 0:47 / /mnt/stack rw - ceph mon:/ rw",
        "garbage line",
    ]
)


@pytest.mark.parametrize(
    ("path", "configured", "expected"),
    [
        ("/home/u/runs", "auto", "inotify"),
        ("/data/runs", "auto", "polling"),
        ("/data", "auto", "polling"),
        ("/data/local/runs", "auto", "inotify"),
        ("/datastore/runs", "auto", "inotify"),  # a prefix by characters, not by components
        ("/mnt/lustre/proj", "auto", "polling"),
        ("/mnt/bucket/x", "auto", "polling"),
        ("/mnt/ntfs/x", "auto", "inotify"),
        ("/mnt/my share/runs", "auto", "polling"),
        ("/mnt/stack/runs", "auto", "polling"),  # the later mount on the same point is on top
        ("/data/runs", "inotify", "inotify"),
        ("/home/u/runs", "polling", "polling"),
    ],
)
def test_choose_observer_kind_from_mountinfo(path: str, configured: str, expected: str) -> None:
    assert choose_observer_kind(path, configured, mountinfo=MOUNTINFO) == expected  # type: ignore[arg-type]


def test_choose_observer_kind_polls_when_no_mount_matches() -> None:
    assert choose_observer_kind("/data/runs", "auto", mountinfo="") == "polling"


def test_choose_observer_kind_reads_this_machines_mount_table(tmp_path: Path) -> None:
    # tmp_path is on a local disk here; the point is that the real table parses.
    assert choose_observer_kind(tmp_path, "auto") in {"inotify", "polling"}
