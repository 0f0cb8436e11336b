"""Permission errors for real: ``ckptd run``, ``convert`` and ``prune`` as an unprivileged user.

As root, mode 000 stops nothing (test_pipeline.py fakes EACCES with a fault hook instead), so these
tests start the real commands as nobody (uid/gid 65534, no supplementary groups; see
``tests.daemon_harness.unprivileged_user``) in a tree under a fresh world-traversable temp dir: one
checkpoint that user cannot read (mode 000, owned by root) and run directories it cannot write
(owned by root, 0755) beside normal runs. Each problem must be reported in one line naming the
file or run and left untouched, while everything else is converted, recorded and pruned.

The last two tests run in-process (as root): which run-level errors the daemon hands back for a
retry a few seconds later (a run locked by another ckptd process) and which it leaves to the
reconciliation scan (an unusable run or state dir, which would only fail and log again).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ckptd.cli.main import main
from ckptd.config.load import parse_config
from ckptd.config.model import Config
from ckptd.convert.conversion import convert_file
from ckptd.daemon.run_queue import LOCKED_RUN_BACKOFF_SECONDS
from ckptd.formats import Format
from ckptd.formats.verify import verify_zip
from ckptd.fs.files import is_temp_name
from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.store import load_manifest, write_manifest
from ckptd.pipeline.batch import process_batch
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import StateLayout, run_lock
from ckptd.timefmt import from_ns
from tests.daemon_harness import (
    NOBODY,
    DaemonProcess,
    NotifySocket,
    UnprivilegedUser,
    daemon_config,
    traversable_tree,
    unprivileged_user_or_skip,
    wait_until,
    write_config,
)
from tests.helpers import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROOT_UID = 0
MANIFEST = "ckptd-manifest.json"
DENIED = "Permission denied"
# A log record of the daemon's text format (not a warning or traceback printed by Python itself).
LOG_RECORD = re.compile(r"^\S+Z (?P<level>[A-Z]+) (?P<logger>\S+) (?P<message>.*)$")


# ---- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user() -> UnprivilegedUser:
    return unprivileged_user_or_skip()


@pytest.fixture(scope="module")
def zip_bytes(tmp_path_factory: pytest.TempPathFactory, legacy_bytes: bytes) -> bytes:
    directory = tmp_path_factory.mktemp("zip")
    (directory / "ppo2.pkl").write_bytes(legacy_bytes)
    return convert_file(directory / "ppo2.pkl").output.read_bytes()


@pytest.fixture
def tree(user: UnprivilegedUser) -> Iterator[Path]:
    with traversable_tree("ckptd-perm-") as base:
        yield base


def owned_dir(path: Path, owner: int = NOBODY) -> Path:
    path.mkdir()
    os.chown(path, owner, owner)
    os.chmod(path, 0o755)
    return path


def put(path: Path, data: bytes, *, owner: int = NOBODY, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chown(path, owner, owner)
    os.chmod(path, mode)
    return path


def fingerprints(paths: list[Path]) -> dict[Path, tuple[str, int, int]]:
    """Content, owner and mode of each file: what "left untouched" means here."""
    result = {}
    for path in paths:
        st = os.stat(path)
        result[path] = (sha256_file(path), st.st_uid, stat.S_IMODE(st.st_mode))
    return result


def entries(run: Path) -> dict[str, ManifestEntry]:
    return load_manifest(run / MANIFEST).by_path()


def entries_or_empty(run: Path) -> dict[str, ManifestEntry]:
    try:
        return entries(run)
    except (FileNotFoundError, ValueError):
        return {}


def problem_records(log: str) -> list[str]:
    """Messages of the WARNING and ERROR records in a daemon log."""
    records = (LOG_RECORD.match(line) for line in log.splitlines())
    return [
        f"{m['logger']} {m['message']}"
        for m in records
        if m is not None and m["level"] in ("WARNING", "ERROR")
    ]


def assert_converted(run: Path, steps: tuple[int, ...]) -> None:
    recorded = entries(run)
    for step in steps:
        name = f"rl_model_{step}_steps"
        zip_entry = recorded[f"{name}.zip"]
        assert zip_entry.state == "kept" and zip_entry.converted_from == f"{name}.pkl"
        assert verify_zip(run / f"{name}.zip").ok
        assert recorded[f".ckptd/legacy/{name}.pkl"].state == "converted"
        assert not (run / f"{name}.pkl").exists()


# ---- the daemon ------------------------------------------------------------------------------------


def test_daemon_reports_each_unreadable_file_and_unwritable_run_and_serves_the_rest(
    tree: Path, user: UnprivilegedUser, legacy_bytes: bytes, notify_socket: NotifySocket
) -> None:
    root = owned_dir(tree / "runs")
    ok = owned_dir(root / "ok")
    mixed = owned_dir(root / "mixed")
    locked = owned_dir(root / "locked", ROOT_UID)  # nothing in it is writable, no state dir
    # Made read-only after ckptd created its state dir: the lock works, writing beside the
    # checkpoints (zip, manifest) does not.
    readonly = owned_dir(root / "readonly", ROOT_UID)
    owned_dir(readonly / ".ckptd")
    for run in (ok, mixed, locked, readonly):
        owner = os.stat(run).st_uid
        for step in (1, 2):
            put(run / f"rl_model_{step}_steps.pkl", legacy_bytes, owner=owner)
    unreadable = put(mixed / "rl_model_3_steps.pkl", legacy_bytes, owner=ROOT_UID, mode=0)
    untouched = fingerprints(
        [unreadable, *locked.iterdir(), *(p for p in readonly.iterdir() if p.is_file())]
    )
    # No prune or manifest pass: this test is about what the daemon's pipeline records.
    config = write_config(tree / "ckptd.yaml", daemon_config(root, keep_last=5))
    os.chmod(config, 0o644)

    daemon = DaemonProcess(config, tree / "daemon.log", notify_socket, user=user)
    try:
        daemon.wait_ready()
        ready_at = time.monotonic()

        def first_pass_done() -> bool:
            pending = entries_or_empty(mixed).get(unreadable.name)
            return (
                len(entries_or_empty(ok)) == 4  # two zips and their archived originals
                and len(entries_or_empty(mixed)) == 5
                and pending is not None
                and pending.state == "pending"
            )

        wait_until(first_pass_done, 20, f"the first pass:\n{daemon.log_text()}")

        # Still serving after the errors: a checkpoint renamed into place is converted.
        staged = put(ok / "tmp-rl_model_4_steps.pkl", legacy_bytes)
        staged.rename(ok / "rl_model_4_steps.pkl")
        wait_until(
            lambda: "rl_model_4_steps.zip" in entries_or_empty(ok),
            20,
            f"the new checkpoint:\n{daemon.log_text()}",
        )
        # Past the busy-run backoff: an unwritable run must not be retried (and logged) again.
        # The time passing is what is under test, so this is a sleep, not a wait for an event.
        time.sleep(max(0.0, ready_at + LOCKED_RUN_BACKOFF_SECONDS + 1.5 - time.monotonic()))
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    log = daemon.log_text()
    assert "Traceback" not in log, log
    problems = problem_records(log)
    expected = {
        "locked": rf"ckptd\.pipeline\.\w+ run=locked cannot process run: .*{DENIED}.*'{locked}/\.ckptd'",
        "unreadable": (
            rf"ckptd\.pipeline\.\w+ run=mixed file=rl_model_3_steps\.pkl cannot read: {DENIED}; "
            "will retry"
        ),
        "readonly 1": (
            r"ckptd\.pipeline\.\w+ run=readonly file=rl_model_1_steps\.pkl conversion failed, "
            rf"original left in place: {DENIED} \(EACCES\); will retry"
        ),
        "readonly 2": (
            r"ckptd\.pipeline\.\w+ run=readonly file=rl_model_2_steps\.pkl conversion failed, "
            rf"original left in place: {DENIED} \(EACCES\); will retry"
        ),
        "readonly manifest": (
            rf"ckptd\.pipeline\.\w+ run=readonly cannot process run: .*{DENIED}.*'{readonly}/"
        ),
    }
    matches = {
        name: [line for line in problems if re.fullmatch(pattern + ".*", line)]
        for name, pattern in expected.items()
    }
    assert all(len(lines) == 1 for lines in matches.values()), (matches, log)
    assert len(problems) == len(expected), problems  # nothing else went wrong

    assert_converted(ok, (1, 2, 4))
    assert_converted(mixed, (1, 2))
    pending = entries(mixed)[unreadable.name]
    assert pending.state == "pending" and pending.format is Format.UNKNOWN
    assert pending.error == f"cannot read: {DENIED}"
    assert fingerprints(list(untouched)) == untouched
    assert sorted(p.name for p in locked.iterdir()) == [
        "rl_model_1_steps.pkl",
        "rl_model_2_steps.pkl",
    ]
    leftovers = [p for p in readonly.rglob("*") if p.is_file() and p.suffix != ".pkl"]
    assert all(p.parent == readonly / ".ckptd" and not is_temp_name(p.name) for p in leftovers), (
        leftovers
    )
    assert not (readonly / MANIFEST).exists()
    assert sorted(p.name for p in readonly.iterdir()) == [
        ".ckptd",
        "rl_model_1_steps.pkl",
        "rl_model_2_steps.pkl",
    ]


# ---- ckptd convert ---------------------------------------------------------------------------------


def test_convert_reports_unreadable_files_and_directories_and_converts_the_others(
    tree: Path, user: UnprivilegedUser, legacy_bytes: bytes
) -> None:
    directory = owned_dir(tree / "checkpoints")
    readable = [put(directory / name, legacy_bytes) for name in ("a.pkl", "c.pkl")]
    unreadable = put(directory / "b.pkl", legacy_bytes, owner=ROOT_UID, mode=0)
    closed = owned_dir(directory / "closed", ROOT_UID)
    hidden = put(closed / "d.pkl", legacy_bytes, owner=ROOT_UID)
    os.chmod(closed, 0o700)
    untouched = fingerprints([unreadable, hidden])

    result = user.run(["convert", str(directory)])

    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        f"ckptd: {unreadable}: cannot read: {DENIED}",
        f"ckptd: {closed}: cannot list directory: {DENIED}",
    ]
    for source in readable:
        assert verify_zip(source.with_suffix(".zip")).ok
        assert f"{source} -> {source.with_suffix('.zip')}: converted" in result.stdout
    assert not unreadable.with_suffix(".zip").exists()
    assert sorted(p.name for p in closed.iterdir()) == ["d.pkl"]
    assert fingerprints(list(untouched)) == untouched

    # The same in --json, and a single unreadable input named on the command line.
    result = user.run(["convert", "--json", str(directory)])
    assert result.returncode == 1, result
    statuses = {r["source"]: r["status"] for r in json.loads(result.stdout)["results"]}
    assert statuses == {
        str(unreadable): "error",
        str(closed): "error",
        **{str(source): "already-converted" for source in readable},
    }
    result = user.run(["convert", str(unreadable)])
    assert (result.returncode, result.stderr) == (1, f"ckptd: {unreadable}: {DENIED}\n")
    assert fingerprints(list(untouched)) == untouched


@pytest.mark.timeout(20)  # before the fix, opening the FIFO blocked forever
def test_convert_skips_a_fifo_below_a_directory_instead_of_blocking_on_it(
    tmp_path: Path, legacy_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    source = put(tmp_path / "a.pkl", legacy_bytes, owner=os.getuid())
    os.mkfifo(tmp_path / "b.pkl")

    assert main(["convert", str(tmp_path)]) == 0

    assert verify_zip(source.with_suffix(".zip")).ok
    assert not (tmp_path / "b.zip").exists()
    assert capsys.readouterr().err == ""


# ---- ckptd prune and ckptd manifest -----------------------------------------------------------------


def retention_tree(tree: Path, zip_bytes: bytes) -> tuple[Path, Path]:
    """Runs a, b (the user's) and locked (root's, 0755), three zips each; returns (root, config)."""
    root = owned_dir(tree / "runs")
    base_time = time.time() - 3600
    for name, owner in (("a", NOBODY), ("b", NOBODY), ("locked", ROOT_UID)):
        run = owned_dir(root / name, owner)
        for step in (1, 2, 3):
            path = put(run / f"rl_model_{step}_steps.zip", zip_bytes, owner=owner)
            os.utime(path, (base_time + step, base_time + step))
    config = write_config(
        tree / "ckptd.yaml",
        {
            "version": 1,
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
            "policies": {"default": {"keep_last": 1, "min_age": "0s"}},
            "delete": {"max_fraction": 1.0},
        },
    )
    os.chmod(config, 0o644)
    return root, config


def test_prune_reports_the_unwritable_run_and_prunes_the_others(
    tree: Path, user: UnprivilegedUser, zip_bytes: bytes
) -> None:
    root, config = retention_tree(tree, zip_bytes)
    locked = root / "locked"
    untouched = fingerprints(sorted(locked.iterdir()))

    result = user.run(["prune", "-c", str(config), "--json"])

    assert result.returncode == 1, result
    # One line for the failure; the other lines are the deletions' events (docs/operations.md,
    # "Logs and metrics").
    problems = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(problems) == 1, result.stderr
    assert str(locked) in problems[0] and DENIED in problems[0]
    runs = {run["run"]: run for run in json.loads(result.stdout)["runs"]}
    assert DENIED in runs["locked"]["error"] and runs["locked"]["decisions"] == []
    for name in ("a", "b"):
        run = root / name
        assert "error" not in runs[name]
        actions = {d["path"]: d["action"] for d in runs[name]["decisions"]}
        assert actions == {
            "rl_model_1_steps.zip": "delete",
            "rl_model_2_steps.zip": "delete",
            "rl_model_3_steps.zip": "keep",
        }
        assert sorted(p.name for p in run.glob("*.zip")) == ["rl_model_3_steps.zip"]
        trash = run / ".ckptd" / "trash"
        assert sorted(p.name for p in trash.glob("*.zip")) == [
            "rl_model_1_steps.zip",
            "rl_model_2_steps.zip",
        ]
        manifest: Manifest = load_manifest(run / MANIFEST)
        assert {entry.path for entry in manifest.removed} == set(actions) - {"rl_model_3_steps.zip"}
    assert fingerprints(sorted(locked.iterdir())) == untouched
    assert not (locked / ".ckptd").exists() and not (locked / MANIFEST).exists()


def test_manifest_passes_keep_an_unreadable_file_pending_with_its_error(
    tree: Path, user: UnprivilegedUser, legacy_bytes: bytes
) -> None:
    root = owned_dir(tree / "runs")
    run = owned_dir(root / "ppo-1")
    unreadable = put(run / "rl_model_1_steps.pkl", legacy_bytes, owner=ROOT_UID, mode=0)
    config = write_config(
        tree / "ckptd.yaml",
        {
            "version": 1,
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        },
    )
    os.chmod(config, 0o644)
    seen = []
    for _ in range(3):
        result = user.run(["manifest", "-c", str(config)])
        entry = entries(run)[unreadable.name]
        seen.append((result.returncode, entry.state, entry.error))
    # Like the daemon's pipeline records it: pending (so it is retried once readable), with why.
    assert all(
        state == "pending" and error is not None and DENIED in error for _, state, error in seen
    ), seen
    assert len(set(seen)) == 1, seen


def test_prune_skips_a_recorded_file_that_became_unreadable_and_records_why(
    tree: Path, user: UnprivilegedUser, legacy_bytes: bytes
) -> None:
    """The entry the pipeline leaves when a conversion could not finish (kept, no sha256, retry)
    is trusted as it is, so the pass reads the file only to hash it: that read fails here."""
    root = owned_dir(tree / "runs")
    run = owned_dir(root / "ppo-1")
    unreadable = put(run / "rl_model_1_steps.pkl", legacy_bytes, owner=ROOT_UID, mode=0)
    st = unreadable.stat()
    not_converted = ManifestEntry(
        path=unreadable.name,
        step=1,
        size=st.st_size,
        mtime=from_ns(st.st_mtime_ns),
        mtime_ns=st.st_mtime_ns,
        sha256=None,
        format=Format.SB2_PICKLE,
        state="kept",
        error="conversion failed, original left in place: No space left on device (ENOSPC)",
        extra={"retry": True},
    )
    write_manifest(
        run / MANIFEST,
        Manifest(
            run="ppo-1",
            generated_at=from_ns(st.st_mtime_ns),
            policy="default",
            checkpoints=(not_converted,),
        ),
    )
    os.chown(run / MANIFEST, NOBODY, NOBODY)
    untouched = fingerprints([unreadable])
    config = write_config(
        tree / "ckptd.yaml",
        {
            "version": 1,
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
            "policies": {"default": {"keep_last": 1}},
            "delete": {"max_fraction": 1.0},
        },
    )
    os.chmod(config, 0o644)
    recorded = []
    for _ in range(2):
        result = user.run(["prune", "-c", str(config), "--json"])
        (report,) = json.loads(result.stdout)["runs"]
        contract = [
            {key: d[key] for key in ("path", "action", "reasons")} for d in report["decisions"]
        ]
        assert contract == [
            {"path": unreadable.name, "action": "skip", "reasons": ["skip: unreadable"]}
        ], (report, result.stderr)
        recorded.append(entries(run)[unreadable.name])
    entry = recorded[0]
    assert (entry.state, entry.error, entry.extra) == (
        "pending",
        f"cannot read: {DENIED}",
        {"retry": True},
    )
    assert recorded[1] == entry
    assert fingerprints([unreadable]) == untouched


# ---- run-level errors in the pipeline (in-process, as root) ----------------------------------------


def pipeline_run(tmp_path: Path, legacy_bytes: bytes) -> tuple[Config, RunRef, Path]:
    run_dir = tmp_path / "runs" / "ppo-1"
    run_dir.mkdir(parents=True)
    checkpoint = put(run_dir / "rl_model_1_steps.pkl", legacy_bytes, owner=os.getuid())
    config = parse_config(
        {
            "roots": [{"path": str(tmp_path / "runs"), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
        }
    )
    return config, RunRef(tmp_path / "runs", run_dir, "ppo-1"), checkpoint


def test_a_run_locked_by_another_process_is_handed_back_for_a_retry(
    tmp_path: Path, legacy_bytes: bytes
) -> None:
    config, run, checkpoint = pipeline_run(tmp_path, legacy_bytes)
    layout = StateLayout(run.run_dir, config.state_dir)
    with run_lock(layout, timeout=1.0):
        result = process_batch(config, config.roots[0], run, [checkpoint], lock_timeout=0.05)
    assert result.busy and result.deferred == (checkpoint,)
    assert result.error is not None and "locked by another ckptd process" in result.error
    assert checkpoint.exists() and not (run.run_dir / MANIFEST).exists()


def test_an_unusable_state_dir_is_left_to_the_reconciliation_scan(
    tmp_path: Path, legacy_bytes: bytes
) -> None:
    config, run, checkpoint = pipeline_run(tmp_path, legacy_bytes)
    (run.run_dir / config.state_dir).write_text("a file where the state dir belongs\n")
    result = process_batch(config, config.roots[0], run, [checkpoint])
    # Retrying in a few seconds would fail (and log) again: nothing is handed back.
    assert not result.busy and result.deferred == () and result.outcomes == ()
    assert result.error is not None and result.error.startswith("cannot process run: ")
    assert checkpoint.read_bytes() == legacy_bytes


def test_an_unreadable_evaluations_file_fails_that_run_only(
    tree: Path, user: UnprivilegedUser, zip_bytes: bytes
) -> None:
    """keep_best needs the run's evaluations.npz; one nobody cannot read is reported, not fatal."""
    root = owned_dir(tree / "runs")
    base_time = time.time() - 3600
    for name in ("scored", "plain"):
        run = owned_dir(root / name)
        for step in (1, 2, 3):
            path = put(run / f"rl_model_{step}_steps.zip", zip_bytes)
            os.utime(path, (base_time + step, base_time + step))
    evaluations = root / "scored" / "evaluations.npz"
    np.savez(evaluations, timesteps=np.array([1, 2, 3]), results=np.ones((3, 2)))
    os.chown(evaluations, ROOT_UID, ROOT_UID)
    os.chmod(evaluations, 0)
    config = write_config(
        tree / "ckptd.yaml",
        {
            "version": 1,
            "roots": [{"path": str(root), "run_depth": 1, "observer": "polling"}],
            "checkpoints": {"stable_for": "0s"},
            "policies": {
                "default": {
                    "keep_last": 1,
                    "keep_best": {"metric": "mean_reward", "source": "evaluations.npz"},
                    "min_age": "0s",
                }
            },
            "delete": {"max_fraction": 1.0},
        },
    )
    os.chmod(config, 0o644)

    result = user.run(["prune", "-c", str(config), "--dry-run", "--json"])

    assert result.returncode == 1, result
    runs = {run["run"]: run for run in json.loads(result.stdout)["runs"]}
    assert "evaluations.npz" in runs["scored"]["error"] and DENIED in runs["scored"]["error"]
    assert "error" not in runs["plain"] and len(runs["plain"]["decisions"]) == 3
    assert str(evaluations) in result.stderr and "cannot read evaluations" in result.stderr
