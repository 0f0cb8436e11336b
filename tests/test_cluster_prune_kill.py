"""``kill -9`` of a cluster node in the middle of a prune: three ``ckptd run`` processes on one root,
coordinated through a real PostgreSQL server (tests/cluster_harness.py).

A cluster node deletes a run's checkpoints one at a time, each fenced by its lease: it writes the
trash's note of the move (``.pending.json``, ckptd/retention/trash_journal.py), moves the zip into
the trash, records it in the trash index and removes the note. The node that owns a run is paused
(SIGSTOP) again and again while it prunes the run, from outside, until it is caught with a
checkpoint moved into the trash but not yet recorded in the index; it is killed there (SIGKILL).
Another node must then take the run over within the lease and finish the prune: exactly what the
policy keeps is left, every other checkpoint is in the trash once, under its own name, recorded
with its original path and sha256 (the one the killed node never recorded too, and it restores
byte for byte), no note, temp file or partial file is left, and the manifest lists exactly the
files on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from ckptd.convert.conversion import convert_file
from ckptd.fs.files import TEMP_PREFIX, is_temp_name
from ckptd.manifest.store import load_manifest
from ckptd.retention.deletion import TRASH_INDEX
from ckptd.retention.trash_journal import TRASH_PENDING
from tests.cluster_harness import Cluster, lease_owner
from tests.daemon_harness import REPO
from tests.helpers import sha256_file, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = 6
CHECKPOINTS = 100  # per run; the prune deletes all but KEEP, one fenced deletion at a time
KEEP = 4
LEASE_SECONDS = 3.0  # the harness's lease
NODES = ("n1", "n2", "n3")
# Takeover: the dead node's lease lapses within LEASE_SECONDS of its last renewal, and a survivor's
# coordinator claims it at its next round (every LEASE_SECONDS / 3); the rest is slack for a loaded
# machine (2 cores shared with other work).
TAKEOVER_BOUND = LEASE_SECONDS + LEASE_SECONDS / 3 + 4.0
MANIFEST = "ckptd-manifest.json"
# A temp file is swept by a rescan (every 5 s here) once 30 s old (ckptd.daemon.jobs), plus slack.
STALE_SWEEP_SECONDS = 30 + 5 + 25


@pytest.fixture
def template(tmp_path: Path, legacy_bytes: bytes) -> Path:
    source = tmp_path / "template.pkl"
    source.write_bytes(legacy_bytes)
    return convert_file(source, output=tmp_path / "template.zip").output


@pytest.fixture
def cluster(tmp_path: Path, pg_dsn: str) -> Iterator[Cluster]:
    root = tmp_path / "shared"
    root.mkdir()
    nodes = Cluster(
        workdir=tmp_path,
        root=root,
        dsn=pg_dsn,
        lease=f"{LEASE_SECONDS:g}s",
        extra={
            "schedule": {"prune": "2s", "manifest": None, "rescan": "5s"},
            "policies": {"default": {"keep_last": KEEP, "min_age": "0s"}},
            "delete": {"max_fraction": 1.0},
        },
    )
    yield nodes
    nodes.stop_all()


def checkpoint_name(index: int) -> str:
    return f"rl_model_{(index + 1) * 1000}_steps.zip"


def stage_runs(staging: Path, template: Path) -> dict[str, dict[str, str]]:
    """RUNS run directories of CHECKPOINTS zips each, all different (a zip comment names each),
    written long ago; returns each file's sha256 by run and name."""
    written_at = time.time() - 100_000
    digests: dict[str, dict[str, str]] = {}
    for run_index in range(RUNS):
        run = staging / f"run-{run_index:02d}"
        run.mkdir(parents=True)
        digests[run.name] = {}
        for index in range(CHECKPOINTS):
            path = run / checkpoint_name(index)
            shutil.copyfile(template, path)
            with zipfile.ZipFile(path, "a") as archive:
                archive.comment = f"{run.name} {path.name}".encode()
            os.utime(path, (written_at + index, written_at + index))
            digests[run.name][path.name] = sha256_file(path)
    return digests


def trash_dir(run_dir: Path) -> Path:
    return run_dir / ".ckptd" / "trash"


def trash_entries(run_dir: Path) -> set[str]:
    """The trash's entries (not its index, note or temp files)."""
    with contextlib.suppress(FileNotFoundError):
        return {
            name
            for name in os.listdir(trash_dir(run_dir))
            if name not in (TRASH_INDEX, TRASH_PENDING) and not is_temp_name(name)
        }
    return set()


def index_records(run_dir: Path) -> dict[str, dict[str, str]]:
    """The trash index as written on disk (no recovery applied: what a reader finds recorded)."""
    try:
        document = json.loads((trash_dir(run_dir) / TRASH_INDEX).read_text())
    except FileNotFoundError:
        return {}
    entries: dict[str, dict[str, str]] = document["entries"]
    return entries


def index_temps(run_dir: Path) -> set[str]:
    """Temp files of the trash index being written (ckptd.fs.runfs.RunFS.write_atomic)."""
    with contextlib.suppress(FileNotFoundError):
        return {
            name
            for name in os.listdir(trash_dir(run_dir))
            if is_temp_name(name) and name.startswith(f"{TEMP_PREFIX}{TRASH_INDEX}.")
        }
    return set()


def live_checkpoints(run_dir: Path) -> set[str]:
    return {name for name in os.listdir(run_dir) if name.endswith(".zip")}


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of ``pid`` has stopped (a thread inside fsync stops when it returns)."""

    def stopped() -> bool:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                state = task.joinpath("stat").read_text().rpartition(")")[2].split()[0]
                if state not in ("T", "t"):
                    return False
        return True

    wait_until(stopped, timeout, f"process {pid} stopped", poll=0.001)


@dataclass(frozen=True)
class Caught:
    """Where the owner of ``run`` was killed."""

    node: str
    run: str
    unrecorded: frozenset[str]  # moved into the trash, not yet in its index
    noted: bool  # the trash's note of the move was there
    index_temp: str  # the temp file of the index being written
    lease_left: float  # seconds the dead node's lease still had in the database
    live: int  # checkpoints still in the run


def lease_left(dsn: str, root: Path, run: str) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM expires_at - now()) FROM ckptd.runs"
            " WHERE root = %s AND run = %s",
            (str(root), run),
        ).fetchone()
    assert row is not None
    return float(row[0])


def kill_mid_prune(cluster: Cluster, runs: list[str], timeout: float = 120.0) -> Caught:
    """Pause the owner of a run being pruned until it is caught between moving a checkpoint into
    the trash and recording it, in the middle of writing the trash index (its temp file there),
    with most of the run still to delete; SIGKILL it there."""
    rng = random.Random(13)
    deadline = time.monotonic() + timeout
    pauses = 0
    while time.monotonic() < deadline:
        # A run whose prune has begun and has far to go.
        pruning = [
            run
            for run in runs
            if trash_entries(cluster.root / run)
            and len(live_checkpoints(cluster.root / run)) > KEEP + CHECKPOINTS // 4
        ]
        if not pruning:
            time.sleep(0.005)
            continue
        run = pruning[0]
        run_dir = cluster.root / run
        owner = lease_owner(cluster.dsn, cluster.root, run)
        if owner is None:
            continue
        process = cluster.process(owner)
        process.signal(signal.SIGSTOP)
        pauses += 1
        try:
            wait_stopped(process.proc.pid)
            unrecorded = trash_entries(run_dir) - set(index_records(run_dir))
            temps = sorted(index_temps(run_dir))
            if unrecorded and temps and lease_owner(cluster.dsn, cluster.root, run) == owner:
                caught = Caught(
                    owner,
                    run,
                    frozenset(unrecorded),
                    (trash_dir(run_dir) / TRASH_PENDING).exists(),
                    temps[0],
                    lease_left(cluster.dsn, cluster.root, run),
                    len(live_checkpoints(run_dir)),
                )
                cluster.kill(owner)
                print(f"caught after {pauses} pauses: {caught}")
                return caught
        finally:
            if process.proc.poll() is None:
                process.signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.01))  # land at a different point of the next deletion
    raise AssertionError(f"no owner caught mid-prune with a move unrecorded ({pauses} pauses)")


def leftovers(run_dir: Path) -> list[str]:
    """Temp files and the trash's note anywhere in the run (state dir included)."""
    found = []
    for directory, _, files in os.walk(run_dir):
        for name in files:
            if is_temp_name(name) or name == TRASH_PENDING:
                found.append(os.path.join(directory, name))
    return found


def written_before(cluster: Cluster, runs: list[str], moment: float) -> list[str]:
    """Leftovers in the runs last written at or before ``moment`` (wall clock)."""
    found = []
    for run in runs:
        for path in leftovers(cluster.root / run):
            with contextlib.suppress(FileNotFoundError):  # a write in progress finished
                if os.stat(path).st_mtime <= moment:
                    found.append(path)
    return found


def manifest_matches_disk(run_dir: Path) -> bool:
    try:
        manifest = load_manifest(run_dir / MANIFEST)
    except (OSError, ValueError):
        return False
    return set(manifest.by_path()) == live_checkpoints(run_dir)


def pruned(cluster: Cluster, runs: list[str]) -> bool:
    """Every run pruned to KEEP and recorded so."""
    return all(
        len(live_checkpoints(cluster.root / run)) == KEEP
        and manifest_matches_disk(cluster.root / run)
        for run in runs
    )


def test_a_node_killed_mid_prune_loses_nothing_and_its_runs_are_finished_by_another(
    cluster: Cluster, template: Path, tmp_path: Path
) -> None:
    digests = stage_runs(tmp_path / "staging", template)
    runs = sorted(digests)
    for name in NODES:
        cluster.start(name)
    # Every run appears whole at once: the first prune of each judges all its checkpoints.
    for run in runs:
        os.rename(tmp_path / "staging" / run, cluster.root / run)
    caught = kill_mid_prune(cluster, runs)
    killed_at, killed_wall = time.monotonic(), time.time()
    survivors = set(NODES) - {caught.node}
    # Caught where the journal matters: moved, unrecorded, the note written before the move.
    assert caught.noted, caught
    assert (trash_dir(cluster.root / caught.run) / caught.index_temp).exists()
    assert caught.live > KEEP, caught

    # Another node takes the run over within the lease (plus one coordinator round).
    wait_until(
        lambda: lease_owner(cluster.dsn, cluster.root, caught.run) in survivors,
        30,
        "a survivor owning the run",
        poll=0.01,
    )
    took = time.monotonic() - killed_at
    print(f"taken over {took:.2f} s after the kill (the lease had {caught.lease_left:.2f} s left)")
    assert took < TAKEOVER_BOUND, (took, caught)

    # The survivors finish every run. A run's manifest is written last in its pass, under the run
    # lock: once it lists exactly the KEEP files left, the pass that deleted the last one is over,
    # and it left nothing over in the trash (not even for the rescan's sweep of stale temp files).
    wait_until(lambda: pruned(cluster, runs), 120, "every run pruned and recorded")
    finished = time.monotonic() - killed_at
    print(f"every run pruned and recorded {finished:.1f} s after the kill")
    assert not [found for run in runs for found in leftovers(trash_dir(cluster.root / run))]
    # In a run directory, a temp file from before the kill can only be one the dead node was
    # writing (its other threads work on other runs: a manifest write cut short, the manifest
    # itself whole); the rescan's sweep removes it once stale (30 s). Later ones are the owners'
    # writes in progress (each prune pass records its time in the manifest).
    cut_short = written_before(cluster, runs, killed_wall)
    print(f"left by the dead node in run directories: {cut_short}")
    wait_until(
        lambda: not written_before(cluster, runs, killed_wall),
        STALE_SWEEP_SECONDS,
        "temp files the dead node left swept",
    )

    trashed = Counter((event["run"], event["file"]) for event in cluster.events("trashed"))
    assert trashed and max(trashed.values()) == 1, [item for item, n in trashed.items() if n > 1]
    for run in runs:
        run_dir = cluster.root / run
        names = sorted(digests[run], key=lambda name: int(name.split("_")[2]))
        kept = set(names[-KEEP:])
        assert live_checkpoints(run_dir) == kept, run
        for name in kept:
            assert sha256_file(run_dir / name) == digests[run][name]
        # Every other checkpoint is in the trash once, under its own name (never moved twice:
        # a second move would need a ``.1`` name), whole, and recorded with its origin and hash.
        assert trash_entries(run_dir) == set(names) - kept, run
        records = index_records(run_dir)
        assert set(records) == set(names) - kept, (run, set(names) - kept - set(records))
        for name, record in records.items():
            assert record["original"] == name, (run, record)
            assert record["sha256"] == digests[run][name], (run, name)
            assert sha256_file(trash_dir(run_dir) / name) == digests[run][name], (run, name)
        manifest = load_manifest(run_dir / MANIFEST)
        for entry in manifest.checkpoints:
            assert entry.state == "kept" and entry.sha256 == digests[run][entry.path], entry
        for removed in manifest.removed:  # those the survivor deleted, with their trash paths
            assert removed.trash is not None and (run_dir / removed.trash).exists(), removed
    # The survivors deleted in the caught run after the kill, and the dead node before it.
    in_caught = {node for (run, _), node in _trashers(cluster).items() if run == caught.run}
    assert caught.node in in_caught and in_caught & survivors, in_caught
    assert all(cluster.process(name).proc.poll() is None for name in survivors)

    # The checkpoint the dead node moved but never recorded restores byte for byte.
    name = sorted(caught.unrecorded)[0]
    run_dir = cluster.root / caught.run
    restored = subprocess.run(
        [
            sys.executable,
            "-m",
            "ckptd",
            "trash",
            "restore",
            str(trash_dir(run_dir) / name),
            "-c",
            str(cluster.nodes[sorted(survivors)[0]].config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert restored.returncode == 0, restored.stderr
    assert sha256_file(run_dir / name) == digests[caught.run][name]
    assert name not in trash_entries(run_dir) and name not in index_records(run_dir)


def _trashers(cluster: Cluster) -> dict[tuple[str, str], str]:
    """(run, file) -> the node that logged moving it into the trash."""
    return {(event["run"], event["file"]): event["node"] for event in cluster.events("trashed")}
