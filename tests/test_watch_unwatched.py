"""When ckptd looks again at a new directory it could not list, and how it asks watchdog whether
a directory is watched (tests/test_watch_unlistable.py runs the daemon where it cannot list one)."""

from __future__ import annotations

import queue
import time
from pathlib import Path

from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from ckptd.watch.dropped import DroppedWatches
from ckptd.watch.events import NameFilter, WatchEvent
from ckptd.watch.inotify_watches import add_watch, watch_state
from ckptd.watch.unwatched import RetryPolicy, UnwatchedDirs
from ckptd.watch.watcher import WatchRoot, WatchSet
from tests.helpers import wait_until

ROOT = Path("/data/runs")
RUN = ROOT / "ppo-1"
# Binary fractions, so that the times add up exactly; the defaults are 0.05 s doubling to 0.25 s.
POLICY = RetryPolicy(first=0.125, cap=0.5, fast_for=10.0, slow_every=30.0, max_dirs=3)


def looks(dirs: UnwatchedDirs, path: Path, until: float, step: float = 0.125) -> list[float]:
    """The times ``path`` is due before ``until``, failing each look."""
    times = []
    for tick in range(round(until / step) + 1):
        now = tick * step
        if any(item.path == path for item in dirs.due(now)):
            times.append(now)
            dirs.failed(path, "Permission denied (EACCES)", now)
    return times


def test_a_new_unlistable_directory_is_looked_at_again_soon_then_every_tick() -> None:
    dirs = UnwatchedDirs(POLICY)
    assert dirs.add(ROOT, RUN, "Permission denied (EACCES)", 0.0)
    assert looks(dirs, RUN, 2.0) == [0.125, 0.375, 0.875, 1.375, 1.875]
    default = RetryPolicy()
    assert (default.first, default.cap, default.fast_for) == (0.05, 0.25, 10.0)


def test_after_the_fast_retries_it_is_shown_once_and_looked_at_every_30_s() -> None:
    dirs = UnwatchedDirs(POLICY)
    dirs.add(ROOT, RUN, "Permission denied (EACCES)", 0.0)
    ended, shown, looked = [], [], []
    now = 0.0
    while now < 75.0:
        for item in dirs.due(now):
            looked.append(now)
            if dirs.failed(item.path, item.reason, now):
                ended.append(now)
        if dirs.lasting():
            shown.append(now)
        now += 0.125
    assert len(ended) == 1 and 10.0 <= ended[0] <= 10.0 + POLICY.cap
    assert shown[0] == ended[0]  # shown from the look that ended the fast retries on
    assert [t for t in looked if t > ended[0]] == [ended[0] + 30.0, ended[0] + 60.0]
    assert [item.path for item in dirs.lasting()] == [RUN]


def test_done_forget_root_and_the_bound_on_directories_followed() -> None:
    dirs = UnwatchedDirs(POLICY)
    assert dirs.add(ROOT, RUN, "x", 0.0)
    assert not dirs.add(ROOT, RUN, "x", 1.0)  # followed already: its clock is not reset
    assert dirs.add(ROOT, ROOT / "ppo-2", "x", 0.0)
    assert dirs.add(Path("/other"), Path("/other/run"), "x", 0.0)
    assert not dirs.add(ROOT, ROOT / "ppo-3", "x", 0.0)  # max_dirs=3
    assert RUN in dirs and len(dirs) == 3
    done = dirs.done(RUN)
    assert done is not None and done.since == 0.0 and RUN not in dirs
    assert dirs.done(RUN) is None
    assert not dirs.failed(RUN, "x", 5.0)  # forgotten: nothing to report
    dirs.forget_root(ROOT)
    assert [item.path for item in dirs.due(1.0)] == [Path("/other/run")]


def test_watchdog_is_asked_through_the_internals_this_release_has(tmp_path: Path) -> None:
    """A watchdog release that renames them fails here, not quietly in production, where the
    daemon would fall back to restarting the root's observer (a walk of the whole tree)."""
    (tmp_path / "old").mkdir()
    observer = InotifyObserver()
    try:
        observer.schedule(_Ignore(), str(tmp_path), recursive=True)
        observer.start()
        assert watch_state(observer, tmp_path) is True
        assert watch_state(observer, tmp_path / "old") is True
        assert watch_state(observer, tmp_path / "never-created") is False
        assert watch_state(observer, Path("/elsewhere")) is None  # not below its root
        new = tmp_path / "new"
        new.mkdir()
        wait_until(lambda: watch_state(observer, new) is True, 5, "the new directory's watch")
        assert add_watch(observer, new) is True  # already watched: nothing changes
    finally:
        observer.stop()
        observer.join(5)
    polling = PollingObserver()
    assert watch_state(polling, tmp_path) is None and add_watch(polling, tmp_path) is None
    assert watch_state(object(), tmp_path) is None


def test_a_new_directory_the_daemon_can_list_is_scanned_at_once(tmp_path: Path) -> None:
    """The common case costs one look in watchdog's tree and changes nothing."""
    events: queue.Queue[WatchEvent] = queue.Queue()
    watchset = WatchSet(events, NameFilter(("*.zip",), (), ".ckptd"))
    try:
        assert watchset.add_root(WatchRoot(tmp_path, "inotify"))
        run = tmp_path / "ppo-1"
        run.mkdir()
        event = events.get(timeout=5)
        assert (event.kind, event.path) == ("dir_created", run)
        started = time.monotonic()
        assert watchset.check_new_directory(tmp_path, run, 0.0)
        assert time.monotonic() - started < 0.05
        watchset.tick(100.0)
        assert events.empty() and watchset.notes() == []
    finally:
        watchset.stop()


class _Ignore:
    """An event handler that drops everything (watchdog calls ``dispatch``)."""

    def dispatch(self, event: object) -> None:
        pass


def test_a_directory_unlistable_when_watching_started_is_looked_at_slowly_and_never_shown() -> None:
    dirs = UnwatchedDirs(POLICY)
    assert dirs.add(ROOT, ROOT / "lost+found", "Permission denied (EACCES)", 0.0, quiet=True)
    assert not dirs.add(ROOT, ROOT / "private", "x", 0.0, quiet=True)  # half of max_dirs=3
    assert dirs.add(ROOT, RUN, "x", 0.0)  # new directories keep their room
    assert looks(dirs, ROOT / "lost+found", 95.0) == [30.0, 60.0, 90.0]
    assert dirs.failed(RUN, "x", 11.0)  # the new one's fast retries end: shown
    assert [item.path for item in dirs.lasting()] == [RUN]  # the quiet one never is


class _Host:
    """A watch set stand-in: which observer a root has, and what the followed directories
    asked of it (restarts, directories reported as created)."""

    def __init__(self, root: Path, observer: object | None) -> None:
        self.root = root
        self.observer = observer
        self.restarted: list[Path] = []
        self.appeared: list[Path] = []

    def inotify_observer(self, root: Path) -> object | None:
        return self.observer

    def is_root(self, root: Path) -> bool:
        return root == self.root

    def name_filter(self) -> NameFilter:
        return NameFilter(("*.zip",), (), ".ckptd")

    def restart(self, root: Path) -> bool:
        self.restarted.append(root)
        return True

    def directory_appeared(self, root: Path, path: Path) -> None:
        self.appeared.append(path)


def test_without_watchdogs_internals_a_directory_listable_again_restarts_its_root(
    tmp_path: Path,
) -> None:
    """The fallback when a watchdog release renamed what inotify_watches reads: which watches
    the emitter holds cannot be told, so the root's observer starts over (a walk of the tree and
    a rescan of the root) once a directory found unlistable can be listed."""
    run = tmp_path / "ppo-1"
    run.mkdir()
    host = _Host(tmp_path, object())
    dropped = DroppedWatches(host)
    assert dropped.check_new_directory(tmp_path, run, 0.0)  # listable: scanned as before
    # As root nothing is unlistable: followed as check_new_directory follows one that is.
    assert dropped.unwatched.add(tmp_path, run, "Permission denied (EACCES)", 0.0)
    assert not dropped.check_new_directory(tmp_path, run, 0.01)  # followed: not scanned yet
    dropped.tick(1.0)
    assert host.restarted == [tmp_path] and host.appeared == [] and run not in dropped.unwatched


def test_a_followed_directory_on_a_root_now_polled_is_reported_and_a_vanished_one_forgotten(
    tmp_path: Path,
) -> None:
    run, gone = tmp_path / "ppo-1", tmp_path / "ppo-2"
    run.mkdir()
    host = _Host(tmp_path, object())
    dropped = DroppedWatches(host)
    for path in (run, gone):
        dropped.unwatched.add(tmp_path, path, "Permission denied (EACCES)", 0.0)
    dropped.tick(1.0)  # gone: forgotten quietly; run: listable, internals unknown
    assert host.appeared == [] and len(dropped.unwatched) == 0
    host.observer = None  # inotify fell back to polling: every poll lists it again
    dropped.unwatched.add(tmp_path, run, "Permission denied (EACCES)", 2.0)
    dropped.tick(3.0)
    assert host.appeared == [run] and dropped.notes() == []
    dropped.unwatched.add(Path("/removed-root"), Path("/removed-root/run"), "x", 4.0)
    dropped.tick(5.0)  # its root is no longer watched
    assert len(dropped.unwatched) == 0 and host.appeared == [run]
