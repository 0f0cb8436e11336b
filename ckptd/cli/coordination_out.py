"""``ckptd status``'s coordination part as tables (ckptd.ops.coordination has the data)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ckptd.cli.output import lit
from ckptd.ops.coordination import CoordinationStatus
from ckptd.timefmt import format_utc


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}s"


def print_coordination(status: CoordinationStatus, console: Console) -> None:
    if status.backend == "local":
        for root, servers in status.holders:
            holder = servers.holder
            if holder is not None:
                who = f"pid {holder.pid} on {lit(holder.node)}, since {format_utc(holder.since)}"
            elif servers.cluster:
                who = (
                    "ckptd daemons with coordination.backend: postgres (a cluster); run ckptd"
                    " status with their config (or their coordination section and dsn) to see"
                    " its nodes"
                )
            else:
                who = "no daemon"
            console.print(f"{lit(root)}: served by {who}")
        return
    for root, servers in status.holders:  # a local daemon keeps the cluster off its root
        holder = servers.holder
        if holder is not None:
            console.print(
                f"{lit(root)}: held by a ckptd daemon with coordination.backend: local (pid"
                f" {holder.pid} on {lit(holder.node)}, since {format_utc(holder.since)}); no node"
                " of the cluster can serve it while that daemon runs",
                style="bold red",
            )
    if status.error is not None:
        console.print(f"coordination: {lit(status.error)}", style="bold red")
        return
    view = status.cluster
    assert view is not None
    nodes = Table(title="nodes", title_justify="left")
    for column in ("node", "pid", "state", "last renewal", "runs", "since"):
        nodes.add_column(column, overflow="fold")
    for node in view.nodes:
        nodes.add_row(
            lit(node.node),
            str(node.pid),
            "live" if node.alive else "stopped renewing",
            f"{node.last_seen_seconds:.0f}s ago",
            str(node.runs),
            node.started,
            style="" if node.alive else "bold red",
        )
    console.print(nodes)
    runs = Table(title="leases", title_justify="left")
    for column in ("run", "owner", "token", "held for", "renewed", "expires in"):
        runs.add_column(column, overflow="fold")
    for run in view.runs:
        runs.add_row(
            lit(str(run.run)),
            lit(run.owner) if run.owner else "-",
            str(run.token),
            _seconds(run.held_seconds),
            "-" if run.renewed_seconds is None else f"{run.renewed_seconds:.0f}s ago",
            _seconds(run.expires_in_seconds),
            style="" if run.owner else "yellow",
        )
    console.print(runs)
    for duty in view.root_duties:
        owner = lit(duty.owner) if duty.owner else "nobody yet"
        console.print(f"{lit(duty.run.root)}: index and scheduled scrub by {owner}")
    console.print(
        f"{len(view.nodes)} nodes ({len(view.stale_nodes)} stopped renewing),"
        f" {len(view.runs)} runs ({len(view.unowned)} without an owner)"
    )
