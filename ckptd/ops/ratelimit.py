"""A token bucket that paces reading, so a scrub does not starve training I/O (``scrub.max_rate``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Small enough that pacing is smooth even at a few MiB/s: the scrub reads in pieces of this size.
SCRUB_CHUNK = 1024 * 1024

Clock = Callable[[], float]
Sleeper = Callable[[float], None]


class RateLimiter:
    """A token bucket: ``acquire(n)`` returns once ``n`` bytes fit in ``rate`` bytes per second.

    The bucket holds at most ``burst`` bytes of credit and starts full. A request larger than the
    credit goes into debt and sleeps it off, so the long-run rate is exact whatever the sizes.
    ``rate=None`` never waits. Thread-safe; the clock and sleep are injectable for tests.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int = SCRUB_CHUNK,
        clock: Clock = time.monotonic,
        sleep: Sleeper = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"a rate must be positive, got {rate}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, amount: int) -> float:
        """Take ``amount`` bytes of credit, sleeping as long as needed; returns the seconds slept."""
        if self.rate is None or amount <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
