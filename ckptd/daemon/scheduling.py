"""Periodic jobs (prune, manifest, rescan, scrub) on an APScheduler 3.11 BackgroundScheduler.

Contract for job callbacks: **a job only enqueues work** (puts a command on the daemon's queue)
and returns at once. The daemon's single worker decides what to do and does it, so no job ever
races the worker, a slow prune never blocks the scheduler thread pool, and ``shutdown`` is quick.
Jobs run with ``coalesce=True`` and ``max_instances=1``: a late or overlapping run collapses into
one. Errors and missed runs are logged one line each by a listener; the scheduler keeps running.

Cron expressions are standard five-field crontab, evaluated in ``timezone`` (UTC by default, never
the host's local zone). Two crontab rules that APScheduler 3.x gets wrong are fixed here: weekday
numbers (crontab 0 = Sunday, APScheduler 0 = Monday, agronholm/apscheduler#286), and "day of month
OR day of week" when both are restricted (APScheduler ANDs them).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING, STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ckptd.config.cron import cron_trigger
from ckptd.config.model import ScheduleSpec
from ckptd.errors import ConfigError, ConfigIssue

logger = logging.getLogger(__name__)

JobCallback = Callable[[], None]

MIN_GRACE_SECONDS = 1  # APScheduler wants a positive whole number of seconds


def _grace_seconds(trigger: BaseTrigger, interval: timedelta | None) -> int:
    """About one period: a run later than that is dropped, because the next one is due anyway."""
    if interval is not None:
        return max(MIN_GRACE_SECONDS, math.ceil(interval.total_seconds()))
    now = datetime.now(UTC)
    first: datetime | None = trigger.get_next_fire_time(None, now)
    second: datetime | None = (
        trigger.get_next_fire_time(first, first + timedelta(seconds=1)) if first else None
    )
    if first is None or second is None:
        return MIN_GRACE_SECONDS
    return max(MIN_GRACE_SECONDS, math.ceil((second - first).total_seconds()))


@dataclass(frozen=True)
class _PlannedJob:
    spec: ScheduleSpec
    callback: JobCallback
    trigger: BaseTrigger
    grace: int


class JobScheduler:
    """Named periodic jobs on a background thread; reconfigurable at runtime (SIGHUP)."""

    def __init__(self, *, timezone: str = "UTC", max_workers: int = 2) -> None:
        self.timezone = timezone
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers)},
            timezone=timezone,
        )
        self._scheduler.add_listener(
            self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
        )
        self._lock = threading.Lock()
        self._planned: dict[str, _PlannedJob] = {}
        self.problems: Counter[str] = Counter()  # "error:prune", "missed:scrub", ... since start

    def _trigger_for(self, name: str, spec: ScheduleSpec) -> tuple[BaseTrigger, int] | ConfigIssue:
        where = f"schedule.{name}"
        if spec.interval is not None:
            if spec.interval <= timedelta(0):
                return ConfigIssue(where, f"interval must be positive (got {spec.interval})")
            trigger: BaseTrigger = IntervalTrigger(
                seconds=spec.interval.total_seconds(), timezone=self.timezone
            )
            return trigger, _grace_seconds(trigger, spec.interval)
        if spec.cron is not None:
            try:
                trigger = cron_trigger(spec.cron, self.timezone)
            except ValueError as err:
                return ConfigIssue(where, f"invalid cron expression {spec.cron!r}: {err}")
            return trigger, _grace_seconds(trigger, None)
        return ConfigIssue(where, "needs an interval or a cron expression")

    def set_jobs(
        self,
        specs: Mapping[str, ScheduleSpec | None],
        callbacks: Mapping[str, JobCallback],
    ) -> None:
        """Make the scheduled jobs exactly ``specs``: add, replace changed, remove None or absent ones.

        All specs are checked before anything changes: on a ConfigError the jobs in force stay
        as they were. A job whose spec and callback are unchanged keeps its timing (a reload
        does not postpone it). Works before and after ``start()``.
        """
        issues: list[ConfigIssue] = []
        planned: dict[str, _PlannedJob] = {}
        for name, spec in specs.items():
            if spec is None:
                continue
            if name not in callbacks:
                issues.append(ConfigIssue(f"schedule.{name}", "no job of that name"))
                continue
            result = self._trigger_for(name, spec)
            if isinstance(result, ConfigIssue):
                issues.append(result)
            else:
                trigger, grace = result
                planned[name] = _PlannedJob(spec, callbacks[name], trigger, grace)
        if issues:
            raise ConfigError(None, issues)
        with self._lock:
            for name in set(self._planned) - set(planned):
                self._scheduler.remove_job(name)
                logger.info("unscheduled job %s", name)
            for name, job in planned.items():
                old = self._planned.get(name)
                if old is not None and old.spec == job.spec and old.callback == job.callback:
                    planned[name] = old
                    continue
                self._scheduler.add_job(
                    job.callback,
                    job.trigger,
                    id=name,
                    name=name,
                    coalesce=True,
                    max_instances=1,
                    misfire_grace_time=job.grace,
                    replace_existing=True,
                )
                logger.info("scheduled job %s: %s", name, job.spec)
            self._planned = planned

    def job_names(self) -> list[str]:
        """Names of the jobs in force, sorted."""
        with self._lock:
            return sorted(self._planned)

    def next_run(self, name: str) -> datetime | None:
        """When ``name`` runs next (None if unknown or the scheduler is not started)."""
        job = self._scheduler.get_job(name)
        next_time: datetime | None = getattr(job, "next_run_time", None)
        return next_time

    def start(self) -> None:
        """Start the scheduler thread (jobs set before start run from then on)."""
        self._scheduler.start()

    def shutdown(self, wait: bool = True) -> None:
        """Stop; with ``wait`` block until running jobs return (they only enqueue, so briefly)."""
        if self._scheduler.state != STATE_STOPPED:  # shutting down twice raises
            self._scheduler.shutdown(wait=wait)

    def healthy(self) -> bool:
        """True while the scheduler is running and its thread is alive (feeds the systemd watchdog)."""
        thread = getattr(self._scheduler, "_thread", None)  # private, but the only liveness signal
        return bool(
            self._scheduler.state == STATE_RUNNING
            and isinstance(thread, threading.Thread)
            and thread.is_alive()
        )

    def _on_job_event(self, event: JobEvent) -> None:
        # Runs on a scheduler thread: log one line, never raise.
        try:
            if event.code == EVENT_JOB_ERROR and isinstance(event, JobExecutionEvent):
                self.problems[f"error:{event.job_id}"] += 1
                logger.error(
                    "scheduled job %s failed: %s: %s",
                    event.job_id,
                    type(event.exception).__name__,
                    event.exception,
                )
            elif event.code == EVENT_JOB_MISSED:
                self.problems[f"missed:{event.job_id}"] += 1
                logger.warning(
                    "scheduled job %s missed its run time; the next run will catch up", event.job_id
                )
            elif event.code == EVENT_JOB_MAX_INSTANCES:
                self.problems[f"overlap:{event.job_id}"] += 1
                logger.warning(
                    "scheduled job %s skipped: its previous run is still going", event.job_id
                )
        except Exception:  # a listener exception would be swallowed by APScheduler anyway
            logger.exception("job event listener failed")
