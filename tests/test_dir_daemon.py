"""The real daemon's scheduled passes on Hugging Face directory checkpoints: recorded and pruned
whole through the same inventory as the CLI, and a save in progress never touched."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from ckptd.manifest.store import load_manifest
from tests.daemon_harness import DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import wait_until
from tests.trainer_runs import ORDER, TRAINERS, copy_trainer_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _trashed(run: Path) -> list[str]:
    trash = run / ".ckptd" / "trash"
    return sorted(p.name for p in trash.iterdir() if p.is_dir()) if trash.is_dir() else []


def _pending(run: Path, path: str) -> bool:
    entry = load_manifest(run / "ckptd-manifest.json").by_path().get(path)
    return entry is not None and entry.state == "pending"


def test_scheduled_passes_prune_directories_and_never_touch_one_being_written(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    run = copy_trainer_run("hf", root / "gpt")
    settings = daemon_config(
        root,
        stable_for="1s",
        keep_last=1,
        schedule={"prune": "1s", "manifest": "1s"},
    )
    # The default patterns (*.zip, *.pkl) name none of the Trainer's files: the directories alone
    # are checkpoints here, found by the passes' inventory.
    settings["checkpoints"].update(directories=["checkpoint-*"], step_pattern=r"-(\d+)")
    config = write_config(tmp_path / "ckptd.yaml", settings)
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready()
        wait_until(lambda: _trashed(run) == ["checkpoint-2", "checkpoint-4"], timeout=20)
        target = run / "checkpoint-8"
        target.mkdir()
        source = TRAINERS / "hf" / "checkpoint-6"
        for name in ORDER["hf"]["checkpoint-6"]:  # everything but the marker, slowly
            shutil.copyfile(source / name, target / name)
            deadline = time.monotonic() + 1.5  # longer than stable_for and a pass interval
            while time.monotonic() < deadline:
                assert (run / "checkpoint-6").is_dir(), "the last complete checkpoint went early"
                assert target.is_dir()
                time.sleep(0.05)
            # Passes have seen it (pending) by now or soon: it is recorded, never acted on.
            wait_until(lambda: _pending(run, "checkpoint-8/"), 10)
            assert (run / "checkpoint-6").is_dir() and target.is_dir()
        shutil.copyfile(source / "trainer_state.json", target / "trainer_state.json")
        wait_until(lambda: _trashed(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"], 20)

        def recorded() -> bool:  # the pass writes the manifest after its deletions
            entry = load_manifest(run / "ckptd-manifest.json").by_path()["checkpoint-8/"]
            return entry.state == "kept" and entry.reasons == ("keep_last #1", "newest")

        wait_until(recorded, 10)
        entry = load_manifest(run / "ckptd-manifest.json").by_path()["checkpoint-8/"]
        assert sorted(item.path for item in entry.files or ()) == sorted(
            p.name for p in source.iterdir()
        )
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()
