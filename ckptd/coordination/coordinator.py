"""A daemon's side of the leases: renew, claim and hand back in a thread; fence every act.

Every ``lease / 3`` the coordinator thread renews this daemon's leases, picks up hints, reads a
snapshot and claims and hands back runs per :func:`ckptd.coordination.leases.plan_round`. The
daemon's threads ask :meth:`Coordinator.owns` (cheap, local) before they start work on a run, and
:meth:`Coordinator.fence` right before every rename, delete and manifest write.

The fencing check has two halves:

* **local**: each lease is trusted only until ``lease`` after the moment its last successful
  claim or renewal was *sent* (the database's expiry is at least that late), measured on the
  monotonic clock. A process that was paused (SIGSTOP, a stall, swapping) finds on waking that
  this bound has passed, without asking anyone.
* **the database**: the run's current token must still be this lease's, with at least
  ``lease / 3`` left. A token moves on only when another node claimed the run.

The filesystem cannot check a token, so what remains is the gap between the check and the act
it guards (a rename or an unlink, microseconds): a pause longer than ``lease / 3`` exactly there
would not be caught. Every act is atomic, so even then the cost is a duplicate, never a half file.

Outage: a store call that fails makes the coordinator *unavailable*: ``fence`` then refuses
everything (nothing in a shared run is converted or deleted), the daemon keeps watching and
recording, the transition is logged once each way, and the next round retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from ckptd.coordination.leases import (
    Hint,
    Identity,
    Lease,
    LeaseStore,
    RunId,
    Snapshot,
    plan_round,
)
from ckptd.errors import CoordinationError, FencedError, StoreUnavailable

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
# Hints waiting for the next round beyond this are dropped (the owner's rescan finds the files).
MAX_PENDING_HINTS = 100_000


@dataclass(frozen=True)
class Held:
    lease: Lease
    trusted_until: float  # monotonic: when the claim or renewal was sent, plus the lease


@dataclass(frozen=True)
class CoordinatorState:
    """For STATUS=, metrics and logs."""

    node: str
    available: bool
    problem: str | None
    owned: int
    known_runs: int
    live_nodes: int


class Coordinator:
    """This daemon's leases on the runs of ``roots`` (see the module docstring)."""

    def __init__(
        self,
        store: LeaseStore,
        me: Identity,
        lease: timedelta,
        roots: Iterable[str],
        *,
        busy: Callable[[], frozenset[RunId]] = frozenset,
        discover: Callable[[], Iterable[RunId]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.store = store
        self.me = me
        self.lease = lease
        self.roots = frozenset(roots)
        self._busy = busy
        self._discover = discover
        self._clock = clock
        self._registered: set[RunId] = set()
        self._hints_out: list[Hint] = []
        self._gained = False
        # When each run was last fenced: a batch dispatched after the daemon's last busy snapshot
        # shows here, so a run is never handed back while work on it may be under way.
        self._last_fenced: dict[RunId, float] = {}
        self._lock = threading.Lock()
        self._held: dict[RunId, Held] = {}
        self._hints: list[Hint] = []
        self._to_register: set[RunId] = set()
        self._announced = False
        self._problem: str | None = None
        self._last_snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return max(self.lease.total_seconds() / 3, 0.1)

    @property
    def margin(self) -> timedelta:
        return self.lease / 3

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """One round now (so a fresh daemon knows where it stands), then rounds in a thread."""
        self.round()
        self._thread = threading.Thread(target=self._loop, name="ckptd-coordinator", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop the rounds; hand every lease back so other nodes take over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if release:
            with self._lock:
                held = list(self._held.values())
                self._held.clear()
            for item in held:
                try:
                    self.store.release(item.lease)
                except CoordinationError:
                    break  # unreachable: the leases lapse on their own
        self.store.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.round()
            except Exception:
                # A bug here must not end the renewals; the next round starts afresh.
                logger.exception("coordination round failed")

    # ---- one round ---------------------------------------------------------------------------

    def round(self) -> None:
        """Renew, collect hints, register runs, claim and hand back (one pass)."""
        try:
            self._round()
        except StoreUnavailable as err:
            self._set_problem(str(err))
        except CoordinationError as err:
            self._set_problem(str(err))
        else:
            self._set_problem(None)

    def _round(self) -> None:
        if not self._announced:
            self.store.announce(self.me, self.lease, self.roots)
            self._announced = True
        sent = self._clock()
        kept = self.store.renew(self.me, self.lease)
        with self._lock:
            self._held = {
                lease.run: Held(lease, sent + self.lease.total_seconds()) for lease in kept
            }
        hints = self.store.take_hints(self.me)
        if self._discover is not None:
            self.register(self._discover())
        with self._lock:
            pending, self._to_register = self._to_register - self._registered, set()
            outgoing, self._hints_out = self._hints_out, []
        try:
            self.store.register_runs(pending)
            self.store.hint(outgoing)
        except BaseException:
            with self._lock:
                self._to_register |= pending
                self._hints_out[:0] = outgoing
            raise
        self._registered |= pending
        snapshot = self.store.snapshot()
        recent = self._clock() - 2 * self.interval
        with self._lock:
            fenced = frozenset(run for run, at in self._last_fenced.items() if at >= recent)
            self._last_fenced = {run: at for run, at in self._last_fenced.items() if at >= recent}
        busy = self._busy() | fenced
        plan = plan_round(self.me, self.roots, snapshot, self.lease, busy=busy)
        for run in plan.release:
            with self._lock:
                held = self._held.pop(run, None)
            if held is not None:
                self.store.release(held.lease)
        for run in plan.claim:
            sent = self._clock()
            lease = self.store.claim(run, self.me, self.lease)
            if lease is not None:
                with self._lock:
                    self._held[run] = Held(lease, sent + self.lease.total_seconds())
                    # A root's duties hold no files: no rescan for them.
                    self._gained = self._gained or not run.is_root_duties
        with self._lock:
            self._hints.extend(hints)
            self._last_snapshot = snapshot

    def _set_problem(self, problem: str | None) -> None:
        with self._lock:
            before, self._problem = self._problem, problem
        if problem is not None and before is None:
            logger.error(
                "coordination unavailable, converting and deleting nothing in shared runs: %s",
                problem,
            )
        elif problem is None and before is not None:
            logger.info("coordination available again")

    # ---- what the daemon asks ----------------------------------------------------------------

    def owns(self, run: RunId) -> bool:
        """Whether this daemon may start work on ``run`` now (local: no database round trip)."""
        with self._lock:
            if self._problem is not None:
                return False
            held = self._held.get(run)
        margin = self.margin.total_seconds()
        return held is not None and self._clock() < held.trusted_until - margin

    def fence(self, run: RunId) -> Lease:
        """Raise unless this daemon still holds ``run`` with time to spare (before every act)."""
        with self._lock:
            problem = self._problem
            held = self._held.get(run)
            self._last_fenced[run] = self._clock()
        if problem is not None:
            raise StoreUnavailable(problem)
        if held is None:
            raise FencedError(f"{run}: not held by node {self.me.node}")
        if self._clock() >= held.trusted_until - self.margin.total_seconds():
            raise FencedError(f"{run}: the lease of node {self.me.node} may have lapsed")
        if not self.store.valid(held.lease, self.margin):
            with self._lock:
                if self._held.get(run) == held:
                    del self._held[run]
            raise FencedError(
                f"{run}: token {held.lease.token} of node {self.me.node} is no longer current"
            )
        return held.lease

    def register(self, runs: Iterable[RunId]) -> None:
        """Runs this daemon found; recorded in the store at the next round."""
        with self._lock:
            self._to_register.update(runs)

    def hint(self, run: RunId, path: str) -> None:
        """Tell ``run``'s owner about ``path`` at the next round (best effort: the owner's own
        watching and rescans find it anyway). Never blocks on the database."""
        with self._lock:
            if len(self._hints_out) < MAX_PENDING_HINTS:
                self._hints_out.append(Hint(run, path, self.me.node))

    def take_gained(self) -> bool:
        """Whether runs were claimed since the last call (their files need a look)."""
        with self._lock:
            gained, self._gained = self._gained, False
        return gained

    def take_hints(self) -> list[Hint]:
        with self._lock:
            hints, self._hints = self._hints, []
        return hints

    def owned(self) -> list[RunId]:
        with self._lock:
            return sorted(self._held)

    def state(self) -> CoordinatorState:
        with self._lock:
            snapshot = self._last_snapshot
            return CoordinatorState(
                node=self.me.node,
                available=self._problem is None,
                problem=self._problem,
                owned=len(self._held),
                known_runs=len(snapshot.runs) if snapshot is not None else 0,
                live_nodes=len(snapshot.live_nodes()) if snapshot is not None else 0,
            )
