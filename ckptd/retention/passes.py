"""The walk both passes share: roots -> runs (forked workers) -> one run under its lock -> the index.

A pass (the retention pass in ``ckptd.retention.prune``, the manifest pass in
``ckptd.retention.manifest_pass``) gives a step; per run, under the run lock, it is handed the
previous manifest (the cache; a corrupt one is logged and rebuilt) and the run's inventory. A
failing run is reported with its error and the other runs go on; then, per root, the index is
written. A dry run writes nothing: no lock file, state dir, manifest or index is created, and files
are not hashed (only identified) since no manifest is written.

Runs may be spread over forked workers (``PassOptions.workers``, CLI only); what a worker sends
back is kept small: the run's report (or its rendering, e.g. JSON text) and the run's line of the
root index.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeAlias, TypeVar

from ckptd.config.model import CheckpointsConfig, Config, Policy, RootConfig
from ckptd.errors import CkptdError, FileChangedError, UnsafePathError
from ckptd.manifest.model import Manifest
from ckptd.manifest.root_index import INDEX_FILENAME, IndexRun, RootIndex, index_run
from ckptd.manifest.store import (
    try_load_manifest,
    write_index_if_changed,
    write_manifest_if_changed,
)
from ckptd.retention.deletion import Deleted, DeleteMode, delete_checkpoints
from ckptd.retention.fanout import map_in_order
from ckptd.retention.plan import Candidate, Evaluation, RunPlan, plan_run
from ckptd.retention.report import RootProblem, RunReport
from ckptd.runs.checkpoints import Checkpoint, Identifier, InventoryOptions, RunInventory
from ckptd.runs.inventory import default_identifier, inventory_run
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef, find_runs
from ckptd.runs.statedir import StateLayout, run_lock

logger = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 30.0  # seconds; the daemon holds a run's lock for one conversion at most


DeleteOutcome: TypeAlias = Deleted | FileChangedError | UnsafePathError | OSError


class Deleter(Protocol):
    """The shape of ``deletion.delete_checkpoints`` (tests wrap it to act while prune deletes)."""

    def __call__(
        self,
        layout: StateLayout,
        checkpoints: Sequence[Checkpoint],
        *,
        mode: DeleteMode,
        now: datetime,
        run: str | None = None,
    ) -> list[DeleteOutcome]: ...


class Planner(Protocol):
    """The shape of ``retention.plan_run`` (tests wrap it to act between judging and deleting)."""

    def __call__(
        self,
        candidates: Sequence[Candidate],
        policy: Policy,
        *,
        now: datetime,
        evaluations: Sequence[Evaluation] | None = None,
        max_fraction: float = 1.0,
    ) -> RunPlan: ...


@dataclass(frozen=True)
class PassOptions:
    """Knobs of one pass that are not config: the content identifier, planner, deleter, lock wait."""

    identify: Identifier | None = None  # None: ckptd.formats.sniff.identify
    planner: Planner = plan_run
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT  # for the run lock, and then the pins lock
    deleter: Deleter = delete_checkpoints
    # >1 spreads runs over forked processes (ckptd.retention.fanout): for the CLI only, never the daemon.
    workers: int = 1
    # Several daemons on one root (coordination.backend postgres): the runs this one owns, and the
    # check before every deletion and manifest write that it still does. With ``select`` set the
    # root index is left alone: no daemon sees every run's fresh state.
    select: Callable[[RunRef], bool] | None = None
    fence: Callable[[RunRef], None] | None = None
    # ``prune --run GLOB``: only runs whose path matches (RunRef.matches); None: every run.
    run_glob: str | None = None
    # ``prune --max-fraction F``: this pass's guard instead of delete.max_fraction.
    max_fraction: float | None = None


DEFAULT_OPTIONS = PassOptions()


Rendered = TypeVar("Rendered")


@dataclass(frozen=True)
class OpenRun:
    """One run under its lock, as a pass's step gets it."""

    config: Config
    root: RootConfig
    run: RunRef
    layout: StateLayout
    previous: Manifest | None  # the run's last manifest; None when missing or corrupt
    inventory: RunInventory
    now: datetime
    dry_run: bool
    options: PassOptions


RunStep: TypeAlias = Callable[[OpenRun], RunReport]


def unrendered(report: RunReport) -> RunReport:
    """The render of a pass whose caller wants the reports themselves."""
    return report


@dataclass(frozen=True)
class _RunOutcome(Generic[Rendered]):
    """What a (possibly forked) run pass sends back: small, whatever the run's size."""

    rendered: Rendered
    index_entry: IndexRun | None  # None in a dry run (no index is written)
    failed: bool


@dataclass(frozen=True)
class RootOutcome(Generic[Rendered]):
    """One root's pass: each run's rendered report, the root's problems, how many runs failed."""

    rendered: list[Rendered]
    problems: list[RootProblem]
    failed: int


def pass_over_root(
    config: Config,
    root: RootConfig,
    *,
    now: datetime,
    dry_run: bool,
    step: RunStep,
    options: PassOptions,
    render: Callable[[RunReport], Rendered],
) -> RootOutcome[Rendered]:
    """``step`` over every run of ``root`` (a failing run is reported, the others go on), then
    (unless dry) the root's index."""
    try:
        scan = find_runs(root.path, root.run_depth, config.state_dir)
    except OSError as err:
        message = f"cannot list root: {err.strerror or err}"
        logger.error("%s: %s", root.path, message)
        return RootOutcome([], [RootProblem(root.path, message)], 0)
    problems = [RootProblem(root.path / relpath, message) for relpath, message in scan.errors]
    select = options.select
    runs = [
        run
        for run in scan.runs
        if run.matches(options.run_glob) and (select is None or select(run))
    ]

    def one_run(run: RunRef) -> _RunOutcome[Rendered]:
        report = guarded(config, root, run, now=now, dry_run=dry_run, step=step, options=options)
        entry = None if dry_run else _index_entry(config, report)
        return _RunOutcome(render(report), entry, report.error is not None)

    outcomes = map_in_order(one_run, runs, workers=options.workers)
    # The index lists every run: only a full pass over a root this daemon alone serves writes it.
    if not dry_run and select is None and options.run_glob is None:
        entries = [outcome.index_entry for outcome in outcomes if outcome.index_entry is not None]
        try:
            _write_root_index(root, entries, now)
        except (CkptdError, OSError) as err:
            logger.error("%s: cannot write the index: %s", root.path, err)
            problems.append(RootProblem(root.path, f"cannot write the index: {err}"))
    return RootOutcome(
        [outcome.rendered for outcome in outcomes],
        problems,
        sum(1 for outcome in outcomes if outcome.failed),
    )


def _index_entry(config: Config, report: RunReport) -> IndexRun:
    filename = config.manifest.filename
    manifest_relpath = filename if report.run == "." else f"{report.run}/{filename}"
    if report.manifest is not None:
        return index_run(report.manifest, run=report.run, manifest_relpath=manifest_relpath)
    return IndexRun(report.run, manifest_relpath, 0, 0, None, None, error=report.error)


def _write_root_index(root: RootConfig, entries: Sequence[IndexRun], now: datetime) -> None:
    write_index_if_changed(
        root.path / INDEX_FILENAME, RootIndex(str(root.path), now, tuple(entries))
    )


# ---- one run ------------------------------------------------------------------------------------


def guarded(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    dry_run: bool,
    step: RunStep,
    options: PassOptions,
) -> RunReport:
    """``step`` over one run; errors are returned in the report, never raised."""
    try:
        return _open_run(config, root, run, now=now, dry_run=dry_run, step=step, options=options)
    except (CkptdError, OSError) as err:
        # One line naming the run; the other runs go on (docs/architecture.md, "Reliability rules").
        logger.error("run %s: %s", run.run_dir, err)
        return RunReport(root.path, run.relpath, error=str(err))


def _open_run(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    dry_run: bool,
    step: RunStep,
    options: PassOptions,
) -> RunReport:
    layout = StateLayout(run.run_dir, config.state_dir)
    manifest_path = run.run_dir / config.manifest.filename
    inventory_options = InventoryOptions(
        matcher=_matcher(config.checkpoints, config.manifest.filename),
        state_dir=config.state_dir,
        stable_for_ns=int(config.checkpoints.stable_for.total_seconds() * 1_000_000_000),
        hash_files=not dry_run,
        identify=options.identify or default_identifier(),
    )
    with run_lock(layout, timeout=options.lock_timeout, shared=dry_run, create=not dry_run):
        previous = try_load_manifest(manifest_path, logger, "rebuilding it from the files")
        inventory = inventory_run(
            run, inventory_options, now=now, previous=previous.by_path() if previous else {}
        )
        return step(OpenRun(config, root, run, layout, previous, inventory, now, dry_run, options))


@functools.lru_cache(maxsize=8)
def _matcher(checkpoints: CheckpointsConfig, manifest_filename: str) -> CheckpointMatcher:
    # Compiled once per config rather than once per run (a few globs, but 1,000 runs a pass).
    return CheckpointMatcher(checkpoints, manifest_filename)


def write_if_changed(opened: OpenRun, manifest: Manifest) -> bool:
    """Write the run's manifest unless it says what the previous one said."""
    path = opened.run.run_dir / opened.config.manifest.filename
    fence = opened.options.fence
    if fence is not None and not manifest.same_content(opened.previous):
        fence(opened.run)
    return write_manifest_if_changed(path, manifest, opened.previous)
