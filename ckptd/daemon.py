"""The daemon (``ckptd run``): watch roots, wait for complete files, convert, retain, report.

Threads and who owns what:

* **main thread** (this class's ``run``): signals, the ~0.25 s tick, the stabilizer and all
  bookkeeping. Each tick drains the watch events into the stabilizer, re-stats paths whose quiet
  period is up, groups ready paths by run, hands work to the pool, collects results, checks health
  and pings systemd. Nothing on this thread reads checkpoint content.
* **worker pool** (``WORKER_COUNT`` threads, bounded work queue): one item at a time, either a
  batch of paths of one run (``pipeline.process_batch``, under the run lock) or a job (prune,
  manifest, rescan). A run is in at most one batch at a time, so conversions of one run never race
  and a file is never processed twice at once; the run lock also excludes prune and the CLI. A
  worker logs an exception and carries on.
* **watchdog observers** only enqueue ``WatchEvent``s (queue full: the rescan flag is set);
  **APScheduler** jobs only put a job name on a queue the main thread reads.

Manifests are written by the batches: one write per batch (a batch is all ready paths of a run, up
to ``BATCH_MAX_PATHS`` and about a second of work), so a burst of 10,000 files costs a few writes,
while a single closed checkpoint is in its manifest one tick after ``stable_for`` has passed.

Health (every second): ``watchset.heal()``, ``scheduler.healthy()``, workers alive (a dead one is
replaced). ``WATCHDOG=1`` is sent only while all are healthy. A root that does not exist (an NFS
mount not up yet) is retried and shown in ``STATUS=`` but does not stop the pings: restarting the
daemon would not bring it back. The scrub job (``schedule.scrub``) runs ``scrub.scheduled_scrub`` at ``scrub.max_rate``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TypeVar

from ckptd import notify
from ckptd.config import Config, RootConfig, ScheduleSpec, load_config
from ckptd.errors import CkptdError, ConfigError
from ckptd.inventory import RunRef, find_runs
from ckptd.logsetup import configure_logging
from ckptd.metrics import Metrics, MetricsServer, start_metrics_server
from ckptd.pipeline import (
    BatchResult,
    FoundFile,
    PipelineDeps,
    files_below,
    find_work,
    process_batch,
    run_of,
)
from ckptd.prune import prune_all, write_manifests
from ckptd.scheduling import JobCallback, JobScheduler
from ckptd.scrub import scheduled_scrub
from ckptd.stabilize import Stabilizer
from ckptd.timefmt import format_utc
from ckptd.watcher import NameFilter, WatchEvent, WatchRoot, WatchSet

logger = logging.getLogger(__name__)

WORKER_COUNT = 2
TICK_SECONDS = 0.25
EVENT_QUEUE_MAX = 100_000
BATCH_MAX_PATHS = 1000
HEALTH_EVERY_SECONDS = 1.0
STATUS_EVERY_SECONDS = 5.0
# SIGTERM must end the process within 5 s (systemd's TimeoutStopSec is longer, the contract is not).
STOP_GRACE_SECONDS = 3.0
# A ckptd temp file untouched for this long belongs to a killed writer (a live one keeps writing).
STALE_TEMP_SECONDS = 30.0
# A run whose batch could not take the run lock is left alone this long before the next try.
LOCKED_RUN_BACKOFF_SECONDS = 5.0
JOB_NAMES = ("prune", "manifest", "rescan", "scrub")
_V = TypeVar("_V")


@dataclass(frozen=True)
class RunBatch:
    """Work item: these ready paths (and these vanished ones) of one run."""

    config: Config
    root: RootConfig
    run: RunRef
    paths: tuple[Path, ...]
    expected: Mapping[Path, tuple[int, int]] = field(default_factory=dict)
    gone: tuple[Path, ...] = ()


@dataclass(frozen=True)
class JobRun:
    """Work item: one periodic job over every root of ``config``."""

    config: Config
    name: str


@dataclass(frozen=True)
class BatchDone:
    item: RunBatch
    result: BatchResult


@dataclass(frozen=True)
class JobDone:
    name: str
    found: tuple[tuple[Path, FoundFile], ...] = ()  # rescan: (root, file) pairs to observe
    runs: int | None = None  # rescan: how many runs the roots hold
    pruned: tuple[tuple[str, int], ...] = ()  # prune: (run, bytes freed) of runs that succeeded
    error: str | None = None


WorkItem = RunBatch | JobRun
WorkResult = BatchDone | JobDone


@dataclass
class _RunQueue:
    """Ready and vanished paths of one run waiting for a worker (deduplicated, in arrival order)."""

    root: RootConfig
    run: RunRef
    ready: OrderedDict[Path, tuple[int, int]] = field(default_factory=OrderedDict)
    gone: OrderedDict[Path, None] = field(default_factory=OrderedDict)
    not_before: float = 0.0

    def __len__(self) -> int:
        return len(self.ready) + len(self.gone)


def scan_roots(
    config: Config, roots: Iterable[RootConfig], *, stale_temp_age: float | None
) -> tuple[list[tuple[Path, FoundFile]], int]:
    """Reconciliation: every file of every run of ``roots`` that needs processing, and the run count.

    A root or run that cannot be listed is logged and skipped; the scan goes on.
    """
    found: list[tuple[Path, FoundFile]] = []
    runs = 0
    for root in roots:
        try:
            scan = find_runs(root.path, root.run_depth, config.state_dir)
        except OSError as err:
            logger.warning("cannot scan root %s: %s", root.path, err)
            continue
        for relpath, message in scan.errors:
            logger.warning("cannot scan %s: %s", root.path / relpath, message)
        runs += len(scan.runs)
        for run in scan.runs:
            try:
                work = find_work(config, run, stale_temp_age=stale_temp_age)
            except OSError as err:
                logger.warning("cannot scan run: %s", err, extra={"run": run.relpath})
                continue
            found.extend((root.path, item) for item in work)
    return found, runs


class Daemon:
    """``ckptd run``: construct with the config path (a bad config raises ConfigError), then ``run()``."""

    def __init__(self, config_path: Path, *, deps: PipelineDeps | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        self.deps = deps if deps is not None else PipelineDeps()
        self.metrics = Metrics()
        self._events: queue.Queue[WatchEvent] = queue.Queue(EVENT_QUEUE_MAX)
        self._work: queue.Queue[WorkItem] = queue.Queue(WORKER_COUNT)
        self._results: queue.SimpleQueue[WorkResult] = queue.SimpleQueue()
        self._job_requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stabilizer = self._new_stabilizer(self.config)
        self._observed: dict[Path, tuple[Path, int, int]] = {}  # path -> (root, size, mtime_ns)
        self._runs: dict[Path, _RunQueue] = {}
        self._busy_runs: set[Path] = set()
        self._jobs_wanted: set[str] = set()
        self._jobs_running: set[str] = set()
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._stop_signal: str | None = None
        self._reload_requested = False
        self._watchset: WatchSet | None = None
        self._scheduler: JobScheduler | None = None
        self._metrics_server = MetricsServer()
        self._healthy = False
        self._unhealthy_text = ""
        self._run_count = 0
        self._last_prune: datetime | None = None
        self._last_ping = 0.0
        self._next_health = 0.0
        self._next_status = 0.0
        self._last_status = ""
        self._observer_restarts = 0

    # ---- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status (0 after a clean stop)."""
        configure_logging(self.config.log)
        self._install_signal_handlers()
        try:
            self._start()
            next_tick = time.monotonic()
            while self._stop_signal is None:
                try:
                    self._tick(time.monotonic())
                except Exception:
                    # A bug in one tick must not end the service; the next tick starts afresh.
                    logger.exception("main loop tick failed")
                next_tick += TICK_SECONDS
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()
            logger.info("received %s; stopping", self._stop_signal)
        finally:
            self._shutdown()
        return 0

    def _install_signal_handlers(self) -> None:
        # Handlers only set flags: the main loop acts on them within one tick.
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stop_signal = signal.Signals(signum).name

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _start(self) -> None:
        config = self.config
        logger.info("starting with %s (%d roots)", self.config_path, len(config.roots))
        self._metrics_server = start_metrics_server(config.metrics.listen, self.metrics)
        self._watchset = WatchSet(self._events, NameFilter.from_config(config))
        self._watchset.set_roots(WatchRoot.from_config(root) for root in config.roots)
        for index in range(WORKER_COUNT):
            self._workers.append(self._start_worker(index))
        self._scheduler = JobScheduler()
        self._scheduler.set_jobs(_job_specs(config), self._job_callbacks())
        self._scheduler.start()
        # Watchers first, then the scan: a file written during the scan is seen by one or the other.
        found, runs = scan_roots(config, config.roots, stale_temp_age=STALE_TEMP_SECONDS)
        self._run_count = runs
        self._observe_found(found, time.monotonic())
        self._health(time.monotonic())
        notify.ready(self._status_text())
        logger.info("ready: %d runs, %d files to look at", runs, len(found))

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        notify.stopping()
        self._stopping.set()
        if self._watchset is not None:
            self._watchset.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # jobs only enqueue: returns at once
        self._metrics_server.stop()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        busy = [worker.name for worker in self._workers if worker.is_alive()]
        if busy:
            # Conversions and manifest writes are atomic: abandoning them leaves at most a temp
            # file, which the next start removes.
            logger.warning("abandoning in-flight work in %s", ", ".join(busy))
            logging.shutdown()
            os._exit(0)
        logger.info("stopped")

    # ---- workers ---------------------------------------------------------------------------------

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
                logger.exception("worker failed on %s", _describe(item))
                result = _failed(item, f"{type(err).__name__}: {err}")
            self._results.put(result)

    def _execute(self, item: WorkItem) -> WorkResult:
        if isinstance(item, RunBatch):
            result = process_batch(
                item.config,
                item.root,
                item.run,
                item.paths,
                deps=self.deps,
                expected=item.expected,
                gone=item.gone,
            )
            return BatchDone(item, result)
        return self._run_job(item)

    def _run_job(self, job: JobRun) -> JobDone:
        now = datetime.now(UTC)
        if job.name == "rescan":
            found, runs = scan_roots(
                job.config, job.config.roots, stale_temp_age=STALE_TEMP_SECONDS
            )
            logger.info("rescan: %d runs, %d files to look at", runs, len(found))
            return JobDone("rescan", tuple(found), runs)
        if job.name == "prune":
            report = prune_all(job.config, now=now, dry_run=False)
            freed = sum(run.bytes_freed for run in report.runs)
            deleted = sum(len(run.deleted) for run in report.runs)
            logger.info(
                "prune: %d runs, %d checkpoints deleted, %d bytes freed%s",
                len(report.runs),
                deleted,
                freed,
                "" if report.ok else " (some runs failed; see above)",
            )
            pruned = tuple((run.run, run.bytes_freed) for run in report.runs if run.error is None)
            return JobDone("prune", pruned=pruned)
        if job.name == "manifest":
            report = write_manifests(job.config, now=now)
            written = sum(1 for run in report.runs if run.manifest_written)
            logger.debug("manifest pass: %d of %d manifests rewritten", written, len(report.runs))
            return JobDone("manifest")
        if job.name == "scrub":
            # Rate-limited and long: it holds one worker; SIGTERM interrupts it between reads.
            scheduled_scrub(
                job.config,
                now=now,
                set_corrupt_gauge=self.metrics.set_scrub_corrupt,
                stop=self._stopping.is_set,
            )
            return JobDone("scrub")
        return JobDone(job.name, error=f"unknown job {job.name}")

    # ---- scheduler callbacks (scheduler threads: only enqueue) ----------------------------------

    def _request_prune(self) -> None:
        self._job_requests.put("prune")

    def _request_manifest(self) -> None:
        self._job_requests.put("manifest")

    def _request_rescan(self) -> None:
        self._job_requests.put("rescan")

    def _request_scrub(self) -> None:
        self._job_requests.put("scrub")

    def _job_callbacks(self) -> dict[str, JobCallback]:
        return {
            "prune": self._request_prune,
            "manifest": self._request_manifest,
            "rescan": self._request_rescan,
            "scrub": self._request_scrub,
        }

    # ---- the tick --------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if self._reload_requested:
            self._reload_requested = False
            self._reload()
        self._drain_events(now)
        assert self._watchset is not None
        if self._watchset.rescan_requested.is_set():
            self._watchset.rescan_requested.clear()
            self._jobs_wanted.add("rescan")
        while True:
            try:
                self._jobs_wanted.add(self._job_requests.get_nowait())
            except queue.Empty:
                break
        for path in self._stabilizer.due(now):
            self._restat(path, now)
        for path in self._stabilizer.ready(now):
            self._enqueue_ready(path)
        self._collect_results(now)
        self._dispatch(now)
        if now >= self._next_health:
            self._next_health = now + HEALTH_EVERY_SECONDS
            self._health(now)
        self._ping_watchdog(now)
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_SECONDS
            self._send_status()
        self.metrics.set_queue_depth(self._queued_paths())

    def _drain_events(self, now: float) -> None:
        assert self._watchset is not None
        kinds: dict[Path, str | None] = {}
        for _ in range(EVENT_QUEUE_MAX):
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event.root not in kinds:
                kinds[event.root] = self._watchset.kind_in_use(event.root)
            self._handle_event(event, now, expect_close=kinds[event.root] == "inotify")

    def _handle_event(self, event: WatchEvent, now: float, *, expect_close: bool) -> None:
        if event.kind in ("created", "closed", "moved", "modified"):
            self._observe(
                event.root, event.path, now, closed=event.closed, expect_close=expect_close
            )
        elif event.kind == "deleted":
            self._forget(event.path)
            self._enqueue_gone(event.root, event.path)
        elif event.kind in ("dir_created", "dir_moved"):
            for item in files_below(self.config, event.path):
                self._observe_stat(
                    event.root, item, now, closed=event.closed, expect_close=expect_close
                )
        elif event.kind == "dir_deleted":
            prefix = event.path
            for path in [p for p in self._observed if p.is_relative_to(prefix)]:
                self._forget(path)
        elif event.kind == "rescan":
            self._jobs_wanted.add("rescan")

    def _observe(
        self, root: Path, path: Path, now: float, *, closed: bool, expect_close: bool
    ) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._forget(path)
            return
        except OSError as err:
            logger.warning("cannot stat %s: %s", path, err)
            return
        self._observe_values(root, path, st.st_size, st.st_mtime_ns, now, closed, expect_close)

    def _observe_stat(
        self, root: Path, item: FoundFile, now: float, *, closed: bool, expect_close: bool
    ) -> None:
        identity = item.identity
        self._observe_values(
            root, item.path, identity.size, identity.mtime_ns, now, closed, expect_close
        )

    def _observe_values(
        self,
        root: Path,
        path: Path,
        size: int,
        mtime_ns: int,
        now: float,
        closed: bool,
        expect_close: bool,
    ) -> None:
        accepted = self._stabilizer.observe(
            path, size, mtime_ns, now, closed=closed, expect_close=expect_close
        )
        if accepted:
            self._observed[path] = (root, size, mtime_ns)

    def _observe_found(self, found: Iterable[tuple[Path, FoundFile]], now: float) -> None:
        # Found by a scan: no close event will come for these, so none is expected.
        for root, item in found:
            if item.path in self._observed:
                continue  # already tracked: its own events and re-stats decide
            self._observe_stat(root, item, now, closed=False, expect_close=False)

    def _restat(self, path: Path, now: float) -> None:
        known = self._observed.get(path)
        if known is None:
            self._stabilizer.forget(path)
            return
        self._observe(known[0], path, now, closed=False, expect_close=False)

    def _forget(self, path: Path) -> None:
        self._stabilizer.forget(path)
        self._observed.pop(path, None)

    def _run_queue(self, root_path: Path, path: Path) -> tuple[_RunQueue, Path] | None:
        root = self._root_config(root_path)
        if root is None:
            return None
        located = run_of(root, path, self.config.state_dir)
        if located is None:
            return None
        run = located[0]
        run_queue = self._runs.get(run.run_dir)
        if run_queue is None:
            run_queue = self._runs[run.run_dir] = _RunQueue(root, run)
        return run_queue, path

    def _enqueue_ready(self, path: Path) -> None:
        known = self._observed.pop(path, None)
        if known is None:
            return
        root_path, size, mtime_ns = known
        found = self._run_queue(root_path, path)
        if found is not None:
            run_queue, _ = found
            run_queue.gone.pop(path, None)
            run_queue.ready[path] = (size, mtime_ns)

    def _enqueue_gone(self, root_path: Path, path: Path) -> None:
        found = self._run_queue(root_path, path)
        if found is not None:
            run_queue, _ = found
            run_queue.ready.pop(path, None)
            run_queue.gone[path] = None

    def _root_config(self, root_path: Path) -> RootConfig | None:
        for root in self.config.roots:
            if root.path == root_path:
                return root
        return None  # removed by a reload: its pending work is dropped

    def _queued_paths(self) -> int:
        return sum(len(run_queue) for run_queue in self._runs.values())

    # ---- dispatch and results --------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        for name in JOB_NAMES:
            if name in self._jobs_wanted and name not in self._jobs_running:
                if not self._offer(JobRun(self.config, name)):
                    return
                self._jobs_wanted.discard(name)
                self._jobs_running.add(name)
        for run_dir, run_queue in list(self._runs.items()):
            if not run_queue:
                del self._runs[run_dir]
                continue
            if run_dir in self._busy_runs or run_queue.not_before > now:
                continue
            ready = _take(run_queue.ready, BATCH_MAX_PATHS)
            gone = tuple(_take(run_queue.gone, BATCH_MAX_PATHS))
            batch = RunBatch(
                self.config, run_queue.root, run_queue.run, tuple(ready), dict(ready), gone
            )
            if not self._offer(batch):
                # Back-pressure: the pool is busy; the paths wait here, deduplicated.
                for path, identity in reversed(ready.items()):
                    run_queue.ready[path] = identity
                    run_queue.ready.move_to_end(path, last=False)
                for path in gone:
                    run_queue.gone[path] = None
                return
            self._busy_runs.add(run_dir)

    def _offer(self, item: WorkItem) -> bool:
        try:
            self._work.put_nowait(item)
        except queue.Full:
            return False
        return True

    def _collect_results(self, now: float) -> None:
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return
            if isinstance(result, BatchDone):
                self._batch_done(result, now)
            else:
                self._job_done(result, now)

    def _batch_done(self, done: BatchDone, now: float) -> None:
        item, result = done.item, done.result
        self._busy_runs.discard(item.run.run_dir)
        for outcome in result.outcomes:
            if outcome.action == "changed":
                self._observe(item.root.path, outcome.path, now, closed=False, expect_close=False)
            elif outcome.action in ("converted", "kept", "broken", "refused"):
                self.metrics.record_seen()
                if outcome.action == "converted":
                    self.metrics.record_converted()
                elif outcome.action == "refused":
                    self.metrics.record_refused()
                elif outcome.action == "broken":
                    self.metrics.record_broken()
        if result.deferred or result.busy:
            run_queue = self._runs.get(item.run.run_dir)
            if run_queue is None:
                run_queue = self._runs[item.run.run_dir] = _RunQueue(item.root, item.run)
            for path in result.deferred:
                if path in item.expected:
                    run_queue.ready.setdefault(path, item.expected[path])
            if result.busy:
                for path in item.gone:
                    run_queue.gone.setdefault(path, None)
                run_queue.not_before = now + LOCKED_RUN_BACKOFF_SECONDS

    def _job_done(self, done: JobDone, now: float) -> None:
        self._jobs_running.discard(done.name)
        if done.error is not None:
            logger.error("job %s failed: %s", done.name, done.error)
            return
        if done.name == "rescan":
            if done.runs is not None:
                self._run_count = done.runs
            self._observe_found(done.found, now)
        elif done.name == "prune":
            self._last_prune = datetime.now(UTC)
            for run, freed in done.pruned:
                self.metrics.record_prune_success(run, self._last_prune)
                if freed:
                    self.metrics.record_pruned(freed)

    # ---- health, status, watchdog ----------------------------------------------------------------

    def _health(self, now: float) -> None:
        assert self._watchset is not None and self._scheduler is not None
        unhealthy = self._watchset.heal()
        restarts = self._watchset.restart_count
        for _ in range(restarts - self._observer_restarts):
            self.metrics.record_observer_restart()
        self._observer_restarts = restarts
        problems = [
            f"{path}: {reason}"
            for path, reason in sorted(unhealthy.items())
            if reason != "root does not exist"
        ]
        missing = [
            str(path) for path, reason in unhealthy.items() if reason == "root does not exist"
        ]
        if not self._scheduler.healthy():
            problems.append("scheduler not running")
        for index, worker in enumerate(self._workers):
            if not worker.is_alive() and not self._stopping.is_set():
                problems.append(f"{worker.name} died")
                logger.error("%s died; starting a new one", worker.name)
                self._workers[index] = self._start_worker(index)
        self._healthy = not problems
        text = "; ".join(problems + [f"{path}: missing" for path in missing])
        if text != self._unhealthy_text and problems:
            logger.warning("unhealthy: %s", text)
        self._unhealthy_text = text

    def _ping_watchdog(self, now: float) -> None:
        interval = notify.watchdog_interval()
        if interval is None or not self._healthy:
            return
        if now - self._last_ping >= min(interval, HEALTH_EVERY_SECONDS * 5):
            self._last_ping = now
            notify.watchdog_ping()

    def _status_text(self) -> str:
        last = format_utc(self._last_prune.replace(microsecond=0)) if self._last_prune else "never"
        text = (
            f"watching {len(self.config.roots)} roots, {self._run_count} runs; "
            f"{self._stabilizer.pending()} settling, {self._queued_paths()} queued; last prune {last}"
        )
        return f"{text}; {self._unhealthy_text}" if self._unhealthy_text else text

    def _send_status(self) -> None:
        text = self._status_text()
        if text != self._last_status:
            self._last_status = text
            notify.status(text)

    # ---- reload ----------------------------------------------------------------------------------

    def _reload(self) -> None:
        notify.reloading()
        logger.info("SIGHUP: reloading %s", self.config_path)
        try:
            new = load_config(self.config_path)
            assert self._scheduler is not None and self._watchset is not None
            # Checks every schedule before changing any: on error the old jobs stay.
            self._scheduler.set_jobs(_job_specs(new), self._job_callbacks())
        except ConfigError as err:
            for line in err.lines():
                logger.error("reload rejected, keeping the running config: %s", line)
            notify.ready(self._status_text())
            return
        except CkptdError as err:
            logger.error("reload rejected, keeping the running config: %s", err)
            notify.ready(self._status_text())
            return
        old = self.config
        configure_logging(new.log)
        if new.metrics.listen != old.metrics.listen:
            self._metrics_server.stop()
            try:
                self._metrics_server = start_metrics_server(new.metrics.listen, self.metrics)
            except CkptdError as err:
                logger.error("metrics not served: %s", err)
                self._metrics_server = MetricsServer()
        self._watchset.set_filter(NameFilter.from_config(new))
        self._watchset.set_roots(WatchRoot.from_config(root) for root in new.roots)
        if new.checkpoints.stable_for != old.checkpoints.stable_for:
            # Tracked paths start over under the new quiet period; the rescan finds them again.
            self._stabilizer = self._new_stabilizer(new)
            self._observed.clear()
        wanted = {root.path for root in new.roots}
        for run_dir in [d for d, q in self._runs.items() if q.root.path not in wanted]:
            del self._runs[run_dir]
        self.config = new
        self._jobs_wanted.add("rescan")  # new roots (and changed patterns) need a reconciliation
        logger.info("reloaded: %d roots", len(new.roots))
        notify.ready(self._status_text())

    @staticmethod
    def _new_stabilizer(config: Config) -> Stabilizer[Path]:
        return Stabilizer(config.checkpoints.stable_for.total_seconds())


def _job_specs(config: Config) -> dict[str, ScheduleSpec | None]:
    # scrub is not implemented yet: it is never scheduled (rather than scheduled as a no-op).
    schedule = config.schedule
    return {
        "prune": schedule.prune,
        "manifest": schedule.manifest,
        "rescan": schedule.rescan,
        "scrub": schedule.scrub,
    }


def _take(ordered: OrderedDict[Path, _V], count: int) -> OrderedDict[Path, _V]:
    taken: OrderedDict[Path, _V] = OrderedDict()
    while ordered and len(taken) < count:
        path, value = ordered.popitem(last=False)
        taken[path] = value
    return taken


def _describe(item: WorkItem) -> str:
    if isinstance(item, RunBatch):
        return f"run {item.run.run_dir} ({len(item.paths)} files)"
    return f"job {item.name}"


def _failed(item: WorkItem, error: str) -> WorkResult:
    if isinstance(item, RunBatch):
        # Not handed back: a bug that fails a batch would fail it again; the rescan retries.
        result = BatchResult(item.run, (), (), False, error)
        return BatchDone(item, result)
    return JobDone(item.name, error=error)
