"""The daemon (``ckptd run``): watch roots, wait for complete files, convert, retain, report.

Threads and who owns what:

* **main thread** (this class's ``run``): signals, the ~0.25 s tick, the stabilizer, the
  directory checkpoints (``ckptd.daemon.directories``) and all bookkeeping. Each tick drains the
  watch events into the stabilizer, re-stats paths whose quiet period is up, groups ready paths
  by run, hands work to the pool, collects results, checks health and pings systemd. Nothing on this thread reads checkpoint content.
* **worker pool** (``WORKER_COUNT`` threads, bounded work queue; ``ckptd.daemon.workers``): one item at a time, either a
  batch of paths of one run (``pipeline.process_batch``, under the run lock) or a job (prune,
  manifest, rescan). A run is in at most one batch at a time, so conversions of one run never race
  and a file is never processed twice at once; the run lock also excludes prune and the CLI. A
  worker logs an exception and carries on. Checkpoint content is parsed only in each worker's
  child process (``ckptd.isolation.supervisor``: a deadline and a memory cap per file); a run whose file went
  over a limit is served by the pool's slow lane for a while, and a spare worker steps in while
  every ordinary worker is held by one file.
* **watchdog observers** only enqueue ``WatchEvent``s (queue full: the rescan flag is set);
  **APScheduler** jobs only put a job name on a queue the main thread reads.

Manifests are written by the batches: one write per batch (a batch is all ready paths of a run, up
to ``BATCH_MAX_PATHS`` and about a second of work), so a burst of 10,000 files costs a few writes,
while a single closed checkpoint is in its manifest one tick after ``stable_for`` has passed.

Health (every second, ``ckptd.daemon.health``): ``watchset.heal()``, ``scheduler.healthy()``,
workers alive (a dead one is replaced). ``WATCHDOG=1`` is sent only while all are healthy. A root that does not exist (an NFS
mount not up yet) is retried and shown in ``STATUS=`` but does not stop the pings: restarting the
daemon would not bring it back. The scrub job (``schedule.scrub``) runs ``scrub.scheduled_scrub`` at ``scrub.max_rate``.
Work items and the jobs are in ``ckptd.daemon.jobs``, a run's waiting paths in ``ckptd.daemon.run_queue``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from ckptd.config.load import load_config
from ckptd.config.model import Config, RootConfig
from ckptd.daemon import notify
from ckptd.daemon.cluster import Coordination
from ckptd.daemon.directories import DirectoryCheckpoints
from ckptd.daemon.health import HEALTH_EVERY_SECONDS, HealthMonitor
from ckptd.daemon.jobs import (
    JOB_NAMES,
    STALE_TEMP_SECONDS,
    BatchDone,
    JobDone,
    JobRun,
    ManifestDone,
    RunBatch,
    WorkItem,
    WorkResult,
    execute,
    job_specs,
    scan_roots,
)
from ckptd.daemon.metrics import Metrics, MetricsServer, start_metrics_server
from ckptd.daemon.run_queue import (
    SLOW_LANE_SECONDS,
    RunLocator,
    RunQueues,
)
from ckptd.daemon.scheduling import JobCallback, JobScheduler
from ckptd.daemon.workers import WorkerPool
from ckptd.errors import CkptdError, ConfigError
from ckptd.isolation.supervisor import Isolation
from ckptd.logs.configure import configure_logging
from ckptd.pipeline.types import PipelineDeps
from ckptd.retention.unrecorded import recorded_in_trash
from ckptd.runs.roots import RunRef
from ckptd.timefmt import format_utc
from ckptd.units import plural
from ckptd.watch.events import NameFilter, WatchEvent
from ckptd.watch.settling import SettlingFiles
from ckptd.watch.watcher import WatchRoot, WatchSet

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.25
EVENT_QUEUE_MAX = 100_000
STATUS_EVERY_SECONDS = 5.0
# SIGTERM must end the process within 5 s (systemd's TimeoutStopSec is longer, the contract is not).
STOP_GRACE_SECONDS = 3.0


def _one_at_a_time(paths: Sequence[Path]) -> None:
    """No examination ahead: each file is sent to the parser when the batch reaches it."""


class Daemon:
    """``ckptd run``: construct with the config path (a bad config raises ConfigError), then ``run()``."""

    def __init__(self, config_path: Path, *, deps: PipelineDeps | None = None) -> None:
        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        # Fault tests pass in-process fakes; otherwise every file is parsed in a child process.
        self._isolation = Isolation(self.config.limits) if deps is None else None
        self.deps = deps if deps is not None else self._isolation_deps()
        self.metrics = Metrics()
        self._events: queue.Queue[WatchEvent] = queue.Queue(EVENT_QUEUE_MAX)
        self._job_requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._settling = self._new_settling(self.config)
        self._directories = DirectoryCheckpoints(self.config)
        self._runs = RunQueues()
        self._locator = RunLocator(self.config.roots, self.config.state_dir)
        self._jobs_wanted: set[str] = set()
        self._jobs_running: set[str] = set()
        self._stopping = threading.Event()
        self._pool = WorkerPool(self._execute, self._stopping)
        self._stop_signal: str | None = None
        self._reload_requested = False
        self._watchset: WatchSet | None = None
        self._scheduler: JobScheduler | None = None
        self._metrics_server = MetricsServer()
        self._health_monitor = HealthMonitor(self.metrics)
        self._run_count = 0
        self._last_prune: datetime | None = None
        self._next_health = 0.0
        self._next_status = 0.0
        self._exit_status = 0
        # Root locks (backend local) or per-run leases (postgres): ckptd.daemon.cluster.
        self._coordination = Coordination(self.config)
        self.deps = self._coordination.deps(self.deps)
        # A checkpoint whose deletion event it handles may have been moved to the trash by a prune
        # killed before its manifest write: recorded in the manifest's history, not only dropped.
        self.deps = dataclasses.replace(self.deps, record_vanished=recorded_in_trash)

    # ---- lifecycle -------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status (0 after a clean stop)."""
        configure_logging(self.config.log, node=self._coordination.node)
        # Before anything starts: a root another daemon serves ends this one with RootBusyError.
        self._coordination.lock(self.config)
        self._install_signal_handlers()
        try:
            self._coordination.start()
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
            self._coordination.stop()
        return self._exit_status

    def _install_signal_handlers(self) -> None:
        # Handlers only set flags: the main loop acts on them within one tick.
        def stop(signum: int, frame: FrameType | None) -> None:
            self._stop_signal = signal.Signals(signum).name

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        # A writer opening a file while settling probes it (fs.files.open_for_writing) signals
        # SIGIO, which would terminate us; the probe's lease is released at once anyway.
        signal.signal(signal.SIGIO, signal.SIG_IGN)

    def _start(self) -> None:
        config = self.config
        logger.info("starting with %s (%d roots)", self.config_path, len(config.roots))
        self._metrics_server = start_metrics_server(config.metrics.listen, self.metrics)
        self._watchset = WatchSet(self._events, NameFilter.from_config(config))
        self._watchset.set_roots(WatchRoot.from_config(root) for root in config.roots)
        if self._isolation is not None:
            self._isolation.start()
        self._pool.start()
        self._scheduler = JobScheduler()
        self._scheduler.set_jobs(job_specs(config), self._job_callbacks())
        self._scheduler.start()
        # Watchers first, then the scan: a file written during the scan is seen by one or the other.
        scan = scan_roots(
            config,
            config.roots,
            stale_temp_age=STALE_TEMP_SECONDS,
            on_run=notify.StartKeepalive().tick,
        )
        self._run_count = scan.runs
        self._settling.observe_found(scan.found, time.monotonic())
        self._directories.track_all(scan.directories, time.time())
        self._health(time.monotonic())
        notify.ready(self._status_text())
        logger.info("ready: %s to look at", scan.describe())

    def _shutdown(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        notify.stopping()
        self._stopping.set()
        if self._watchset is not None:
            self._watchset.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)  # jobs only enqueue: returns at once
        self._metrics_server.stop()
        busy = self._pool.join(deadline)
        if busy:
            # Conversions and manifest writes are atomic: abandoning them leaves at most a temp
            # file, which the next start removes. The children die with this process
            # (PR_SET_PDEATHSIG, ckptd.isolation.child).
            logger.warning("abandoning in-flight work in %s", ", ".join(busy))
            logging.shutdown()
            os._exit(0)
        if self._isolation is not None:
            self._isolation.close()
        logger.info("stopped")

    # ---- work (worker threads) ----------------------------------------------------------------

    def _isolation_deps(self) -> PipelineDeps:
        assert self._isolation is not None
        return self._isolation.deps()

    def _execute(self, item: WorkItem) -> WorkResult:
        isolation = self._isolation
        before = isolation.exceeded_in_thread() if isolation is not None else 0
        deps = self.deps
        if isinstance(item, RunBatch) and item.slow:
            # A run whose files exceed limits: its batches end after one such file anyway, so its
            # files are not examined ahead (a burst's are, a chunk per request: PipelineDeps).
            deps = dataclasses.replace(deps, examine_ahead=_one_at_a_time)
        result = execute(
            item,
            deps=deps,
            metrics=self.metrics,
            stopping=self._stopping,
            structure=isolation.structure if isolation is not None else None,
            options=self._coordination.pass_options(),
            duties=self._coordination.duties(),
        )
        if (
            isinstance(result, BatchDone)
            and isolation is not None
            and isolation.exceeded_in_thread() > before
        ):
            result = BatchDone(result.item, result.result, exceeded=True)
        return result

    # ---- scheduler callbacks (scheduler threads: only enqueue) ----------------------------------

    def _job_callbacks(self) -> dict[str, JobCallback]:
        return {name: functools.partial(self._job_requests.put, name) for name in JOB_NAMES}

    # ---- the tick --------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if self._reload_requested:
            self._reload_requested = False
            self._reload()
        assert self._watchset is not None
        self._watchset.tick(now)  # new directories that can be listed now: watched, then scanned
        self._drain_events(now)
        if self._watchset.rescan_requested.is_set():
            self._watchset.rescan_requested.clear()
            self._jobs_wanted.add("rescan")
        while True:
            try:
                self._jobs_wanted.add(self._job_requests.get_nowait())
            except queue.Empty:
                break
        for path in self._settling.due(now):
            self._settling.restat(path, now)
        for path in self._settling.ready(now):
            self._enqueue_ready(path)
        self._directories.tick(self._runs, time.time())
        self._collect_results(now)
        self._coordination.tick(self._runs, self._settling, self._jobs_wanted, now)
        self._dispatch(now)
        if now >= self._next_health:
            self._next_health = now + HEALTH_EVERY_SECONDS
            self._health(now)
        self._ping_watchdog(now)
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_SECONDS
            self._send_status()
        self.metrics.set_queue_depth(self._runs.queued_paths())

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
        if self._directories.handle(event, self._runs, time.time()):
            return
        if event.kind in ("created", "closed", "moved", "modified"):
            self._settling.observe(
                event.root, event.path, now, closed=event.closed, expect_close=expect_close
            )
        elif event.kind == "deleted":
            self._settling.forget(event.path)
            self._enqueue_gone(event.root, event.path)
        elif event.kind in ("dir_created", "dir_moved"):
            assert self._watchset is not None
            if not self._watchset.check_new_directory(event.root, event.path, now):
                return  # not listable yet: scanned once it is, and watched (WatchSet.tick)
            for item in self._directories.new_directory(event.root, event.path, time.time()):
                self._settling.observe_in_new_directory(
                    event.root, item, now, closed=event.closed, expect_close=expect_close
                )
        elif event.kind == "dir_deleted":
            self._settling.forget_below(event.path)
            self._directories.forget_below(event.path)
        elif event.kind == "rescan":
            self._jobs_wanted.add("rescan")

    def _locate(self, root_path: Path, path: Path) -> tuple[RootConfig, RunRef] | None:
        return self._locator.locate(root_path, path)

    def _enqueue_ready(self, path: Path) -> None:
        known = self._settling.take(path)
        if known is None:
            return
        root_path, size, mtime_ns = known
        if self._directories.divert(root_path, path, time.time()):
            return  # inside a directory checkpoint: that directory is the unit
        found = self._locate(root_path, path)
        if found is not None:
            self._runs.add_ready(*found, path, (size, mtime_ns))

    def _enqueue_gone(self, root_path: Path, path: Path) -> None:
        found = self._locate(root_path, path)
        if found is not None:
            self._runs.add_gone(*found, path)

    # ---- dispatch and results --------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        for name in JOB_NAMES:
            if name in self._jobs_wanted and name not in self._jobs_running:
                if not self._offer(JobRun(self.config, name)):
                    return
                self._jobs_wanted.discard(name)
                self._jobs_running.add(name)
        self._runs.dispatch(self.config, now, self._offer, self._pool.has_room)

    def _offer(self, item: WorkItem, slow: bool = False) -> bool:
        return self._pool.offer(item, slow=slow)

    def _collect_results(self, now: float) -> None:
        while True:
            try:
                result = self._pool.results.get_nowait()
            except queue.Empty:
                return
            if isinstance(result, BatchDone):
                self._batch_done(result, now)
            elif isinstance(result, ManifestDone):
                self._runs.manifest_finished(result.item)
            else:
                self._job_done(result, now)

    def _batch_done(self, done: BatchDone, now: float) -> None:
        item, result = done.item, done.result
        for outcome in result.outcomes:
            if outcome.action == "changed":
                self._settling.observe(
                    item.root.path, outcome.path, now, closed=False, expect_close=False
                )
            elif outcome.action in ("converted", "kept", "broken", "refused", "held"):
                self.metrics.record_seen()
                if outcome.action == "converted":
                    self.metrics.record_converted()
                elif outcome.action == "refused":
                    self.metrics.record_refused(reason=outcome.message)
                elif outcome.action == "broken":
                    self.metrics.record_broken()
        self._runs.batch_finished(item, result, now)
        if done.exceeded:
            if item.run.run_dir not in self._runs.slow_until:
                logger.info(
                    "a file went over its limits; the run's files go to the slow lane for %ds",
                    SLOW_LANE_SECONDS,
                    extra={"run": item.run.relpath},
                )
            self._runs.mark_slow(item.run, now + SLOW_LANE_SECONDS)

    def _job_done(self, done: JobDone, now: float) -> None:
        self._jobs_running.discard(done.name)
        if done.error is not None:
            logger.error("job %s failed: %s", done.name, done.error)
            return
        if done.name == "rescan":
            if done.runs is not None:
                self._run_count = done.runs
            self._settling.observe_found(done.found, now)
            self._directories.track_all(done.directories, time.time())
        elif done.name == "prune":
            self._last_prune = datetime.now(UTC)
            for run, freed in done.pruned:
                self.metrics.record_prune_success(run, self._last_prune)
                if freed:
                    self.metrics.record_pruned(freed)

    # ---- health, status, watchdog ----------------------------------------------------------------

    def _health(self, now: float) -> None:
        assert self._watchset is not None and self._scheduler is not None
        # A root that appeared since start is locked now; one another daemon serves stops this
        # one (exit 2), as it would have at start.
        if self._coordination.lock_late_roots(self.config) is not None:
            self._exit_status = 2
            self._stop_signal = "a root served by another daemon"
        self._health_monitor.check(self._watchset, self._scheduler, self._pool)

    def _ping_watchdog(self, now: float) -> None:
        self._health_monitor.ping_watchdog(now)

    def _status_text(self) -> str:
        last = format_utc(self._last_prune.replace(microsecond=0)) if self._last_prune else "never"
        settling = self._settling.pending() + self._directories.tracker.pending()
        queued = self._runs.queued_paths()
        text = (
            f"watching {plural(len(self.config.roots), 'root')}, {plural(self._run_count, 'run')}; "
            f"{settling} settling, {queued} queued; last prune {last}"
        )
        return self._health_monitor.with_problems(self._coordination.status(text, self.metrics))

    def _send_status(self) -> None:
        self._health_monitor.send_status(self._status_text())

    # ---- reload ----------------------------------------------------------------------------------

    def _reload(self) -> None:
        notify.reloading()
        logger.info("SIGHUP: reloading %s", self.config_path)
        try:
            new = load_config(self.config_path)
            assert self._scheduler is not None and self._watchset is not None
            # Checks every schedule before changing any: on error the old jobs stay.
            self._scheduler.set_jobs(job_specs(new), self._job_callbacks())
            self._coordination.check_reload(self.config, new)
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
        self._coordination.locks.keep_only(root.path for root in new.roots)
        configure_logging(new.log, node=self._coordination.node)
        if new.metrics.listen != old.metrics.listen:
            self._metrics_server.stop()
            try:
                self._metrics_server = start_metrics_server(new.metrics.listen, self.metrics)
            except CkptdError as err:
                logger.error("metrics not served: %s", err)
                self._metrics_server = MetricsServer()
        self._watchset.set_filter(NameFilter.from_config(new))
        self._watchset.set_roots(WatchRoot.from_config(root) for root in new.roots)
        self._directories.set_config(new)
        if new.checkpoints.stable_for != old.checkpoints.stable_for:
            # Tracked paths start over under the new quiet period; the rescan finds them again.
            self._settling = self._new_settling(new)
        wanted = {root.path for root in new.roots}
        self._runs.keep_roots(wanted)
        if self._isolation is not None:
            self._isolation.set_limits(new.limits)
        self.config = new
        self._locator = RunLocator(new.roots, new.state_dir)
        self._jobs_wanted.add("rescan")  # new roots (and changed patterns) need a reconciliation
        logger.info("reloaded: %d roots", len(new.roots))
        notify.ready(self._status_text())

    @staticmethod
    def _new_settling(config: Config) -> SettlingFiles:
        return SettlingFiles(config.checkpoints.stable_for.total_seconds())
