"""Process complete checkpoint files of one run: identify, convert or verify, quarantine, record.

The daemon hands this module paths its stabilizer found complete; no threads or scheduling here.
One call (:func:`process_batch`) takes the run's lock once, loads the run's manifest once, works
through as many paths as fit in its time budget and writes the manifest (atomically, only if it
changed) once at the end, so a burst of thousands of new files costs a handful of manifest writes.
The exception is an outcome that moved files (a conversion archived its original, a refused file
was quarantined): the manifest is written right after it, so ``kill -9`` cannot leave a move
unrecorded and a crash loop still makes progress.

Per path (docs/architecture.md, "The pipeline" 3-5, "Manifest and index"):

* ``sb2-pickle`` with ``convert.enabled``: ``convert_file`` (never executes the file); the zip is
  recorded ``kept`` with ``converted_from``/``algorithm``/``params``/``carries_code``, the archived
  original ``converted``. Refused (``UnsafeCheckpoint``): quarantined (``on_unsafe: quarantine``:
  moved durably under ``<state>/quarantine/``, mode 0400, plus ``<name>.reason.json``) or left, and
  recorded ``refused``. Broken (``FormatError``): recorded ``broken``. A conversion that could not
  finish (disk full, an existing foreign zip, a failed re-verification) leaves the original
  untouched and records it ``kept`` with ``error``; it is retried by the next reconciliation.
* ``sb2-zip`` / ``sb3-zip``: verified, recorded ``kept`` or ``broken``; an SB2 zip whose
  ``:serialized:`` entries the allowlist refuses is refused like an unsafe pickle.
* every pickle-bearing file (``pickle``, ``joblib``, ``torch-zip``, ``torch-legacy``, ``sb3-zip``)
  first gets its verdict (docs/security.md, "Verdicts"): not safe is refused and quarantined or
  left as above, a plain truncation ``broken``; safe is recorded with its verdict.
* anything else (unknown content): recorded ``kept`` with its format, never touched.
* vanished: its entry is dropped; unreadable: recorded ``pending`` with ``error`` and retried.

A finished verdict (kept, broken, refused, converted) is not redone until the file's size or mtime
differ from what was recorded (:func:`needs_processing`); that is also what the reconciliation scan
(:func:`find_work`) uses to pick the files the daemon must look at again.

This module is the batch edge (lock, manifest load and write); the parts live beside it:
``work`` (one path), ``discovery`` (run of a path, reconciliation scan), ``quarantine`` (moving a
refused file) and ``types`` (deps and outcomes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ckptd.config.model import Config, RootConfig
from ckptd.errors import CkptdError, CoordinationError, RunLockedError
from ckptd.manifest.model import Manifest
from ckptd.manifest.store import write_manifest_if_changed
from ckptd.pipeline.discovery import (
    load_run_manifest,
    run_of,
)
from ckptd.pipeline.entries import RunEntries
from ckptd.pipeline.types import BatchResult, PathOutcome, PipelineDeps
from ckptd.pipeline.work import BatchWork
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import StateLayout, run_lock

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 30.0
# One batch holds the run lock for about this long at most (a single large conversion may take
# longer); the rest of the paths are handed back, so prune and the CLI are not starved.
DEFAULT_BATCH_SECONDS = 1.0
# Outcomes that moved files (conversion, quarantine): the manifest is written right after each.
MOVING_ACTIONS = frozenset({"converted", "refused"})
# The real pieces and clock; frozen, so one shared default is the same as a fresh one per call.
DEFAULT_DEPS = PipelineDeps()

# ---- one batch (the I/O edge: lock, manifest, files) ---------------------------------------------


def process_batch(
    config: Config,
    root: RootConfig,
    run: RunRef,
    paths: Sequence[Path],
    *,
    deps: PipelineDeps = DEFAULT_DEPS,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    budget_seconds: float | None = DEFAULT_BATCH_SECONDS,
    expected: Mapping[Path, tuple[int, int]] | None = None,
    gone: Sequence[Path] = (),
) -> BatchResult:
    """Process ``paths`` (all in ``run``) under the run lock; never raises for a file's problem.

    At least one path is processed; further ones only while ``budget_seconds`` lasts (None: all).
    ``expected`` maps a path to the (size, mtime_ns) the caller saw settle: a file that differs
    now is reported ``changed`` untouched (it is being written again). ``gone`` lists paths reported
    deleted: their entries are dropped if the file is really absent (a file of that name that is
    back again is left to the caller's stabilizer, never read here).
    """
    layout = StateLayout(run.run_dir, config.state_dir)
    manifest_path = run.run_dir / config.manifest.filename
    started = time.monotonic()
    outcomes: list[PathOutcome] = []
    deferred: list[Path] = []
    written = False
    try:
        with run_lock(layout, timeout=lock_timeout):
            deps.fence(run)  # another daemon's run (coordination.backend postgres): touch nothing
            previous = load_run_manifest(manifest_path)
            entries = RunEntries(
                previous or Manifest(run=run.relpath, generated_at=deps.clock(), policy=root.policy)
            )
            work = BatchWork(config, root, run, layout, deps, expected or {})
            for path in gone:
                work.forget_if_absent(path, entries)
            work.record_vanished(entries)
            deps.examine_ahead(work.to_identify(paths, entries))
            started = time.monotonic()  # the budget is the batch's own work, after that
            for index, path in enumerate(paths):
                if (
                    index > 0
                    and budget_seconds is not None
                    and time.monotonic() - started >= budget_seconds
                ):
                    deferred.extend(paths[index:])
                    break
                _, outcome = work.process(path, entries)
                outcomes.append(outcome)
                # Files moved: record it now, so a crash cannot leave the move unrecorded.
                if outcome.action in MOVING_ACTIONS:
                    manifest = entries.manifest()
                    if _record(manifest_path, manifest, previous, deps, run):
                        written, previous = True, manifest
            work.record_vanished(entries)  # files that vanished while the batch handled them
            if work.changed and _record(manifest_path, entries.manifest(), previous, deps, run):
                written = True
    except CoordinationError as err:
        # The run's lease is gone or cannot be checked: hand the paths back; the daemon keeps
        # them while the database is away, or leaves them to the run's new owner.
        logger.info("not acting on the run: %s", err, extra={"run": run.relpath})
        unfinished = tuple(paths[len(outcomes) :])
        return BatchResult(run, tuple(outcomes), unfinished, False, str(err), True)
    except (CkptdError, OSError) as err:
        message = f"cannot process run: {err}"
        logger.error("%s", message, extra={"run": run.relpath})
        # A run locked by another ckptd process is free again soon: hand the paths back. Any other
        # failure (an unwritable run or state dir) lasts: retrying every few seconds would only
        # repeat this line, so the next reconciliation scan finds the files again instead.
        busy = isinstance(err, RunLockedError)
        unfinished = tuple(paths[len(outcomes) :]) if busy else ()
        return BatchResult(run, tuple(outcomes), unfinished, False, message, busy)
    return BatchResult(run, tuple(outcomes), tuple(deferred), written)


def process_path(
    config: Config, root: RootConfig, path: Path, *, deps: PipelineDeps = DEFAULT_DEPS
) -> PathOutcome:
    """Process one complete file (its own batch); for the CLI and tests."""
    located = run_of(root, path, config.state_dir)
    if located is None:
        return PathOutcome(path, "ignored", "not inside a run of this root")
    result = process_batch(config, root, located[0], [path], deps=deps, budget_seconds=None)
    if result.error is not None:
        return PathOutcome(path, "failed", result.error)
    return result.outcomes[0]


def _record(
    path: Path, manifest: Manifest, previous: Manifest | None, deps: PipelineDeps, run: RunRef
) -> bool:
    """Write the run's manifest if its content changed, checking the run's lease first."""
    if manifest.same_content(previous):
        return False
    deps.fence(run)
    return write_manifest_if_changed(path, manifest, previous, deps.clock())
