"""``ckptd status``: who serves the roots (README, "Several daemons on one root").

``local``: each root's lock holder (pid, node, since), or nobody. ``postgres``: every node, the
runs each owns, lease ages and the nodes that stopped renewing, read from the database (an
unreachable database is one error line; the rest of ``status`` does not need it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptd.config.model import Config
from ckptd.coordination.backend import open_store, postgres_dsn
from ckptd.coordination.local import Holder, node_name, read_holder
from ckptd.coordination.view import ClusterView, cluster_view
from ckptd.errors import CoordinationError
from ckptd.timefmt import format_utc


@dataclass(frozen=True)
class CoordinationStatus:
    backend: str
    holders: tuple[tuple[str, Holder | None], ...] = ()  # local: (root, holder)
    cluster: ClusterView | None = None  # postgres
    error: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"backend": self.backend, "error": self.error}
        if self.backend == "local":
            obj["roots"] = [
                {
                    "root": root,
                    "served_by": None
                    if holder is None
                    else {
                        "pid": holder.pid,
                        "node": holder.node,
                        "since": format_utc(holder.since),
                    },
                }
                for root, holder in self.holders
            ]
        elif self.cluster is not None:
            obj.update(self.cluster.to_json_obj())
        return obj


def coordination_status(config: Config) -> CoordinationStatus:
    """Who serves ``config``'s roots now; never raises for an unreachable database."""
    backend = config.coordination.backend
    if backend == "local":
        holders = tuple(
            (str(root.path), read_holder(root.path, config.state_dir)) for root in config.roots
        )
        return CoordinationStatus(backend, holders=holders)
    try:
        store = open_store(postgres_dsn(config), node_name(config.coordination.node))
        try:
            snapshot = store.snapshot()
        finally:
            store.close()
    except CoordinationError as err:
        return CoordinationStatus(backend, error=str(err))
    return CoordinationStatus(backend, cluster=cluster_view(snapshot))
