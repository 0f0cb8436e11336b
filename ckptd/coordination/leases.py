"""Per-run leases: the model, the store interface and the pure plan of which runs a node takes.

Pure: no I/O, no clock (times come from the store, whose clock is the database's, so nodes with
skewed clocks still agree). ``ckptd.coordination.pgstore`` is the PostgreSQL store.

The rules (README, "Several daemons on one root"):

* A run has at most one owner at a time: a lease that its owner renews within ``lease``. Claiming a
  run gives it a new **fencing token**, larger than every token handed out before (one database
  sequence), so a token names one tenure: an owner that lost its lease and did not notice (paused
  past it) holds a token the store no longer accepts.
* Runs are spread over the live nodes (those that renewed within ``lease``) by rendezvous hashing:
  each run prefers the live node with the highest ``hash(run, node)``. Adding or losing a node moves
  only the runs that prefer it, and every node computes the same preference from the same list.
* A free run (never owned, released, or its owner's lease expired) is claimed by its preferred
  node; one that stayed free for a whole lease is claimed by any node, so a run is never left
  alone because two nodes briefly disagreed on who is alive.
* An owner hands a run back (releases it) when another live node is preferred, a few per round and
  only while the run is idle, so a node that joins takes its share without a stampede.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

# Handing back more than this many runs per round would make a joining node's arrival a stampede.
HANDOFF_PER_ROUND = 8
# The lease on a root's own jobs (its index, the scheduled scrub), held like a run's under this
# name, which no run has: a run's path relative to its root never starts with "/".
ROOT_DUTIES = "/"


@dataclass(frozen=True, order=True)
class RunId:
    """A run as every node names it: its root (as configured: every node mounts the shared root at
    the same path) and its path relative to that root."""

    root: str
    run: str

    def __str__(self) -> str:
        if self.run == ROOT_DUTIES:
            return f"{self.root} (the root's index and scrub)"
        return f"{self.root}/{self.run}" if self.run != "." else self.root

    @property
    def is_root_duties(self) -> bool:
        return self.run == ROOT_DUTIES


@dataclass(frozen=True)
class Identity:
    """One daemon process: its node name, and an instance id new at every start (so a restarted
    daemon never mistakes the leases of its dead predecessor for its own)."""

    node: str
    instance: str
    pid: int


@dataclass(frozen=True)
class Lease:
    """This node's hold on one run: act on the run only while the store still accepts ``token``."""

    run: RunId
    instance: str
    token: int
    expires_at: datetime


@dataclass(frozen=True)
class RunLease:
    """A run as the store records it (every node's view, for planning and ``ckptd status``)."""

    run: RunId
    owner: str | None  # node name
    instance: str | None
    token: int
    expires_at: datetime | None  # None: never owned
    acquired_at: datetime | None
    renewed_at: datetime | None
    free_since: datetime  # when it was last released or expired, else when first registered

    def held_at(self, now: datetime) -> bool:
        return self.owner is not None and self.expires_at is not None and self.expires_at > now


@dataclass(frozen=True)
class NodeRecord:
    """A daemon that announced itself; ``alive`` when it renewed within its lease."""

    node: str
    instance: str
    pid: int
    started_at: datetime
    last_seen: datetime
    lease: timedelta
    roots: frozenset[str]  # the roots it serves: only those runs may prefer it

    def alive_at(self, now: datetime) -> bool:
        return self.last_seen + self.lease > now


@dataclass(frozen=True)
class Hint:
    """A path in a run seen by a node that does not own it, for the owner to look at."""

    run: RunId
    path: str  # relative to the run
    from_node: str


@dataclass(frozen=True)
class Snapshot:
    """Everything the store knows, read in one transaction, at the store's ``now``."""

    now: datetime
    nodes: tuple[NodeRecord, ...]
    runs: tuple[RunLease, ...]

    def live_nodes(self, root: str | None = None) -> list[str]:
        """Nodes that renewed within their lease (and serve ``root``, when given)."""
        return sorted(
            record.node
            for record in self.nodes
            if record.alive_at(self.now) and (root is None or root in record.roots)
        )


class LeaseStore(Protocol):
    """Where leases live; every method is one short transaction. Unreachable: StoreUnavailable."""

    def announce(self, me: Identity, lease: timedelta, roots: Iterable[str]) -> None:
        """Record this daemon as the live holder of its node name (at start)."""

    def register_runs(self, runs: Iterable[RunId]) -> None:
        """Make runs known to every node (idempotent)."""

    def renew(self, me: Identity, lease: timedelta) -> list[Lease]:
        """Extend every lease ``me`` still holds; the leases kept (an expired one is not revived).

        CoordinationError if another daemon has since announced itself under this node name."""

    def claim(self, run: RunId, me: Identity, lease: timedelta) -> Lease | None:
        """Take ``run`` if it is free, with a new token; None if another node holds it."""

    def release(self, lease: Lease) -> None:
        """Give ``lease``'s run back (no-op if the token is no longer current)."""

    def valid(self, lease: Lease, margin: timedelta) -> bool:
        """Whether ``lease`` is current and has at least ``margin`` left: the fencing check."""

    def snapshot(self) -> Snapshot:
        """Nodes and runs, for planning and status."""

    def hint(self, hints: Sequence[Hint]) -> None:
        """Pass ``hints`` on to the owners of their runs (a path already hinted counts once)."""

    def take_hints(self, me: Identity) -> list[Hint]:
        """Remove and return the hints for runs ``me`` holds."""

    def close(self) -> None:
        """Release the connection."""


def preference(run: RunId, node: str) -> int:
    """Rendezvous weight of ``node`` for ``run`` (stable across processes and machines)."""
    digest = hashlib.blake2b(f"{run.root}\0{run.run}\0{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preferred_node(run: RunId, candidates: Sequence[str]) -> str | None:
    """The node ``run`` prefers among ``candidates`` (live nodes serving its root); None if none."""
    if not candidates:
        return None
    return max(candidates, key=lambda node: (preference(run, node), node))


@dataclass(frozen=True)
class Plan:
    """What one node does this round: runs to claim, and leases to hand back."""

    claim: tuple[RunId, ...] = ()
    release: tuple[RunId, ...] = field(default=())


def plan_round(
    me: Identity,
    roots: frozenset[str],
    snapshot: Snapshot,
    lease: timedelta,
    *,
    busy: frozenset[RunId] = frozenset(),
) -> Plan:
    """Which runs ``me`` (serving ``roots``) claims and hands back now (module docstring).

    ``busy``: runs with work in flight here, never handed back mid-batch.
    """
    now = snapshot.now
    candidates: dict[str, list[str]] = {}
    claim: list[RunId] = []
    release: list[RunId] = []
    for run in snapshot.runs:
        root = run.run.root
        if root not in roots:
            continue
        if root not in candidates:
            live = snapshot.live_nodes(root)
            # This node counts even before its first announcement is visible.
            candidates[root] = live if me.node in live else sorted([*live, me.node])
        preferred = preferred_node(run.run, candidates[root])
        if run.held_at(now):
            if (
                run.instance == me.instance
                and preferred != me.node
                and run.run not in busy
                and len(release) < HANDOFF_PER_ROUND
            ):
                release.append(run.run)
            continue
        if preferred == me.node or run.free_since + lease <= now:
            claim.append(run.run)
    return Plan(claim=tuple(claim), release=tuple(release))
