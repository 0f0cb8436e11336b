"""sd_notify against a real AF_UNIX datagram socket playing the service manager."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckptd.config.load import parse_config
from ckptd.daemon import notify
from ckptd.daemon.jobs import scan_roots


@pytest.fixture(autouse=True)
def _fresh_failure_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify._FailureLog, "logged", False)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def _bound_socket(address: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(2.0)
    return server


@pytest.fixture(params=["path", "abstract"])
def manager(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[socket.socket]:
    """A fake systemd: a bound datagram socket, with NOTIFY_SOCKET pointing at it."""
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        env_value = address
    else:
        name = f"ckptd-test-{uuid.uuid4().hex}"
        address = "\0" + name
        env_value = "@" + name
    server = _bound_socket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", env_value)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda: notify.ready(), b"READY=1"),
        (lambda: notify.ready("watching 2 roots"), b"READY=1\nSTATUS=watching 2 roots"),
        (lambda: notify.status("pruning\nrun-3"), b"STATUS=pruning run-3"),
        (lambda: notify.status("run\x1b]0;x\x07\r\u202e"), b"STATUS=run\\x1b]0;x\\x07 \\u202e"),
        (lambda: notify.watchdog_ping(), b"WATCHDOG=1"),
        (lambda: notify.stopping(), b"STOPPING=1"),
        (lambda: notify.reloading(), b"RELOADING=1"),
        (lambda: notify.extend_timeout(2.5), b"EXTEND_TIMEOUT_USEC=2500000"),
        (lambda: notify.notify("READY=1", "MAINPID=42"), b"READY=1\nMAINPID=42"),
    ],
)
def test_notify_message_reaches_the_manager_socket(
    manager: socket.socket, send: object, expected: bytes
) -> None:
    assert callable(send)
    assert send() is True
    assert manager.recv(4096) == expected


def test_notify_without_notify_socket_is_a_no_op() -> None:
    assert notify.ready("x") is False
    assert notify.watchdog_ping() is False


def test_notify_broken_socket_path_logs_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="ckptd.daemon.notify"):
        assert notify.ready() is False
        assert notify.watchdog_ping() is False
        assert notify.stopping() is False
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1
    assert "nobody-listens.sock" in failures[0].getMessage()


def test_notify_unsupported_address_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="ckptd.daemon.notify"):
        assert notify.ready() is False
    assert "unsupported NOTIFY_SOCKET" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 15.0),
        ("60000000", "self", 30.0),
        ("60000000", "other", None),
        ("0", None, None),
        ("sixty", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() if pid == "self" else os.getpid() + 1))
    assert notify.watchdog_interval() == expected


def test_start_keepalive_extends_the_start_timeout_at_most_every_interval(
    manager: socket.socket,
) -> None:
    now = [100.0]
    keepalive = notify.StartKeepalive(every=10.0, extend_by=60.0, clock=lambda: now[0])
    manager.settimeout(0.2)
    for moment in (101.0, 105.0, 109.9):  # progress, but not yet 10 s since the start
        now[0] = moment
        keepalive.tick()
    with pytest.raises(TimeoutError):
        manager.recv(4096)
    now[0] = 110.0
    keepalive.tick()
    assert manager.recv(4096) == b"EXTEND_TIMEOUT_USEC=60000000"
    now[0] = 115.0
    keepalive.tick()  # 5 s after the last extension: nothing
    now[0] = 120.5
    keepalive.tick()
    assert manager.recv(4096) == b"EXTEND_TIMEOUT_USEC=60000000"
    with pytest.raises(TimeoutError):
        manager.recv(4096)


def test_start_scan_reports_progress_once_per_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
    config = parse_config({"roots": [{"path": str(root), "observer": "polling"}]})
    ticks: list[None] = []
    scan = scan_roots(config, config.roots, stale_temp_age=None, on_run=lambda: ticks.append(None))
    assert (scan.runs, len(ticks), scan.found, scan.directories) == (3, 3, [], [])
