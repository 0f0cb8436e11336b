"""What the daemon's worker pool runs: work items, the periodic jobs, and their results.

A work item is a batch of one run's paths (``pipeline.process_batch``), one run's manifest pass
(asked for when a directory checkpoint of the run is complete, ``ckptd.watch.dir_tracker``) or a
periodic job (prune, manifest, rescan, scrub); :func:`execute` runs any of them on a worker thread
and returns the result the main thread collects. :func:`scan_roots` is the reconciliation the
rescan job and the start share.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ckptd.config.model import Config, RootConfig, ScheduleSpec
from ckptd.daemon.duties import RootDuties, scrub_scope, write_root_indexes
from ckptd.daemon.metrics import Metrics
from ckptd.fs.files import FoundFile
from ckptd.ops.scrub import scheduled_scrub
from ckptd.ops.scrub_check import StructureCheck
from ckptd.pipeline.batch import process_batch
from ckptd.pipeline.discovery import scan_run
from ckptd.pipeline.types import BatchResult, PipelineDeps
from ckptd.retention.manifest_pass import write_manifests, write_run_manifest
from ckptd.retention.passes import PassOptions
from ckptd.retention.prune import prune_all
from ckptd.runs.roots import RunRef, find_runs
from ckptd.units import plural

logger = logging.getLogger(__name__)

# A ckptd temp file untouched for this long belongs to a killed writer (a live one keeps writing).
STALE_TEMP_SECONDS = 30.0
JOB_NAMES = ("prune", "manifest", "rescan", "scrub")
# Passes of a daemon alone on its roots (coordination.backend local): every run, nothing fenced.
ONE_DAEMON = PassOptions()


@dataclass(frozen=True)
class RunBatch:
    """Work item: these ready paths (and these vanished ones) of one run."""

    config: Config
    root: RootConfig
    run: RunRef
    paths: tuple[Path, ...]
    expected: Mapping[Path, tuple[int, int]] = field(default_factory=dict)
    gone: tuple[Path, ...] = ()
    slow: bool = False  # on the slow lane: the run had a file over a limit (ckptd.daemon.run_queue)


@dataclass(frozen=True)
class JobRun:
    """Work item: one periodic job over every root of ``config``."""

    config: Config
    name: str


@dataclass(frozen=True)
class RunManifest:
    """Work item: one run's manifest pass (a directory checkpoint of it is complete or gone)."""

    config: Config
    root: RootConfig
    run: RunRef


@dataclass(frozen=True)
class ManifestDone:
    item: RunManifest
    written: bool = False
    error: str | None = None


@dataclass(frozen=True)
class BatchDone:
    item: RunBatch
    result: BatchResult
    exceeded: bool = (
        False  # a file went over a limit (ckptd.isolation.supervisor): serve the run slowly
    )


@dataclass(frozen=True)
class JobDone:
    name: str
    found: tuple[tuple[Path, FoundFile], ...] = ()  # rescan: (root, file) pairs to observe
    directories: tuple[tuple[Path, Path], ...] = ()  # rescan: (root, directory checkpoint) pairs
    runs: int | None = None  # rescan: how many runs the roots hold
    pruned: tuple[tuple[str, int], ...] = ()  # prune: (run, bytes freed) of runs that succeeded
    error: str | None = None


WorkItem = RunBatch | JobRun | RunManifest
WorkResult = BatchDone | JobDone | ManifestDone


@dataclass(frozen=True)
class RootsScan:
    """A reconciliation's findings: (root, file) and (root, directory checkpoint) pairs to look
    at, and how many runs the roots hold."""

    found: list[tuple[Path, FoundFile]]
    directories: list[tuple[Path, Path]]
    runs: int

    def describe(self) -> str:
        """``1 run, 3 files`` (and ``, 2 directory checkpoints`` when there are any)."""
        text = f"{plural(self.runs, 'run')}, {plural(len(self.found), 'file')}"
        if self.directories:
            text += f", {plural(len(self.directories), 'directory checkpoint')}"
        return text


def scan_roots(
    config: Config,
    roots: Iterable[RootConfig],
    *,
    stale_temp_age: float | None,
    on_run: Callable[[], None] | None = None,
) -> RootsScan:
    """Reconciliation: every file and directory checkpoint of every run of ``roots`` that needs
    processing, and the run count.

    A root or run that cannot be listed is logged and skipped; the scan goes on. ``on_run`` is
    called after each run (the start-up scan uses it to keep systemd's start timeout extended).
    """
    found: list[tuple[Path, FoundFile]] = []
    directories: list[tuple[Path, Path]] = []
    runs = 0
    for root in roots:
        try:
            scan = find_runs(root.path, root.run_depth, config.state_dir)
        except OSError as err:
            logger.warning("cannot scan root %s: %s", root.path, err)
            continue
        for relpath, message in scan.errors:
            logger.warning("cannot scan %s: %s", root.path / relpath, message)
        runs += len(scan.runs)
        for run in scan.runs:
            try:
                work = scan_run(config, run, stale_temp_age=stale_temp_age)
            except OSError as err:
                logger.warning("cannot scan run: %s", err, extra={"run": run.relpath})
                continue
            found.extend((root.path, item) for item in work.files)
            directories.extend((root.path, directory) for directory in work.directories)
            if on_run is not None:
                on_run()
    return RootsScan(found, directories, runs)


def execute(
    item: WorkItem,
    *,
    deps: PipelineDeps,
    metrics: Metrics,
    stopping: threading.Event,
    structure: StructureCheck | None = None,
    options: PassOptions = ONE_DAEMON,
    duties: RootDuties | None = None,
) -> WorkResult:
    """Run one work item (on a worker thread); a file's problem is in the result, never raised."""
    if isinstance(item, RunBatch):
        result = process_batch(
            item.config,
            item.root,
            item.run,
            item.paths,
            deps=deps,
            expected=item.expected,
            gone=item.gone,
        )
        return BatchDone(item, result)
    if isinstance(item, RunManifest):
        report = write_run_manifest(
            item.config, item.root, item.run, now=datetime.now(UTC), options=options
        )
        if report.error is None:
            logger.info(
                "manifest pass for directory checkpoints: manifest %s",
                "written" if report.manifest_written else "unchanged",
                extra={"run": item.run.relpath},
            )
        return ManifestDone(item, report.manifest_written, report.error)
    return run_job(
        item,
        metrics=metrics,
        stopping=stopping,
        structure=structure,
        options=options,
        duties=duties,
    )


def run_job(
    job: JobRun,
    *,
    metrics: Metrics,
    stopping: threading.Event,
    structure: StructureCheck | None = None,
    options: PassOptions = ONE_DAEMON,
    duties: RootDuties | None = None,
) -> JobDone:
    """Run one periodic job over every root of its config (on a worker thread); the scrub
    re-verifies structure with ``structure`` (the daemon's isolated parser) when given.

    ``duties`` (a cluster, ``ckptd.daemon.duties``): the root index and the scrub only on the
    roots whose duties this daemon holds; the passes themselves cover the runs it owns."""
    now = datetime.now(UTC)
    if job.name == "rescan":
        scan = scan_roots(job.config, job.config.roots, stale_temp_age=STALE_TEMP_SECONDS)
        logger.info("rescan: %s to look at", scan.describe())
        return JobDone("rescan", tuple(scan.found), tuple(scan.directories), scan.runs)
    if job.name == "prune":
        report = prune_all(job.config, now=now, dry_run=False, options=options)
        freed = sum(run.bytes_freed for run in report.runs)
        deleted = sum(len(run.deleted) for run in report.runs)
        logger.info(
            "prune: %s, %s deleted, %d bytes freed%s",
            plural(len(report.runs), "run"),
            plural(deleted, "checkpoint"),
            freed,
            "" if report.ok else " (some runs failed; see above)",
        )
        pruned = tuple((run.run, run.bytes_freed) for run in report.runs if run.error is None)
        if duties is not None:
            write_root_indexes(job.config, duties, now)
        return JobDone("prune", pruned=pruned)
    if job.name == "manifest":
        report = write_manifests(job.config, now=now, options=options)
        written = sum(1 for run in report.runs if run.manifest_written)
        logger.debug("manifest pass: %d of %d manifests rewritten", written, len(report.runs))
        if duties is not None:
            write_root_indexes(job.config, duties, now)
        return JobDone("manifest")
    if job.name == "scrub" and duties is not None:
        with scrub_scope(job.config, duties, stopping.is_set) as (roots, stop):
            if not roots:
                logger.info("scrub: another node holds the scrub of every root here")
                return JobDone("scrub")
            # Results go into each run's manifest under its run lock, as ``ckptd scrub`` does,
            # fenced by the root's duties right before each write.
            scheduled_scrub(
                dataclasses.replace(job.config, roots=tuple(roots)),
                now=now,
                set_corrupt_gauge=metrics.set_scrub_corrupt,
                stop=stop,
                structure=structure,
                fence=duties.fence,
            )
        return JobDone("scrub")
    if job.name == "scrub":
        # Rate-limited and long: it holds one worker; SIGTERM interrupts it between reads.
        scheduled_scrub(
            job.config,
            now=now,
            set_corrupt_gauge=metrics.set_scrub_corrupt,
            stop=stopping.is_set,
            structure=structure,
        )
        return JobDone("scrub")
    return JobDone(job.name, error=f"unknown job {job.name}")


def job_specs(config: Config) -> dict[str, ScheduleSpec | None]:
    # scrub is not implemented yet: it is never scheduled (rather than scheduled as a no-op).
    schedule = config.schedule
    return {
        "prune": schedule.prune,
        "manifest": schedule.manifest,
        "rescan": schedule.rescan,
        "scrub": schedule.scrub,
    }


def describe(item: WorkItem) -> str:
    if isinstance(item, RunBatch):
        return f"run {item.run.run_dir} ({plural(len(item.paths), 'file')})"
    if isinstance(item, RunManifest):
        return f"run {item.run.run_dir} (manifest pass)"
    return f"job {item.name}"


def failed(item: WorkItem, error: str) -> WorkResult:
    if isinstance(item, RunBatch):
        # Not handed back: a bug that fails a batch would fail it again; the rescan retries.
        result = BatchResult(item.run, (), (), False, error)
        return BatchDone(item, result)
    if isinstance(item, RunManifest):
        return ManifestDone(item, error=error)
    return JobDone(item.name, error=error)
