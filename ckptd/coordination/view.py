"""What ``ckptd status`` shows of the leases: nodes, the runs each owns, lease ages, stale nodes.

Pure: built from a :class:`ckptd.coordination.leases.Snapshot` (whose ``now`` is the database's),
so every age is measured on one clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptd.coordination.leases import RunId, Snapshot
from ckptd.timefmt import format_utc


@dataclass(frozen=True)
class NodeView:
    node: str
    pid: int
    alive: bool  # renewed within its lease; a stale node "stopped renewing"
    last_seen_seconds: float
    started: str
    runs: int
    roots: tuple[str, ...]


@dataclass(frozen=True)
class RunView:
    run: RunId
    owner: str | None
    token: int
    held_seconds: float | None  # since this owner claimed it
    renewed_seconds: float | None
    expires_in_seconds: float | None  # negative: lapsed, waiting for a taker


@dataclass(frozen=True)
class ClusterView:
    nodes: tuple[NodeView, ...]
    runs: tuple[RunView, ...]
    # Per root, who writes its index and runs the scheduled scrub (leases.ROOT_DUTIES).
    root_duties: tuple[RunView, ...] = ()

    @property
    def stale_nodes(self) -> tuple[NodeView, ...]:
        return tuple(node for node in self.nodes if not node.alive)

    @property
    def unowned(self) -> tuple[RunView, ...]:
        return tuple(run for run in self.runs if run.owner is None)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "nodes": [
                {
                    "node": node.node,
                    "pid": node.pid,
                    "alive": node.alive,
                    "last_seen_seconds": round(node.last_seen_seconds, 1),
                    "started": node.started,
                    "runs": node.runs,
                    "roots": list(node.roots),
                }
                for node in self.nodes
            ],
            "runs": [
                {
                    "root": run.run.root,
                    "run": run.run.run,
                    "owner": run.owner,
                    "token": run.token,
                    "held_seconds": _rounded(run.held_seconds),
                    "renewed_seconds": _rounded(run.renewed_seconds),
                    "expires_in_seconds": _rounded(run.expires_in_seconds),
                }
                for run in self.runs
            ],
            "root_duties": [
                {"root": duty.run.root, "owner": duty.owner, "token": duty.token}
                for duty in self.root_duties
            ],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def cluster_view(snapshot: Snapshot) -> ClusterView:
    """The status view of ``snapshot``; a run whose lease lapsed shows no owner."""
    now = snapshot.now
    runs: list[RunView] = []
    duties: list[RunView] = []
    counts: dict[str, int] = {}
    for run in snapshot.runs:
        held = run.held_at(now)
        owner = run.owner if held else None
        if run.run.is_root_duties:
            duties.append(RunView(run.run, owner, run.token, None, None, None))
            continue
        if owner is not None:
            counts[owner] = counts.get(owner, 0) + 1
        runs.append(
            RunView(
                run=run.run,
                owner=owner,
                token=run.token,
                held_seconds=(now - run.acquired_at).total_seconds()
                if held and run.acquired_at
                else None,
                renewed_seconds=(now - run.renewed_at).total_seconds()
                if held and run.renewed_at
                else None,
                expires_in_seconds=(run.expires_at - now).total_seconds()
                if run.owner is not None and run.expires_at
                else None,
            )
        )
    nodes = tuple(
        NodeView(
            node=record.node,
            pid=record.pid,
            alive=record.alive_at(now),
            last_seen_seconds=(now - record.last_seen).total_seconds(),
            started=format_utc(record.started_at.replace(microsecond=0)),
            runs=counts.get(record.node, 0),
            roots=tuple(sorted(record.roots)),
        )
        for record in snapshot.nodes
    )
    return ClusterView(nodes=nodes, runs=tuple(runs), root_duties=tuple(duties))
