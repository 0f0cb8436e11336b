"""The real daemon on directory checkpoints written the way the trainers write them.

A Hugging Face ``checkpoint-N/`` and a DeepSpeed ``global_stepN/`` are replayed file by file from
the real fixtures (tests/trainer_replay.py: the trainer's order, pauses longer than
``stable_for``, the marker last) into runs a ``ckptd run`` watches with ``*.pt``/``*.bin``/...
patterns that match the files inside them. Nothing inside a directory checkpoint may be
identified, converted, quarantined or recorded as a checkpoint of its own; a directory is found
complete only after its marker, and then its run's manifest pass is run once.

Recording the directory as one manifest entry is the inventory's job (``ckptd.runs.dir_checkpoints``):
where that module exists, the manifest is checked too.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import wait_until
from tests.trainer_replay import FIXTURES, replay_deepspeed, replay_hf

STABLE_FOR = 1.0
PAUSE = 1.3  # between a trainer's writes: longer than stable_for
# The inventory records a directory checkpoint as one entry (the dirs-core side of issue 12).
INVENTORY_RECORDS_DIRECTORIES = importlib.util.find_spec("ckptd.runs.dir_checkpoints") is not None


def _manifest_paths(run: Path) -> list[str]:
    try:
        data = json.loads((run / "ckptd-manifest.json").read_text())
    except FileNotFoundError:
        return []
    return [entry["path"] for entry in data["checkpoints"]]


def _complete_lines(log: str, directory: Path) -> int:
    return log.count(f"directory checkpoint complete: {directory} (")


def _manifest_passes(log: str, run: str) -> int:
    return len(re.findall(rf" run={re.escape(run)} manifest pass for directory checkpoints", log))


def _same_files(source: Path, dest: Path) -> None:
    """Every file of ``source`` is in ``dest``, byte for byte, and nothing else is there."""
    want = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    have = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert have == want


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_directory_checkpoints_written_slowly_are_one_unit_complete_only_after_their_marker(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    old = root / "hf-old"  # complete before the daemon starts: found by the start-up scan
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(FIXTURES / "hf" / name, old / name)
    hf, ds = root / "hf", root / "ds"
    hf.mkdir()
    ds.mkdir()
    config = daemon_config(
        root,
        stable_for=f"{STABLE_FOR:g}s",
        checkpoints={
            "patterns": ["*.pt", "*.pth", "*.bin", "*.safetensors", "*.ckpt"],
            "directories": ["checkpoint-*", "global_step*"],
            "step_pattern": r"(?:_|-|global_step)(\d+)",
            "stable_for": f"{STABLE_FOR:g}s",
        },
    )
    daemon = DaemonProcess(
        write_config(tmp_path / "ckptd.yaml", config), tmp_path / "daemon.log", notify_socket
    )
    try:
        daemon.wait_ready(timeout=30)
        assert "ready: 3 runs, 0 files, 2 directory checkpoints to look at" in daemon.log_text()
        for name in ("checkpoint-2", "checkpoint-4"):
            daemon.wait_log(f"directory checkpoint complete: {old / name} (hf-trainer", 15)
        daemon.wait_log("run=hf-old manifest pass for directory checkpoints", 15)
        # A run directory moved in whole, a checkpoint directory inside (the new-directory scan).
        staged = tmp_path / "staging" / "hf-moved"
        shutil.copytree(FIXTURES / "hf" / "checkpoint-2", staged / "checkpoint-2")
        staged.rename(root / "hf-moved")
        moved = root / "hf-moved" / "checkpoint-2"
        daemon.wait_log(f"directory checkpoint complete: {moved} (hf-trainer", 15)
        daemon.wait_log("run=hf-moved manifest pass for directory checkpoints", 15)

        def hf_before_marker() -> None:
            # Every file but trainer_state.json written, each after pauses > stable_for.
            assert _complete_lines(daemon.log_text(), hf / "checkpoint-6") == 0
            assert not (hf / ".ckptd" / "quarantine").exists()

        replay_hf("checkpoint-6", hf / "checkpoint-6", PAUSE, hf_before_marker)
        marked = time.monotonic()
        daemon.wait_log(f"directory checkpoint complete: {hf / 'checkpoint-6'} (hf-trainer", 15)
        assert time.monotonic() - marked >= STABLE_FOR - 0.3  # after a quiet period was seen
        daemon.wait_log("run=hf manifest pass for directory checkpoints", 15)

        def ds_before_latest() -> None:
            assert _complete_lines(daemon.log_text(), ds / "global_step4") == 0
            assert not (ds / ".ckptd" / "quarantine").exists()

        replay_deepspeed("deepspeed", "global_step4", ds, PAUSE, ds_before_latest)
        daemon.wait_log(f"directory checkpoint complete: {ds / 'global_step4'} (deepspeed", 15)
        daemon.wait_log("run=ds manifest pass for directory checkpoints", 15)
        # A save that vanishes half-written (a crash, a rotation): forgotten without a word. It
        # goes while the daemon waits out its quiet period: a directory with no trainer marker
        # that stays quiet for stable_for is complete (it waited PAUSE, longer than stable_for,
        # and under load the daemon sometimes judged it complete first: a second manifest pass).
        (hf / "checkpoint-8").mkdir()
        shutil.copyfile(FIXTURES / "hf" / "checkpoint-6" / "config.json", hf / "checkpoint-8" / "a")
        time.sleep(STABLE_FOR / 2)
        shutil.rmtree(hf / "checkpoint-8")
        # A plain checkpoint file in the same run is still a checkpoint of its own.
        shutil.copyfile(FIXTURES / "torch" / "state_dict.pt", hf / "export_100.pt")
        wait_until(lambda: "export_100.pt" in _manifest_paths(hf), 15, "export_100.pt recorded")
        time.sleep(3 * STABLE_FOR)  # room for any second completion or pass to show up
    finally:
        assert daemon.stop() == 0
    log = daemon.log_text()
    # Each directory complete once, each run's manifest pass asked for once.
    for directory in (old / "checkpoint-2", old / "checkpoint-4", hf / "checkpoint-6"):
        assert _complete_lines(log, directory) == 1, log
    assert _complete_lines(log, ds / "global_step4") == 1, log
    assert _complete_lines(log, root / "hf-moved" / "checkpoint-2") == 1, log
    runs = ("hf-old", "hf-moved", "hf", "ds")
    assert [_manifest_passes(log, run) for run in runs] == [1, 1, 1, 1], log
    _same_files(FIXTURES / "hf" / "checkpoint-2", root / "hf-moved" / "checkpoint-2")
    # Nothing inside a directory was moved, converted or quarantined: every file where the
    # trainer wrote it, byte for byte, and no quarantine anywhere.
    _same_files(FIXTURES / "hf" / "checkpoint-6", hf / "checkpoint-6")
    _same_files(FIXTURES / "deepspeed" / "global_step4", ds / "global_step4")
    for name in ("checkpoint-2", "checkpoint-4"):
        _same_files(FIXTURES / "hf" / name, old / name)
    assert not list(root.glob("*/.ckptd/quarantine/*")), log
    assert not list(root.glob("*/.ckptd/legacy/*")), log
    assert "quarantine" not in log and "refused" not in log, log
    assert " WARNING " not in log and " ERROR " not in log, log
    assert _complete_lines(log, hf / "checkpoint-8") == 0
    if INVENTORY_RECORDS_DIRECTORIES:
        assert sorted(_manifest_paths(hf)) == ["checkpoint-6/", "export_100.pt"]
        assert _manifest_paths(ds) == ["global_step4/"]
        assert sorted(_manifest_paths(old)) == ["checkpoint-2/", "checkpoint-4/"]
        assert _manifest_paths(root / "hf-moved") == ["checkpoint-2/"]
