"""A running daemon records the removals of a prune killed before its manifest write.

The killed prune moved four checkpoints into the run's trash; the daemon gets their deletion
events first and drops their entries. It used to drop them only, so the manifest's history lost
them (the trash index still had them). Now the daemon looks the dropped entries up in the trash
index, as the next prune or manifest pass does (``ckptd.retention.unrecorded``), and records them in
``removed``. A real ``ckptd run`` and a real ``ckptd prune`` killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ckptd.convert.conversion import convert_file
from ckptd.manifest.model import Manifest, ManifestEntry, RemovedEntry
from ckptd.retention.unrecorded import UNRECORDED_REASON, recorded_in_trash
from ckptd.runs.statedir import StateLayout
from ckptd.timefmt import parse_utc
from tests.daemon_harness import DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import wait_until
from tests.test_convert_source_digest import checkpoint_of
from tests.test_prune_cli import _PRUNE_KILLED

REPO = Path(__file__).parent.parent


def manifest_of(run: Path) -> dict[str, Any]:
    path = run / "ckptd-manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"checkpoints": [], "removed": []}


@pytest.mark.parametrize(
    "killed_in",
    ["ckptd.retention.deletion:_append_trash_records", "ckptd.retention.prune:write_if_changed"],
)
def test_the_daemon_records_what_a_killed_prune_moved_to_the_trash(
    tmp_path: Path, notify_socket: NotifySocket, killed_in: str
) -> None:
    root = tmp_path / "runs"
    run = root / "alpha"
    run.mkdir(parents=True)
    template = convert_file(
        checkpoint_of(tmp_path / "template.pkl", 1 << 10), output=tmp_path / "template.zip"
    ).output
    hour_ago = time.time() - 3600
    for i in range(6):  # six verified SB2 zips, a minute apart, the newest last
        name = run / f"rl_model_{i * 1000}_steps.zip"
        shutil.copyfile(template, name)
        os.utime(name, (hour_ago + 60 * i, hour_ago + 60 * i))
    config = write_config(tmp_path / "ckptd.yaml", daemon_config(root, keep_last=2))
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready()
        wait_until(lambda: len(manifest_of(run)["checkpoints"]) == 6, 20, "all six recorded")
        before = {e["path"]: e["sha256"] for e in manifest_of(run)["checkpoints"]}

        killed = subprocess.run(
            [sys.executable, "-c", _PRUNE_KILLED, str(config), *killed_in.split(":")],
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert killed.returncode == -9, killed.stderr
        doomed = [f"rl_model_{i * 1000}_steps.zip" for i in range(4)]

        def history() -> dict[str, dict[str, Any]]:
            return {e["path"]: e for e in manifest_of(run)["removed"]}

        wait_until(lambda: sorted(history()) == doomed, 20, f"removals in:\n{daemon.log_text()}")
        manifest = manifest_of(run)
        assert sorted(e["path"] for e in manifest["checkpoints"]) == [
            "rl_model_4000_steps.zip",
            "rl_model_5000_steps.zip",
        ]
        for path, entry in history().items():
            assert entry["sha256"] == before[path]
            assert entry["trash"] == f".ckptd/trash/{path}"
            assert entry["reasons"] == [UNRECORDED_REASON]
            assert (run / entry["trash"]).is_file()
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_planted_trash_index_records_nothing_the_manifest_did_not_list(tmp_path: Path) -> None:
    """The trash index is written into a directory others can write: a record counts only for an
    entry the manifest listed, with that entry's sha256, and only once."""
    run = tmp_path / "alpha"
    trash = run / ".ckptd" / "trash"
    trash.mkdir(parents=True)
    moved_at = "2026-12-07T10:00:00Z"
    records = {
        "a.zip": {"original": "a.zip", "trashed_at": moved_at, "sha256": "1" * 64},
        "b.zip": {"original": "b.zip", "trashed_at": moved_at, "sha256": "9" * 64},  # other bytes
        "c.zip": {"original": "c.zip", "trashed_at": moved_at, "sha256": "3" * 64},  # never listed
        "d.zip": {"original": "d.zip", "trashed_at": moved_at, "sha256": "4" * 64},  # recorded
    }
    (trash / ".index.json").write_text(json.dumps({"schema": "ckptd.trash/1", "entries": records}))

    def entry(name: str, digit: str) -> ManifestEntry:
        return ManifestEntry(
            path=name, step=None, size=1, mtime=parse_utc(moved_at), sha256=digit * 64,
            format="sb2-zip", state="kept",
        )  # fmt: skip

    vanished = [entry("a.zip", "1"), entry("b.zip", "2"), entry("d.zip", "4")]
    history = RemovedEntry(
        path="d.zip", sha256="4" * 64, removed_at=parse_utc(moved_at), reasons=("no rule keeps it",),
        trash=".ckptd/trash/d.zip",
    )  # fmt: skip
    previous = Manifest(
        run="alpha", generated_at=parse_utc(moved_at), policy="default",
        checkpoints=tuple(vanished), removed=(history,),
    )  # fmt: skip
    found = recorded_in_trash(StateLayout(run, ".ckptd"), previous, vanished)
    assert [(r.path, r.sha256, r.trash, r.reasons) for r in found] == [
        ("a.zip", "1" * 64, ".ckptd/trash/a.zip", (UNRECORDED_REASON,))
    ]
