"""Helpers for tests that run the real daemon (``python -m ckptd run``) as a subprocess.

``NotifySocket`` plays systemd: an abstract-namespace datagram socket whose messages are collected
on demand. ``DaemonProcess`` starts the daemon with ``NOTIFY_SOCKET`` pointing at it, keeps its
stderr in a file, and offers waits with hard deadlines. ``unprivileged_user`` finds how to run
ckptd as an unprivileged user (``DaemonProcess(..., user=...)``), where permission bits apply.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534  # uid and gid of nobody/nogroup on Debian-like systems


@dataclass(frozen=True)
class UnprivilegedUser:
    """A uid/gid (no supplementary groups) and the argv prefix that runs ``ckptd`` as that user."""

    uid: int
    gid: int
    ckptd: tuple[str, ...]  # e.g. (python, "-m", "ckptd"); the ckptd arguments follow

    def popen_options(self) -> dict[str, Any]:
        """``subprocess.Popen``/``run`` keyword arguments that switch to this user before exec."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def run(
        self, args: Sequence[str], *, timeout: float = 60.0, cwd: Path = REPO
    ) -> subprocess.CompletedProcess[str]:
        """``ckptd ARGS`` as this user; output captured as text."""
        return subprocess.run(
            [*self.ckptd, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_child_env(),
            **self.popen_options(),
        )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the user cannot write __pycache__ here anyway
    env["HOME"] = "/nonexistent"  # root's home is not the user's (and usually not readable)
    return env


def _ckptd_commands() -> list[tuple[str, ...]]:
    """Ways to start ckptd, best first: this interpreter; else a system one of the same X.Y.

    A venv whose base interpreter lives under a private home (pyenv in /root, mode 0700) cannot be
    executed by another user. The system interpreter of the same minor version runs the same
    wheels (the ABI is per X.Y), so it is given this venv's site-packages (``.pth`` files
    included, for the editable install) and started with ``-S`` so that its own site-packages
    cannot shadow them.
    """
    commands: list[tuple[str, ...]] = [(sys.executable, "-m", "ckptd")]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
    if system is not None and os.path.realpath(system) != os.path.realpath(sys.executable):
        site_packages = sysconfig.get_paths()["purelib"]
        bootstrap = (
            "import runpy, site; "
            f"site.addsitedir({site_packages!r}); "
            "runpy.run_module('ckptd', run_name='__main__', alter_sys=True)"
        )
        commands.append((system, "-S", "-c", bootstrap))
    return commands


@functools.cache
def unprivileged_user(uid: int = NOBODY, gid: int = NOBODY) -> UnprivilegedUser | str:
    """How to run ckptd as ``uid``/``gid``, or why it cannot be done here (a skip reason).

    Needs root (to switch users) and an interpreter that user can execute and import ckptd with:
    each candidate is probed with ``ckptd --version`` as the user.
    """
    if os.geteuid() != 0:
        return "not root: cannot switch to an unprivileged user"
    failures = []
    for command in _ckptd_commands():
        user = UnprivilegedUser(uid, gid, command)
        try:
            probe = user.run(["--version"], timeout=60)
        except (OSError, subprocess.SubprocessError) as err:
            failures.append(f"{command[0]}: {err}")
            continue
        if probe.returncode == 0 and probe.stdout.startswith("ckptd "):
            return user
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        failures.append(f"{command[0]}: exit {probe.returncode}: {last}")
    return f"uid {uid} cannot run ckptd from this venv ({'; '.join(failures)})"


def unprivileged_user_or_skip() -> UnprivilegedUser:
    """``unprivileged_user()``, or the test skipped with the reason it cannot be had."""
    found = unprivileged_user()
    if isinstance(found, str):
        pytest.skip(found)
    return found


@contextlib.contextmanager
def traversable_tree(prefix: str) -> Iterator[Path]:
    """A fresh directory other users can traverse (pytest's tmp_path parents may be 0700),
    removed afterwards; the test is skipped when a parent closes it to them."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        closed = [p for p in base.parents if not os.stat(p).st_mode & stat.S_IXOTH]
        if closed:
            pytest.skip(f"{closed[0]} is not traversable by other users")
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base)


class NotifySocket:
    """A fake service manager: collects sd_notify datagrams sent to ``address``.

    Like systemd it reads promptly, from its own thread: the kernel queues only
    net.unix.max_dgram_qlen (often 10) datagrams, then the daemon's sd_notify would block.
    """

    def __init__(self) -> None:
        name = f"ckptd-test-{uuid.uuid4().hex}"
        self.address = "@" + name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + name)
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.wait(0.05):
            self.collect()

    def collect(self) -> list[str]:
        with self._lock:
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
        self._closing.set()
        self._reader.join(5)
        self.sock.close()


def daemon_config(
    *roots: Path,
    stable_for: str = "0s",
    keep_last: int | None = None,
    schedule: Mapping[str, str | None] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A ``ckptd run`` config: each root watched by inotify with its runs one level down, an hourly
    rescan and no prune or manifest pass unless ``schedule`` sets them. With ``keep_last``, the
    default policy keeps that many (no minimum age) and a prune may delete all the others.
    ``sections`` replace whole sections (``limits``, ``metrics``, a ``policies`` with more rules)."""
    config: dict[str, Any] = {
        "version": 1,
        "roots": [{"path": str(root), "run_depth": 1, "observer": "inotify"} for root in roots],
        "checkpoints": {"stable_for": stable_for},
        "schedule": {"prune": None, "manifest": None, "rescan": "1h", **(schedule or {})},
    }
    if keep_last is not None:
        config["policies"] = {"default": {"keep_last": keep_last, "min_age": "0s"}}
        config["delete"] = {"max_fraction": 1.0}
    config.update(sections)
    return config


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
        user: UnprivilegedUser | None = None,
    ) -> None:
        env = _child_env() if user is not None else dict(os.environ)
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
        command = user.ckptd if user is not None else (sys.executable, "-m", "ckptd")
        self.proc = subprocess.Popen(
            [*command, "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log_handle,
            env=env,
            cwd=REPO,
            **(user.popen_options() if user is not None else {}),
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


def processes_with_open(path: Path) -> set[int]:
    """The pids of the processes that have ``path`` open now (from /proc; all of them as root)."""
    pids = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:  # the process ended, or is not ours to look at
            continue
        if str(path) in links:
            pids.add(int(fd_dir.parent.name))
    return pids
