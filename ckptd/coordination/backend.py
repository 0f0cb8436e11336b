"""Open what ``coordination.backend`` names: the DSN from the config or ``$CKPTD_DSN``, the store.

psycopg is an optional dependency (the ``postgres`` extra): ``ckptd.coordination.pgstore`` imports
it only when a postgres store is opened, so a daemon on the default ``local`` backend never needs it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from ckptd.config.model import Config
from ckptd.coordination.leases import Identity, LeaseStore
from ckptd.coordination.local import node_name
from ckptd.coordination.pgstore import PostgresLeaseStore
from ckptd.errors import ConfigError, ConfigIssue

DSN_VARIABLE = "CKPTD_DSN"


def postgres_dsn(config: Config, environ: Mapping[str, str] | None = None) -> str:
    """The DSN to use: ``coordination.dsn``, else ``$CKPTD_DSN``; ConfigError when neither is set."""
    env = os.environ if environ is None else environ
    dsn = config.coordination.dsn or env.get(DSN_VARIABLE, "").strip()
    if not dsn:
        source = str(config.source) if config.source is not None else None
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    "coordination.dsn",
                    f"backend: postgres needs a database: set coordination.dsn or ${DSN_VARIABLE}",
                )
            ],
        )
    return dsn


def identity(config: Config) -> Identity:
    """This daemon process among the others: its node name and a new instance id."""
    return Identity(
        node=node_name(config.coordination.node), instance=uuid.uuid4().hex, pid=os.getpid()
    )


def open_store(dsn: str, node: str) -> LeaseStore:
    """The PostgreSQL lease store (not connected yet: the first call connects and migrates);
    CoordinationError when psycopg is not installed."""
    return PostgresLeaseStore(dsn, node)
