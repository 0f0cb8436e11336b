"""The daemon's side of coordination (README, "Several daemons on one root").

:class:`Coordination` is what the daemon calls, for either backend: ``local`` holds the root
locks (``ckptd.coordination.local``), ``postgres`` runs a :class:`Cluster`.

:class:`Cluster` wraps the :class:`ckptd.coordination.coordinator.Coordinator` for the main loop:

* before each dispatch, every run with waiting paths is checked: an owned run goes ahead; while
  the database is away, the paths wait (nothing converted, deleted or recorded in a shared run);
  a run another node owns gets its ready paths passed on as hints and is dropped here;
* hints from other nodes become observed paths; newly claimed runs trigger a rescan (the previous
  owner may have left files unprocessed);
* the pipeline's and prune's ``fence`` and prune's run filter come from here;
* ``STATUS=`` text and the coordination metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from ckptd.config.model import Config
from ckptd.coordination.backend import identity, open_store, postgres_dsn
from ckptd.coordination.coordinator import Coordinator
from ckptd.coordination.leases import ROOT_DUTIES, RunId
from ckptd.coordination.local import RootLocks, new_holder, node_name
from ckptd.daemon.duties import RootDuties
from ckptd.daemon.metrics import Metrics
from ckptd.daemon.run_queue import RunQueues
from ckptd.errors import CkptdError, CoordinationError, RootBusyError
from ckptd.pipeline.types import PipelineDeps
from ckptd.retention.passes import PassOptions
from ckptd.runs.roots import RunRef, find_runs
from ckptd.watch.settling import SettlingFiles

logger = logging.getLogger(__name__)

# While the database is away a waiting run is looked at again this often.
OUTAGE_RECHECK_SECONDS = 1.0


def run_id(run: RunRef) -> RunId:
    return RunId(str(run.root), run.relpath)


class Cluster:
    """One daemon among several on shared roots; build with :meth:`create` (None for ``local``)."""

    def __init__(self, config: Config) -> None:
        """A missing DSN raises ConfigError, a missing psycopg CoordinationError."""
        self.config = config
        me = identity(config)
        # Runs with a batch in flight, as of the last tick (read by the coordinator's thread:
        # one reference swap, no lock); a run dispatched since is protected by its fence.
        self._busy: frozenset[RunId] = frozenset()
        # Root duties a job is working on (ckptd.daemon.duties): not handed back meanwhile.
        self._duties_busy: frozenset[RunId] = frozenset()
        self.coordinator = Coordinator(
            open_store(postgres_dsn(config), me.node),
            me,
            config.coordination.lease,
            [str(root.path) for root in config.roots],
            busy=lambda: self._busy | self._duties_busy,
            discover=self.discover,
        )

    @classmethod
    def create(cls, config: Config) -> Cluster | None:
        """The cluster side for ``config``; None with ``backend: local``."""
        if config.coordination.backend != "postgres":
            return None
        return cls(config)

    @property
    def node(self) -> str:
        return self.coordinator.me.node

    def start(self) -> None:
        self.coordinator.start()
        logger.info(
            "coordinating as node %s (lease %ss)",
            self.node,
            int(self.config.coordination.lease.total_seconds()),
        )

    def stop(self) -> None:
        self.coordinator.stop(release=True)

    # ---- what the coordinator thread asks (its own thread) -----------------------------------

    def discover(self) -> list[RunId]:
        """Every run under the roots (a directory listing; failures are left to the rescan), and
        each root's duties (its index and scrub: ckptd.daemon.duties)."""
        found: list[RunId] = [RunId(str(root.path), ROOT_DUTIES) for root in self.config.roots]
        for root in self.config.roots:
            try:
                scan = find_runs(root.path, root.run_depth, self.config.state_dir)
            except OSError:
                continue
            found.extend(run_id(run) for run in scan.runs)
        return found

    # ---- fencing (worker threads) ------------------------------------------------------------

    def fence(self, run: RunRef) -> None:
        self.coordinator.fence(run_id(run))

    def owns(self, run: RunRef) -> bool:
        return self.coordinator.owns(run_id(run))

    def pass_options(self) -> PassOptions:
        """Prune and manifest passes: only this daemon's runs, every act fenced."""
        return PassOptions(select=self.owns, fence=self.fence)

    # ---- root duties (ckptd.daemon.duties.RootDuties) ------------------------------------------

    def holds(self, root: Path) -> bool:
        return self.coordinator.owns(RunId(str(root), ROOT_DUTIES))

    def fence_root(self, root: Path) -> None:
        self.coordinator.fence(RunId(str(root), ROOT_DUTIES))

    @contextlib.contextmanager
    def working(self, roots: Iterable[Path]) -> Iterator[None]:
        ids = frozenset(RunId(str(root), ROOT_DUTIES) for root in roots)
        self._duties_busy = self._duties_busy | ids
        try:
            yield
        finally:
            self._duties_busy = self._duties_busy - ids

    # ---- the main loop ------------------------------------------------------------------------

    def tick(
        self, runs: RunQueues, settling: SettlingFiles, jobs_wanted: set[str], now: float
    ) -> None:
        """Route waiting runs, turn hints into observed paths, rescan after new claims."""
        self._busy = frozenset(self._run_id_of(run_dir) for run_dir in runs.busy)
        self._route(runs, now)
        for hint in self.coordinator.take_hints():
            relative = PurePosixPath(hint.path)
            if relative.is_absolute() or ".." in relative.parts:
                continue  # the pipeline would ignore it anyway; not even a stat outside the run
            root = Path(hint.run.root)
            run_dir = root if hint.run.run == "." else root / hint.run.run
            settling.observe(root, run_dir / relative, now, closed=False, expect_close=False)
        if self.coordinator.take_gained():
            jobs_wanted.add("rescan")

    def _run_id_of(self, run_dir: Path) -> RunId:
        for root in self.config.roots:
            if run_dir == root.path:
                return RunId(str(root.path), ".")
            if run_dir.is_relative_to(root.path):
                return RunId(str(root.path), run_dir.relative_to(root.path).as_posix())
        return RunId("", str(run_dir))

    def _route(self, runs: RunQueues, now: float) -> None:
        available = self.coordinator.state().available
        for run_dir, queue in list(runs.runs.items()):
            if run_dir in runs.busy or not queue:
                continue
            if self.owns(queue.run):
                continue
            if not available:
                queue.not_before = max(queue.not_before, now + OUTAGE_RECHECK_SECONDS)
                continue
            rid = run_id(queue.run)
            for path in queue.ready:
                self.coordinator.hint(rid, path.relative_to(queue.run.run_dir).as_posix())
            del runs.runs[run_dir]

    # ---- reporting ----------------------------------------------------------------------------

    def status_text(self) -> str:
        state = self.coordinator.state()
        if not state.available:
            return "coordination unavailable: converting and deleting nothing in shared runs"
        return (
            f"node {state.node}: {state.owned} of {state.known_runs} runs,"
            f" {state.live_nodes} nodes live"
        )

    def update_metrics(self, metrics: Metrics) -> None:
        state = self.coordinator.state()
        metrics.set_coordination(available=state.available, owned=state.owned)


class Coordination:
    """Both backends as the daemon sees them: the root locks (``local``) or the cluster
    (``postgres``); the daemon's own module only calls these hooks."""

    def __init__(self, config: Config) -> None:
        # Held exclusively by a local daemon, shared by a cluster's (ckptd.coordination.local):
        # either kind refuses to start on a root the other serves.
        self.locks = RootLocks(
            config.state_dir,
            new_holder(config.coordination.node),
            shared=config.coordination.backend == "postgres",
        )
        self.cluster = Cluster.create(config)
        self.node = node_name(config.coordination.node)

    def lock(self, config: Config) -> None:
        """Lock ``config``'s roots (shared with ``postgres``); RootBusyError names the daemon
        serving one that this one cannot serve beside."""
        self.locks.acquire(root.path for root in config.roots)

    def lock_late_roots(self, config: Config) -> str | None:
        """Lock roots that appeared since; the reason to stop when another daemon serves one."""
        try:
            self.lock(config)
        except RootBusyError as err:
            logger.error("stopping: %s", err)
            return str(err)
        except (CkptdError, OSError) as err:
            logger.error("cannot lock a root: %s", err)
        return None

    def check_reload(self, old: Config, new: Config) -> None:
        """Raise (CkptdError) when ``new`` cannot take over from ``old`` without a restart, or
        names a root another daemon serves; lock its new roots otherwise."""
        if new.coordination != old.coordination or (
            self.cluster is not None and new.roots != old.roots
        ):
            raise CoordinationError(
                "coordination settings (and, with backend postgres, roots) change only at a restart"
            )
        self.lock(new)

    def start(self) -> None:
        if self.cluster is not None:
            self.cluster.start()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.locks.release_all()

    def deps(self, deps: PipelineDeps) -> PipelineDeps:
        """``deps`` with the cluster's fence before every move and manifest write."""
        if self.cluster is None:
            return deps
        return dataclasses.replace(deps, fence=self.cluster.fence)

    def pass_options(self) -> PassOptions:
        return PassOptions() if self.cluster is None else self.cluster.pass_options()

    def duties(self) -> RootDuties | None:
        """A cluster's root duties (index, scheduled scrub); None: this daemon alone does them."""
        return None if self.cluster is None else _Duties(self.cluster)

    def tick(
        self, runs: RunQueues, settling: SettlingFiles, jobs_wanted: set[str], now: float
    ) -> None:
        if self.cluster is not None:
            self.cluster.tick(runs, settling, jobs_wanted, now)

    def status(self, text: str, metrics: Metrics) -> str:
        """``STATUS=`` text with the cluster's part; the coordination metrics updated."""
        if self.cluster is None:
            return text
        self.cluster.update_metrics(metrics)
        return f"{text}; {self.cluster.status_text()}"


class _Duties:
    """:class:`ckptd.daemon.duties.RootDuties` of a cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def holds(self, root: Path) -> bool:
        return self._cluster.holds(root)

    def fence(self, root: Path) -> None:
        self._cluster.fence_root(root)

    def working(self, roots: Iterable[Path]) -> contextlib.AbstractContextManager[None]:
        return self._cluster.working(roots)
