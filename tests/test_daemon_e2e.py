"""The real daemon as a subprocess: a simulated training run, prune, SIGHUP, SIGTERM, sd_notify."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ckptd.formats.verify import verify_zip
from ckptd.manifest.model import Manifest
from ckptd.manifest.store import load_manifest
from tests.daemon_harness import REPO, DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import sha256_bytes, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

CHUNKS = 4
CHUNK_PAUSE = 0.5  # the writer pauses longer than stable_for between chunks, with the file open


def base_config(*roots: Path) -> dict[str, Any]:
    return daemon_config(
        *roots, stable_for="1s", keep_last=2, schedule={"prune": "2s", "manifest": "1m"}
    )


def manifest(run: Path) -> Manifest:
    return load_manifest(run / "ckptd-manifest.json")


class SlowWriter(threading.Thread):
    """Writes one legacy checkpoint in chunks, open the whole time, and watches for early readers."""

    def __init__(self, path: Path, data: bytes) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.data = data
        self.violations: list[str] = []
        self.closed = False

    def run(self) -> None:
        zip_path = self.path.with_suffix(".zip")
        step = -(-len(self.data) // CHUNKS)
        with self.path.open("wb") as handle:
            for start in range(0, len(self.data), step):
                handle.write(self.data[start : start + step])
                handle.flush()
                deadline = time.monotonic() + CHUNK_PAUSE
                while time.monotonic() < deadline:
                    if zip_path.exists() or not self.path.exists():
                        self.violations.append(f"{self.path.name} touched while being written")
                    time.sleep(0.02)  # the pause with the file open is under test
        self.closed = True


def test_training_run_is_converted_pruned_and_reloaded(
    tmp_path: Path, legacy_bytes: bytes, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    (run / "rl_model_100_steps.pkl").write_bytes(legacy_bytes)  # there before the daemon starts
    config = write_config(tmp_path / "ckptd.yaml", base_config(root))
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket, watchdog_usec=1_000_000)
    try:
        daemon.wait_ready()
        ready = next(m for m in notify_socket.collect() if "READY=1" in m)
        assert "1 run;" in ready  # READY only after the first reconciliation found the run
        assert "ready: 1 run, 1 file to look at" in daemon.log_text()

        # Training writes three checkpoints slowly (in parallel) and one by rename-into-place.
        writers = [
            SlowWriter(run / f"rl_model_{step}_steps.pkl", legacy_bytes) for step in (200, 300, 400)
        ]
        for writer in writers:
            writer.start()
        staged = run / "tmp-rl_model_500_steps.pkl"  # an ignored name
        staged.write_bytes(legacy_bytes)
        staged.rename(run / "rl_model_500_steps.pkl")
        for writer in writers:
            writer.join(timeout=20)
            assert writer.closed and not writer.violations, writer.violations

        # keep_last 2: the two newest zips stay, the rest (zip + archived original) go to the trash.
        def settled() -> bool:
            try:
                entries = manifest(run).by_path()
            except (FileNotFoundError, ValueError):
                return False
            kept = {p for p, e in entries.items() if e.state == "kept"}
            removed = {entry.path for entry in manifest(run).removed}
            return kept == {"rl_model_400_steps.zip", "rl_model_500_steps.zip"} and removed == {
                "rl_model_100_steps.zip",
                "rl_model_200_steps.zip",
                "rl_model_300_steps.zip",
            }

        wait_until(settled, 20, f"conversion and prune:\n{daemon.log_text()}")
        assert sorted(p.name for p in run.iterdir()) == [
            ".ckptd",
            "ckptd-manifest.json",
            "rl_model_400_steps.zip",
            "rl_model_500_steps.zip",
        ]
        entries = manifest(run).by_path()
        for step in (400, 500):
            entry = entries[f"rl_model_{step}_steps.zip"]
            assert entry.converted_from == f"rl_model_{step}_steps.pkl"
            assert entry.algorithm == "PPO2"
            assert any(reason.startswith("keep_last") for reason in entry.reasons)
            assert verify_zip(run / entry.path).ok
            archived = entries[f".ckptd/legacy/rl_model_{step}_steps.pkl"]
            assert archived.state == "converted"
            # the whole file, never a partial one
            assert archived.sha256 == sha256_bytes(legacy_bytes)
        trash = run / ".ckptd" / "trash"
        for step in (100, 200, 300):
            assert (trash / f"rl_model_{step}_steps.pkl").read_bytes() == legacy_bytes
            assert verify_zip(trash / f"rl_model_{step}_steps.zip").ok
        assert not [e for e in entries.values() if e.state in ("broken", "refused")]

        # SIGHUP with a bad config: logged with every issue, the old config stays in force.
        bad = base_config(root)
        bad["bogus_key"] = 1
        bad["checkpoints"]["stable_for"] = "soon"
        write_config(config, bad)
        before = notify_socket.count("READY=1")
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready(count=before + 1)
        daemon.wait_log("reload rejected")
        log = daemon.log_text()
        assert "bogus_key" in log and "stable_for" in log
        assert daemon.proc.poll() is None
        assert "RELOADING=1" in notify_socket.lines()

        # SIGHUP with a good config that adds a root: it is watched and its checkpoints converted.
        root2 = tmp_path / "more-runs"
        (root2 / "sac-1").mkdir(parents=True)
        write_config(config, base_config(root, root2))
        before = notify_socket.count("READY=1")
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready(count=before + 1)
        daemon.wait_log(f"watching {root2} with inotify")
        (root2 / "sac-1" / "rl_model_7_steps.pkl").write_bytes(legacy_bytes)
        wait_until(
            lambda: (
                (root2 / "sac-1" / "rl_model_7_steps.zip").exists()
                and (root2 / "sac-1" / "ckptd-manifest.json").exists()
                and "rl_model_7_steps.zip" in manifest(root2 / "sac-1").by_path()
            ),
            15,
            f"conversion in the new root:\n{daemon.log_text()}",
        )
        assert notify_socket.count("WATCHDOG=1") >= 3

        started = time.monotonic()
        assert daemon.stop(timeout=5.0) == 0
        assert time.monotonic() - started < 5.0
        assert "STOPPING=1" in notify_socket.lines()
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()


def test_bad_config_at_start_exits_2_with_every_issue(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("version: 1\nroots: []\nbogus: 1\ncheckpoints: {stable_for: never}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "bogus" in result.stderr and "stable_for" in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduled_scrub_flags_a_flipped_byte_and_never_touches_the_file(
    tmp_path: Path, legacy_bytes: bytes, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    (run / "rl_model_100_steps.pkl").write_bytes(legacy_bytes)
    settings = base_config(root)
    # Bit rot makes no filesystem event, but flipping a byte from here does: with inotify the
    # pipeline would race the scrub to the damaged file. A poller that never polls during the test
    # leaves the file to the scrub alone (the start-up scan still finds the checkpoint).
    settings["roots"][0].update(observer="polling", poll_interval="1h")
    settings["schedule"] = {"prune": None, "manifest": "1m", "rescan": "1h", "scrub": "1s"}
    settings["scrub"] = {"max_rate": "100MiB"}
    config = write_config(tmp_path / "ckptd.yaml", settings)
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    zip_path = run / "rl_model_100_steps.zip"
    try:
        daemon.wait_ready()

        def verified() -> bool:
            try:
                entry = manifest(run).by_path().get("rl_model_100_steps.zip")
            except (FileNotFoundError, ValueError):
                return False
            return entry is not None and "last_verified" in entry.extra

        wait_until(verified, 20, f"a first clean scrub:\n{daemon.log_text()}")
        before = zip_path.stat()
        damaged = bytearray(zip_path.read_bytes())
        damaged[len(damaged) // 2] ^= 0x01
        zip_path.write_bytes(bytes(damaged))
        # Bit rot changes bytes, not sizes or times: put the recorded mtime back.
        os.utime(zip_path, ns=(before.st_atime_ns, before.st_mtime_ns))

        def flagged() -> bool:
            entry = manifest(run).by_path()["rl_model_100_steps.zip"]
            return bool(entry.extra.get("corrupt"))

        wait_until(flagged, 20, f"scrub to flag the flipped byte:\n{daemon.log_text()}")
        assert zip_path.read_bytes() == bytes(damaged)  # never deleted or rewritten
        # The summary line follows the manifest write (a flake when asserted right after it).
        wait_until(lambda: "1 corrupt" in daemon.log_text(), 10, "the scrub's summary line")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
