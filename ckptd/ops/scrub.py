"""``ckptd scrub``: re-hash every kept checkpoint and archived original against its manifest, re-verify
its structure, and record the results; never deletes or rewrites a checkpoint.

What is checked: every manifest entry ``kept`` or ``converted`` (an archived or kept legacy
original) that has a sha256, plus entries an earlier scrub found corrupt (so a repaired file is
seen to be good again). Per file (``ckptd.ops.scrub_check``): it is still a regular file, its
sha256 (and size) equal the manifest's, and its structure verifies (``verify_zip`` for zips, the
static legacy parse for pickles; nothing is executed). Any difference is a *finding*: bit rot,
truncation, a file replaced or deleted behind ckptd's back.

Concurrency: hashing a run can take minutes, so it runs without the run lock (a daemon batch or a
prune is never starved by a scrub). Results are then applied under the run lock to the manifest as
it is *then* (``ckptd.ops.scrub_results``, which says what is recorded). Reading is paced by a
token bucket (``ckptd.ops.ratelimit``, ``scrub.max_rate``) so a scrub does not starve training I/O.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ckptd.config.model import Config, RootConfig
from ckptd.errors import CkptdError, ManifestError
from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.store import load_manifest
from ckptd.ops.ratelimit import RateLimiter
from ckptd.ops.scrub_check import (
    Check,
    ScrubProgress,
    StopCheck,
    Stopped,
    StructureCheck,
    check_entry,
)
from ckptd.ops.scrub_dirs import check_directory
from ckptd.ops.scrub_results import (
    Finding,
    RunScrub,
    ScrubReport,
    apply_results,
    role,
    scrub_targets,
)
from ckptd.runs.access import (
    OPS_LOCK_TIMEOUT,
    RunHandle,
    handle_for_root,
    runs_of_all_roots,
    save_manifest,
)
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import run_lock
from ckptd.units import plural

logger = logging.getLogger(__name__)


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
    fence: Callable[[Path], None] | None = None,
) -> RunScrub:
    base = RunScrub(planned.root.path, planned.run.relpath, planned.run.run_dir)
    if planned.error is not None:
        return dataclasses.replace(base, error=planned.error)
    if planned.manifest is None:
        return base  # ckptd has recorded nothing here yet: nothing to check against
    checks: list[Check] = []
    interrupted = False
    try:
        for entry in planned.targets:
            if progress is not None:
                progress.current(f"{planned.run.relpath}/{entry.path}")
            if entry.files is not None:  # a directory checkpoint: every file re-hashed
                checks.append(
                    check_directory(
                        planned.run.run_dir, entry, limiter, progress=progress, stop=stop
                    )
                )
                continue
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
    except Stopped:
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
            if fence is not None:
                # A cluster: only the holder of the root's duties records a scrub, checked right
                # before the write like every other manifest write (a node paused past its lease
                # raises here and records nothing).
                fence(planned.root.path)
            applied = apply_results(fresh, checks, now, total_bytes=total)
            written = save_manifest(planned.handle, applied.manifest, fresh, now)
    except (CkptdError, OSError) as err:
        message = f"cannot record scrub results: {err}"
        findings = tuple(
            Finding(c.entry.path, role(c.entry), c.problems, c.entry.sha256, c.actual_sha256)
            for c in checks
            if c.problems
        )
        return dataclasses.replace(
            base, checked=len(checks), bytes=total, corrupt=findings, error=message
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
    fence: Callable[[Path], None] | None = None,
) -> ScrubReport:
    """Scrub every run of every root (those matching ``run_glob``, when given); ``fence(root)``,
    when given, is called under each run's lock right before its results are written."""
    started = time.monotonic()
    found, errors = runs_of_all_roots(config)
    planned = [_plan_run(config, root, run) for root, run in found if run.matches(run_glob)]
    if progress is not None:
        progress.start(
            sum(entry.size for plan in planned for entry in plan.targets),
            sum(len(plan.targets) for plan in planned),
        )
    runs: list[RunScrub] = []
    for plan in planned:
        result = _scrub_planned(
            plan, now, rate_limiter, progress, stop, lock_timeout, structure, fence
        )
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
    fence: Callable[[Path], None] | None = None,
) -> ScrubReport:
    """The daemon's ``schedule.scrub`` job: scrub everything at ``scrub.max_rate`` and report it.

    ``set_corrupt_gauge`` is ``Metrics.set_scrub_corrupt``; it is only set by a scrub that ran to
    the end (an interrupted one has not seen every file).
    """
    report = scrub_all(
        config,
        None,
        now,
        RateLimiter(config.scrub.max_rate),
        stop=stop,
        structure=structure,
        fence=fence,
    )
    if set_corrupt_gauge is not None and not report.interrupted:
        set_corrupt_gauge(report.corrupt_count)
    # Logged here, for the daemon; `ckptd scrub` prints the same report itself (once).
    for run in report.runs:
        if run.error is not None:
            logger.error("scrub: run %s: %s", run.run_dir, run.error)
        for finding in run.corrupt:
            logger.error("scrub: %s: %s", run.run_dir / finding.path, "; ".join(finding.problems))
    logger.info(
        "scrub: %s, %s, %d bytes in %.1fs, %d corrupt%s",
        plural(len(report.runs), "run"),
        plural(sum(run.checked for run in report.runs), "file"),
        report.bytes,
        report.seconds,
        report.corrupt_count,
        " (interrupted)" if report.interrupted else "",
    )
    return report
