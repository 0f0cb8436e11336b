"""Coordinators (one per daemon) against a real PostgreSQL server: spread, takeover, fencing, outage."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from ckptd.coordination.coordinator import Coordinator
from ckptd.coordination.leases import ROOT_DUTIES, Identity, RunId, preferred_node
from ckptd.coordination.pgstore import PostgresLeaseStore
from ckptd.errors import FencedError, StoreUnavailable
from tests.daemon_harness import wait_until
from tests.pg_harness import PgServer

LEASE = timedelta(seconds=1.5)
ROOT = "/shared"
RUNS = [RunId(ROOT, f"run-{i:02d}") for i in range(30)]


def coordinator(dsn: str, node: str, **options: object) -> Coordinator:
    me = Identity(node=node, instance=uuid.uuid4().hex, pid=1)
    return Coordinator(PostgresLeaseStore(dsn, node), me, LEASE, [ROOT], **options)  # type: ignore[arg-type]


@pytest.fixture
def three(pg_dsn: str) -> Iterator[list[Coordinator]]:
    nodes = [coordinator(pg_dsn, name) for name in ("a", "b", "c")]
    nodes[0].register(RUNS)
    for node in nodes:
        node.start()
    yield nodes
    for node in nodes:
        node.stop()


def owners(nodes: list[Coordinator]) -> dict[RunId, list[str]]:
    found: dict[RunId, list[str]] = {run: [] for run in RUNS}
    for node in nodes:
        for run in node.owned():
            found[run].append(node.me.node)
    return found


def covered_once(nodes: list[Coordinator]) -> bool:
    return all(len(names) == 1 for names in owners(nodes).values())


def balanced(nodes: list[Coordinator]) -> bool:
    return covered_once(nodes) and all(len(node.owned()) >= 4 for node in nodes)


def test_runs_are_spread_and_each_has_one_owner(three: list[Coordinator]) -> None:
    # "a" starts first and claims everything; the others' arrival makes it hand runs over.
    wait_until(lambda: balanced(three), 20, "every run owned by one node, each node some")
    # Runs move to their preferred node a few per round; once there they stay, so every fence
    # below is on a run its node still holds (fencing one that moved on raises, as it should).
    wait_until(
        lambda: all(
            owner == [preferred_node(run, ["a", "b", "c"])] for run, owner in owners(three).items()
        ),
        20,
        "every run with the node it prefers",
    )
    for node in three:
        for run in node.owned():
            assert node.fence(run).token > 0


def test_a_dead_nodes_runs_are_taken_over_within_the_lease(three: list[Coordinator]) -> None:
    wait_until(lambda: balanced(three), 20, "every run owned by one node, each node some")
    dead = three[2]
    lost = dead.owned()
    assert lost
    dead.stop(release=False)  # like kill -9: nothing handed back
    survivors = three[:2]
    wait_until(
        lambda: all(len(owners(survivors)[run]) == 1 for run in RUNS),
        LEASE.total_seconds() * 3 + 5,
        "the dead node's runs taken over",
    )
    # The dead node's object, were it to wake up, may not act: its local bound has passed too.
    for run in lost:
        with pytest.raises(FencedError):
            dead.fence(run)


def test_a_paused_node_cannot_act_on_runs_it_lost(pg_dsn: str) -> None:
    # The paused node's clock stands still (as if its whole process had been stopped and the
    # monotonic clock did not show it): only the database can tell it the token moved on.
    frozen = [0.0]
    paused = coordinator(pg_dsn, "paused", clock=lambda: frozen[0])
    other = coordinator(pg_dsn, "other")
    paused.register(RUNS[:4])
    paused.round()
    taken = paused.owned()
    assert taken == RUNS[:4]  # alone: it claims them all
    token = paused.fence(taken[0]).token
    # "paused" renews no more; after its lease the other node takes the runs over.
    other.start()
    try:
        wait_until(lambda: set(taken) <= set(other.owned()), 15, "takeover")
        for run in taken:
            with pytest.raises(FencedError, match="no longer current"):
                paused.fence(run)
        assert other.fence(taken[0]).token > token
    finally:
        other.stop()
        paused.stop(release=False)


def test_database_outage_stops_every_act_is_said_once_and_passes(
    pg_server: PgServer, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = coordinator(pg_dsn, "solo")
    node.register(RUNS[:3])
    node.round()
    run = node.owned()[0]
    node.fence(run)
    caplog.set_level(logging.INFO, logger="ckptd.coordination.coordinator")
    pg_server.stop("immediate")
    try:
        node.round()
        node.round()
        state = node.state()
        assert not state.available and state.problem is not None
        assert not node.owns(run)
        with pytest.raises(StoreUnavailable):
            node.fence(run)
    finally:
        pg_server.start()
    node.round()
    assert node.state().available
    assert node.fence(run).token > 0  # the lease outlived a short outage
    messages = [record.getMessage() for record in caplog.records]
    assert sum("coordination unavailable" in m for m in messages) == 1, messages
    assert sum("coordination available again" in m for m in messages) == 1, messages
    node.stop()


def test_a_node_whose_own_clock_says_the_lease_may_have_lapsed_stops_acting(pg_dsn: str) -> None:
    # Nobody else is there and the database still shows the lease: the monotonic clock alone
    # (as after SIGSTOP, a stall or swapping) stops the node until its next renewal.
    now = [100.0]
    node = coordinator(pg_dsn, "solo", clock=lambda: now[0])
    node.register(RUNS[:2])
    node.round()
    run = node.owned()[0]
    assert node.owns(run)
    node.fence(run)
    now[0] += LEASE.total_seconds() * 2 / 3 + 0.01  # less than lease/3 left by its own count
    assert not node.owns(run)
    with pytest.raises(FencedError, match="may have lapsed"):
        node.fence(run)
    node.round()  # renewed: trusted again
    assert node.owns(run)
    node.fence(run)
    node.stop()


def test_claiming_a_root_s_duties_alone_asks_for_no_rescan(pg_dsn: str) -> None:
    # The duties hold no files: a rescan for them would only re-queue paths in flight.
    node = coordinator(pg_dsn, "a")
    node.register([RunId(ROOT, ROOT_DUTIES)])
    node.start()
    try:
        assert node.owned() == [RunId(ROOT, ROOT_DUTIES)]
        assert not node.take_gained()
        node.register([RUNS[0]])
        wait_until(lambda: RUNS[0] in node.owned(), 10, "the run claimed")
        assert node.take_gained()
    finally:
        node.stop()
