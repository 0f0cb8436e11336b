"""The coordination tables in PostgreSQL, created and migrated by ckptd itself.

Every daemon runs :func:`migrate` when it connects. Several may start at once, so the whole
migration runs in one transaction under a transaction-level advisory lock: the first one creates
or upgrades the schema, the others wait on the lock and then find nothing to do. PostgreSQL's DDL
is transactional, so a migration that fails (or a daemon killed in the middle) leaves the previous
version whole. A database at a newer version than this ckptd knows is refused, not downgraded.

Tables (all in the ``ckptd`` schema):

* ``nodes``: one row per node name: the process (``instance``, a random id per start, and pid),
  when it started and last renewed, its lease and the roots it serves.
* ``runs``: one row per run (root, path relative to the root): the owner's node and instance, the
  fencing token of its tenure, when the lease expires, and when the run was first registered.
* ``hints``: paths that a node saw in a run it does not own, for the owner to look at.
* ``fence``: the sequence every fencing token is drawn from (so tokens only grow).
"""

from __future__ import annotations

from typing import Final

# pg_advisory_xact_lock key: "ckptd" in ASCII, so it will not collide with another application's.
MIGRATION_LOCK_KEY: Final = 0x636B707464

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            "CREATE SEQUENCE ckptd.fence",
            """CREATE TABLE ckptd.nodes (
                node text PRIMARY KEY,
                instance text NOT NULL,
                pid integer NOT NULL,
                started_at timestamptz NOT NULL,
                last_seen timestamptz NOT NULL,
                lease interval NOT NULL,
                roots text[] NOT NULL
            )""",
            """CREATE TABLE ckptd.runs (
                root text NOT NULL,
                run text NOT NULL,
                owner text,
                instance text,
                token bigint NOT NULL DEFAULT 0,
                expires_at timestamptz,
                acquired_at timestamptz,
                renewed_at timestamptz,
                registered_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (root, run)
            )""",
            "CREATE INDEX runs_instance ON ckptd.runs (instance) WHERE instance IS NOT NULL",
            """CREATE TABLE ckptd.hints (
                root text NOT NULL,
                run text NOT NULL,
                path text NOT NULL,
                from_node text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (root, run, path)
            )""",
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1][0]

TAKE_LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"
CREATE_BASE: Final = (
    "CREATE SCHEMA IF NOT EXISTS ckptd",
    "CREATE TABLE IF NOT EXISTS ckptd.schema_version (version integer NOT NULL)",
)
CURRENT_VERSION: Final = "SELECT coalesce(max(version), 0) FROM ckptd.schema_version"
RECORD_VERSION: Final = "INSERT INTO ckptd.schema_version (version) VALUES (%s)"
