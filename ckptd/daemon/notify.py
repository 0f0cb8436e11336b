"""sd_notify(3) without libsystemd: tell systemd we are ready, reloading, stopping, alive.

The whole protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` ("@" prefix = Linux abstract namespace); the kernel attaches our credentials.
Outside systemd (variable unset) every call is a no-op. A failure to send is logged once and never
raised: losing a status line must not take the daemon down (a missed watchdog ping is what systemd
itself is there to act on).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from ckptd.textsafe import shown

logger = logging.getLogger(__name__)

# A wedged service manager must not wedge the daemon's main loop (send blocks on a full queue).
SEND_TIMEOUT_SECONDS = 2.0


class _FailureLog:
    """Remembers whether a send failure was already logged, so a broken socket logs one line, not one per ping."""

    logged = False


def _socket_address(raw: str) -> str | None:
    """``$NOTIFY_SOCKET`` as a connectable address, or None when it is a form we do not speak."""
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None  # e.g. vsock: addresses (systemd >= 253), not used by the units we ship


def notify(*lines: str) -> bool:
    """Send ``lines`` as one notification; return True when it was sent, False when off or failed."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _socket_address(raw)
    try:
        if address is None:
            raise OSError(f"unsupported NOTIFY_SOCKET address {raw!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as err:
        if not _FailureLog.logged:
            _FailureLog.logged = True
            logger.warning("sd_notify to %s failed (further failures not logged): %s", raw, err)
        return False
    return True


def _status_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment; systemd shows STATUS on one line anyway,
    # in `systemctl status` on a terminal: control characters are escaped (ckptd.textsafe).
    return "STATUS=" + shown(" ".join(text.splitlines()))


def ready(status: str | None = None) -> bool:
    """Startup (or a reload) is complete: config loaded, observers and scheduler running."""
    return notify("READY=1", *([_status_line(status)] if status else []))


def reloading() -> bool:
    """A reload has begun; must be followed by ``ready()`` when the new config is in force."""
    return notify("RELOADING=1")


def stopping() -> bool:
    """Shutdown has begun."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Free-form one-line status shown by ``systemctl status``."""
    return notify(_status_line(text))


def watchdog_ping() -> bool:
    """Keep-alive for ``WatchdogSec=``; send it only from the main loop, and only while healthy."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before systemd gives up on the current start/stop/reload."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


class StartKeepalive:
    """While a long start-up step runs, keep extending systemd's start timeout.

    ``tick()`` is cheap to call often (once per scanned run); it sends ``EXTEND_TIMEOUT_USEC``
    at most every ``every`` seconds, asking for ``extend_by`` more each time, so a large tree on
    slow storage is not killed by ``TimeoutStartSec=`` while a hung scan still is, ``extend_by``
    after its last progress.
    """

    def __init__(
        self,
        *,
        every: float = 10.0,
        extend_by: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._every = every
        self._extend_by = extend_by
        self._clock = clock
        self._last = clock()

    def tick(self) -> None:
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            extend_timeout(self._extend_by)


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec=``), or None when no watchdog applies.

    None also when ``WATCHDOG_PID`` names another process (the variable leaked to a child).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        if pid and int(pid) != os.getpid():
            return None
        microseconds = int(usec)
    except ValueError:
        logger.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, pid)
        return None
    if microseconds <= 0:
        return None
    return microseconds / 1_000_000 / 2
