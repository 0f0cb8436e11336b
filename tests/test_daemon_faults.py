"""Faults: kill -9 during conversion and during prune (20+ kills), disk full on a real tmpfs.

After every kill the invariants of docs/architecture.md "Reliability rules" are checked: every
original is either still in place or archived with its zip present and verified, no partial file
sits under a checkpoint name, every manifest parses. The unreadable-file and injected-ENOSPC cases
are in test_pipeline.py (fault hooks in PipelineDeps; chmod 000 does not stop root).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ckptd.config.load import parse_config
from ckptd.convert.conversion import convert_file
from ckptd.formats.verify import verify_zip
from ckptd.fs.files import is_temp_name
from ckptd.manifest.store import load_manifest
from ckptd.pipeline.batch import process_path
from tests.daemon_harness import DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import sha256_file, wait_until
from tests.sb2_fixtures import ppo2_data, ppo2_params, stand_ins, write_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CONVERSION_KILLS = 14
PRUNE_KILLS = 6
NEW_PER_CYCLE = 3
DELETED = "ckptd.retention.deletion deleted"


def big_legacy(path: Path, megabytes: int) -> Path:
    """A legacy checkpoint with an extra ``megabytes`` MB array, so a conversion takes a while."""
    params = ppo2_params()
    params["model/big:0"] = (
        np.random.default_rng(1).standard_normal(megabytes * 262_144).astype(np.float32)
    )
    with stand_ins():
        return write_checkpoint(path, ppo2_data(), params)


def check_manifest(run: Path) -> None:
    path = run / "ckptd-manifest.json"
    if path.exists():
        load_manifest(path)  # raises if it does not parse or validate


def check_no_partial_checkpoints(run: Path) -> None:
    for path in run.iterdir():
        if path.suffix == ".zip":
            report = verify_zip(path)
            assert report.ok, f"partial or damaged {path.name}: {report.problems}"
        elif path.is_file():
            assert (
                path.suffix == ".pkl"
                or is_temp_name(path.name)
                or path.name == "ckptd-manifest.json"
            ), f"unexpected file {path.name}"


def check_originals(run: Path, originals: dict[str, str]) -> int:
    """Each original in place (intact) or archived (intact) with its verified zip; returns converted."""
    converted = 0
    for name, digest in originals.items():
        in_place = run / name
        archived = run / ".ckptd" / "legacy" / name
        zip_path = (run / name).with_suffix(".zip")
        assert in_place.exists() != archived.exists(), f"{name}: in place and archived, or neither"
        if archived.exists():
            assert sha256_file(archived) == digest
            assert zip_path.exists() and verify_zip(zip_path).ok, (
                f"{name}: archived without its zip"
            )
            converted += 1
        else:
            assert sha256_file(in_place) == digest
    return converted


def kill_at_random(daemon: DaemonProcess, delay: float) -> None:
    """SIGKILL ``delay`` seconds after the daemon is ready (or after whatever the caller awaited)."""
    daemon.wait_ready()
    time.sleep(delay)  # the moment of the kill is what varies: this wait is under test
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    daemon.kill()


def test_kill_9_during_conversions_loses_nothing(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    template = big_legacy(tmp_path / "template.pkl", 4)
    config = write_config(tmp_path / "ckptd.yaml", daemon_config(root, keep_last=3))
    rng = random.Random(20261203)
    originals: dict[str, str] = {}
    step = 0
    converted_while_killed = []
    for _ in range(CONVERSION_KILLS):
        for _ in range(NEW_PER_CYCLE):  # written while the daemon is down: found by reconciliation
            step += 1
            name = f"rl_model_{step}_steps.pkl"
            shutil.copyfile(template, run / name)
            originals[name] = sha256_file(template)
        daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
        kill_at_random(daemon, rng.uniform(0.0, 0.35))
        converted_while_killed.append(check_originals(run, originals))
        check_no_partial_checkpoints(run)
        check_manifest(run)
    # The kills landed at different points: some cycles converted files, some did not finish one.
    assert len(set(converted_while_killed)) > 3, converted_while_killed

    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready()

        def all_recorded() -> bool:
            with contextlib.suppress(FileNotFoundError, ValueError):
                entries = load_manifest(run / "ckptd-manifest.json").by_path()
                return all(
                    entries.get(name.replace(".pkl", ".zip")) is not None
                    and entries[name.replace(".pkl", ".zip")].converted_from == name
                    for name in originals
                )
            return False

        wait_until(all_recorded, 40, f"every conversion recorded:\n{daemon.log_text()[-3000:]}")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert check_originals(run, originals) == len(originals)
    check_no_partial_checkpoints(run)
    assert not [p for p in run.iterdir() if p.suffix == ".pkl"]


def test_kill_9_during_prune_loses_nothing(tmp_path: Path, notify_socket: NotifySocket) -> None:
    root = tmp_path / "runs"
    run = root / "ppo-1"
    run.mkdir(parents=True)
    template = tmp_path / "template.zip"
    convert_file(big_legacy(tmp_path / "template.pkl", 0), output=template)
    config = write_config(
        tmp_path / "ckptd.yaml", daemon_config(root, keep_last=3, schedule={"prune": "1s"})
    )
    rng = random.Random(7)
    deleted_per_kill: list[int] = []
    made: list[str] = []
    trashed: set[str] = set()
    step = 0
    base_time = time.time() - 10_000
    for _ in range(PRUNE_KILLS):
        for _ in range(40):  # the next prune keeps the newest 3 and deletes everything else
            step += 1
            name = f"rl_model_{step}_steps.zip"
            shutil.copyfile(template, run / name)
            os.utime(run / name, (base_time + step, base_time + step))
            made.append(name)
        log = tmp_path / "daemon.log"
        deletions_before = log.read_text().count(DELETED) if log.exists() else 0
        # Due in this pass: everything but the newest 3 (an interrupted pass leaves more behind).
        due = len([p for p in run.iterdir() if p.suffix == ".zip"]) - 3
        daemon = DaemonProcess(config, log, notify_socket)
        daemon.wait_ready()

        # Kill a few milliseconds into the pass (up to ~40 moves into the trash are in flight).
        def deleting(log: Path = log, before: int = deletions_before) -> bool:
            return log.read_text().count(DELETED) > before

        wait_until(deleting, 10, "the prune pass to start deleting", poll=0.002)
        kill_at_random(daemon, rng.uniform(0.0, 0.03))
        deleted_per_kill.append((log.read_text().count(DELETED) - deletions_before, due))
        trash = run / ".ckptd" / "trash"
        for name in made:
            places = [p for p in (run / name, trash / name) if p.exists()]
            assert len(places) == 1, f"{name}: found in {places}"
            if places[0].parent == trash and name not in trashed:
                assert verify_zip(places[0]).ok  # moved whole, never a partial copy
                trashed.add(name)
        check_no_partial_checkpoints(run)  # verifies every zip still in the run
        check_manifest(run)
        index = trash / ".index.json"
        if index.exists():
            json.loads(index.read_text())

    # Every kill landed after the pass began deleting, and (timing allowing: a loaded machine may
    # let a pass finish within the random delay) most landed part-way, with more due than deleted.
    assert all(0 < count <= due for count, due in deleted_per_kill), deleted_per_kill
    part_way = sum(1 for count, due in deleted_per_kill if count < due)
    assert part_way >= len(deleted_per_kill) // 2, deleted_per_kill
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready()
        wait_until(
            lambda: len([p for p in run.iterdir() if p.suffix == ".zip"]) == 3,
            20,
            f"a full prune:\n{daemon.log_text()[-3000:]}",
        )
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    kept = sorted(p.name for p in run.iterdir() if p.suffix == ".zip")
    assert kept == sorted(f"rl_model_{n}_steps.zip" for n in (step - 2, step - 1, step))
    assert sorted(
        p.name for p in (run / ".ckptd" / "trash").iterdir() if p.suffix == ".zip"
    ) == sorted(set(made) - set(kept))
    assert "prune:" in daemon.log_text()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN): {result.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10)


def test_disk_full_during_conversion_on_a_real_tmpfs(tmp_path: Path, small_tmpfs: Path) -> None:
    run = small_tmpfs / "ppo-1"
    run.mkdir()
    source = run / "rl_model_1_steps.pkl"
    # About 150 KiB: it fits on the 256 KiB filesystem, but its zip does not fit beside it.
    params = ppo2_params()
    params["model/big:0"] = np.arange(36_000, dtype=np.float32)
    with stand_ins():
        write_checkpoint(source, ppo2_data(), params)
    content = source.read_bytes()
    config = parse_config(
        {"roots": [{"path": str(small_tmpfs), "run_depth": 1}], "checkpoints": {"stable_for": "0s"}}
    )

    outcome = process_path(config, config.roots[0], source)

    assert outcome.action == "failed", outcome
    assert "No space left on device" in outcome.message
    assert source.read_bytes() == content
    assert sorted(p.name for p in run.iterdir()) == [".ckptd", "ckptd-manifest.json", source.name]
    entry = load_manifest(run / "ckptd-manifest.json").by_path()[source.name]
    assert entry.error is not None and "No space left on device" in entry.error

    subprocess.run(
        ["mount", "-o", "remount,size=2m", str(small_tmpfs)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    assert process_path(config, config.roots[0], source).action == "converted"
    assert verify_zip(run / "rl_model_1_steps.zip").ok
    assert (run / ".ckptd" / "legacy" / source.name).read_bytes() == content
