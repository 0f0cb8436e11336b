"""``ckptd prune`` and ``ckptd manifest`` through the real CLI entry point, in-process and once as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.cli.exits import ExitStatus
from ckptd.cli.main import main
from ckptd.timefmt import format_utc, from_ns

# Checkpoints are dated relative to the real clock: the CLI reads it (only the CLI and daemon do).
NOW = datetime.now(UTC)


def make_zip(path: Path, age: timedelta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", "{}")
        archive.writestr("parameters", b"x" * 100)
        archive.writestr("parameter_list", "[]")
    ns = int((NOW - age).timestamp()) * 1_000_000_000
    os.utime(path, ns=(ns, ns))
    return path


def make_tree(tmp_path: Path) -> Path:
    """Two runs of 6 hourly checkpoints and a config keeping the last 2 of each."""
    for run in ("alpha", "beta"):
        for i in range(6):
            make_zip(
                tmp_path / "runs" / run / f"rl_model_{i * 1000}_steps.zip", timedelta(hours=6 - i)
            )
    config = tmp_path / "ckptd.yaml"
    config.write_text(
        "version: 1\n"
        "roots:\n"
        "  - path: ./runs\n"
        "policies:\n"
        "  default:\n"
        "    keep_last: 2\n"
        "delete:\n"
        "  max_fraction: 1.0\n"
    )
    return config


def snapshot(directory: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in directory.rglob("*"))


def test_prune_json_dry_run_prints_the_contract_shape_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_tree(tmp_path)
    before = snapshot(tmp_path)
    assert main(["prune", "-c", str(config), "--dry-run", "--json"]) == ExitStatus.OK
    assert snapshot(tmp_path) == before
    document = json.loads(capsys.readouterr().out)
    assert [run["run"] for run in document["runs"]] == ["alpha", "beta"]
    for run in document["runs"]:
        assert len(run["decisions"]) == 6
        for decision in run["decisions"]:
            # The contract's three keys, and what each decision was made on.
            assert set(decision) == {"path", "action", "reasons", "step", "size", "mtime", "format"}
            assert decision["action"] in ("keep", "delete", "skip") and decision["reasons"]
    alpha = {d["path"]: d for d in document["runs"][0]["decisions"]}
    newest = tmp_path / "runs" / "alpha" / "rl_model_5000_steps.zip"
    assert alpha["rl_model_5000_steps.zip"] == {
        "path": "rl_model_5000_steps.zip",
        "action": "keep",
        "reasons": ["keep_last #1", "newest"],
        "step": 5000,
        "size": newest.stat().st_size,
        "mtime": format_utc(from_ns(newest.stat().st_mtime_ns)),
        "format": "sb2-zip",
    }
    assert alpha["rl_model_0_steps.zip"]["action"] == "delete"


def test_prune_text_output_is_a_table_per_run_with_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_tree(tmp_path)
    assert main(["prune", "-c", str(config)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert "rl_model_0_steps.zip" in out and "no rule keeps it" in out and "keep_last #1" in out
    assert out.count("kept 2, deleted 4, skipped 0, freed") == 2
    assert not (tmp_path / "runs" / "alpha" / "rl_model_0_steps.zip").exists()
    assert (tmp_path / "runs" / "alpha" / ".ckptd" / "trash" / "rl_model_0_steps.zip").exists()


def test_prune_exits_1_when_a_run_fails_and_names_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_tree(tmp_path)
    pins = tmp_path / "runs" / "beta" / ".ckptd" / "pins.json"
    pins.parent.mkdir()
    pins.write_text("{broken")
    assert main(["prune", "-c", str(config), "--json"]) == ExitStatus.FAILED
    runs = {run["run"]: run for run in json.loads(capsys.readouterr().out)["runs"]}
    assert runs["beta"]["error"].startswith(f"{pins}: pins file is not valid JSON")
    assert "error" not in runs["alpha"]
    assert (tmp_path / "runs" / "beta" / "rl_model_0_steps.zip").exists()


def test_prune_with_a_bad_config_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("version: 1\nroots: []\nbogus: 3\n")
    assert main(["prune", "-c", str(config)]) == ExitStatus.USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(config) in captured.err and "Traceback" not in captured.err


def test_manifest_writes_every_manifest_and_prints_one_line_per_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_tree(tmp_path)
    assert main(["manifest", "-c", str(config)]) == ExitStatus.OK
    root = (tmp_path / "runs").resolve()
    assert capsys.readouterr().out.splitlines() == [
        f"{root}: 2 runs, 12 checkpoints, {_size(root)}, 2 manifests written (0 unchanged), 0 failed"
    ]
    for run in ("alpha", "beta"):
        document = json.loads((tmp_path / "runs" / run / "ckptd-manifest.json").read_text())
        assert len(document["checkpoints"]) == 6
    assert (
        json.loads((tmp_path / "runs" / "ckptd-index.json").read_text())["schema"]
        == "ckptd.index/1"
    )
    assert main(["manifest", "-c", str(config)]) == ExitStatus.OK
    assert "0 manifests written (2 unchanged)" in capsys.readouterr().out


def _size(root: Path) -> str:
    from ckptd.cli.prune_cmds import human_size

    return human_size(sum(p.stat().st_size for p in root.rglob("*.zip")))


def test_prune_dry_run_json_as_a_real_process(tmp_path: Path) -> None:
    config = make_tree(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "prune", "-c", str(config), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["runs"]) == 2


def test_rows_and_decisions_come_in_step_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "ppo"
    steps = (1000, 10000, 100000, 2000, 20000)
    for index, step in enumerate(steps):
        make_zip(run / f"rl_model_{step}_steps.zip", timedelta(hours=10 - index))
    config = tmp_path / "ckptd.yaml"
    config.write_text("version: 1\nroots: [{path: ./runs}]\npolicies: {default: {keep_last: 5}}\n")
    assert main(["prune", "-c", str(config), "--dry-run", "--json"]) == ExitStatus.OK
    (document,) = json.loads(capsys.readouterr().out)["runs"]
    assert [d["step"] for d in document["decisions"]] == sorted(steps)
    assert main(["prune", "-c", str(config), "--dry-run"]) == ExitStatus.OK
    out = capsys.readouterr().out
    positions = [out.index(f"rl_model_{step}_steps.zip ") for step in sorted(steps)]
    assert positions == sorted(positions)


def guarded_tree(tmp_path: Path) -> Path:
    """An imported run of 20 checkpoints of which keep_last 2 keeps 2 (the guard, 0.5, trips)
    and a small run the guard lets through."""
    for i in range(20):
        make_zip(
            tmp_path / "runs" / "imported" / f"rl_model_{i}_steps.zip", timedelta(hours=40 - i)
        )
    for i in range(3):
        make_zip(tmp_path / "runs" / "fresh" / f"rl_model_{i}_steps.zip", timedelta(hours=3 - i))
    config = tmp_path / "ckptd.yaml"
    config.write_text("version: 1\nroots: [{path: ./runs}]\npolicies: {default: {keep_last: 2}}\n")
    return config


def test_a_guarded_run_says_so_once_with_the_command_that_lets_it_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = guarded_tree(tmp_path)
    assert main(["prune", "-c", str(config), "--dry-run"]) == ExitStatus.OK
    out = capsys.readouterr().out
    guard = "guard: max_fraction 0.5 (would delete 18 of 20)"
    assert out.count(guard) == 1
    assert "kept 2, would delete 0, held back by the guard 18, skipped 0" in out
    assert out.count(" guarded ") == 18
    assert f"ckptd prune -c {config} --run imported --max-fraction 0.9 --dry-run" in out
    # The JSON keeps the contract's reason on every spared decision.
    assert main(["prune", "-c", str(config), "--dry-run", "--json"]) == ExitStatus.OK
    imported = json.loads(capsys.readouterr().out)["runs"][1]
    assert imported["guard"] == guard
    assert sum(1 for d in imported["decisions"] if d["reasons"][0] == guard) == 18


def test_prune_run_glob_and_a_one_off_max_fraction_get_past_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = guarded_tree(tmp_path)
    before = snapshot(tmp_path / "runs" / "fresh")
    args = ["prune", "-c", str(config), "--run", "imp*", "--max-fraction", "0.9", "--json"]
    assert main(args) == ExitStatus.OK
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert run["run"] == "imported" and run["guard"] is None
    assert sum(1 for d in run["decisions"] if d["action"] == "delete") == 18
    assert sorted(p.name for p in (tmp_path / "runs" / "imported").glob("*.zip")) == [
        "rl_model_18_steps.zip",
        "rl_model_19_steps.zip",
    ]
    assert snapshot(tmp_path / "runs" / "fresh") == before  # another run: not touched
    # The config's guard is back for the next pass; the guard of 0.89 still holds 18 of 20.
    assert main(["prune", "-c", str(config), "--dry-run", "--max-fraction", "0.89"]) == 0
    assert "max_fraction 0.89" not in capsys.readouterr().out  # nothing left to guard


def test_prune_run_glob_matching_nothing_and_a_bad_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = guarded_tree(tmp_path)
    assert main(["prune", "-c", str(config), "--run", "nope*", "--dry-run"]) == ExitStatus.OK
    assert "no run matches --run nope*" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["prune", "-c", str(config), "--max-fraction", "1.5"])
    assert exited.value.code == ExitStatus.USAGE
    assert "expected a number from 0 to 1, got '1.5'" in capsys.readouterr().err


_PRUNE_KILLED = """
import importlib, os, signal, sys
from ckptd.cli.main import main

def killed(*args, **kwargs):  # the moves are done; what the patched function writes never is
    os.kill(os.getpid(), signal.SIGKILL)

setattr(importlib.import_module(sys.argv[2]), sys.argv[3], killed)
main(["prune", "-c", sys.argv[1]])
"""


@pytest.mark.parametrize(
    "killed_in",
    [
        # before the trash index write: the moves are known only from the trash's note
        "ckptd.retention.deletion:_append_trash_records",
        # before the manifest write: the moves are in the trash index
        "ckptd.retention.prune:write_if_changed",
    ],
)
@pytest.mark.parametrize("next_pass", ["prune", "manifest"])
def test_a_prune_killed_mid_deletion_has_its_removals_recorded_by_the_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], killed_in: str, next_pass: str
) -> None:
    """``kill -9`` after a prune moved a run's doomed checkpoints into the trash, before it
    recorded them in the manifest: the next pass (a prune, or a manifest pass, which used to drop
    their entries without a trace) finds them in the trash (index or note) and writes them into
    the manifest's ``removed`` list (path, sha256, trash name) as the killed one would have."""
    config = make_tree(tmp_path)
    assert main(["manifest", "-c", str(config)]) == ExitStatus.OK
    capsys.readouterr()
    alpha = tmp_path / "runs" / "alpha"
    manifest_path = alpha / "ckptd-manifest.json"
    before = {e["path"]: e["sha256"] for e in json.loads(manifest_path.read_text())["checkpoints"]}
    killed = subprocess.run(
        [sys.executable, "-c", _PRUNE_KILLED, str(config), *killed_in.split(":")],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    doomed = [f"rl_model_{i * 1000}_steps.zip" for i in range(4)]
    trash = alpha / ".ckptd" / "trash"
    assert sorted(p.name for p in trash.iterdir() if not p.name.startswith(".")) == doomed
    assert json.loads(manifest_path.read_text())["removed"] == []  # the killed prune wrote none

    assert main([next_pass, "-c", str(config)]) == ExitStatus.OK
    manifest = json.loads(manifest_path.read_text())
    assert sorted(e["path"] for e in manifest["checkpoints"]) == [
        "rl_model_4000_steps.zip",
        "rl_model_5000_steps.zip",
    ]
    removed = {e["path"]: e for e in manifest["removed"]}
    assert sorted(removed) == doomed
    for path in doomed:
        assert removed[path]["sha256"] == before[path]
        assert removed[path]["trash"] == f".ckptd/trash/{path}"
        assert removed[path]["reasons"] == [
            "moved to the trash by a pass that stopped before recording it here"
        ]
    # recorded once: later passes of either kind add nothing
    assert main(["manifest", "-c", str(config)]) == ExitStatus.OK
    assert main(["prune", "-c", str(config), "--json"]) == ExitStatus.OK
    assert json.loads(manifest_path.read_text())["removed"] == manifest["removed"]
    # beta, which the killed prune never reached, is pruned by the rules as usual
    beta = json.loads((tmp_path / "runs" / "beta" / "ckptd-manifest.json").read_text())
    assert sorted(e["path"] for e in beta["removed"]) == doomed
    assert all(e["reasons"] == ["no rule keeps it"] for e in beta["removed"])
