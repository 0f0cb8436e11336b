"""``ckptd status``: who serves the roots (README, "Several daemons on one root").

``local``: each root's lock holder (pid, node, since), the daemons of a cluster that hold it shared
(a root a ``local`` config names may be served by a cluster: its nodes are in the cluster's
database, which this config does not name), or nobody. ``postgres``: every node, the
runs each owns, lease ages and the nodes that stopped renewing, read from the database (an
unreachable database is one error line; the rest of ``status`` does not need it), and each root's
lock as for ``local``: a root a ``local`` daemon holds is one no node can serve while it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptd.config.model import Config
from ckptd.coordination.backend import open_store, postgres_dsn
from ckptd.coordination.local import RootServers, node_name, read_holder, who_serves
from ckptd.coordination.view import ClusterView, cluster_view
from ckptd.errors import CoordinationError
from ckptd.timefmt import format_utc


@dataclass(frozen=True)
class CoordinationStatus:
    backend: str
    holders: tuple[tuple[str, RootServers], ...] = ()  # local: (root, who serves it)
    cluster: ClusterView | None = None  # postgres
    error: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"backend": self.backend, "error": self.error}
        if self.cluster is not None:
            obj.update(self.cluster.to_json_obj())
        if self.holders:
            obj["roots"] = [
                {
                    "root": root,
                    "served_by": None
                    if servers.holder is None
                    else {
                        "pid": servers.holder.pid,
                        "node": servers.holder.node,
                        "since": format_utc(servers.holder.since),
                    },
                    "cluster": servers.cluster,  # held shared by a cluster's daemons
                }
                for root, servers in self.holders
            ]
        return obj


def coordination_status(config: Config) -> CoordinationStatus:
    """Who serves ``config``'s roots now; never raises for an unreachable database."""
    backend = config.coordination.backend
    if backend == "local":
        holders = tuple(
            (str(root.path), who_serves(root.path, config.state_dir)) for root in config.roots
        )
        return CoordinationStatus(backend, holders=holders)
    # A cluster's own daemons hold its roots shared: only a local daemon needs naming, and a
    # shared lock taken tells it without the few timed tries that tell a cluster apart.
    holders = tuple(
        (str(root.path), RootServers(holder=read_holder(root.path, config.state_dir)))
        for root in config.roots
    )
    try:
        store = open_store(postgres_dsn(config), node_name(config.coordination.node))
        try:
            snapshot = store.snapshot()
        finally:
            store.close()
    except CoordinationError as err:
        return CoordinationStatus(backend, holders=holders, error=str(err))
    return CoordinationStatus(backend, holders=holders, cluster=cluster_view(snapshot))
