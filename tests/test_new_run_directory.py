"""A brand-new run directory's first checkpoint: closed before its directory was watched, it is
recorded after ``stable_for`` of quiet, not four times that (docs/architecture.md, "Watching")."""

from __future__ import annotations

import json
import mmap
import os
import time
from pathlib import Path

import pytest

from ckptd.fs.files import FileIdentity, FoundFile, open_for_writing
from ckptd.watch.settling import SettlingFiles
from tests.daemon_harness import DaemonProcess, NotifySocket, wait_until, write_config
from tests.sb2zip_helpers import make_sb3_zip

STABLE_FOR = 2.0


def test_open_for_writing_tells_an_open_writer_from_a_closed_file(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with path.open("wb") as handle:
        handle.write(b"x" * 4096)
        handle.flush()
        assert open_for_writing(path) is True
        with path.open("rb"):  # readers do not count
            assert open_for_writing(path) is True
    assert open_for_writing(path) is False
    with path.open("rb"):
        assert open_for_writing(path) is False


def test_a_writable_mapping_counts_as_open_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    path.write_bytes(b"\0" * mmap.PAGESIZE)
    fd = os.open(path, os.O_RDWR)
    mapping = mmap.mmap(fd, mmap.PAGESIZE)
    os.close(fd)  # the writable shared mapping keeps the file open for writing
    try:
        assert open_for_writing(path) is True
    finally:
        mapping.close()
    assert open_for_writing(path) is False


def test_open_for_writing_cannot_tell_for_links_fifos_directories_and_missing_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "real.zip").write_bytes(b"x")
    (tmp_path / "link.zip").symlink_to(tmp_path / "real.zip")
    os.mkfifo(tmp_path / "fifo.zip")
    (tmp_path / "dir.zip").mkdir()
    for name in ("link.zip", "fifo.zip", "dir.zip", "missing.zip"):
        assert open_for_writing(tmp_path / name) is None, name


def _found(path: Path) -> FoundFile:
    return FoundFile(path, FileIdentity.of(os.lstat(path)))


def test_a_closed_file_found_in_a_new_directory_needs_only_stable_for(tmp_path: Path) -> None:
    path = tmp_path / "run" / "model.zip"
    path.parent.mkdir()
    path.write_bytes(b"x" * 100)
    settling = SettlingFiles(STABLE_FOR)
    settling.observe_in_new_directory(tmp_path, _found(path), 0.0, closed=False, expect_close=True)
    for path_due in settling.due(STABLE_FOR):
        settling.restat(path_due, STABLE_FOR)
    assert settling.ready(STABLE_FOR) == [path]


def test_a_file_still_open_in_a_new_directory_waits_for_its_close(tmp_path: Path) -> None:
    path = tmp_path / "run" / "model.zip"
    path.parent.mkdir()
    with path.open("wb") as handle:
        handle.write(b"x" * 100)
        handle.flush()
        settling = SettlingFiles(STABLE_FOR)
        settling.observe_in_new_directory(
            tmp_path, _found(path), 0.0, closed=False, expect_close=True
        )
        for path_due in settling.due(STABLE_FOR):
            settling.restat(path_due, STABLE_FOR)
        assert settling.ready(STABLE_FOR) == []  # its close event is still to come
    for now in (4 * STABLE_FOR - 0.1, 4 * STABLE_FOR):
        for path_due in settling.due(now):
            settling.restat(path_due, now)
    assert settling.ready(4 * STABLE_FOR) == [path]  # or the long quiet period, as before


def _recorded(run: Path) -> set[str]:
    try:
        data = json.loads((run / "ckptd-manifest.json").read_text())
    except (FileNotFoundError, ValueError):
        return set()
    return {entry["path"] for entry in data["checkpoints"]}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_daemon_records_a_new_run_directorys_first_checkpoint_after_stable_for(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """Each run directory is created and its checkpoint written at once, faster than watchdog
    adds the directory's watch: no close event comes. Each must be recorded well before four
    times ``stable_for`` (8 s, the only way the old rule could accept it) after its close."""
    root = tmp_path / "runs"
    root.mkdir()
    template = tmp_path / "template.zip"
    make_sb3_zip(template)
    data = template.read_bytes()
    config = {
        "version": 1,
        "roots": [{"path": str(root), "run_depth": 1, "observer": "inotify"}],
        "checkpoints": {"stable_for": f"{STABLE_FOR:g}s"},
        "schedule": {"prune": None, "manifest": None, "rescan": "1h"},
    }
    daemon = DaemonProcess(
        write_config(tmp_path / "ckptd.yaml", config), tmp_path / "daemon.log", notify_socket
    )
    try:
        daemon.wait_ready()
        latencies = []
        for index in range(4):
            run = root / f"ppo-{index}"
            run.mkdir()
            with (run / "model_100_steps.zip").open("wb") as handle:
                handle.write(data)
            closed = time.monotonic()
            wait_until(
                lambda run=run: "model_100_steps.zip" in _recorded(run),
                4 * STABLE_FOR - 1,
                f"{run.name} recorded before 4x stable_for:\n{daemon.log_text()}",
            )
            latencies.append(time.monotonic() - closed)
        assert min(latencies) >= STABLE_FOR - 0.3  # never before its quiet period was seen
    finally:
        daemon.stop()
