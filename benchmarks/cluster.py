"""Measure several coordinated daemons on one root: coverage of a burst, takeover, database load.

Usage (from the checkout, as root or as a user who may run PostgreSQL's initdb):
``.venv/bin/python benchmarks/cluster.py [--files 10000] [--runs 50] [--lease 10s] [--nodes 1 3]``
(the 10,000-file default takes several minutes on two busy cores; ``--files 1000`` for a quick look)

Starts a private PostgreSQL server (``initdb`` + ``pg_ctl``, tests/pg_harness.py), then for 1 and
for 3 ``ckptd run`` nodes (``coordination.backend: postgres``) on a fresh root prints:

* coverage: the time from the first write of a burst of N small SB3 zips over R runs until every
  file is recorded in its run's manifest (each file is verified and recorded by its run's owner);
* takeover (3 nodes): ``kill -9`` of the node owning the most runs, then one new file in each of
  its runs: the time until all of them are recorded, against the lease;
* database load: transactions the cluster committed per checkpoint
  (``pg_stat_database.xact_commit``, which counts every autocommitted statement).

Each line also carries the load average before and after, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from ckptd import units  # noqa: E402
from ckptd.manifest.store import load_manifest  # noqa: E402
from tests.cluster_harness import Cluster  # noqa: E402
from tests.pg_harness import running_server  # noqa: E402
from tests.sb2zip_helpers import make_sb3_zip  # noqa: E402


def recorded(run: Path) -> set[str]:
    try:
        return {entry.path for entry in load_manifest(run / "ckptd-manifest.json").checkpoints}
    except (OSError, ValueError):
        return set()


def wait_recorded(expected: dict[Path, set[str]], timeout: float) -> float | None:
    start = time.monotonic()
    pending = dict(expected)
    while pending and time.monotonic() - start < timeout:
        for run in list(pending):
            if pending[run] <= recorded(run):
                del pending[run]
        time.sleep(0.2)
    return None if pending else time.monotonic() - start


def commits(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def burst(root: Path, template: bytes, files: int, runs: int, first: int) -> dict[Path, set[str]]:
    expected: dict[Path, set[str]] = {}
    for index in range(files):
        run = root / f"run-{index % runs:03d}"
        name = f"rl_model_{(first + index) * 100}_steps.zip"
        temp = run / f"{name}.tmp"
        temp.write_bytes(template)
        temp.rename(run / name)
        expected.setdefault(run, set()).add(name)
    return expected


def measure(nodes: int, args: argparse.Namespace, dsn: str, template: bytes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ckptd-cluster-") as tmp:
        workdir = Path(tmp)
        root = workdir / "shared"
        for index in range(args.runs):
            (root / f"run-{index:03d}").mkdir(parents=True)
        cluster = Cluster(workdir=workdir, root=root, dsn=dsn, lease=args.lease)
        try:
            for number in range(1, nodes + 1):
                cluster.start(f"n{number}", timeout=120)
            time.sleep(units.parse_duration(args.lease).total_seconds())  # leases spread
            before = commits(dsn)
            start = time.monotonic()
            expected = burst(root, template, args.files, args.runs, 0)
            written = time.monotonic() - start
            covered = wait_recorded(expected, 600)
            load = commits(dsn) - before
            result: dict[str, Any] = {
                "nodes": nodes,
                "files": args.files,
                "runs": args.runs,
                "write_seconds": round(written, 2),
                "coverage_seconds": None if covered is None else round(covered + written, 2),
                "db_commits_per_checkpoint": round(load / args.files, 2),
            }
            if nodes > 1:
                result["takeover_seconds"] = takeover(cluster, root, template, args)
            return result
        finally:
            cluster.stop_all()


def takeover(
    cluster: Cluster, root: Path, template: bytes, args: argparse.Namespace
) -> float | None:
    with psycopg.connect(cluster.dsn) as conn:
        owners = conn.execute(
            "SELECT owner, count(*) FROM ckptd.runs WHERE expires_at > now() GROUP BY owner"
        ).fetchall()
    owned = {str(owner): int(count) for owner, count in owners}
    victim = max(cluster.nodes, key=lambda name: owned.get(name, 0))
    cluster.kill(victim)
    start = time.monotonic()
    runs = [root / f"run-{index:03d}" for index in range(args.runs)]
    expected = {}
    for index, run in enumerate(runs):
        name = f"rl_model_{(10_000_000 + index) * 100}_steps.zip"
        (run / name).write_bytes(template)
        expected[run] = {name}
    done = wait_recorded(expected, 300)
    return None if done is None else round(time.monotonic() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--lease", default="10s")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_sb3_zip(Path(tmp) / "t.zip")
        template = (Path(tmp) / "t.zip").read_bytes()
    with running_server() as server:
        for nodes in args.nodes:
            dsn = server.new_database()
            before = os.getloadavg()
            result = measure(nodes, args, dsn, template)
            result["load_before"] = [round(x, 1) for x in before]
            result["load_after"] = [round(x, 1) for x in os.getloadavg()]
            print(result, flush=True)


if __name__ == "__main__":
    main()
