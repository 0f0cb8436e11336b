"""JobScheduler on a real BackgroundScheduler with sub-second intervals; cron translation tables."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ckptd.config.cron import cron_trigger, crontab_weekdays
from ckptd.config.model import ScheduleSpec
from ckptd.daemon.scheduling import JobScheduler
from ckptd.errors import ConfigError
from tests.helpers import DEADLINE_SECONDS, wait_until

pytestmark = pytest.mark.usefixtures("no_thread_leaks")


def every(seconds: float) -> ScheduleSpec:
    return ScheduleSpec(interval=timedelta(seconds=seconds))


class Counter:
    """A job body that counts its runs (and how many overlap); while held, a run waits in the job
    until ``release()`` (so a test decides how long a run lasts, instead of guessing a duration)."""

    def __init__(self) -> None:
        self.runs = 0
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def __call__(self) -> None:
        with self._lock:
            self.runs += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        # Bounded: a test that fails while holding must not leave the pool's thread behind.
        self._open.wait(DEADLINE_SECONDS)
        with self._lock:
            self.running -= 1


@pytest.fixture
def scheduler() -> Iterator[JobScheduler]:
    sched = JobScheduler(max_workers=3)
    try:
        yield sched
    finally:
        sched.shutdown(wait=True)


def test_interval_job_runs_repeatedly(scheduler: JobScheduler) -> None:
    tick = Counter()
    scheduler.set_jobs({"manifest": every(0.05)}, {"manifest": tick})
    scheduler.start()
    assert scheduler.healthy()
    wait_until(lambda: tick.runs >= 3, what="three runs")


def test_slow_job_never_overlaps_itself_and_overlaps_are_logged(
    scheduler: JobScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    slow = Counter()
    slow.hold()  # the first run lasts until the scheduler has tried to start it again
    scheduler.set_jobs({"prune": every(0.05)}, {"prune": slow})
    with caplog.at_level(logging.WARNING, logger="ckptd.daemon.scheduling"):
        scheduler.start()
        wait_until(lambda: scheduler.problems["overlap:prune"] >= 1, what="an overlap")
        assert (slow.runs, slow.running) == (1, 1)
        slow.release()
        wait_until(lambda: slow.runs >= 2, what="the run after the slow one")
    assert slow.max_running == 1
    assert scheduler.problems["overlap:prune"] >= 1
    assert "scheduled job prune skipped: its previous run is still going" in caplog.text


def test_missed_runs_are_coalesced_into_one(scheduler: JobScheduler) -> None:
    tick = Counter()
    scheduler.set_jobs({"manifest": every(0.05)}, {"manifest": tick})
    # Started paused: stands in for a stalled process. Letting ~10 runs fall due is what is under
    # test, so this sleep stays.
    scheduler._scheduler.start(paused=True)
    time.sleep(0.5)
    tick.hold()
    scheduler._scheduler.resume()
    wait_until(lambda: tick.running == 1, what="the catch-up run")
    scheduler._scheduler.pause()  # no regular run from now on (one would be skipped anyway)
    tick.release()
    scheduler.shutdown(wait=True)  # every run submitted so far has returned
    assert tick.runs == 1  # one coalesced catch-up, not one run per missed time


def test_failing_job_is_logged_in_one_line_and_the_scheduler_keeps_going(
    scheduler: JobScheduler, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("kaput")

    healthy_job = Counter()
    scheduler.set_jobs(
        {"scrub": every(0.05), "manifest": every(0.05)}, {"scrub": boom, "manifest": healthy_job}
    )
    with caplog.at_level(logging.ERROR, logger="ckptd.daemon.scheduling"):
        scheduler.start()
        wait_until(
            lambda: scheduler.problems["error:scrub"] >= 2 and healthy_job.runs >= 2,
            what="two failures and two healthy runs",
        )
    ours = [r.getMessage() for r in caplog.records if r.name == "ckptd.daemon.scheduling"]
    assert "scheduled job scrub failed: RuntimeError: kaput" in ours
    assert all("\n" not in message for message in ours)
    assert scheduler.healthy()


def test_reconfiguring_replaces_a_changed_job(scheduler: JobScheduler) -> None:
    tick = Counter()
    scheduler.set_jobs({"prune": every(3600)}, {"prune": tick})
    scheduler.start()
    first = scheduler.next_run("prune")
    assert first is not None and first - datetime.now(UTC) > timedelta(minutes=59)
    assert tick.runs == 0
    scheduler.set_jobs({"prune": every(0.05)}, {"prune": tick})
    wait_until(lambda: tick.runs >= 2, what="runs at the new interval")


def test_reconfiguring_with_the_same_spec_keeps_the_next_run_time(scheduler: JobScheduler) -> None:
    tick = Counter()
    scheduler.start()
    scheduler.set_jobs({"prune": every(3600)}, {"prune": tick})
    first = scheduler.next_run("prune")
    # Time must pass for a re-added job to get a later next run time: the passing is under test.
    time.sleep(0.05)
    scheduler.set_jobs({"prune": every(3600)}, {"prune": tick})
    assert first is not None
    assert scheduler.next_run("prune") == first


def test_a_job_whose_spec_becomes_none_or_disappears_is_removed(scheduler: JobScheduler) -> None:
    manifest, rescan = Counter(), Counter()
    callbacks = {"manifest": manifest, "rescan": rescan, "scrub": Counter()}
    scheduler.set_jobs(
        {"manifest": every(0.05), "rescan": every(0.05), "scrub": every(9)}, callbacks
    )
    scheduler.start()
    wait_until(lambda: manifest.runs >= 1 and rescan.runs >= 1, what="both jobs")
    scheduler.set_jobs({"manifest": None, "rescan": every(0.05)}, callbacks)
    assert scheduler.job_names() == ["rescan"]
    runs_after_removal = manifest.runs
    wait_until(lambda: rescan.runs >= runs_after_removal + 3, what="three more rescans")
    assert manifest.runs <= runs_after_removal + 1  # at most one run already in flight
    assert scheduler.next_run("manifest") is None


def test_invalid_spec_leaves_the_jobs_in_force_untouched(scheduler: JobScheduler) -> None:
    callbacks = {"prune": Counter(), "scrub": Counter()}
    scheduler.set_jobs({"prune": every(3600)}, callbacks)
    bad = {"prune": every(60), "scrub": ScheduleSpec(cron="61 * * * *")}
    with pytest.raises(
        ConfigError, match=r"^schedule\.scrub: invalid cron expression '61 \* \* \* \*': "
    ):
        scheduler.set_jobs(bad, callbacks)
    with pytest.raises(ConfigError, match=r"^schedule\.bogus: no job of that name$"):
        scheduler.set_jobs({"bogus": every(1)}, callbacks)
    assert scheduler.job_names() == ["prune"]
    assert scheduler._planned["prune"].spec == every(3600)


def test_cron_job_is_scheduled_at_its_next_cron_time(scheduler: JobScheduler) -> None:
    scheduler.set_jobs({"prune": ScheduleSpec(cron="*/15 * * * *")}, {"prune": Counter()})
    scheduler.start()
    next_run = scheduler.next_run("prune")
    assert next_run is not None
    assert next_run.minute % 15 == 0 and next_run.second == 0
    assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(minutes=15)


def test_shutdown_is_idempotent_and_makes_it_unhealthy() -> None:
    sched = JobScheduler()
    sched.start()
    sched.shutdown(wait=True)
    sched.shutdown(wait=True)
    assert not sched.healthy()


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1", "mon"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0-2", "mon,tue,sun"),
        ("5-7", "fri,sat,sun"),
        ("*/2", "tue,thu,sat,sun"),
        ("1/3", "mon,thu"),
        ("sat,sun", "sat,sun"),
        ("MON-wed", "mon,tue,wed"),
        ("0,3", "wed,sun"),
    ],
)
def test_crontab_weekdays_use_crontab_numbering(field: str, expected: str) -> None:
    assert crontab_weekdays(field) == expected


@pytest.mark.parametrize("field", ["8", "5-1", "*/0", "funday", ""])
def test_crontab_weekdays_rejects_malformed_fields(field: str) -> None:
    with pytest.raises(ValueError, match="day of week"):
        crontab_weekdays(field)


def fire_times(expression: str, start: datetime, count: int) -> list[datetime]:
    trigger = cron_trigger(expression, "UTC")
    times: list[datetime] = []
    previous: datetime | None = None
    now = start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        times.append(nxt)
        previous, now = nxt, nxt + timedelta(seconds=1)
    return times


WEDNESDAY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("0 3 * * 0", [(11, 29, 3), (12, 6, 3)]),  # Sunday, not Monday (apscheduler#286)
        ("30 2 * * 1-5", [(11, 26, 2), (11, 27, 2)]),
        (
            "0 0 13 * 5",
            [(11, 27, 0), (12, 4, 0), (12, 11, 0), (12, 13, 0), (12, 18, 0)],
        ),  # 13th OR Friday
        ("0 0 1 * *", [(12, 1, 0), (1, 1, 0)]),
    ],
)
def test_cron_expressions_fire_when_crontab_would(
    expression: str, expected: list[tuple[int, int, int]]
) -> None:
    times = fire_times(expression, WEDNESDAY, len(expected))
    assert [(t.month, t.day, t.hour) for t in times] == expected


@pytest.mark.parametrize("expression", ["* * * *", "0 25 * * *", "0 0 * * 9"])
def test_cron_trigger_rejects_bad_expressions(expression: str) -> None:
    with pytest.raises(ValueError):
        cron_trigger(expression)
