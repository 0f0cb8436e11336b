"""A converted checkpoint keeps what its users depend on: time, access and bytes (docs/conversion.md).

Real commands throughout: ``ckptd convert``, ``ckptd prune --dry-run --json`` and ``ckptd
manifest`` as subprocesses (under the umask the test sets), and the real daemon (``ckptd run``)
with hard timeouts. A run imported with its history (one checkpoint a day for ten days, mtimes
set back) must get the same retention decisions after conversion as before it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.convert.conversion import convert_file
from tests.daemon_harness import (
    NOBODY,
    REPO,
    DaemonProcess,
    NotifySocket,
    UnprivilegedUser,
    daemon_config,
    unprivileged_user,
    wait_until,
    write_config,
)
from tests.helpers import sha256_file

pytestmark = pytest.mark.timeout(120)

SB2_ERA = Path(__file__).parent / "data" / "sb2-era"
DAY_NS = 86_400 * 10**9
# The newest checkpoint of an imported run: the last full hour (never in the future); tests add
# odd nanoseconds so that precision is checked.
NEWEST = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)


def ckptd(
    *args: str, umask: int = 0o022, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``ckptd ARGS`` as a subprocess under ``umask``, with a hard timeout."""
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        umask=umask,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ckptd {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result


def set_times(path: Path, atime_ns: int, mtime_ns: int) -> None:
    os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)


def legacy_at(path: Path, mtime: datetime, *, extra_ns: int = 0, kind: str = "dqn") -> Path:
    shutil.copyfile(SB2_ERA / f"{kind}.pkl", path)
    mtime_ns = int(mtime.timestamp()) * 10**9 + extra_ns
    set_times(path, mtime_ns + 3_600 * 10**9 + 17, mtime_ns)  # read an hour after it was written
    return path


def history_run(root: Path, days: int = 10) -> Path:
    """One checkpoint a day, the newest today: an imported run with its history."""
    run = root / "imported"
    run.mkdir(parents=True)
    for day in range(days):
        when = NEWEST - timedelta(days=days - 1 - day)
        legacy_at(run / f"rl_model_{(day + 1) * 1000}_steps.pkl", when, extra_ns=123_456_789)
    return run


def policy_config(tmp_path: Path, root: Path) -> Path:
    return write_config(
        tmp_path / "keep-daily.yaml",
        {
            "version": 1,
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "policies": {"default": {"keep_daily": 7, "timezone": "UTC"}},
            "delete": {"max_fraction": 1.0},
        },
    )


def decisions_by_step(config: Path) -> dict[int, tuple[str, tuple[str, ...]]]:
    """{step: (action, reasons)} of the run's checkpoints in a dry-run prune."""
    document = json.loads(ckptd("prune", "-c", str(config), "--dry-run", "--json").stdout)
    (run,) = document["runs"]
    result = {}
    for decision in run["decisions"]:
        name = Path(decision["path"]).name
        if decision["path"].startswith(".ckptd/"):
            continue
        step = int(name.split("_")[2])
        result[step] = (decision["action"], tuple(decision["reasons"]))
    return result


# ---- time -------------------------------------------------------------------------------------------


def test_zip_carries_the_originals_times_to_the_nanosecond(tmp_path: Path) -> None:
    source = legacy_at(tmp_path / "m.pkl", NEWEST - timedelta(days=10), extra_ns=987_654_321)
    before = os.stat(source)
    outcome = convert_file(source)
    after = os.stat(outcome.output)
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)
    # Reading the original to convert it did not make it look recently used either.
    kept = os.stat(source)
    assert (kept.st_mtime_ns, kept.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)


def test_member_timestamps_are_the_originals_mtime_in_utc(tmp_path: Path) -> None:
    when = datetime(2019, 7, 31, 23, 30, 41, tzinfo=UTC)
    source = legacy_at(tmp_path / "m.pkl", when)
    outcome = convert_file(source)
    with zipfile.ZipFile(outcome.output) as archive:
        stamps = {info.filename: info.date_time for info in archive.infolist()}
    # DOS time has 2-second resolution: 41 s is stored as 40 s.
    assert stamps == dict.fromkeys(
        ["data", "parameters", "parameter_list"], (2019, 7, 31, 23, 30, 40)
    )


@pytest.mark.parametrize(
    ("moment", "stored"),
    [
        (datetime(1970, 1, 2, tzinfo=UTC), (1980, 1, 1, 0, 0, 0)),
        (datetime(1979, 12, 31, 23, 59, 59, tzinfo=UTC), (1980, 1, 1, 0, 0, 0)),
        (datetime(1980, 1, 1, 0, 0, 1, tzinfo=UTC), (1980, 1, 1, 0, 0, 0)),
        (datetime(2026, 3, 29, 1, 30, 3, tzinfo=UTC), (2026, 3, 29, 1, 30, 2)),
        (datetime(2107, 12, 31, 23, 59, 59, tzinfo=UTC), (2107, 12, 31, 23, 59, 58)),
        (datetime(2200, 6, 1, tzinfo=UTC), (2107, 12, 31, 23, 59, 58)),
    ],
)
def test_zip_date_time_is_utc_and_clamped_to_the_zip_range(
    moment: datetime, stored: tuple[int, ...]
) -> None:
    from ckptd.formats.sb2zip import zip_date_time

    assert zip_date_time(int(moment.timestamp()) * 10**9 + 999_999_999) == stored


def test_converting_the_same_file_twice_gives_the_same_bytes_in_any_time_zone(
    tmp_path: Path,
) -> None:
    source = legacy_at(tmp_path / "m.pkl", NEWEST - timedelta(days=3), extra_ns=5)
    digests = []
    for zone, output in (("UTC", "a.zip"), ("Asia/Tokyo", "b.zip"), ("America/Denver", "c.zip")):
        ckptd("convert", str(source), "-o", str(tmp_path / output), env={"TZ": zone})
        digests.append(sha256_file(tmp_path / output))
        time.sleep(1.1)  # another second of the day: the output must not depend on it (under test)
    assert digests[0] == digests[1] == digests[2]


def test_imported_history_keeps_its_retention_decisions_through_cli_conversion(
    tmp_path: Path,
) -> None:
    root = tmp_path / "runs"
    run = history_run(root)
    config = policy_config(tmp_path, root)
    before = decisions_by_step(config)
    assert [action for action, _ in before.values()].count("keep") == 7  # keep_daily 7

    ckptd("convert", str(root), "--original", "archive")

    assert sorted(path.name for path in run.glob("*.zip")) == sorted(
        f"rl_model_{step}_steps.zip" for step in before
    )
    assert decisions_by_step(config) == before
    # status sees the run's real age: its newest checkpoint is an hour old, not "now".
    ckptd("manifest", "-c", str(config))
    (status,) = json.loads(ckptd("status", "-c", str(config), "--json").stdout)["runs"]
    assert status["newest"]["path"] == "rl_model_10000_steps.zip"
    assert status["newest"]["mtime"].startswith(NEWEST.strftime("%Y-%m-%dT%H:00:00.123456"))


@pytest.mark.slow
def test_imported_history_keeps_its_retention_decisions_through_the_daemon(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    run = history_run(root)
    config = policy_config(tmp_path, root)
    before = decisions_by_step(config)
    originals = {path.name: os.stat(path) for path in run.glob("*.pkl")}
    config_path = write_config(tmp_path / "daemon.yaml", daemon_config(root, keep_last=100))
    daemon = DaemonProcess(config_path, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready(timeout=30)
        wait_until(
            lambda: len(list(run.glob("*.zip"))) == 10 and not list(run.glob("*.pkl")),
            60,
            f"ten conversions:\n{daemon.log_text()}",
        )
        assert daemon.stop(timeout=10) == 0
    finally:
        daemon.kill()
    for name, st in originals.items():
        zipped = os.stat(run / name.replace(".pkl", ".zip"))
        archived = os.stat(run / ".ckptd" / "legacy" / name)
        assert zipped.st_mtime_ns == st.st_mtime_ns
        assert (archived.st_mtime_ns, stat.S_IMODE(archived.st_mode)) == (
            st.st_mtime_ns,
            stat.S_IMODE(st.st_mode),
        )
    manifest = json.loads((run / "ckptd-manifest.json").read_text())
    for entry in manifest["checkpoints"]:
        if entry["path"].endswith(".zip"):
            original = originals[entry["path"].replace(".zip", ".pkl")]
            assert entry["mtime_ns"] == original.st_mtime_ns  # the checkpoint's own time
    assert decisions_by_step(config) == before


# ---- access -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o077, 0o022])
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_no_output_is_wider_than_its_input(tmp_path: Path, umask: int, mode: int) -> None:
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    source = legacy_at(run / "rl_model_1000_steps.pkl", NEWEST)
    os.chmod(source, mode)
    ckptd("convert", str(run), "--original", "archive", umask=umask)
    assert stat.S_IMODE(os.stat(run / "rl_model_1000_steps.zip").st_mode) == mode
    assert stat.S_IMODE(os.stat(run / ".ckptd" / "legacy" / source.name).st_mode) == mode
    for directory in (run / ".ckptd", run / ".ckptd" / "legacy"):
        assert stat.S_IMODE(os.stat(directory).st_mode) & umask == 0


@pytest.mark.parametrize("umask", [0o077, 0o027, 0o022])
def test_files_ckptd_creates_for_itself_follow_the_umask(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "runs"
    run = history_run(root, days=2)
    config = policy_config(tmp_path, root)
    ckptd("manifest", "-c", str(config), umask=umask)
    ckptd("pin", str(run / "rl_model_1000_steps.pkl"), "--reason", "figure 3", umask=umask)
    expected = 0o666 & ~umask
    for created in (
        run / "ckptd-manifest.json",
        root / "ckptd-index.json",
        run / ".ckptd" / "pins.json",
    ):
        assert stat.S_IMODE(os.stat(created).st_mode) == expected, created


@pytest.fixture
def nobody_tree() -> Iterator[Path]:
    """A fresh directory other users can traverse (pytest's tmp_path parents may be 0700)."""
    base = Path(tempfile.mkdtemp(prefix="ckptd-owner-"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="carrying another user's ownership needs root")
def test_as_root_the_zip_and_the_archived_original_keep_owner_group_mode_and_times(
    tmp_path: Path,
) -> None:
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    source = legacy_at(run / "rl_model_1000_steps.pkl", NEWEST - timedelta(days=4))
    os.chown(source, NOBODY, NOBODY)
    os.chmod(source, 0o640)
    set_times(source, int(NEWEST.timestamp()) * 10**9 + 11, os.stat(source).st_mtime_ns)
    before = os.stat(source)
    ckptd("convert", str(run), "--original", "archive", umask=0o022)
    for path in (run / "rl_model_1000_steps.zip", run / ".ckptd" / "legacy" / source.name):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640), path
        assert (st.st_atime_ns, st.st_mtime_ns) == (before.st_atime_ns, before.st_mtime_ns), path


@pytest.mark.slow
def test_unprivileged_conversion_never_hands_group_access_to_another_group(
    nobody_tree: Path,
) -> None:
    """As nobody (no supplementary groups), a 0640 checkpoint of group root cannot keep its group:
    the zip is nobody's group, so its group bits are cleared instead of granting that group."""
    found = unprivileged_user()
    if isinstance(found, str):
        pytest.skip(found)
    user: UnprivilegedUser = found
    run = nobody_tree / "r"
    run.mkdir()
    os.chown(run, NOBODY, NOBODY)
    own_group = legacy_at(run / "rl_model_1000_steps.pkl", NEWEST)
    other_group = legacy_at(run / "rl_model_2000_steps.pkl", NEWEST)
    os.chown(own_group, NOBODY, NOBODY)
    os.chown(other_group, NOBODY, 0)
    for path in (own_group, other_group):
        os.chmod(path, 0o640)
    result = user.run(["convert", str(run)])
    assert result.returncode == 0, result.stderr
    first = os.stat(run / "rl_model_1000_steps.zip")
    second = os.stat(run / "rl_model_2000_steps.zip")
    assert (first.st_gid, stat.S_IMODE(first.st_mode)) == (NOBODY, 0o640)
    assert (second.st_gid, stat.S_IMODE(second.st_mode)) == (NOBODY, 0o600)
