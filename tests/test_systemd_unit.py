"""The shipped systemd unit: systemd's own verifier accepts it and scores its exposure <= 2.0."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, NotifySocket, write_config

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "ckptd.service"
SHIPPED_EXEC = "/opt/ckptd/venv/bin/ckptd"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")

needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def unit_lines() -> list[str]:
    return [
        line.strip()
        for line in UNIT.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at a binary that exists here (verify checks it)."""
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    copy = tmp_path / "ckptd.service"
    copy.write_text(text.replace(SHIPPED_EXEC, sys.executable))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
def test_unit_passes_systemd_analyze_verify(testable_unit: Path) -> None:
    result = analyze("verify", str(testable_unit))
    assert result.returncode == 0, result.stderr
    # verify still exits 0 on some warnings (e.g. unknown keys); none may mention our unit.
    assert testable_unit.name not in result.stderr, result.stderr


@needs_analyze
def test_unit_exposure_is_at_most_two(testable_unit: Path) -> None:
    result = analyze("security", "--offline=yes", "--no-pager", str(testable_unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize(
    "line",
    [
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={SHIPPED_EXEC} run -c /etc/ckptd/ckptd.yaml",
        "ExecReload=/bin/sh -c 'kill -HUP ${MAINPID}'",
        "Restart=on-failure",
        "WatchdogSec=60s",
        "KillMode=mixed",
        "User=ckptd",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX",
    ],
)
def test_unit_keeps_the_contract_lines(line: str) -> None:
    assert line in unit_lines()


def test_unit_sets_a_stop_timeout_and_no_private_users() -> None:
    keys = {line.split("=", 1)[0] for line in unit_lines() if "=" in line}
    assert "TimeoutStopSec" in keys
    # it would hide file owners (docs/operations.md, "Running under systemd")
    assert "PrivateUsers" not in keys


def test_unit_names_no_root_the_dropin_does() -> None:
    """Roots live in the config only: `ckptd config dropin` adds them (README, "Running under systemd").

    A root written in the unit too would have to be kept in sync, and one that does not exist on
    the host fails every start with 226/NAMESPACE.
    """
    keys = {line.split("=", 1)[0] for line in unit_lines() if "=" in line}
    assert not keys & {"ReadWritePaths", "RequiresMountsFor", "BindPaths"}


def test_unit_runs_nothing_beyond_the_venv_and_the_shell() -> None:
    """Minimal images lack procps (/bin/kill): every Exec*= is the venv's ckptd or /bin/sh."""
    commands = [line.split("=", 1)[1] for line in unit_lines() if line.startswith("Exec")]
    assert commands
    assert {command.split()[0] for command in commands} <= {SHIPPED_EXEC, "/bin/sh"}


def test_documentation_names_files_the_readme_installs() -> None:
    readme = (UNIT.parent.parent / "README.md").read_text()
    docs = [
        line.split("=", 1)[1].split() for line in unit_lines() if line.startswith("Documentation=")
    ]
    assert docs
    install_line = "install -m 0644 -D -t /opt/ckptd/doc README.md docs/*.md"
    assert install_line in readme
    for url in docs[0]:
        assert url.startswith("file:///opt/ckptd/doc/"), url
        name = url.rsplit("/", 1)[1]
        assert (UNIT.parent.parent / name).is_file() or (
            UNIT.parent.parent / "docs" / name
        ).is_file()


def test_exec_reload_reloads_a_real_daemon_without_a_kill_binary(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """The unit's ExecReload= line, run as systemd runs it, where no `kill` exists on PATH."""
    (command,) = [line.split("=", 1)[1] for line in unit_lines() if line.startswith("ExecReload=")]
    (tmp_path / "runs").mkdir()
    config = write_config(tmp_path / "ckptd.yaml", {"version": 1, "roots": [{"path": "runs"}]})
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready()
        pid = str(daemon.proc.pid)
        # systemd substitutes ${MAINPID} and also exports MAINPID to control processes.
        argv = shlex.split(re.sub(r"\$\{?MAINPID\}?", pid, command))
        empty_path = tmp_path / "bin"
        empty_path.mkdir()
        subprocess.run(argv, env={"PATH": str(empty_path), "MAINPID": pid}, timeout=30, check=True)
        daemon.wait_log("reloaded: 1 roots")
        daemon.wait_ready(count=2)
    finally:
        assert daemon.stop() == 0
