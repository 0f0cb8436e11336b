"""The PostgreSQL lease store against a real server (tests/pg_harness.py): schema, claims, fencing.

Each test gets a fresh database; leases of a second or two keep expiry tests short.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from ckptd.coordination import pgschema
from ckptd.coordination.leases import Hint, Identity, RunId
from ckptd.coordination.pgstore import PostgresLeaseStore
from ckptd.errors import CoordinationError, StoreUnavailable
from tests.pg_harness import PgServer

LEASE = timedelta(seconds=30)


def identity(node: str) -> Identity:
    return Identity(node=node, instance=uuid.uuid4().hex, pid=1000)


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[list[PostgresLeaseStore]]:
    """Three stores (three daemons' connections) on one fresh database."""
    opened = [PostgresLeaseStore(pg_dsn, f"n{i}") for i in range(3)]
    yield opened
    for store in opened:
        store.close()


def test_schema_is_created_once_when_many_daemons_start_at_once(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(12)

    def start(index: int) -> None:
        store = PostgresLeaseStore(pg_dsn, f"n{index}")
        try:
            barrier.wait(10)
            store.connect()
        except BaseException as err:
            errors.append(err)
        finally:
            store.close()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with psycopg.connect(pg_dsn) as conn:
        versions = conn.execute("SELECT version FROM ckptd.schema_version").fetchall()
    assert versions == [(pgschema.LATEST_VERSION,)]


def test_a_newer_schema_is_refused_not_downgraded(pg_dsn: str) -> None:
    store = PostgresLeaseStore(pg_dsn, "n0")
    store.connect()
    store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(pgschema.RECORD_VERSION, (pgschema.LATEST_VERSION + 1,))
    with pytest.raises(CoordinationError, match="newer than this ckptd knows"):
        PostgresLeaseStore(pg_dsn, "n0").connect()


def test_each_run_is_claimed_by_exactly_one_of_many_racing_nodes(
    stores: list[PostgresLeaseStore],
) -> None:
    runs = [RunId("/shared", f"run-{i}") for i in range(60)]
    stores[0].register_runs(runs)
    won: dict[RunId, list[str]] = {run: [] for run in runs}
    lock = threading.Lock()
    barrier = threading.Barrier(len(stores))

    def race(store: PostgresLeaseStore, me: Identity) -> None:
        barrier.wait(10)
        for run in runs:
            lease = store.claim(run, me, LEASE)
            if lease is not None:
                with lock:
                    won[run].append(me.node)

    threads = [
        threading.Thread(target=race, args=(store, identity(f"n{i}")))
        for i, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(len(winners) == 1 for winners in won.values()), won
    snapshot = stores[0].snapshot()
    assert {run.run: run.owner for run in snapshot.runs} == {r: w[0] for r, w in won.items()}


def test_tokens_only_grow_and_a_lost_lease_fails_the_fencing_check(
    stores: list[PostgresLeaseStore],
) -> None:
    a, b = identity("a"), identity("b")
    run = RunId("/shared", "ppo-1")
    stores[0].register_runs([run])
    first = stores[0].claim(run, a, timedelta(seconds=1))
    assert first is not None and stores[0].valid(first, timedelta(0))
    assert stores[1].claim(run, b, LEASE) is None  # held
    assert not stores[0].valid(first, timedelta(seconds=5))  # not 5 s left of a 1 s lease
    time.sleep(1.3)
    assert not stores[0].valid(first, timedelta(0))  # expired
    second = stores[1].claim(run, b, LEASE)  # taken over
    assert second is not None and second.token > first.token
    assert stores[0].renew(a, LEASE) == []  # an expired lease is not revived by its old owner
    assert not stores[0].valid(first, timedelta(0))
    assert stores[1].valid(second, timedelta(0))
    stores[1].release(second)
    assert not stores[1].valid(second, timedelta(0))
    third = stores[0].claim(run, a, LEASE)
    assert third is not None and third.token > second.token
    stores[1].release(second)  # a stale release does nothing
    assert stores[0].valid(third, timedelta(0))


def test_renewal_keeps_a_lease_past_its_length(stores: list[PostgresLeaseStore]) -> None:
    a, b = identity("a"), identity("b")
    run = RunId("/shared", "sac-2")
    stores[0].announce(a, timedelta(seconds=1), ["/shared"])
    stores[0].register_runs([run])
    lease = stores[0].claim(run, a, timedelta(seconds=1))
    assert lease is not None
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        kept = stores[0].renew(a, timedelta(seconds=1))
        assert [k.token for k in kept] == [lease.token]
        assert stores[1].claim(run, b, LEASE) is None
        time.sleep(0.3)
    assert stores[0].valid(lease, timedelta(0))


def test_a_second_daemon_under_the_same_node_name_is_reported(
    stores: list[PostgresLeaseStore],
) -> None:
    first, second = identity("gpu-07"), identity("gpu-07")
    stores[0].announce(first, LEASE, ["/shared"])
    stores[1].announce(second, LEASE, ["/shared"])
    with pytest.raises(CoordinationError, match="now runs as node 'gpu-07'"):
        stores[0].renew(first, LEASE)
    assert stores[1].renew(second, LEASE) == []


def test_hints_reach_the_owner_once(stores: list[PostgresLeaseStore]) -> None:
    owner, other = identity("owner"), identity("other")
    run, free = RunId("/shared", "td3-1"), RunId("/shared", "free")
    stores[0].register_runs([run, free])
    assert stores[0].claim(run, owner, LEASE) is not None
    stores[1].hint([Hint(run, "rl_model_5_steps.pkl", other.node)])
    # The same path twice: one hint; a run nobody owns keeps its hint for a future owner.
    stores[1].hint([Hint(run, "rl_model_5_steps.pkl", other.node), Hint(free, "x.pkl", other.node)])
    hints = stores[0].take_hints(owner)
    assert [(h.run, h.path, h.from_node) for h in hints] == [(run, "rl_model_5_steps.pkl", "other")]
    assert stores[0].take_hints(owner) == []
    assert stores[1].claim(free, other, LEASE) is not None
    assert [h.path for h in stores[1].take_hints(other)] == ["x.pkl"]


def test_an_unreachable_database_is_one_clear_error_without_the_password(tmp_path: object) -> None:
    store = PostgresLeaseStore(
        "host=/nonexistent/socket/dir port=5432 user=u password=hunter2 dbname=x", "n0"
    )
    with pytest.raises(StoreUnavailable) as caught:
        store.connect()
    text = str(caught.value)
    assert text.startswith("coordination database unreachable (")
    assert "password=***" in text and "hunter2" not in text
    assert "\n" not in text


def test_a_restarted_database_is_reconnected(pg_server: PgServer, pg_dsn: str) -> None:
    store = PostgresLeaseStore(pg_dsn, "n0")
    me = identity("n0")
    run = RunId("/shared", "a2c-1")
    store.register_runs([run])
    lease = store.claim(run, me, LEASE)
    assert lease is not None
    pg_server.stop("immediate")
    try:
        with pytest.raises(StoreUnavailable):
            store.valid(lease, timedelta(0))
    finally:
        pg_server.start()
    # The lease lives in the database, so it survived the restart; the store reconnects itself.
    assert store.valid(lease, timedelta(0))
    assert [k.token for k in store.renew(me, LEASE)] == [lease.token]
    store.close()
