"""Fixtures shared across test modules.

``no_thread_leaks`` guards every module whose tests start threads (watchdog observers, APScheduler,
the worker pool, the isolation spawner, the metrics server, a test's own threads) or a daemon:
``pytestmark = pytest.mark.usefixtures("no_thread_leaks")``. ``sb2_stand_ins`` does the same for
modules whose every test needs the stable-baselines stand-in modules (tests/sb2_fixtures.py), and
``restored_root_logger`` for modules whose tests configure logging as the daemon or a command does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from tests.daemon_harness import NotifySocket
from tests.open_audit import opened
from tests.pg_harness import pg_dsn, pg_server
from tests.sb2_fixtures import make_ppo2_checkpoint, stand_ins

__all__ = [
    "legacy_bytes",
    "no_thread_leaks",
    "notify_socket",
    "opened",
    "pg_dsn",
    "pg_server",
    "restored_root_logger",
    "sb2_stand_ins",
]

# A stopped observer, scheduler or pool has been told to end; its threads take a moment to do so.
THREAD_END_SECONDS = 5.0


@pytest.fixture
def notify_socket(no_thread_leaks: None) -> Iterator[NotifySocket]:
    """A fake systemd notify socket for a daemon under test (tests/daemon_harness.py). Every test
    that starts a daemon takes it, and with it the thread-leak check (its reader thread, and the
    test's own, must be gone after the test)."""
    sock = NotifySocket()
    yield sock
    sock.close()


def _left_running(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


@pytest.fixture
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread it started running: any new thread, daemon or not (ckptd's
    workers, watchdog's emitters and observers, APScheduler's scheduler and pool, the test's own).

    Applied with ``usefixtures``, it is set up before the test's other fixtures and so checks
    after their teardown (a fixture that stops a scheduler has stopped it by then).
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_END_SECONDS
    while (left := _left_running(before)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"


@pytest.fixture
def sb2_stand_ins() -> Iterator[None]:
    """The stable-baselines stand-in modules, registered for the whole test."""
    with stand_ins():
        yield


@pytest.fixture(scope="session")
def legacy_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a PPO2-like legacy checkpoint (the same every time: seeded parameters)."""
    with stand_ins():
        return make_ppo2_checkpoint(tmp_path_factory.mktemp("legacy") / "ppo2.pkl").read_bytes()


@pytest.fixture
def restored_root_logger() -> Iterator[None]:
    """The root logger's handlers and level as they were before the test, after it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
