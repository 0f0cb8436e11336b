"""Small helpers every kind of test uses: deadline polling, where a thread is, file digests.

Tests wait for a condition with ``wait_until`` (a deadline, never a bare sleep): a loaded machine
makes them slower, not wrong. ``blocked_in`` says that a thread is inside a given function (waiting
on a lock, say), which is how a test knows another thread has reached the point it must not pass.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

DEADLINE_SECONDS = 10.0  # far beyond what any wait in these tests needs on an idle machine


def wait_until(
    predicate: Callable[[], object],
    timeout: float = DEADLINE_SECONDS,
    what: str = "the condition",
    poll: float = 0.02,
) -> None:
    """Poll ``predicate`` until true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            if predicate():  # one last look: the deadline may have passed during a slow check
                return
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def blocked_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is running inside a function named ``function`` right now.

    A generator-based context manager (``pins_lock``, ``run_lock``) is on the stack only while it
    is entered or exited, not while its ``with`` block runs: ``blocked_in(t, "pins_lock")`` is true
    while ``t`` waits for that lock.
    """
    if thread.ident is None:
        return False
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex); as root, mode 000 does not stop the read."""
    return sha256_bytes(path.read_bytes())
