"""Everything that parses a checkpoint runs in a child process with a deadline and a memory cap.

A run directory is written by people ckptd must not trust, and a file can be built to hang a
parser or to make it allocate without end (docs/security.md, Isolation). The daemon therefore
never parses checkpoint content itself: each worker thread owns one long-lived child
(``ckptd.isolation.child``, started with ``subprocess``, never ``fork`` from this threaded process)
and sends it a path; the child identifies, verifies or converts that file with the
library and answers with a typed result (``ckptd.isolation.codec``: JSON, never pickle).

* **Deadline** (``limits.max_seconds``, per file: identify + verify or convert together): the
  parent waits on the child's pipe with a timer; past it, the child gets SIGKILL, the temp file of
  a conversion it was writing is removed, and the file is refused with
  ``exceeds limits.max_seconds`` (:class:`ckptd.errors.BudgetExceeded`, like the budgets the
  parser counts itself, so it is recorded ``refused`` and quarantined per ``convert.on_unsafe``).
  The next file gets a fresh child. The deadline counts the child's time: the child stamps what
  it sends, an answer already sent when this process gets to it past the deadline (it was
  paused: SIGSTOP, a stall) is taken, and neither this process's work between two calls on one
  file nor the child's wait for an answer to its question (the lease check) is counted.
* **Memory**: the child sets RLIMIT_AS on itself, per file, to ``Limits.address_space`` (the
  counted ``limits.max_memory`` plus room for the interpreter, numpy and streamed buffers) plus
  the file's size (a legacy pickle is read into a sparse buffer that large); a file that needs
  more gets ``MemoryError`` there and is refused with ``exceeds limits.max_memory``; the child is
  replaced. Children also volunteer as the unit's first OOM victim (oom_score_adj 1000).
* A child that dies on its own (a crash in C code, the kernel's OOM killer) refuses the file too.

Children are reused from file to file (a process start only after a kill, and two are kept started
ahead of need); the files a batch will identify (those whose manifest entry is not current:
``PipelineDeps.examine_ahead``) are examined (identified, and the zips verified) ahead of the
pipeline, ``PREFETCH_CHUNK`` paths per request, each answer sent as soon as it is ready, so a burst
costs a few round trips per batch and each file still has its own deadline. The child process and
its pipe are ``ckptd.isolation.process``. :class:`Isolation` hands the daemon a ``PipelineDeps``
built from these calls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ckptd import units
from ckptd.convert.conversion import ConversionOutcome
from ckptd.convert.naming import zip_path_for
from ckptd.errors import (
    BudgetExceeded,
    CkptdError,
    CoordinationError,
    UnsafeCheckpoint,
)
from ckptd.formats import Format
from ckptd.formats.sniff import Identification
from ckptd.formats.verify import VerifyReport
from ckptd.isolation.codec import decode, decode_error, encode, encode_error
from ckptd.isolation.leftovers import remove_temps_of
from ckptd.isolation.process import (
    CLOSE_GRACE_SECONDS,
    ChildGone,
    IsolatedProcess,
)
from ckptd.limits import Limits
from ckptd.pipeline.types import PipelineDeps

logger = logging.getLogger(__name__)

# Prefetch (see Isolation.prefetch): paths per request, and how long a batch's prefetch may take
# (about the batch's own time budget, ckptd.pipeline.batch.DEFAULT_BATCH_SECONDS).
PREFETCH_CHUNK = 32
PREFETCH_SECONDS = 1.0


@dataclasses.dataclass
class _ThreadState:
    """Per worker thread: its child, the file it is on (and since when), a prefetched report."""

    child: IsolatedProcess | None = None
    path: Path | None = None
    started: float = 0.0
    answered: float = 0.0  # when the child sent its last answer (monotonic, its "at")
    spent: float = 0.0  # the child's seconds on ``path`` so far (its answers' times)
    report: VerifyReport | None = None
    exceeded: int = 0
    # Answers examined ahead for the batch at hand (prefetch): an answer (with the file's size
    # and mtime as examined) or the error to raise for that file.
    prefetched: dict[Path, dict[str, Any] | Exception] = dataclasses.field(default_factory=dict)


class Isolation:
    """Children for the calling threads (one each), their limits, and the pipeline's deps."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._local = threading.local()
        self._lock = threading.Lock()
        self._children: set[IsolatedProcess] = set()
        self._closed = False
        self._warned_uncapped = False
        self.kills = 0  # children killed or lost because of a file (metrics, tests)
        # Started children waiting for a thread (see start): a killed child's replacement is
        # already up, so the next file does not wait for a Python start.
        self._ready: list[IsolatedProcess] = []
        self._want_ready = 0
        self._wake = threading.Condition(self._lock)
        self._spawner: threading.Thread | None = None

    def start(self, first: int = 3, warm: int = 2) -> None:
        """Start ``first`` children now, in parallel (the daemon is ready to parse when it says
        READY=1), and keep ``warm`` started ahead of need from a thread that lives until close()
        (a child's PR_SET_PDEATHSIG follows the thread that started it)."""
        address_space = self._limits.address_space
        starting = [IsolatedProcess(address_space, wait=False) for _ in range(first)]
        for child in starting:
            try:
                child.wait_started()
            except ChildGone as err:
                logger.error("cannot start a process to parse checkpoints: %s", err)
                continue
            self._warn_if_uncapped(child)
            with self._wake:
                self._ready.append(child)
                self._children.add(child)
        self._want_ready = warm
        self._spawner = threading.Thread(
            target=self._spawn_loop, name="ckptd-isolation", daemon=True
        )
        self._spawner.start()

    def _spawn_loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or len(self._ready) < self._want_ready)
                if self._closed:
                    return
                address_space = self._limits.address_space
            try:
                child = IsolatedProcess(address_space)
            except (OSError, ChildGone) as err:
                logger.error("cannot start a process to parse checkpoints: %s", err)
                with self._wake:
                    self._wake.wait(5.0)
                continue
            self._warn_if_uncapped(child)
            with self._wake:
                closed = self._closed_now()
                if not closed:
                    self._ready.append(child)
                    self._children.add(child)
            if closed:
                child.kill()
                return

    def _closed_now(self) -> bool:
        # A method, not the attribute: the flag changes under other threads between reads.
        return self._closed

    # ---- the deps the pipeline calls ------------------------------------------------------------

    def deps(self, clock: Callable[[], datetime] | None = None) -> PipelineDeps:
        """The pipeline's pieces, each running in this thread's child (``clock`` stays here)."""
        deps = PipelineDeps(
            identify=self.identify,
            convert=self.convert,
            verify=self.verify,
            examine_ahead=self.prefetch,
        )
        return deps if clock is None else dataclasses.replace(deps, clock=clock)

    def set_limits(self, limits: Limits) -> None:
        """New limits (a reload): the deadline applies at once, a new memory cap to new children."""
        self._limits = limits

    def prefetch(self, paths: Sequence[Path], budget_seconds: float = PREFETCH_SECONDS) -> None:
        """Examine ``paths`` (identify, and verify the zips) ahead of the identify and verify calls
        that follow, a chunk per request (2 paths, then twice as many each time, at most
        ``PREFETCH_CHUNK``), while ``budget_seconds`` last: a burst of small files costs a few round
        trips per batch, not one per file.

        It stops at the first legacy pickle: that batch's time goes to conversions, which must not
        wait behind examinations of files further down. Each file still has its own deadline,
        counted from the answer before it; a file that exceeds it is answered with its refusal and
        the rest are left to their own calls.
        """
        state = self._state()
        state.prefetched = {}
        if len(paths) < 2:
            return  # one file: its identify asks for it
        begun = time.monotonic()
        offset, size = 0, 2
        while offset < len(paths) and time.monotonic() - begun < budget_seconds:
            chunk = paths[offset : offset + size]
            offset, size = offset + len(chunk), min(size * 2, PREFETCH_CHUNK)
            if not self._prefetch_chunk(state, chunk):
                return

    def _prefetch_chunk(self, state: _ThreadState, chunk: Sequence[Path]) -> bool:
        """Examine ``chunk`` into ``state.prefetched``; False when prefetching should stop."""
        try:
            child = self._send(state, "examine", list(chunk), self._limits_kwargs())
        except ChildGone:
            return False
        state.started = time.monotonic()
        go_on = True
        for path in chunk:
            state.path = path
            try:
                answer = state.prefetched[path] = self._receive(state, child, path)
            except (ChildGone, UnsafeCheckpoint) as err:
                if not isinstance(err, ChildGone):
                    state.prefetched[path] = err
                return False  # the child is gone; the rest get their own calls
            except (CkptdError, OSError, RuntimeError) as err:
                state.prefetched[path] = err
            else:
                go_on = go_on and answer["identification"]["format"] != Format.SB2_PICKLE.value
            # The next file's clock starts when the child turned to it, not when this thread
            # read the answer before it (it may have been paused with answers waiting).
            state.started = state.answered
        return go_on

    def _limits_kwargs(self) -> dict[str, Any]:
        return {"limits": encode(self._limits)}

    def identify(self, path: Path) -> Identification:
        state = self._state()
        state.path, state.started, state.report = path, time.monotonic(), None
        state.spent = 0.0
        answer = self._prefetched(state, path) or self._call(
            state, "examine", path, self._limits_kwargs()
        )
        report = answer["report"]
        state.report = None if report is None else decode(VerifyReport, report)
        identification: Identification = decode(Identification, answer["identification"])
        return identification

    def verify(self, path: Path, *, limits: Limits | None = None) -> VerifyReport:
        state = self._state()
        if state.path == path and state.report is not None:
            report, state.report = state.report, None
            return report
        self._start_file(state, path)
        sent = {"limits": encode(limits or self._limits)}
        result: VerifyReport = decode(VerifyReport, self._call(state, "verify", path, sent))
        return result

    def convert(
        self, source: Path, *, fence: Callable[[], None] | None = None, **kwargs: Any
    ) -> ConversionOutcome:
        """``convert_file`` in this thread's child. ``fence`` (the run's lease check) stays here:
        the child asks for it before each rename and move, and this thread answers by calling it
        (a daemon paused past its lease answers only when it wakes, and then says no)."""
        state = self._state()
        self._start_file(state, source)
        sent = {key: encode(value) for key, value in kwargs.items()}
        sent.setdefault("limits", encode(self._limits))
        if fence is not None:
            sent["fence"] = True
        target = kwargs.get("output") or zip_path_for(source)
        try:
            answer = self._call(state, "convert", source, sent, fence)
        except CkptdError:
            if state.child is None:  # killed or dead mid-conversion: its temp file is left over
                remove_temps_of(Path(target), kwargs.get("archive_base"))
            raise
        outcome: ConversionOutcome = decode(ConversionOutcome, answer)
        return outcome

    def structure(self, path: Path, fmt: Format) -> tuple[str, ...]:
        """The scrub's structure check of ``path`` (``ckptd.ops.scrub_check.verify_structure``) in this
        thread's child; a file over its limits, or one the child cannot answer for, is a problem
        line like any other (the scrub never raises for a file)."""
        state = self._state()
        state.path, state.started, state.report = path, time.monotonic(), None
        state.spent = 0.0
        try:
            sent = {"fmt": fmt.value, **self._limits_kwargs()}
            return tuple(self._call(state, "structure", path, sent))
        except (CkptdError, OSError, RuntimeError) as err:
            return (getattr(err, "message", None) or str(err),)

    def exceeded_in_thread(self) -> int:
        """How many files this thread's child was killed or lost over (the daemon's slow lane)."""
        return self._state().exceeded

    def close(self) -> None:
        """End every child (the daemon stops); calls after this raise ChildGone."""
        with self._wake:
            self._closed = True
            children, self._children, self._ready = list(self._children), set(), []
            self._wake.notify_all()
        for child in children:
            child.end_input()  # all at once: each exits on EOF in parallel
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        for child in children:
            child.close(max(0.0, deadline - time.monotonic()))
        if self._spawner is not None:
            # A child it is starting now is killed by it, or dies with this process (SIGTERM must
            # end the daemon within seconds, not wait for a Python start).
            self._spawner.join(max(0.0, deadline - time.monotonic()))

    # ---- the calls ------------------------------------------------------------------------------

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _ThreadState()
        return state

    @staticmethod
    def _start_file(state: _ThreadState, path: Path) -> None:
        # identify then convert of one file share one deadline; any other call starts a file.
        # The deadline counts the child's time: between two calls on one file, the clock stands
        # (this thread's own work, or a pause of this process, is not the file's doing).
        if state.path != path:
            state.path, state.started, state.report = path, time.monotonic(), None
            state.spent = 0.0
        else:
            state.started = time.monotonic() - state.spent

    @staticmethod
    def _prefetched(state: _ThreadState, path: Path) -> dict[str, Any] | None:
        found = state.prefetched.pop(path, None)
        if isinstance(found, Exception):
            raise found
        if found is None:
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None  # let the real call say what is wrong
        # Examined as it is now (size and mtime), else it changed since: ask again.
        return found if found["stat"] == [st.st_size, st.st_mtime_ns] else None

    def _child(self, state: _ThreadState) -> IsolatedProcess:
        address_space = self._limits.address_space
        child = state.child
        if child is not None and child.alive() and child.address_space == address_space:
            return child
        if child is not None:
            self._forget(state)
        with self._wake:
            if self._closed:
                raise ChildGone("the daemon is stopping")
            ready = [c for c in self._ready if c.address_space == address_space and c.alive()]
            for stale in set(self._ready) - set(ready):
                self._children.discard(stale)
                stale.kill()
            self._ready = ready
            taken = self._ready.pop(0) if self._ready else None
            self._wake.notify_all()
        if taken is not None:
            state.child = taken
            return taken
        child = IsolatedProcess(address_space)
        self._warn_if_uncapped(child)
        with self._lock:
            self._children.add(child)
        state.child = child
        return child

    def _warn_if_uncapped(self, child: IsolatedProcess) -> None:
        if child.uncapped is not None and not self._warned_uncapped:
            self._warned_uncapped = True
            logger.warning(
                "limits.max_memory not enforced on the parser processes: cannot set RLIMIT_AS (%s)",
                child.uncapped,
            )

    def _forget(self, state: _ThreadState) -> None:
        child, state.child = state.child, None
        if child is not None:
            with self._lock:
                self._children.discard(child)
            child.kill()

    def _call(
        self,
        state: _ThreadState,
        op: str,
        path: Path,
        kwargs: Mapping[str, Any],
        fence: Callable[[], None] | None = None,
    ) -> Any:
        return self._receive(state, self._send(state, op, [path], kwargs), path, fence)

    def _send(
        self, state: _ThreadState, op: str, paths: list[Path], kwargs: Mapping[str, Any]
    ) -> IsolatedProcess:
        if state.child is None or not state.child.alive():
            # Starting a child is not the file's time: its clock starts once one is ready.
            self._child(state)
            state.started = time.monotonic()
        child = self._child(state)
        if not child.send({"op": op, "paths": [str(path) for path in paths], "kwargs": kwargs}):
            # Died since it was last asked (not this file's doing): a fresh one, asked once more.
            self._forget(state)
            child = self._child(state)
            state.started = time.monotonic()
            if not child.send({"op": op, "paths": [str(p) for p in paths], "kwargs": kwargs}):
                self._forget(state)
                raise ChildGone("the isolated parser process cannot be reached")
        return child

    def _receive(
        self,
        state: _ThreadState,
        child: IsolatedProcess,
        path: Path,
        fence: Callable[[], None] | None = None,
    ) -> Any:
        """The answer about ``path`` (the next one ``child`` sends), or its error raised; the
        child's questions before it (``fence``: may it rename or move now?) are answered here.

        Past the deadline an answer already sent is taken (``IsolatedProcess.read``): a file is
        refused only when its child has not answered, not because this thread was paused. The
        time the child waits for the answer to a question is not its time.
        """
        deadline = state.started + self._limits.max_seconds.total_seconds()
        waited = 0.0  # for this thread's answers to the child's questions
        answer = child.read(deadline)
        while answer is not None and "fence" in answer:
            child.send({"fence": _fence_answer(fence)})
            waited += max(0.0, time.monotonic() - _sent_at(answer))
            answer = child.read(deadline + waited)
        deadline += waited
        if answer is not None:
            state.answered = _sent_at(answer)
            state.spent = max(0.0, state.answered - state.started - waited)
            late = time.monotonic() - deadline
            if late > 0 and state.answered <= deadline:
                logger.info(
                    "%s: answered in time while ckptd was paused or stalled; taken %.1fs after"
                    " its deadline",
                    path,
                    late,
                )
        if answer is None:
            stopping = self._closed
            timed_out = not child.ended
            self._forget(state)
            if stopping:
                raise ChildGone("the daemon is stopping; not finished", path=str(path))
            state.exceeded += 1
            self.kills += 1
            if timed_out:
                raise BudgetExceeded(
                    "max_seconds",
                    units.format_duration(self._limits.max_seconds),
                    "still being parsed; the process parsing it was killed",
                    path=str(path),
                )
            raise UnsafeCheckpoint(f"the process parsing it died ({child.death()})", path=str(path))
        for level, name, message in answer.get("logs", ()):
            logging.getLogger(str(name)).log(int(level), "%s", message)
        if "memory" in answer:
            self._forget(state)  # its heap may be in any state: the next file gets a fresh one
            cap = int(answer["memory"]) or child.address_space  # 0: the child could not cap
            state.exceeded += 1
            self.kills += 1
            raise BudgetExceeded(
                "max_memory",
                self._limits.max_memory,
                f"needs more than {units.format_size_human(cap)} of address space"
                " to parse (limits.max_memory plus the parser's headroom and the file's size)",
                path=str(path),
            )
        if "error" in answer:
            raise decode_error(answer["error"])
        return answer["ok"]


def _sent_at(message: Mapping[str, Any]) -> float:
    """When the child sent ``message`` (its ``"at"``), or now when it does not say."""
    at = message.get("at")
    return float(at) if isinstance(at, (int, float)) else time.monotonic()


def _fence_answer(fence: Callable[[], None] | None) -> dict[str, Any] | None:
    """None when the run may still be acted on, else the error to raise in the child."""
    if fence is None:
        return None
    try:
        fence()
    except CoordinationError as err:
        return encode_error(err)
    except Exception as err:  # a bug in the check still gets an answer: the child waits for one
        logger.exception("lease check failed")
        return encode_error(CoordinationError(f"the lease check failed: {err}"))
    return None
