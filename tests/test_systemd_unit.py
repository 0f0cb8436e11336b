"""The shipped systemd unit: systemd's own verifier accepts it and scores its exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
        "ExecReload=/bin/kill -HUP $MAINPID",
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


def test_unit_sets_a_stop_timeout_and_read_write_roots_without_private_users() -> None:
    keys = {line.split("=", 1)[0] for line in unit_lines() if "=" in line}
    assert {"TimeoutStopSec", "ReadWritePaths", "RequiresMountsFor"} <= keys
    # it would hide file owners (docs/operations.md, "Running under systemd")
    assert "PrivateUsers" not in keys
