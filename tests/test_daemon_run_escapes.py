"""Escapes from a run through the daemon: a real ``ckptd run`` over runs with planted state.

The daemon archives converted originals, quarantines refused files and prunes to the trash; in
runs whose state dir (or a directory one or two levels below ``legacy/``) is a planted symlink or
FIFO it must refuse with one log line naming it, leave the files where they are, keep serving the
other runs, and leave a sentinel directory beside the root untouched byte for byte. A planted
manifest must not make its prune delete a protected file (docs/security.md, "Paths inside a run").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckptd.convert.conversion import convert_file
from tests.daemon_harness import DaemonProcess, NotifySocket, daemon_config, write_config
from tests.helpers import wait_until
from tests.hostile_helpers import STATE, ckptd, make_sentinel, plant, snapshot
from tests.sb2_fixtures import (
    Exploit,
    ppo2_data,
    ppo2_params,
    stand_ins,
    write_checkpoint,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def protecting_config(root: Path) -> dict[str, object]:
    """Keep one, protect best_model.zip, prune every 2 s."""
    return daemon_config(
        root,
        keep_last=1,
        schedule={"prune": "2s"},
        policies={"default": {"keep_last": 1, "min_age": "0s", "protect": ["best_model.zip"]}},
    )


def test_daemon_never_moves_anything_through_planted_links(
    tmp_path: Path, notify_socket: NotifySocket, legacy_bytes: bytes
) -> None:
    outside = make_sentinel(tmp_path)
    root = tmp_path / "runs"
    planted = planted_manifest_run(tmp_path, root / "planted", legacy_bytes)
    runs = {
        name: root / name
        for name in (
            "one-below",
            "two-below",
            "state-link",
            "state-fifo",
            "jail-link",
            "trash-link",
            "ok",
        )
    }
    with stand_ins():
        exploit = write_checkpoint(
            tmp_path / "exploit.pkl",
            {**ppo2_data(), "evil": Exploit(tmp_path / "pwned")},
            ppo2_params(),
        ).read_bytes()
    sources = {
        "one-below": "sub/rl_model_1000_steps.pkl",
        "two-below": "a/b/rl_model_1000_steps.pkl",
        "state-link": "rl_model_1000_steps.pkl",
        "state-fifo": "rl_model_1000_steps.pkl",
        "jail-link": "rl_model_1000_steps.pkl",
        "trash-link": "rl_model_1000_steps.pkl",
        "ok": "rl_model_1000_steps.pkl",
    }
    for name, relpath in sources.items():
        path = runs[name] / relpath
        path.parent.mkdir(parents=True)
        path.write_bytes(exploit if name == "jail-link" else legacy_bytes)
    plant(runs["one-below"] / STATE / "legacy" / "sub", "symlink", outside / "sub")
    plant(runs["two-below"] / STATE / "legacy" / "a" / "b", "symlink", outside / "sub")
    plant(runs["state-link"] / STATE, "symlink", outside)
    plant(runs["state-fifo"] / STATE, "fifo", outside)
    plant(runs["jail-link"] / STATE / "quarantine", "symlink", outside)
    plant(runs["trash-link"] / STATE / "trash", "symlink", outside / "trash")
    before = snapshot(outside)

    config = write_config(tmp_path / "ckptd.yaml", protecting_config(root))
    daemon = DaemonProcess(config, tmp_path / "daemon.log", notify_socket)
    try:
        daemon.wait_ready()
        wait_until(
            lambda: (
                (runs["ok"] / "rl_model_1000_steps.zip").exists()
                and (runs["ok"] / STATE / "legacy" / "rl_model_1000_steps.pkl").exists()
            ),
            30,
            f"the ok run converted:\n{daemon.log_text()}",
        )
        wait_until(
            lambda: not (planted / "rl_model_1000_steps.zip").exists(),
            30,
            f"a prune of the planted run:\n{daemon.log_text()}",
        )
        for name in (
            "one-below",
            "two-below",
            "state-link",
            "state-fifo",
            "jail-link",
            "trash-link",
        ):
            daemon.wait_log(f"run={name} ", timeout=30)
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    log = daemon.log_text()
    assert "Traceback" not in log, log
    assert snapshot(outside) == before, "a file outside the root was touched or appeared"
    for name, relpath in sources.items():
        if name == "ok":
            continue
        # Every original stays in its run: where it was, or (a prune judged the in-place original
        # beside its zip, which the archive move could not take) in the run's own trash.
        expected = exploit if name == "jail-link" else legacy_bytes
        trashed = runs[name] / STATE / "trash" / Path(relpath).name
        kept = runs[name] / relpath
        assert (kept if kept.exists() else trashed).read_bytes() == expected, name
    assert not (tmp_path / "pwned").exists()
    named = {
        "one-below": f"{runs['one-below']}/{STATE}/legacy/sub: is a symlink",
        "two-below": f"{runs['two-below']}/{STATE}/legacy/a/b: is a symlink",
        "state-link": f"{runs['state-link']}/{STATE}: ckptd state directory is a symlink",
        "state-fifo": f"{runs['state-fifo']}/{STATE}: ckptd state directory is a FIFO",
        "jail-link": f"{runs['jail-link']}/{STATE}/quarantine: ckptd state directory is a symlink",
        "trash-link": f"{runs['trash-link']}/{STATE}/trash: ckptd state directory is a symlink",
    }
    for name, text in named.items():
        lines = [line for line in log.splitlines() if f"run={name} " in line and text in line]
        assert lines, (name, log)
    # The planted manifest's converted_from did not take the protected best_model.zip along.
    assert (planted / "best_model.zip").exists()
    trash = json.loads((planted / STATE / "trash" / ".index.json").read_text())["entries"]
    assert "best_model.zip" not in {body["original"] for body in trash.values()}


def planted_manifest_run(tmp_path: Path, run: Path, legacy: bytes) -> Path:
    """Two converted checkpoints and a protected best_model.zip, recorded by ``ckptd manifest``,
    then a hand-edited manifest saying rl_model_1000_steps.zip was converted from best_model.zip."""
    run.mkdir(parents=True)
    for step in (1000, 2000):
        source = run / f"rl_model_{step}_steps.pkl"
        source.write_bytes(legacy)
        os.utime(source, (1_700_000_000 + step, 1_700_000_000 + step))
        convert_file(source, original="archive")
    (run / "best_model.zip").write_bytes((run / "rl_model_1000_steps.zip").read_bytes())
    os.utime(run / "best_model.zip", (1_600_000_000, 1_600_000_000))
    config = write_config(tmp_path / "manifest.yaml", protecting_config(run.parent))
    assert ckptd("manifest", "-c", config).returncode == 0
    path = run / "ckptd-manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["checkpoints"]:
        if entry["path"] == "rl_model_1000_steps.zip":
            entry["converted_from"] = "best_model.zip"
    path.write_text(json.dumps(manifest))
    return run
