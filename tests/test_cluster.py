"""Three ``ckptd run`` processes on one root, coordinated through a real PostgreSQL server.

Who did what is read from the nodes' JSON logs (``event``, ``run``, ``file``, ``node``): every
legacy checkpoint of a burst is converted exactly once across the nodes, a node killed with
``kill -9`` has its runs taken over within the lease, a node paused past its lease does not act on
the runs it lost, and a database restart in the middle of a burst loses and duplicates nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.coordination.leases import ROOT_DUTIES, RunId, preferred_node
from ckptd.fs.files import TEMP_PREFIX
from ckptd.manifest.root_index import INDEX_FILENAME
from ckptd.manifest.store import load_index, load_manifest
from tests.cluster_harness import Cluster, lease_owner, write_burst
from tests.daemon_harness import REPO, DaemonProcess, NotifySocket, wait_until, write_config
from tests.pg_harness import PgServer
from tests.sb2_fixtures import (
    make_ppo2_checkpoint,
    ppo2_data,
    ppo2_params,
    stand_ins,
    write_checkpoint,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = 6


@pytest.fixture
def legacy(tmp_path: Path) -> bytes:
    with stand_ins():
        return make_ppo2_checkpoint(tmp_path / "template.pkl").read_bytes()


@pytest.fixture
def cluster(tmp_path: Path, pg_dsn: str) -> Iterator[Cluster]:
    root = tmp_path / "shared"
    root.mkdir()
    for index in range(RUNS):
        (root / f"run-{index:02d}").mkdir()
    nodes = Cluster(workdir=tmp_path, root=root, dsn=pg_dsn)
    yield nodes
    nodes.stop_all()


def converted_files(cluster: Cluster) -> Counter[tuple[str, str]]:
    """(run, original file) of every conversion that wrote a zip, counted over all nodes."""
    return Counter((event["run"], event["file"]) for event in cluster.events("converted"))


def all_converted(root: Path, written: list[Path]) -> bool:
    return all(path.with_suffix(".zip").exists() and not path.exists() for path in written)


def manifests_consistent(root: Path, written: list[Path]) -> bool:
    by_run: dict[Path, set[str]] = {}
    for path in written:
        by_run.setdefault(path.parent, set()).add(path.stem)
    for run, stems in by_run.items():
        try:
            entries = load_manifest(run / "ckptd-manifest.json").by_path()
        except (OSError, ValueError):
            return False
        for stem in stems:
            kept = entries.get(f"{stem}.zip")
            if kept is None or kept.state != "kept" or kept.converted_from != f"{stem}.pkl":
                return False
    return True


def write_more(root: Path, legacy: bytes, *, first: int, count: int) -> list[Path]:
    """``count`` more checkpoints over the runs, steps from ``first`` * 100 on."""
    written = []
    for index in range(count):
        target = root / f"run-{index % RUNS:02d}" / f"rl_model_{(first + index) * 100}_steps.pkl"
        temp = target.with_name(target.name + ".tmp")
        temp.write_bytes(legacy)
        temp.rename(target)
        written.append(target)
    return written


def start_three(cluster: Cluster) -> None:
    for name in ("n1", "n2", "n3"):
        cluster.start(name)


def owners_per_node(cluster: Cluster) -> Counter[str]:
    return Counter(event["node"] for event in cluster.events("converted"))


def test_a_burst_is_converted_exactly_once_across_three_nodes(
    cluster: Cluster, legacy: bytes
) -> None:
    start_three(cluster)
    written = write_burst(cluster.root, legacy, RUNS, 120)
    wait_until(lambda: all_converted(cluster.root, written), 120, "every file converted")
    wait_until(lambda: manifests_consistent(cluster.root, written), 30, "manifests")
    counts = converted_files(cluster)
    expected = {(path.parent.name, path.name) for path in written}
    assert set(counts) == expected
    assert max(counts.values()) == 1, [item for item, n in counts.items() if n > 1]
    # The work was spread: more than one node converted something, and each event names its node.
    assert len(owners_per_node(cluster)) >= 2, owners_per_node(cluster)
    assert not [obj for obj in cluster.log_objects() if "vanished" in str(obj.get("msg"))]


def test_a_killed_node_s_runs_are_taken_over_within_the_lease(
    cluster: Cluster, legacy: bytes
) -> None:
    start_three(cluster)
    first = write_burst(cluster.root, legacy, RUNS, 30)
    wait_until(lambda: all_converted(cluster.root, first), 120, "first burst converted")
    cluster.kill("n3")
    killed_at = time.monotonic()
    # A second burst after the kill: n3's runs must be served by n1 and n2.
    later = write_more(cluster.root, legacy, first=1000, count=RUNS * 3)
    wait_until(lambda: all_converted(cluster.root, later), 60, "files of every run converted")
    took = time.monotonic() - killed_at
    # Lease 3 s: a takeover plus the conversions; a loose bound (figures: benchmarks/cluster.py).
    assert took < 60, took
    counts = converted_files(cluster)
    assert max(counts.values()) == 1
    after = {(p.parent.name, p.name) for p in later}
    assert {
        event["node"]
        for event in cluster.events("converted")
        if (event["run"], event["file"]) in after
    } <= {"n1", "n2"}
    wait_until(lambda: manifests_consistent(cluster.root, [*first, *later]), 30, "manifests")

    # ckptd status shows the dead node as one that stopped renewing, its runs with new owners.
    config = cluster.nodes["n1"].config

    def n3_alive() -> bool:
        nodes = status_coordination(config)["nodes"]
        return bool({n["node"]: n for n in nodes}["n3"]["alive"])

    wait_until(lambda: not n3_alive(), 20, "n3 stale")
    status = status_coordination(config)
    assert status["backend"] == "postgres" and status["error"] is None
    assert {n["node"]: n["alive"] for n in status["nodes"]} == {"n1": True, "n2": True, "n3": False}
    assert {run["owner"] for run in status["runs"]} <= {"n1", "n2"}
    assert len(status["runs"]) == RUNS
    assert all(run["expires_in_seconds"] > 0 for run in status["runs"])


def test_a_paused_node_does_not_act_on_runs_it_lost(cluster: Cluster, legacy: bytes) -> None:
    start_three(cluster)
    time.sleep(3)  # the runs spread over the three nodes
    # Every node sees the burst and starts waiting for the files to settle (stable_for 1 s);
    # n2 is stopped before they do, with the files of its runs still in hand.
    written = write_burst(cluster.root, legacy, RUNS, 36)
    time.sleep(0.3)
    cluster.kill("n2", signal.SIGSTOP)
    try:
        # Well past its 3 s lease: n1 and n3 take its runs over and convert everything.
        wait_until(lambda: all_converted(cluster.root, written), 120, "converted by n1 and n3")
        time.sleep(3)
    finally:
        cluster.kill("n2", signal.SIGCONT)
    # Awake again with files it had been about to convert, n2 finds its leases gone and acts
    # on nothing it lost; later files are still served by somebody, exactly once.
    time.sleep(4)
    later = write_more(cluster.root, legacy, first=3000, count=RUNS * 2)
    wait_until(lambda: all_converted(cluster.root, later), 60, "later files converted")
    counts = converted_files(cluster)
    assert max(counts.values()) == 1
    before = {(path.parent.name, path.name) for path in written}
    assert not [
        event
        for event in cluster.events()
        if event["node"] == "n2" and (event["run"], event["file"]) in before
    ]
    assert cluster.process("n2").proc.poll() is None  # it serves on
    wait_until(lambda: manifests_consistent(cluster.root, [*written, *later]), 30, "manifests")


def run_briefly(config: Path) -> subprocess.CompletedProcess[str]:
    """``ckptd run`` expected to refuse to start (hard timeout: it must not serve)."""
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "ckptd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def status_coordination(config: Path) -> dict[str, Any]:
    """The coordination part of ``ckptd status --json`` on ``config``, from a real process."""
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", "status", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    coordination: dict[str, Any] = json.loads(done.stdout)["coordination"]
    return coordination


def local_status(config: Path) -> dict[str, Any]:
    """The one root's line of ``ckptd status --json`` (its coordination part) on ``config``."""
    coordination = status_coordination(config)
    assert coordination["backend"] == "local"
    (root,) = coordination["roots"]
    assert isinstance(root, dict)
    return root


def test_a_local_daemon_and_a_cluster_never_serve_one_root_together(
    cluster: Cluster, tmp_path: Path
) -> None:
    local = write_config(
        tmp_path / "local.yaml",
        {
            "roots": [{"path": str(cluster.root), "run_depth": 1}],
            "checkpoints": {"stable_for": "1s"},
            "schedule": {"prune": None, "manifest": None, "rescan": None},
            "coordination": {"backend": "local", "node": "solo"},
        },
    )
    cluster.start("n1")
    cluster.start("n2")  # two nodes of a cluster share the root
    refused = run_briefly(local)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert (
        f"ckptd: {cluster.root}: served by ckptd daemons with coordination.backend: postgres"
        in (refused.stderr)
    )
    # ckptd status on the local config says who serves the root, and where to see the nodes.
    served = local_status(local)
    assert served == {"root": str(cluster.root), "served_by": None, "cluster": True}
    cluster.stop_all()
    assert local_status(local) == {"root": str(cluster.root), "served_by": None, "cluster": False}

    notify = NotifySocket()
    solo = DaemonProcess(local, tmp_path / "solo.log", notify)
    try:
        solo.wait_ready()
        node = cluster.add("n3")
        refused = run_briefly(node.config)
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert line.startswith(
            f"ckptd: {cluster.root}: served by a ckptd daemon with coordination.backend: local"
            f" (pid {solo.proc.pid} on solo, since "
        ), line
        assert solo.proc.poll() is None  # it serves on
        served = local_status(local)
        assert served["served_by"]["pid"] == solo.proc.pid and served["cluster"] is False
        # ckptd status on the cluster's config names the local daemon that keeps its nodes off.
        (root,) = status_coordination(node.config)["roots"]
        assert root["served_by"]["pid"] == solo.proc.pid and root["cluster"] is False
        text = subprocess.run(
            [sys.executable, "-m", "ckptd", "status", "-c", str(node.config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert text.returncode == 0, text.stderr
        assert f"backend: local (pid {solo.proc.pid} on solo, since " in text.stdout, text.stdout
    finally:
        assert solo.stop() == 0
        notify.close()
    cluster.start("n3")  # the root is free for the cluster again


def big_legacy(path: Path, megabytes: int) -> Path:
    """A legacy checkpoint with an extra ``megabytes`` MB array: its conversion takes a while."""
    params = ppo2_params()
    params["model/big:0"] = np.random.default_rng(1).standard_normal(megabytes * 262_144)
    params["model/big:0"] = params["model/big:0"].astype(np.float32)
    with stand_ins():
        return write_checkpoint(path, ppo2_data(), params)


def test_a_node_paused_mid_conversion_renames_nothing_after_its_lease_lapsed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The paused node holds the run mid-conversion: its parser child writes the zip's temp file
    and then has to ask the node (paused) whether it may rename; on waking, the node's lease is
    gone and the answer is no. With fencing disabled the woken node renames the zip, moves the
    original and writes the manifest of a run another node owns (this test then fails)."""
    cluster.start("n1")
    cluster.start("n2")
    runs = [f"run-{index:02d}" for index in range(RUNS)]
    wait_until(
        lambda: {lease_owner(cluster.dsn, cluster.root, run) for run in runs} == {"n1", "n2"},
        30,
        "the runs spread over both nodes",
    )
    run = next(run for run in runs if lease_owner(cluster.dsn, cluster.root, run) == "n2")
    run_dir = cluster.root / run
    source = big_legacy(tmp_path / "big.pkl", 192)
    target = run_dir / "rl_model_100_steps.pkl"
    converted = target.with_suffix(".zip")
    os.replace(source, target)

    def writing_zip() -> bool:
        return any(name.startswith(TEMP_PREFIX + converted.name) for name in os.listdir(run_dir))

    wait_until(writing_zip, 60, "n2 writing the zip", poll=0.002)
    cluster.kill("n2", signal.SIGSTOP)
    try:
        paused = time.monotonic()
        # Paused before its child asked for the go-ahead, the zip cannot appear (the child
        # writes and verifies the temp file, then waits for the paused node's answer).
        time.sleep(1)
        assert not converted.exists(), "n2 said go before it was paused: use a bigger file"
        # n2's lease lapses and n1 takes the run over (n2's run lock keeps n1's batch waiting).
        wait_until(lambda: lease_owner(cluster.dsn, cluster.root, run) == "n1", 30, "n1 owns it")
        time.sleep(1)  # n1's rescan finds the file and its batch waits for the run lock
        assert time.monotonic() - paused > 3  # past the lease
    finally:
        cluster.kill("n2", signal.SIGCONT)
    # n2 wakes with its child waiting for the go-ahead: it says no; n1 converts the file.
    wait_until(lambda: converted.exists() and not target.exists(), 120, "converted by n1")

    def events() -> list[dict[str, Any]]:
        return [e for e in cluster.events() if e["run"] == run and e["file"] == target.name]

    wait_until(events, 30, "the conversion's event")  # logged just after the files moved
    events_now = events()
    assert [(e["event"], e["node"]) for e in events_now] == [("converted", "n1")], events_now
    refusals = [
        obj
        for obj in cluster.log_objects(["n2"])
        if obj.get("run") == run and "not acting on the run" in str(obj.get("msg"))
    ]
    assert refusals, "n2 did not say it stopped acting on the run"
    assert not writing_zip()  # n2's child removed its temp file (n1 wrote its own zip)
    wait_until(lambda: manifests_consistent(cluster.root, [target]), 30, "the manifest")
    assert cluster.process("n2").proc.poll() is None  # it serves on


def index_runs(root: Path) -> set[str]:
    try:
        return {run.run for run in load_index(root / INDEX_FILENAME).runs}
    except (OSError, ValueError):
        return set()


def logged_by(cluster: Cluster, text: str, since: str = "") -> Counter[str]:
    """Nodes that logged a message containing ``text`` (at or after the timestamp ``since``)."""
    return Counter(
        str(obj.get("node"))
        for obj in cluster.log_objects()
        if text in str(obj.get("msg")) and str(obj.get("ts")) >= since
    )


def test_one_node_writes_the_root_index_and_runs_the_scrub(cluster: Cluster, legacy: bytes) -> None:
    cluster.extra = {"schedule": {"prune": None, "manifest": "2s", "rescan": "10s", "scrub": "3s"}}
    start_three(cluster)
    # n1 starts first and takes everything; the root's duties settle on the node they prefer.
    holder = preferred_node(RunId(str(cluster.root), ROOT_DUTIES), ["n1", "n2", "n3"])
    assert holder is not None
    wait_until(
        lambda: lease_owner(cluster.dsn, cluster.root, ROOT_DUTIES) == holder, 30, "duties settled"
    )
    since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    written = write_burst(cluster.root, legacy, RUNS, RUNS * 2)
    wait_until(lambda: all_converted(cluster.root, written), 120, "every file converted")
    runs = {f"run-{index:02d}" for index in range(RUNS)}
    wait_until(lambda: index_runs(cluster.root) == runs, 60, "the root index lists every run")
    wait_until(
        lambda: sum(logged_by(cluster, "scrub: 6 runs", since).values()) >= 2, 60, "two scrubs"
    )
    # Only the holder writes the index and scrubs, every run; the others say they leave it.
    writers = logged_by(cluster, "root index written", since)
    scrubbers = logged_by(cluster, "scrub: 6 runs", since)
    assert set(writers) == set(scrubbers) == {holder}, (writers, scrubbers)
    others = logged_by(cluster, "another node holds the scrub", since)
    assert holder not in others and sum(others.values()) >= 2, others

    # The holder dies: another node takes the duties over and keeps the index current.
    cluster.kill(holder)
    (cluster.root / "run-new").mkdir()
    wait_until(lambda: "run-new" in index_runs(cluster.root), 60, "the new run in the index")
    # The writer logs right after its write: wait for the line, not just for the file.
    wait_until(
        lambda: set(logged_by(cluster, "root index written", since)) - {holder},
        10,
        "another node's index write logged",
    )
    after = logged_by(cluster, "root index written", since)
    assert set(after) - {holder}, after


def test_a_database_restart_mid_burst_loses_and_duplicates_nothing(
    cluster: Cluster, pg_server: PgServer, legacy: bytes
) -> None:
    start_three(cluster)
    first = write_burst(cluster.root, legacy, RUNS, 30)
    pg_server.stop("fast")
    try:
        stopped = time.monotonic()
        outage = write_more(cluster.root, legacy, first=2000, count=RUNS * 3)
        time.sleep(5)
        # Nothing is converted or deleted in shared runs while the database is away.
        assert all(path.exists() for path in outage)
        for name in ("n1", "n2", "n3"):
            cluster.nodes[name].notify.collect()
        said = [
            obj
            for obj in cluster.log_objects()
            if "coordination unavailable" in str(obj.get("msg"))
        ]
        assert 1 <= len(said) <= 3, said  # once per node, not once per event
        wait_until(
            lambda: any(
                "coordination unavailable" in line for line in cluster.nodes["n1"].notify.lines()
            ),
            15,
            "STATUS= saying so",
        )
        assert time.monotonic() - stopped < 60
    finally:
        pg_server.start()
    everything = [*first, *outage]
    wait_until(lambda: all_converted(cluster.root, everything), 120, "converted after the outage")
    wait_until(lambda: manifests_consistent(cluster.root, everything), 30, "manifests")
    counts = converted_files(cluster)
    assert set(counts) == {(p.parent.name, p.name) for p in everything}
    assert max(counts.values()) == 1
