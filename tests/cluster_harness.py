"""Several real ``ckptd run`` processes on one root, coordinated through a real PostgreSQL server.

Each node is a ``python -m ckptd run`` with its own config (``coordination.backend: postgres``, its
own ``node`` name, a short lease, JSON logs) and its own notify socket; the events it logs
(``event``/``run``/``file``/``node``) are read back from its log file, who owns a run from the
database itself. Used by tests/test_cluster*.py and benchmarks/cluster.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.daemon_harness import DaemonProcess, NotifySocket, write_config


@dataclass
class Node:
    name: str
    config: Path
    log: Path
    notify: NotifySocket
    process: DaemonProcess | None = None


@dataclass
class Cluster:
    """Nodes named ``n1``..``nN`` on ``root``; ``dsn`` reaches the coordination database."""

    workdir: Path
    root: Path
    dsn: str
    lease: str = "3s"
    stable_for: str = "1s"
    extra: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(self, name: str) -> Node:
        config: dict[str, Any] = {
            "roots": [{"path": str(self.root), "run_depth": 1}],
            "checkpoints": {"stable_for": self.stable_for},
            "schedule": {"prune": None, "manifest": None, "rescan": "10s"},
            "log": {"level": "info", "format": "json"},
            "coordination": {
                "backend": "postgres",
                "dsn": self.dsn,
                "node": name,
                "lease": self.lease,
            },
            **self.extra,
        }
        node = Node(
            name=name,
            config=write_config(self.workdir / f"{name}.yaml", config),
            log=self.workdir / f"{name}.log",
            notify=NotifySocket(),
        )
        self.nodes[name] = node
        return node

    def start(self, name: str, *, wait: bool = True, timeout: float = 30.0) -> DaemonProcess:
        node = self.nodes[name] if name in self.nodes else self.add(name)
        if node.process is not None:
            node.process.kill()
        node.process = DaemonProcess(node.config, node.log, node.notify)
        if wait:
            node.process.wait_ready(timeout)
        return node.process

    def process(self, name: str) -> DaemonProcess:
        process = self.nodes[name].process
        assert process is not None, name
        return process

    def kill(self, name: str, signum: signal.Signals = signal.SIGKILL) -> None:
        process = self.process(name)
        process.signal(signum)
        if signum == signal.SIGKILL:
            process.proc.wait(10)

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, node in self.nodes.items():
            if node.process is None:
                continue
            if node.process.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.proc.pid, signal.SIGCONT)  # a paused node stops too
            try:
                codes[name] = node.process.stop(timeout=10)
            except Exception:
                codes[name] = None
            node.notify.close()
        return codes

    def log_objects(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every JSON object logged by the nodes (a line that is not one is skipped)."""
        found: list[dict[str, Any]] = []
        for name in names if names is not None else self.nodes:
            log = self.nodes[name].log
            if not log.exists():
                continue
            for line in log.read_text(errors="replace").splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    found.append(obj)
        return found

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            obj
            for obj in self.log_objects()
            if obj.get("event") is not None and (kind is None or obj["event"] == kind)
        ]


def write_burst(root: Path, template: bytes, runs: int, files: int) -> list[Path]:
    """``files`` legacy checkpoints spread over ``runs`` run directories, each renamed into place."""
    written: list[Path] = []
    for index in range(files):
        run = root / f"run-{index % runs:02d}"
        run.mkdir(parents=True, exist_ok=True)
        target = run / f"rl_model_{index * 100}_steps.pkl"
        temp = run / f"{target.name}.tmp"
        temp.write_bytes(template)
        os.replace(temp, target)
        written.append(target)
    return written


def lease_owner(dsn: str, root: Path, run: str) -> str | None:
    """The node whose lease on ``run`` is current, from the coordination database itself."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT owner FROM ckptd.runs WHERE root = %s AND run = %s AND expires_at > now()",
            (str(root), run),
        ).fetchone()
    return None if row is None else str(row[0])
