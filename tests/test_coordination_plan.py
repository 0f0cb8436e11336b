"""The pure parts of coordination: which runs a node claims and hands back, the status view."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ckptd.config.load import parse_config
from ckptd.coordination.backend import postgres_dsn
from ckptd.coordination.leases import (
    HANDOFF_PER_ROUND,
    ROOT_DUTIES,
    Identity,
    NodeRecord,
    RunId,
    RunLease,
    Snapshot,
    plan_round,
    preferred_node,
)
from ckptd.coordination.view import cluster_view
from ckptd.errors import ConfigError

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
ROOTS = frozenset({"/shared"})


def me(node: str) -> Identity:
    return Identity(node, f"{node}-instance", 1)


def node(name: str, *, seen_ago: float = 1.0, roots: frozenset[str] = ROOTS) -> NodeRecord:
    return NodeRecord(
        name, f"{name}-instance", 1, NOW - timedelta(hours=1), NOW - timedelta(seconds=seen_ago),
        LEASE, roots,
    )  # fmt: skip


def free(run: str, *, since_ago: float = 1.0, root: str = "/shared") -> RunLease:
    return RunLease(
        RunId(root, run), None, None, 0, None, None, None, NOW - timedelta(seconds=since_ago)
    )


def held(run: str, owner: str, *, expires_in: float = 20.0) -> RunLease:
    expires = NOW + timedelta(seconds=expires_in)
    return RunLease(
        RunId("/shared", run), owner, f"{owner}-instance", 7, expires, NOW, NOW, expires
    )


def test_free_runs_spread_over_the_live_nodes_each_claimed_once() -> None:
    nodes = (node("a"), node("b"), node("c"))
    runs = tuple(free(f"run-{i}") for i in range(300))
    snapshot = Snapshot(NOW, nodes, runs)
    claims = {name: plan_round(me(name), ROOTS, snapshot, LEASE).claim for name in "abc"}
    claimed = [run for runs_of in claims.values() for run in runs_of]
    assert sorted(claimed) == sorted(run.run for run in runs)  # all, and each once
    assert all(70 <= len(runs_of) <= 130 for runs_of in claims.values()), {
        name: len(runs_of) for name, runs_of in claims.items()
    }


def test_a_dead_nodes_runs_go_to_the_live_ones_after_its_lease() -> None:
    nodes = (node("a"), node("b"), node("c", seen_ago=45))
    mine = [f"run-{i}" for i in range(60)]
    still_held = Snapshot(NOW, nodes, tuple(held(run, "c") for run in mine))
    assert plan_round(me("a"), ROOTS, still_held, LEASE).claim == ()  # its leases still run
    expired = Snapshot(NOW, nodes, tuple(held(run, "c", expires_in=-1) for run in mine))
    a = plan_round(me("a"), ROOTS, expired, LEASE).claim
    b = plan_round(me("b"), ROOTS, expired, LEASE).claim
    assert sorted([*a, *b]) == sorted(RunId("/shared", run) for run in mine)
    assert not set(a) & set(b) and a and b


def test_a_joining_node_gets_its_share_a_few_runs_per_round_never_a_busy_one() -> None:
    runs = tuple(held(f"run-{i}", "a") for i in range(100))
    snapshot = Snapshot(NOW, (node("a"), node("b")), runs)
    for_b = {run.run for run in runs if preferred_node(run.run, ["a", "b"]) == "b"}
    busy = frozenset(sorted(for_b)[:3])
    plan = plan_round(me("a"), ROOTS, snapshot, LEASE, busy=busy)
    assert len(plan.release) == HANDOFF_PER_ROUND
    assert set(plan.release) <= for_b - busy
    assert plan.claim == ()


def test_a_run_free_for_a_whole_lease_is_taken_by_anyone() -> None:
    # "b" is preferred but does not claim (it thinks otherwise, or is slow): "a" steps in.
    run = next(
        f"r{i}" for i in range(100) if preferred_node(RunId("/shared", f"r{i}"), "ab") == "b"
    )
    young = Snapshot(NOW, (node("a"), node("b")), (free(run, since_ago=5),))
    assert plan_round(me("a"), ROOTS, young, LEASE).claim == ()
    old = Snapshot(NOW, (node("a"), node("b")), (free(run, since_ago=31),))
    assert plan_round(me("a"), ROOTS, old, LEASE).claim == (RunId("/shared", run),)


def test_only_nodes_serving_a_root_are_preferred_for_its_runs() -> None:
    nodes = (node("a", roots=frozenset({"/shared", "/other"})), node("b"))
    runs = tuple(free(f"o-{i}", root="/other") for i in range(50))
    snapshot = Snapshot(NOW, nodes, runs)
    assert len(plan_round(me("a"), frozenset({"/shared", "/other"}), snapshot, LEASE).claim) == 50
    assert plan_round(me("b"), ROOTS, snapshot, LEASE).claim == ()


def test_rendezvous_moves_only_the_runs_of_the_node_that_left() -> None:
    runs = [RunId("/shared", f"run-{i}") for i in range(500)]
    before = {run: preferred_node(run, ["a", "b", "c"]) for run in runs}
    after = {run: preferred_node(run, ["a", "b"]) for run in runs}
    moved = [run for run in runs if before[run] != after[run]]
    assert all(before[run] == "c" for run in moved)
    assert Counter(before.values())["c"] == len(moved)


def test_status_view_shows_owners_lease_ages_and_stale_nodes() -> None:
    snapshot = Snapshot(
        NOW,
        (node("a"), node("b", seen_ago=90)),
        (held("r1", "a"), held("r2", "b", expires_in=-60), free("r3")),
    )
    view = cluster_view(snapshot)
    assert [(n.node, n.alive, n.runs) for n in view.nodes] == [("a", True, 1), ("b", False, 0)]
    assert [n.node for n in view.stale_nodes] == ["b"]
    assert [(r.run.run, r.owner) for r in view.runs] == [("r1", "a"), ("r2", None), ("r3", None)]
    assert view.runs[0].expires_in_seconds == 20.0
    assert view.runs[1].expires_in_seconds == -60.0  # lapsed, waiting for a taker
    obj = view.to_json_obj()
    assert obj["nodes"][1] == {
        "node": "b", "pid": 1, "alive": False, "last_seen_seconds": 90.0,
        "started": "2026-12-07T11:00:00Z", "runs": 0, "roots": ["/shared"],
    }  # fmt: skip


def test_a_root_s_duties_are_planned_like_a_run_and_shown_apart() -> None:
    duties = RunId("/shared", ROOT_DUTIES)
    preferred = preferred_node(duties, ["a", "b", "c"])
    snapshot = Snapshot(NOW, (node("a"), node("b"), node("c")), (free(ROOT_DUTIES),))
    claims = {name: plan_round(me(name), ROOTS, snapshot, LEASE).claim for name in "abc"}
    assert {name for name, claim in claims.items() if claim} == {preferred}
    view = cluster_view(Snapshot(NOW, (node("a"),), (held("r1", "a"), held(ROOT_DUTIES, "a"))))
    assert [(r.run.run, r.owner) for r in view.runs] == [("r1", "a")]
    assert [n.runs for n in view.nodes] == [1]  # duties are not a run
    assert view.to_json_obj()["root_duties"] == [
        {"root": "/shared", "owner": "a", "token": view.root_duties[0].token}
    ]


def test_postgres_needs_a_dsn_from_the_config_or_the_environment(tmp_path: Path) -> None:
    config = parse_config(
        "roots: [{path: runs}]\ncoordination: {backend: postgres}", source=tmp_path / "c.yaml"
    )
    with pytest.raises(ConfigError, match=r"coordination.dsn: backend: postgres needs a database"):
        postgres_dsn(config, {})
    assert postgres_dsn(config, {"CKPTD_DSN": "host=db"}) == "host=db"
