"""The daemon's health: watchers, scheduler and workers checked, systemd's watchdog and status fed.

``WATCHDOG=1`` is sent only while all are healthy. A root that does not exist (an NFS mount not
up yet) is retried and shown in ``STATUS=`` but does not stop the pings: restarting the daemon
would not bring it back.
"""

from __future__ import annotations

import logging

from ckptd.daemon import notify
from ckptd.daemon.metrics import Metrics
from ckptd.daemon.scheduling import JobScheduler
from ckptd.daemon.workers import WorkerPool
from ckptd.watch.watcher import WatchSet

logger = logging.getLogger(__name__)

HEALTH_EVERY_SECONDS = 1.0


class HealthMonitor:
    """Health state between checks, the last watchdog ping and the last status sent."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.healthy = False
        self.unhealthy_text = ""
        self._last_ping = 0.0
        self._last_status = ""
        self._observer_restarts = 0

    def check(self, watchset: WatchSet, scheduler: JobScheduler, pool: WorkerPool) -> None:
        """Heal the watchers, replace dead workers, and record what is unhealthy (logged once)."""
        unhealthy = watchset.heal()
        restarts = watchset.restart_count
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
        if not scheduler.healthy():
            problems.append("scheduler not running")
        problems.extend(pool.replace_dead())
        self.healthy = not problems
        # Like a missing root, a directory that cannot be listed is shown but stops no ping.
        notes = [f"{path}: missing" for path in missing] + watchset.notes()
        text = "; ".join(problems + notes)
        if text != self.unhealthy_text and problems:
            logger.warning("unhealthy: %s", text)
        self.unhealthy_text = text

    def ping_watchdog(self, now: float) -> None:
        interval = notify.watchdog_interval()
        if interval is None or not self.healthy:
            return
        if now - self._last_ping >= min(interval, HEALTH_EVERY_SECONDS * 5):
            self._last_ping = now
            notify.watchdog_ping()

    def with_problems(self, text: str) -> str:
        """``text`` (the daemon's status line) followed by what is unhealthy, if anything."""
        return f"{text}; {self.unhealthy_text}" if self.unhealthy_text else text

    def send_status(self, text: str) -> None:
        """Send ``STATUS=`` to systemd when it differs from the last one sent."""
        if text != self._last_status:
            self._last_status = text
            notify.status(text)
