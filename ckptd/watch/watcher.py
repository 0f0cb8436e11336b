"""The watchdog adapter: one observer per root, a handler that only filters and enqueues.

Events are hints, never the truth (docs/architecture.md, "Watching"): inotify drops events on queue
overflow, cannot see other NFS clients, and watchdog stops for good if a handler raises. So:

* the handler turns a watchdog event into ``WatchEvent``s, drops names no pattern wants, and
  ``put_nowait``s them on the daemon's queue, all inside ``try/except`` (an exception there kills
  watchdog's dispatcher thread permanently, #427/#793);
* the kernel-side mask is narrowed with ``event_filter=`` so writes (``IN_MODIFY``) never reach
  Python; a closed or renamed-into-place file is what matters;
* lost events are reported as rescan requests: a ``WatchEvent(kind="rescan")`` for the root on
  the queue, or, when the queue itself is full, the ``rescan_requested`` flag;
* ``unhealthy_roots()`` finds dead observers/emitters and deleted, replaced or missing roots, and
  ``restart(root)`` / ``heal()`` bring them back; a missing root is retried, never fatal;
* a new directory whose watch watchdog could not add (it was not listable yet: ``install -d``)
  gets it when it can be listed: ``check_new_directory`` and ``tick`` (``watch/dropped.py``;
  ``watch/inotify_watches.py`` says why and how, ``watch/unwatched.py`` when to look again).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import DirCreatedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from ckptd.config.model import RootConfig
from ckptd.watch.dropped import DroppedWatches
from ckptd.watch.events import (
    INOTIFY_EVENTS,
    POLLING_EVENTS,
    NameFilter,
    WatchEvent,
    translate_event,
)
from ckptd.watch.inotify_watches import ignore_failed_add_warnings
from ckptd.watch.mounts import ObserverChoice, choose_observer_kind

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 5.0
INOTIFY_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_DEBOUNCE_SECONDS = 1.0


@dataclass(frozen=True)
class WatchRoot:
    """What to watch and how: a root directory and its observer kind."""

    path: Path
    kind: ObserverChoice
    poll_interval: float = 10.0

    @classmethod
    def from_config(cls, root: RootConfig, *, mountinfo: str | None = None) -> WatchRoot:
        """Resolve ``observer: auto`` against the mount table (``mountinfo`` overrides it in tests)."""
        kind = choose_observer_kind(root.path, root.observer, mountinfo=mountinfo)
        return cls(root.path, kind, root.poll_interval.total_seconds())


class _EnqueueHandler(FileSystemEventHandler):
    """Runs on watchdog's dispatcher thread: translate, filter, enqueue; never raise, never block."""

    def __init__(self, watcher: RootWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            for item in translate_event(
                event, self._watcher.root.path, self._watcher.name_filter()
            ):
                self._watcher.sink.put(item)
        except Exception:
            logger.exception("dropped file-system event %r; the next rescan will pick it up", event)


class _Sink:
    """The daemon's queue, plus the fallback flag for when it is full."""

    def __init__(self, events: queue.Queue[WatchEvent]) -> None:
        self.events = events
        self.rescan_requested = threading.Event()

    def put(self, item: WatchEvent) -> None:
        try:
            self.events.put_nowait(item)
        except queue.Full:
            if not self.rescan_requested.is_set():
                logger.warning("event queue full; events dropped, a full rescan is needed")
            self.rescan_requested.set()

    def request_rescan(self, root: Path, reason: str) -> None:
        logger.info("rescan of %s requested: %s", root, reason)
        self.put(WatchEvent("rescan", root, False, root))


class RootWatcher:
    """One root, one observer; knows whether it is healthy and how to start over."""

    def __init__(self, root: WatchRoot, sink: _Sink, name_filter: Callable[[], NameFilter]) -> None:
        self.root = root
        self.sink = sink
        self.name_filter = name_filter
        self.observer: BaseObserver | None = None
        self.kind_in_use: ObserverChoice | None = None
        self._identity: tuple[int, int] | None = None
        self._missing_logged = False

    def _started_observer(self, kind: ObserverChoice) -> BaseObserver:
        """A running observer of ``kind`` on the root; raises OSError, leaving no thread behind."""
        observer: BaseObserver
        if kind == "inotify":
            observer, wanted = InotifyObserver(), INOTIFY_EVENTS
        else:
            observer, wanted = (
                PollingObserver(timeout=max(0.05, self.root.poll_interval)),
                POLLING_EVENTS,
            )
        try:
            handler = _EnqueueHandler(self)
            observer.schedule(handler, str(self.root.path), recursive=True, event_filter=wanted)
            observer.start()
        except BaseException:
            _stop_observer(observer)  # an unstarted InotifyObserver still owns a reader thread
            raise
        return observer

    def start(self) -> bool:
        """Begin watching; False (and logged) when the root is missing or cannot be watched."""
        problem = self._root_problem()
        if problem is not None:
            level = logging.DEBUG if self._missing_logged else logging.WARNING
            logger.log(
                level,
                "cannot watch %s: %s; retrying on the next health check",
                self.root.path,
                problem,
            )
            self._missing_logged = True
            return False
        kind = self.root.kind
        try:
            # Taken before the observer starts, so a root swapped meanwhile shows up as replaced.
            stat = self.root.path.stat()
            try:
                observer = self._started_observer(kind)
            except OSError as err:
                if kind != "inotify" or err.errno not in (errno.EMFILE, errno.ENOSPC):
                    raise
                # Out of inotify instances or watches: polling is slower but sees everything.
                logger.warning(
                    "cannot use inotify for %s (%s); polling it instead", self.root.path, err
                )
                kind = "polling"
                observer = self._started_observer(kind)
        except OSError as err:
            logger.warning(
                "cannot watch %s: %s; retrying on the next health check", self.root.path, err
            )
            return False
        self._missing_logged = False
        self.observer, self.kind_in_use = observer, kind
        self._identity = (stat.st_dev, stat.st_ino)
        logger.info("watching %s with %s", self.root.path, kind)
        return True

    def stop(self) -> None:
        observer, self.observer = self.observer, None
        if observer is not None:
            _stop_observer(observer)

    def _root_problem(self) -> str | None:
        try:
            stat = self.root.path.stat()
        except FileNotFoundError:
            return "root does not exist"
        except OSError as err:
            return f"root cannot be read: {err.strerror or err}"
        if not os.path.isdir(self.root.path):
            return "root is not a directory"
        if self._identity is not None and self._identity != (stat.st_dev, stat.st_ino):
            return "root was replaced"
        return None

    def problem(self) -> str | None:
        """None when healthy, else why not: missing/replaced root, dead observer or emitter."""
        root_problem = self._root_problem()
        if root_problem is not None:
            return root_problem
        if self.observer is None:
            return "not watching"
        if not self.observer.is_alive():
            return "observer thread died"
        emitters = list(self.observer.emitters)
        if not emitters or not all(emitter.is_alive() for emitter in emitters):
            return "emitter stopped"
        return None

    def restart(self) -> bool:
        """Stop and start again; on success ask for a rescan, since events were missed meanwhile."""
        self.stop()
        self._identity = None
        if not self.start():
            return False
        self.sink.request_rescan(self.root.path, "watch restarted")
        return True


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    with contextlib.suppress(RuntimeError):  # never started
        observer.join(STOP_TIMEOUT_SECONDS)
    if observer.is_alive():
        logger.warning("observer %r did not stop within %.0f s", observer, STOP_TIMEOUT_SECONDS)


class _OverflowHook(logging.Handler):
    """Listens to watchdog's inotify logger: a queue overflow means events were lost."""

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if "queue overflowed" in record.getMessage():
                self._on_overflow()
        except Exception:
            self.handleError(record)


class WatchSet:
    """All roots' watchers. Driven from one thread (the daemon's main loop); the handlers only enqueue.

    ``events`` receives ``WatchEvent``s. Roots can be added and removed at any time (SIGHUP).
    """

    def __init__(self, events: queue.Queue[WatchEvent], name_filter: NameFilter) -> None:
        self._sink = _Sink(events)
        self._filter = name_filter
        self._watchers: dict[Path, RootWatcher] = {}
        self._hook: _OverflowHook | None = None
        self.restart_count = 0  # successful restarts after a failure (for metrics)
        self._dropped = DroppedWatches(self)
        ignore_failed_add_warnings()  # a process-wide filter: installed when watching starts
        self._last_overflow = -OVERFLOW_DEBOUNCE_SECONDS

    @property
    def rescan_requested(self) -> threading.Event:
        """Set when the queue was full and events were dropped: rescan every root, then clear it."""
        return self._sink.rescan_requested

    def set_filter(self, name_filter: NameFilter) -> None:
        """Use new patterns from now on (handlers read the filter on every event)."""
        self._filter = name_filter

    def _current_filter(self) -> NameFilter:
        return self._filter

    def roots(self) -> list[Path]:
        return sorted(self._watchers)

    def kind_in_use(self, root: Path) -> ObserverChoice | None:
        """The observer actually running for ``root`` (inotify may have fallen back to polling)."""
        watcher = self._watchers.get(root)
        return watcher.kind_in_use if watcher is not None and watcher.observer is not None else None

    def _install_hook(self) -> None:
        if self._hook is None:
            self._hook = _OverflowHook(self._on_overflow)
            inotify_logger = logging.getLogger(INOTIFY_OVERFLOW_LOGGER)
            inotify_logger.addHandler(self._hook)
            if not inotify_logger.isEnabledFor(logging.WARNING):
                inotify_logger.setLevel(logging.WARNING)  # the overflow record must reach the hook

    def _on_overflow(self) -> None:
        # One overflow logs a line per lost batch (measured: 160+ in a burst); one rescan covers them.
        now = time.monotonic()
        if now - self._last_overflow < OVERFLOW_DEBOUNCE_SECONDS:
            return
        self._last_overflow = now
        for path, watcher in list(self._watchers.items()):
            if watcher.kind_in_use == "inotify":
                self._sink.request_rescan(path, "inotify queue overflowed")

    def add_root(self, root: WatchRoot) -> bool:
        """Watch ``root`` (replacing a watcher with other settings); False if it is not watchable yet."""
        self._install_hook()
        existing = self._watchers.get(root.path)
        if existing is not None:
            if existing.root == root:
                return existing.observer is not None
            existing.stop()
        watcher = RootWatcher(root, self._sink, self._current_filter)
        self._watchers[root.path] = watcher
        if not watcher.start():
            return False
        self._dropped.follow_existing(root.path)
        return True

    def remove_root(self, path: Path) -> None:
        """Stop watching ``path``; unknown paths are fine."""
        watcher = self._watchers.pop(path, None)
        self._dropped.forget_root(path)
        if watcher is not None:
            watcher.stop()
            logger.info("stopped watching %s", path)

    def set_roots(self, roots: Iterable[WatchRoot]) -> None:
        """Make the watched roots exactly ``roots`` (start new/changed ones, stop the rest)."""
        wanted = {root.path: root for root in roots}
        for path in set(self._watchers) - set(wanted):
            self.remove_root(path)
        for root in wanted.values():
            self.add_root(root)

    def unhealthy_roots(self) -> dict[Path, str]:
        """Every root that is not being watched properly, with the reason."""
        problems = {path: watcher.problem() for path, watcher in self._watchers.items()}
        return {path: problem for path, problem in problems.items() if problem is not None}

    def restart(self, root: Path) -> bool:
        """Restart the watcher of ``root``; True when it now watches (a rescan is then requested)."""
        watcher = self._watchers.get(root)
        if watcher is None:
            raise KeyError(f"{root} is not a watched root")
        started = watcher.restart()
        if started:
            self.restart_count += 1
            self._dropped.follow_existing(root)
        return started

    def heal(self) -> dict[Path, str]:
        """Restart every unhealthy root; return those still unhealthy (e.g. still missing)."""
        for path in self.unhealthy_roots():
            self.restart(path)
        return self.unhealthy_roots()

    def inotify_observer(self, root: Path) -> BaseObserver | None:
        """The running observer of ``root`` when it is an inotify one (polling lists every
        directory again at each poll: nothing to add there)."""
        watcher = self._watchers.get(root)
        if watcher is None or watcher.kind_in_use != "inotify":
            return None
        return watcher.observer

    def is_root(self, root: Path) -> bool:
        return root in self._watchers

    def name_filter(self) -> NameFilter:
        return self._filter

    def directory_appeared(self, root: Path, path: Path) -> None:
        """Queue the events of ``path`` created now (a directory watched only now: scan it)."""
        for event in translate_event(DirCreatedEvent(str(path)), root, self._filter):
            self._sink.put(event)

    def check_new_directory(self, root: Path, path: Path, now: float) -> bool:
        """A directory just created or moved in below ``root``: True when it can be scanned now
        (its watch in place), False when it cannot be listed yet (``watch/dropped.py``)."""
        return self._dropped.check_new_directory(root, path, now)

    def tick(self, now: float) -> None:
        """Look again at the new directories that could not be listed (from the main loop)."""
        self._dropped.tick(now)

    def notes(self) -> list[str]:
        """What the status says about directories that stayed unlistable (not unhealthy)."""
        return self._dropped.notes()

    def stop(self) -> None:
        """Stop every observer (bounded joins) and detach the overflow hook."""
        for path in list(self._watchers):
            self.remove_root(path)
        if self._hook is not None:
            logging.getLogger(INOTIFY_OVERFLOW_LOGGER).removeHandler(self._hook)
            self._hook = None
