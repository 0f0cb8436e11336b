"""``coordination.backend: local``: one daemon per root (README, "Several daemons on one root").

Real ``ckptd run`` processes with hard timeouts: a second daemon on a served root exits 2 with one
line naming the first; the lock dies with its holder, ``kill -9`` included.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ckptd.coordination.local import (
    LOCK_NAME,
    Holder,
    RootLock,
    RootServers,
    node_name,
    read_holder,
    who_serves,
)
from ckptd.errors import RootBusyError, UnsafePathError
from ckptd.timefmt import parse_utc
from tests.daemon_harness import REPO, DaemonProcess, NotifySocket, write_config

pytestmark = pytest.mark.slow


def config_for(tmp_path: Path, name: str, *roots: Path, node: str | None = None) -> Path:
    config: dict[str, Any] = {
        "roots": [
            {"path": str(root), "observer": "polling", "poll_interval": "1s"} for root in roots
        ],
        "checkpoints": {"stable_for": "1s"},
        "schedule": {"prune": None, "manifest": None, "rescan": None},
    }
    if node is not None:
        config["coordination"] = {"node": node}
    return write_config(tmp_path / f"{name}.yaml", config)


def second_daemon(config: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    return subprocess.run(
        [sys.executable, "-m", "ckptd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def test_second_daemon_on_a_served_root_exits_2_naming_the_first(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    root = tmp_path / "runs"
    (root / "run-a").mkdir(parents=True)
    first = DaemonProcess(
        config_for(tmp_path, "first", root, node="node-a"), tmp_path / "first.log", notify_socket
    )
    try:
        first.wait_ready()
        # A second config that names the same root among others, under another node name.
        other = tmp_path / "other"
        other.mkdir()
        result = second_daemon(config_for(tmp_path, "second", other, root, node="node-b"))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        line = lines[0]
        assert line.startswith(f"ckptd: {root}: served by another ckptd daemon (pid ")
        assert f"pid {first.proc.pid} on node-a, since " in line
        assert "Traceback" not in result.stderr
        # The second daemon took nothing: the other root it had locked first is free again.
        assert read_holder(other, ".ckptd") is None
        holder = read_holder(root, ".ckptd")
        assert holder is not None and (holder.pid, holder.node) == (first.proc.pid, "node-a")
        assert first.proc.poll() is None  # the first daemon serves on
    finally:
        assert first.stop() == 0
    # A clean stop lets go: nobody holds the root any more.
    assert read_holder(root, ".ckptd") is None


def test_a_killed_daemon_leaves_no_stale_lock(tmp_path: Path, notify_socket: NotifySocket) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    config = config_for(tmp_path, "c", root)
    first = DaemonProcess(config, tmp_path / "first.log", notify_socket)
    try:
        first.wait_ready()
        first.signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.kill()
    # The kernel dropped the flock with the process: a new daemon starts at once, no cleanup.
    second = DaemonProcess(config, tmp_path / "second.log", notify_socket)
    try:
        second.wait_ready()
        holder = read_holder(root, ".ckptd")
        assert holder is not None and holder.pid == second.proc.pid
        assert holder.node == os.uname().nodename  # node defaults to the host name
    finally:
        assert second.stop() == 0


def test_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    holder = Holder(pid=4242, node="n1", since=parse_utc("2026-12-07T12:00:00Z"))
    lock = RootLock(tmp_path, ".ckptd")
    lock.acquire(holder)
    try:
        assert read_holder(tmp_path, ".ckptd") == holder
        with pytest.raises(RootBusyError) as caught:
            RootLock(tmp_path, ".ckptd").acquire(
                Holder(pid=1, node="n2", since=parse_utc("2026-12-07T13:00:00Z"))
            )
        assert "pid 4242 on n1, since 2026-12-07T12:00:00Z" in str(caught.value)
    finally:
        lock.release()
    assert read_holder(tmp_path, ".ckptd") is None
    again = RootLock(tmp_path, ".ckptd")
    again.acquire(holder)
    again.release()


def test_lock_never_goes_through_a_planted_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / ".ckptd").symlink_to(elsewhere)
    holder = Holder(pid=1, node="n", since=parse_utc("2026-12-07T12:00:00Z"))
    with pytest.raises(UnsafePathError, match="not a directory"):
        RootLock(root, ".ckptd").acquire(holder)
    assert not (elsewhere / LOCK_NAME).exists()
    (root / ".ckptd").unlink()
    (root / ".ckptd").mkdir()
    (root / ".ckptd" / LOCK_NAME).symlink_to(elsewhere / "target")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        RootLock(root, ".ckptd").acquire(holder)
    assert not (elsewhere / "target").exists()


def test_status_with_a_local_config_names_a_cluster_holding_the_root_shared(
    tmp_path: Path,
) -> None:
    """A root that a cluster's daemons serve (the lock held shared by another process) is not
    "served by no daemon" for ``ckptd status`` on a ``local`` config."""
    root = tmp_path / "runs"
    (root / "run-a").mkdir(parents=True)
    config = config_for(tmp_path, "local", root)
    status = [sys.executable, "-m", "ckptd", "status", "-c", str(config)]
    holding = (
        "import sys\n"
        "from pathlib import Path\n"
        "from ckptd.coordination.local import RootLock, new_holder\n"
        "RootLock(Path(sys.argv[1]), '.ckptd', shared=True).acquire(new_holder('n1'))\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    node = subprocess.Popen(
        [sys.executable, "-c", holding, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert node.stdout is not None and node.stdout.readline() == "held\n"
        shown = subprocess.run(status, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if x.startswith(f"{root}: served by"))
        assert line.startswith(
            f"{root}: served by ckptd daemons with coordination.backend: postgres (a cluster)"
        ), line
        assert "ckptd status with their config" in line
        as_json = subprocess.run(
            [*status, "--json"], capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert as_json.returncode == 0, as_json.stderr
        roots = json.loads(as_json.stdout)["coordination"]["roots"]
        assert roots == [{"root": str(root), "served_by": None, "cluster": True}]
        assert read_holder(root, ".ckptd") is None  # no local daemon among them
    finally:
        node.communicate(timeout=10)  # its stdin closed: it lets go and ends
    # The cluster gone, nobody serves it; the probe itself left nothing held.
    free = subprocess.run([*status, "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    roots = json.loads(free.stdout)["coordination"]["roots"]
    assert roots == [{"root": str(root), "served_by": None, "cluster": False}]
    assert who_serves(root, ".ckptd") == RootServers()
    lock = RootLock(root, ".ckptd")  # a local daemon could take it now
    lock.acquire(Holder(pid=1, node="n", since=parse_utc("2026-12-07T12:00:00Z")))
    assert who_serves(root, ".ckptd").holder == Holder(
        pid=1, node="n", since=parse_utc("2026-12-07T12:00:00Z")
    )
    lock.release()


@pytest.mark.parametrize("probe", [read_holder, who_serves])
def test_an_instant_exclusive_hold_never_names_a_dead_daemon(tmp_path: Path, probe: Any) -> None:
    """Another ``ckptd status``'s probe holds the lock exclusively for an instant; a daemon killed
    with ``kill -9`` left its name in the file. A status reading the lock at that instant named
    the dead daemon; it now asks again and finds nobody."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = Holder(pid=gone.pid, node=node_name(None), since=parse_utc("2026-12-07T12:00:00Z"))
    state = tmp_path / ".ckptd"
    state.mkdir()
    (state / LOCK_NAME).write_bytes(stale.to_json())
    instant = os.open(state / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(instant, fcntl.LOCK_EX)  # the other status's probe
    let_go = threading.Timer(0.08, fcntl.flock, (instant, fcntl.LOCK_UN))
    let_go.start()
    try:
        found = probe(tmp_path, ".ckptd")
    finally:
        let_go.join()
        os.close(instant)
    assert found in (None, RootServers())
