"""``ckptd scrub``: re-hash every kept checkpoint and archived original against its manifest, re-verify
its structure, and record the results; never deletes or rewrites a checkpoint.

What is checked: every manifest entry ``kept`` or ``converted`` (an archived or kept legacy
original) that has a sha256, plus entries an earlier scrub found corrupt (so a repaired file is
seen to be good again). Per file: it is still a regular file, its sha256 (and size) equal the
manifest's, and its structure verifies (``verify_zip`` for zips, the static legacy parse for
pickles; nothing is executed). Any difference is a *finding*: bit rot, truncation, a file
replaced or deleted behind ckptd's back.

Concurrency: hashing a run can take minutes, so it runs without the run lock (a daemon batch or a
prune is never starved by a scrub). Results are then applied under the run lock to the manifest as
it is *then*: a result is only recorded if the entry still has the sha256, size and mtime that were
checked; otherwise the file was legitimately changed or removed meanwhile and the result is dropped
(``superseded``). Recorded per entry: ``last_verified`` (when it last matched) or ``corrupt``
(``{"detected_at", "checked_at", "problems", "sha256", "state_before"}``); a corrupt checkpoint is
also set to state ``broken`` (with ``error``), which retention never touches. The manifest gets a
``last_scrub`` summary. Reading is paced by a token bucket (``scrub.max_rate``) so a scrub does not
starve training I/O; only the hashing pass is metered: the verification that follows re-reads a
file that was just read, normally from the page cache.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ckptd.config.model import Config, RootConfig
from ckptd.errors import CkptdError, ManifestError
from ckptd.formats import Format
from ckptd.formats.verify import verify_zip
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.store import load_manifest
from ckptd.manifest.updates import set_entry, with_state
from ckptd.ops.verification import verify_file
from ckptd.runs.access import (
    OPS_LOCK_TIMEOUT,
    RunHandle,
    handle_for_root,
    runs_of_all_roots,
    save_manifest,
)
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import run_lock
from ckptd.timefmt import format_utc

logger = logging.getLogger(__name__)

SCRUB_CHUNK = 1024 * 1024  # small enough that pacing is smooth even at a few MiB/s
LAST_VERIFIED_KEY = "last_verified"
CORRUPT_KEY = "corrupt"
LAST_SCRUB_KEY = "last_scrub"
_SCRUBBED_STATES = frozenset({"kept", "converted"})

Clock = Callable[[], float]
Sleeper = Callable[[float], None]
StopCheck = Callable[[], bool]
# Re-verifies a file's structure: its problems, one line each. The daemon passes one that parses
# in a child process with the file's limits (ckptd.isolation.supervisor); the CLI uses verify_structure.
StructureCheck = Callable[[Path, Format], tuple[str, ...]]


# ---- pacing -------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket: ``acquire(n)`` returns once ``n`` bytes fit in ``rate`` bytes per second.

    The bucket holds at most ``burst`` bytes of credit and starts full. A request larger than the
    credit goes into debt and sleeps it off, so the long-run rate is exact whatever the sizes.
    ``rate=None`` never waits. Thread-safe; the clock and sleep are injectable for tests.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: int = SCRUB_CHUNK,
        clock: Clock = time.monotonic,
        sleep: Sleeper = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"a rate must be positive, got {rate}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, amount: int) -> float:
        """Take ``amount`` bytes of credit, sleeping as long as needed; returns the seconds slept."""
        if self.rate is None or amount <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class ScrubProgress(Protocol):
    """Where a scrub reports how far it got (the CLI's progress bar; None in the daemon)."""

    def start(self, total_bytes: int, files: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def current(self, label: str) -> None: ...


class _Stopped(Exception):
    """The caller asked the scrub to stop (daemon shutdown)."""


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A file that does not match its manifest entry."""

    path: str  # run-relative
    role: str  # "checkpoint" | "archived original"
    problems: tuple[str, ...]
    expected_sha256: str | None
    actual_sha256: str | None  # None when the file could not be read

    def to_json_obj(self) -> dict[str, object]:
        return {
            "path": self.path,
            "role": self.role,
            "problems": list(self.problems),
            "expected_sha256": self.expected_sha256,
            "actual_sha256": self.actual_sha256,
        }


@dataclass(frozen=True)
class RunScrub:
    """One run's scrub."""

    root: Path
    run: str
    run_dir: Path
    checked: int = 0
    bytes: int = 0
    corrupt: tuple[Finding, ...] = ()
    healed: tuple[str, ...] = ()  # found corrupt before, good now
    superseded: tuple[str, ...] = ()  # changed or removed by ckptd while being checked: dropped
    error: str | None = None
    manifest_written: bool = False
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.corrupt

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": self.run,
            "root": str(self.root),
            "checked": self.checked,
            "bytes": self.bytes,
            "corrupt": [finding.to_json_obj() for finding in self.corrupt],
            "healed": list(self.healed),
            "superseded": list(self.superseded),
            "error": self.error,
            "manifest_written": self.manifest_written,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class ScrubReport:
    """Every run one scrub looked at."""

    runs: tuple[RunScrub, ...]
    errors: tuple[str, ...] = ()  # roots that could not be listed
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and all(run.ok for run in self.runs)

    @property
    def corrupt_count(self) -> int:
        return sum(len(run.corrupt) for run in self.runs)

    @property
    def bytes(self) -> int:
        return sum(run.bytes for run in self.runs)

    def to_json_obj(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": sum(run.checked for run in self.runs),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "corrupt": self.corrupt_count,
            "interrupted": self.interrupted,
            "runs": [run.to_json_obj() for run in self.runs],
            "errors": list(self.errors),
        }


# ---- what to check (pure) -----------------------------------------------------------------------


def scrub_targets(manifest: Manifest) -> list[ManifestEntry]:
    """The entries a scrub checks, in manifest (path) order."""
    return [
        entry
        for entry in manifest.checkpoints
        if entry.sha256 is not None
        and (entry.state in _SCRUBBED_STATES or CORRUPT_KEY in entry.extra)
    ]


def _role(entry: ManifestEntry) -> str:
    return "archived original" if entry.state == "converted" else "checkpoint"


def run_matches(run: RunRef, run_glob: str | None) -> bool:
    """``--run GLOB`` against the run's path relative to its root, or its absolute path."""
    if run_glob is None:
        return True
    return fnmatch.fnmatchcase(run.relpath, run_glob) or fnmatch.fnmatchcase(
        str(run.run_dir), run_glob
    )


# ---- checking one file (I/O) --------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    entry: ManifestEntry  # as it was when checked
    problems: tuple[str, ...]
    actual_sha256: str | None
    bytes_read: int


def _hash_paced(
    path: Path, limiter: RateLimiter, progress: ScrubProgress | None, stop: StopCheck | None
) -> tuple[str, int, os.stat_result]:
    digest = hashlib.sha256()
    buffer = bytearray(SCRUB_CHUNK)
    view = memoryview(buffer)
    total = 0
    with open_regular_nofollow(path) as handle:
        st = os.fstat(handle.fileno())
        while True:
            if stop is not None and stop():
                raise _Stopped
            count = os.readv(handle.fileno(), [view])
            if not count:
                break
            digest.update(view[:count])
            total += count
            if progress is not None:
                progress.advance(count)
            limiter.acquire(count)
    return digest.hexdigest(), total, st


def check_entry(
    run_dir: Path,
    entry: ManifestEntry,
    limiter: RateLimiter,
    *,
    progress: ScrubProgress | None = None,
    stop: StopCheck | None = None,
    structure: StructureCheck | None = None,
) -> _Check:
    """Re-hash and re-verify one file against its manifest entry; never raises for bad content."""
    path = run_dir / entry.path
    try:
        actual, size, st = _hash_paced(path, limiter, progress, stop)
    except FileNotFoundError:
        return _Check(entry, ("missing: recorded in the manifest but not on disk",), None, 0)
    except CkptdError as err:  # a symlink or a non-file where the checkpoint was
        return _Check(entry, (f"replaced: {err.message}",), None, 0)
    except OSError as err:
        return _Check(entry, (f"unreadable: {err.strerror or err}",), None, 0)
    problems: list[str] = []
    if actual != entry.sha256:
        problems.append(f"sha256 mismatch: recorded {entry.sha256}, now {actual}")
        if size != entry.size:
            hint = " (truncated?)" if size < entry.size else ""
            problems.append(f"size changed: recorded {entry.size} bytes, now {size}{hint}")
        if entry.mtime_ns is not None and st.st_mtime_ns != entry.mtime_ns:
            problems.append("mtime changed: rewritten or replaced behind ckptd's back")
    check = structure or verify_structure
    problems.extend(f"structure: {line}" for line in check(path, entry.format))
    return _Check(entry, tuple(problems), actual, size)


def verify_structure(path: Path, fmt: Format, limits: Limits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """The problems of ``path``'s structure as a ``fmt`` file, in this process (none: it verifies)."""
    if fmt in (Format.SB2_ZIP, Format.SB3_ZIP):
        report = verify_zip(path, limits=limits)
        return () if report.ok else report.problems or ("does not verify",)
    if fmt is Format.SB2_PICKLE:
        verdict = verify_file(path, limits=limits)
        return () if verdict.ok else verdict.problems or (verdict.status,)
    return ()  # unknown content: ckptd never claimed to understand it, the hash is the check


# ---- applying results (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class _Applied:
    manifest: Manifest
    corrupt: tuple[Finding, ...]
    healed: tuple[str, ...]
    superseded: tuple[str, ...]


def apply_results(
    manifest: Manifest, checks: Sequence[_Check], now: datetime, *, total_bytes: int
) -> _Applied:
    """``manifest`` with the scrub's results recorded (see the module docstring)."""
    current = manifest.by_path()
    corrupt: list[Finding] = []
    healed: list[str] = []
    superseded: list[str] = []
    stamp = format_utc(now)
    for check in checks:
        checked = check.entry
        entry = current.get(checked.path)
        if entry is None or (entry.sha256, entry.size, entry.mtime_ns) != (
            checked.sha256,
            checked.size,
            checked.mtime_ns,
        ):
            superseded.append(checked.path)
            continue
        if check.problems:
            corrupt.append(
                Finding(entry.path, _role(entry), check.problems, entry.sha256, check.actual_sha256)
            )
            manifest = set_entry(manifest, _mark_corrupt(entry, check, stamp))
        else:
            if CORRUPT_KEY in entry.extra:
                healed.append(entry.path)
            manifest = set_entry(manifest, _mark_verified(entry, stamp))
    summary = {
        "at": stamp,
        "checked": len(checks) - len(superseded),
        "bytes": total_bytes,
        "corrupt": len(corrupt),
    }
    manifest = dataclasses.replace(manifest, extra={**manifest.extra, LAST_SCRUB_KEY: summary})
    return _Applied(manifest, tuple(corrupt), tuple(healed), tuple(superseded))


def _mark_corrupt(entry: ManifestEntry, check: _Check, stamp: str) -> ManifestEntry:
    before = entry.extra.get(CORRUPT_KEY)
    previous: dict[str, Any] = before if isinstance(before, dict) else {}
    state_before = previous.get("state_before", entry.state)
    record = {
        "detected_at": previous.get("detected_at", stamp),
        "checked_at": stamp,
        "problems": list(check.problems),
        "sha256": check.actual_sha256,
        "state_before": state_before,
    }
    marked = dataclasses.replace(entry, extra={**entry.extra, CORRUPT_KEY: record})
    if entry.state == "converted":
        return marked  # the archived original keeps its role; ``corrupt`` says what is wrong
    # ``broken`` keeps retention's hands off it: scrub's evidence must not be pruned away.
    return with_state(marked, "broken", error=f"scrub: {check.problems[0]}")


def _mark_verified(entry: ManifestEntry, stamp: str) -> ManifestEntry:
    extra = {key: value for key, value in entry.extra.items() if key != CORRUPT_KEY}
    extra[LAST_VERIFIED_KEY] = stamp
    before = entry.extra.get(CORRUPT_KEY)
    verified = dataclasses.replace(entry, extra=extra)
    if isinstance(before, dict) and entry.state == "broken":
        state = before.get("state_before", "kept")
        return with_state(verified, state if state in _SCRUBBED_STATES else "kept")
    return verified


# ---- one run, all runs (I/O edges) ---------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    root: RootConfig
    run: RunRef
    handle: RunHandle
    manifest: Manifest | None
    error: str | None
    targets: tuple[ManifestEntry, ...]


def _plan_run(config: Config, root: RootConfig, run: RunRef) -> _Planned:
    handle = handle_for_root(config, root, run.run_dir, run.relpath)
    try:
        manifest = load_manifest(handle.manifest_path)
    except FileNotFoundError:
        return _Planned(root, run, handle, None, None, ())
    except ManifestError as err:
        return _Planned(root, run, handle, None, str(err), ())
    return _Planned(root, run, handle, manifest, None, tuple(scrub_targets(manifest)))


def scrub_run(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    rate_limiter: RateLimiter,
    progress: ScrubProgress | None = None,
    stop: StopCheck | None = None,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
) -> RunScrub:
    """Scrub one run and record the results in its manifest; never raises for a run's problem."""
    return _scrub_planned(
        _plan_run(config, root, run), now, rate_limiter, progress, stop, lock_timeout, None
    )


def _scrub_planned(
    planned: _Planned,
    now: datetime,
    limiter: RateLimiter,
    progress: ScrubProgress | None,
    stop: StopCheck | None,
    lock_timeout: float,
    structure: StructureCheck | None,
) -> RunScrub:
    base = RunScrub(planned.root.path, planned.run.relpath, planned.run.run_dir)
    if planned.error is not None:
        logger.error("scrub: %s", planned.error)
        return dataclasses.replace(base, error=planned.error)
    if planned.manifest is None:
        return base  # ckptd has recorded nothing here yet: nothing to check against
    checks: list[_Check] = []
    interrupted = False
    try:
        for entry in planned.targets:
            if progress is not None:
                progress.current(f"{planned.run.relpath}/{entry.path}")
            checks.append(
                check_entry(
                    planned.run.run_dir,
                    entry,
                    limiter,
                    progress=progress,
                    stop=stop,
                    structure=structure,
                )
            )
    except _Stopped:
        interrupted = True
    total = sum(check.bytes_read for check in checks)
    try:
        with run_lock(planned.handle.layout, timeout=lock_timeout):
            try:
                fresh = load_manifest(planned.handle.manifest_path)
            except FileNotFoundError:
                fresh = None
            if fresh is None:
                return dataclasses.replace(
                    base, checked=len(checks), bytes=total, interrupted=interrupted
                )
            applied = apply_results(fresh, checks, now, total_bytes=total)
            written = save_manifest(planned.handle, applied.manifest, fresh, now)
    except (CkptdError, OSError) as err:
        message = f"cannot record scrub results: {err}"
        logger.error("scrub: run %s: %s", planned.run.run_dir, message)
        findings = tuple(
            Finding(c.entry.path, _role(c.entry), c.problems, c.entry.sha256, c.actual_sha256)
            for c in checks
            if c.problems
        )
        return dataclasses.replace(
            base, checked=len(checks), bytes=total, corrupt=findings, error=message
        )
    for finding in applied.corrupt:
        logger.error(
            "scrub: %s: %s", planned.run.run_dir / finding.path, "; ".join(finding.problems)
        )
    return RunScrub(
        planned.root.path,
        planned.run.relpath,
        planned.run.run_dir,
        checked=len(checks) - len(applied.superseded),
        bytes=total,
        corrupt=applied.corrupt,
        healed=applied.healed,
        superseded=applied.superseded,
        manifest_written=written,
        interrupted=interrupted,
    )


def scrub_all(
    config: Config,
    run_glob: str | None,
    now: datetime,
    rate_limiter: RateLimiter,
    *,
    progress: ScrubProgress | None = None,
    stop: StopCheck | None = None,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
    structure: StructureCheck | None = None,
) -> ScrubReport:
    """Scrub every run of every root (those matching ``run_glob``, when given)."""
    started = time.monotonic()
    found, errors = runs_of_all_roots(config)
    planned = [_plan_run(config, root, run) for root, run in found if run_matches(run, run_glob)]
    if progress is not None:
        progress.start(
            sum(entry.size for plan in planned for entry in plan.targets),
            sum(len(plan.targets) for plan in planned),
        )
    runs: list[RunScrub] = []
    for plan in planned:
        result = _scrub_planned(plan, now, rate_limiter, progress, stop, lock_timeout, structure)
        runs.append(result)
        if result.interrupted:
            break
    interrupted = any(run.interrupted for run in runs)
    return ScrubReport(tuple(runs), tuple(errors), time.monotonic() - started, interrupted)


def scheduled_scrub(
    config: Config,
    *,
    now: datetime,
    set_corrupt_gauge: Callable[[int], None] | None = None,
    stop: StopCheck | None = None,
    structure: StructureCheck | None = None,
) -> ScrubReport:
    """The daemon's ``schedule.scrub`` job: scrub everything at ``scrub.max_rate`` and report it.

    ``set_corrupt_gauge`` is ``Metrics.set_scrub_corrupt``; it is only set by a scrub that ran to
    the end (an interrupted one has not seen every file).
    """
    report = scrub_all(
        config, None, now, RateLimiter(config.scrub.max_rate), stop=stop, structure=structure
    )
    if set_corrupt_gauge is not None and not report.interrupted:
        set_corrupt_gauge(report.corrupt_count)
    logger.info(
        "scrub: %d runs, %d files, %d bytes in %.1fs, %d corrupt%s",
        len(report.runs),
        sum(run.checked for run in report.runs),
        report.bytes,
        report.seconds,
        report.corrupt_count,
        " (interrupted)" if report.interrupted else "",
    )
    return report
