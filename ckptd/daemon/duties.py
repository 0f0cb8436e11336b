"""A root's own jobs in a cluster: its index and the scheduled scrub, done by one node at a time.

With ``coordination.backend: postgres`` each run's owner writes that run's manifest, but the root
index (``ckptd-index.json``) lists every run and the scheduled scrub reads every run: done by every
node they would be written over each other and the shared filesystem read once per node. So each
root has one more lease, on its *duties* (``ckptd.coordination.leases.ROOT_DUTIES``), spread and
taken over like a run's: only its holder writes the root's index (from the manifests the runs'
owners wrote) and runs the scheduled scrub there; the index write is fenced like any other, and a
holder that loses the lease mid-scrub stops between reads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ckptd.config.model import Config, RootConfig
from ckptd.errors import CkptdError
from ckptd.manifest.root_index import INDEX_FILENAME, IndexRun, RootIndex, index_run
from ckptd.manifest.store import try_load_manifest, write_index_if_changed
from ckptd.runs.roots import find_runs

logger = logging.getLogger(__name__)


class RootDuties(Protocol):
    """Which roots' own jobs this daemon does now (``ckptd.daemon.cluster.Cluster``)."""

    def holds(self, root: Path) -> bool:
        """Whether this daemon may start a root job on ``root`` now (local check)."""

    def fence(self, root: Path) -> None:
        """Raise (CoordinationError) unless this daemon still holds ``root``'s duties."""

    def working(self, roots: Iterable[Path]) -> contextlib.AbstractContextManager[None]:
        """While the block runs, the duties of ``roots`` are not handed to another node."""


def held_roots(config: Config, duties: RootDuties) -> list[RootConfig]:
    return [root for root in config.roots if duties.holds(root.path)]


def write_root_indexes(config: Config, duties: RootDuties, now: datetime) -> int:
    """Write the index of every root whose duties this daemon holds; how many were rewritten."""
    written = 0
    for root in held_roots(config, duties):
        try:
            if _write_index(config, root, duties, now):
                written += 1
        except (CkptdError, OSError) as err:
            logger.error("%s: cannot write the index: %s", root.path, err)
    return written


def _write_index(config: Config, root: RootConfig, duties: RootDuties, now: datetime) -> bool:
    scan = find_runs(root.path, root.run_depth, config.state_dir)
    filename = config.manifest.filename
    entries: list[IndexRun] = []
    for run in scan.runs:
        relpath = filename if run.relpath == "." else f"{run.relpath}/{filename}"
        manifest = try_load_manifest(
            run.run_dir / filename, logger, "listed without it in the root index", logging.WARNING
        )
        if manifest is None:
            entries.append(IndexRun(run.relpath, relpath, 0, 0, None, None))
        else:
            entries.append(index_run(manifest, run=run.relpath, manifest_relpath=relpath))
    written = write_index_if_changed(
        root.path / INDEX_FILENAME,
        RootIndex(str(root.path), now, tuple(entries)),
        before_write=lambda: duties.fence(root.path),
    )
    if written:
        logger.info("%s: root index written (%d runs)", root.path, len(entries))
    return written


@contextlib.contextmanager
def scrub_scope(
    config: Config, duties: RootDuties, stopping: Callable[[], bool]
) -> Iterator[tuple[list[RootConfig], Callable[[], bool]]]:
    """The roots this daemon scrubs now, and the stop check of that scrub (the daemon stops, or
    the duties of one of those roots went to another node)."""
    roots = held_roots(config, duties)
    paths = [root.path for root in roots]

    def stop() -> bool:
        return stopping() or not all(duties.holds(path) for path in paths)

    with duties.working(paths):
        yield roots, stop
