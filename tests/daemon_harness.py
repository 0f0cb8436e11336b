"""Helpers for tests that run the real daemon (``python -m ckptd run``) as a subprocess.

``NotifySocket`` plays systemd: an abstract-namespace datagram socket whose messages are collected
on demand. ``DaemonProcess`` starts the daemon with ``NOTIFY_SOCKET`` pointing at it, keeps its
stderr in a file, and offers waits with hard deadlines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
) -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    if predicate():
        return
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class NotifySocket:
    """A fake service manager: collects sd_notify datagrams sent to ``address``."""

    def __init__(self) -> None:
        name = f"ckptd-test-{uuid.uuid4().hex}"
        self.address = "@" + name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return self.messages

    def lines(self) -> list[str]:
        return [line for message in self.collect() for line in message.split("\n")]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def close(self) -> None:
        self.sock.close()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class DaemonProcess:
    """``python -m ckptd run -c CONFIG`` with a notify socket and a stderr log file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        notify: NotifySocket,
        *,
        watchdog_usec: int | None = None,
    ) -> None:
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = notify.address
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("WATCHDOG_PID", None)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        else:
            env.pop("WATCHDOG_USEC", None)
        self.log = log
        self.notify = notify
        self._ready_before = notify.count("READY=1")  # earlier daemons on the same socket
        self._log_handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckptd", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log_handle,
            env=env,
            cwd=REPO,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0, count: int = 1) -> None:
        """Wait until this process has sent READY=1 ``count`` times (start, then each reload)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            return self.notify.count("READY=1") - self._ready_before >= count

        wait_until(ready, timeout, "READY=1")

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(
            lambda: text in self.log_text(), timeout, f"log line {text!r}:\n{self.log_text()}"
        )

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM and wait; raises (after killing it) if it does not exit within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log_handle.close()
