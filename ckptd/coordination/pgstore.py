"""The lease store in PostgreSQL (psycopg 3): the one module that talks to the database.

One connection per daemon, in autocommit mode, shared by its threads under a lock: every
operation is one short statement or one short transaction, and all of them use the database's
clock (``now()``), never the nodes' own, so clock skew between machines cannot stretch a lease.

A lost connection is reported as :class:`StoreUnavailable` (its text without the DSN's password)
and the next call reconnects; every statement has a timeout, so a database that hangs is as
unavailable as one that is down. Claims are single ``UPDATE ... WHERE`` statements: PostgreSQL
re-checks the condition under the row lock, so of two nodes claiming a run at once exactly one
gets it (docs in ``ckptd.coordination.leases``; schema in ``ckptd.coordination.pgschema``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ckptd.config.coordination import redact_dsn
from ckptd.coordination import pgschema
from ckptd.coordination.leases import (
    Hint,
    Identity,
    Lease,
    NodeRecord,
    RunId,
    RunLease,
    Snapshot,
)
from ckptd.errors import CoordinationError, StoreUnavailable

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS: Final = 5
STATEMENT_TIMEOUT_MS: Final = 10_000
# Hints nobody picked up (a run no node serves any more) are dropped after this.
HINT_TTL: Final = timedelta(days=1)

T = TypeVar("T")


def _driver() -> ModuleType:
    """psycopg, imported when a postgres store is first used: it is an optional dependency (the
    ``postgres`` extra), and a daemon on the default ``local`` backend never loads it."""
    try:
        import psycopg
    except ImportError as err:
        raise CoordinationError(
            f"coordination.backend: postgres needs psycopg ({err}): pip install 'ckptd[postgres]'"
        ) from err
    return psycopg


def _connection_options(node: str) -> dict[str, Any]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": f"ckptd {node}"[:63],
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        # A database host that vanishes without closing the connection is noticed in seconds.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }


class PostgresLeaseStore:
    """:class:`ckptd.coordination.leases.LeaseStore` on PostgreSQL; creates its schema on connect."""

    def __init__(self, dsn: str, node: str) -> None:
        self._psycopg = _driver()
        self._conninfo: str = self._psycopg.conninfo.make_conninfo(dsn, **_connection_options(node))
        self._shown = redact_dsn(dsn)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    # ---- connection --------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and bring the schema up to date (StoreUnavailable / CoordinationError)."""
        self._call(lambda conn: None)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn: psycopg.Connection[Any] = self._psycopg.connect(self._conninfo, autocommit=True)
            try:
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _call(self, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._lock:
            try:
                return operation(self._connection())
            except self._psycopg.OperationalError as err:
                self._drop()
                raise StoreUnavailable(
                    f"coordination database unreachable ({self._shown}): {_first_line(err)}"
                ) from err
            except self._psycopg.Error as err:
                self._drop()
                raise CoordinationError(
                    f"coordination database error ({self._shown}): {_first_line(err)}"
                ) from err

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(pgschema.TAKE_LOCK, (pgschema.MIGRATION_LOCK_KEY,))
            for statement in pgschema.CREATE_BASE:
                conn.execute(statement)
            row = conn.execute(pgschema.CURRENT_VERSION).fetchone()
            current = int(row[0]) if row is not None else 0
            if current > pgschema.LATEST_VERSION:
                raise CoordinationError(
                    f"the coordination database is at schema version {current}, newer than this"
                    f" ckptd knows ({pgschema.LATEST_VERSION}): upgrade ckptd on this node"
                )
            for version, statements in pgschema.MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(pgschema.RECORD_VERSION, (version,))
                logger.info("coordination database schema migrated to version %d", version)

    # ---- the store ---------------------------------------------------------------------------

    def announce(self, me: Identity, lease: timedelta, roots: Iterable[str]) -> None:
        root_list = sorted(set(roots))

        def run(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                """INSERT INTO ckptd.nodes (node, instance, pid, started_at, last_seen, lease, roots)
                   VALUES (%s, %s, %s, now(), now(), %s, %s)
                   ON CONFLICT (node) DO UPDATE SET instance = EXCLUDED.instance,
                     pid = EXCLUDED.pid, started_at = EXCLUDED.started_at, last_seen = now(),
                     lease = EXCLUDED.lease, roots = EXCLUDED.roots""",
                (me.node, me.instance, me.pid, lease, root_list),
            )

        self._call(run)

    def register_runs(self, runs: Iterable[RunId]) -> None:
        pairs = sorted(set(runs))
        if not pairs:
            return

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(
                    """INSERT INTO ckptd.runs (root, run) VALUES (%s, %s)
                       ON CONFLICT (root, run) DO NOTHING""",
                    [(pair.root, pair.run) for pair in pairs],
                )

        self._call(run)

    def renew(self, me: Identity, lease: timedelta) -> list[Lease]:
        def run(conn: psycopg.Connection[Any]) -> list[Lease]:
            with conn.transaction():
                row = conn.execute(
                    """UPDATE ckptd.nodes SET last_seen = now()
                       WHERE node = %s AND instance = %s RETURNING node""",
                    (me.node, me.instance),
                ).fetchone()
                if row is None:
                    other = conn.execute(
                        "SELECT pid, started_at FROM ckptd.nodes WHERE node = %s", (me.node,)
                    ).fetchone()
                    if other is not None:
                        raise CoordinationError(
                            f"another daemon (pid {other[0]}, started"
                            f" {other[1]:%Y-%m-%dT%H:%M:%SZ}) now runs as node {me.node!r}:"
                            " give each daemon its own coordination.node"
                        )
                    # No row at all (a wiped table): the leases still count; announce re-adds it.
                conn.execute("DELETE FROM ckptd.hints WHERE created_at < now() - %s", (HINT_TTL,))
                rows = conn.execute(
                    """UPDATE ckptd.runs SET expires_at = now() + %s, renewed_at = now()
                       WHERE instance = %s AND expires_at > now()
                       RETURNING root, run, token, expires_at""",
                    (lease, me.instance),
                ).fetchall()
            return [Lease(RunId(r[0], r[1]), me.instance, int(r[2]), r[3]) for r in rows]

        return self._call(run)

    def claim(self, run: RunId, me: Identity, lease: timedelta) -> Lease | None:
        def op(conn: psycopg.Connection[Any]) -> Lease | None:
            row = conn.execute(
                """UPDATE ckptd.runs SET owner = %s, instance = %s,
                     token = nextval('ckptd.fence'), expires_at = now() + %s,
                     acquired_at = now(), renewed_at = now()
                   WHERE root = %s AND run = %s AND (owner IS NULL OR expires_at <= now())
                   RETURNING token, expires_at""",
                (me.node, me.instance, lease, run.root, run.run),
            ).fetchone()
            return None if row is None else Lease(run, me.instance, int(row[0]), row[1])

        return self._call(op)

    def release(self, lease: Lease) -> None:
        def op(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                """UPDATE ckptd.runs SET owner = NULL, instance = NULL, expires_at = now()
                   WHERE root = %s AND run = %s AND instance = %s AND token = %s""",
                (lease.run.root, lease.run.run, lease.instance, lease.token),
            )

        self._call(op)

    def valid(self, lease: Lease, margin: timedelta) -> bool:
        def op(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(
                """SELECT expires_at > now() + %s FROM ckptd.runs
                   WHERE root = %s AND run = %s AND instance = %s AND token = %s""",
                (margin, lease.run.root, lease.run.run, lease.instance, lease.token),
            ).fetchone()
            return row is not None and bool(row[0])

        return self._call(op)

    def snapshot(self) -> Snapshot:
        def op(conn: psycopg.Connection[Any]) -> Snapshot:
            with conn.transaction():  # now() is the transaction's start: one instant for all rows
                now_row = conn.execute("SELECT now()").fetchone()
                assert now_row is not None
                nodes = conn.execute(
                    """SELECT node, instance, pid, started_at, last_seen, lease, roots
                       FROM ckptd.nodes ORDER BY node"""
                ).fetchall()
                runs = conn.execute(
                    """SELECT root, run, owner, instance, token, expires_at, acquired_at,
                         renewed_at, coalesce(expires_at, registered_at)
                       FROM ckptd.runs ORDER BY root, run"""
                ).fetchall()
            now: datetime = now_row[0]
            return Snapshot(
                now=now,
                nodes=tuple(
                    NodeRecord(r[0], r[1], int(r[2]), r[3], r[4], r[5], frozenset(r[6]))
                    for r in nodes
                ),
                runs=tuple(
                    RunLease(RunId(r[0], r[1]), r[2], r[3], int(r[4]), r[5], r[6], r[7], r[8])
                    for r in runs
                ),
            )

        return self._call(op)

    def hint(self, hints: Sequence[Hint]) -> None:
        if not hints:
            return

        def op(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.executemany(
                    """INSERT INTO ckptd.hints (root, run, path, from_node)
                       VALUES (%s, %s, %s, %s) ON CONFLICT (root, run, path) DO NOTHING""",
                    [(h.run.root, h.run.run, h.path, h.from_node) for h in hints],
                )

        self._call(op)

    def take_hints(self, me: Identity) -> list[Hint]:
        def op(conn: psycopg.Connection[Any]) -> list[Hint]:
            rows = conn.execute(
                """DELETE FROM ckptd.hints h USING ckptd.runs r
                   WHERE h.root = r.root AND h.run = r.run AND r.instance = %s
                     AND r.expires_at > now()
                   RETURNING h.root, h.run, h.path, h.from_node""",
                (me.instance,),
            ).fetchall()
            return [Hint(RunId(r[0], r[1]), r[2], r[3]) for r in rows]

        return self._call(op)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
