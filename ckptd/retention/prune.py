"""One retention pass (``ckptd prune``) and one manifest pass (``ckptd manifest``) over every run.

Per run, under the run lock: previous manifest (the cache; a corrupt one is logged and rebuilt)
→ inventory → evaluations (keep_best) → pins → ``retention.plan_run`` → (real pass only) under
the pins lock: pins re-read (a changed pin set re-plans) and deletions (trash or unlink, each
re-checked against what was judged) → trash purge → manifest (kept states with reasons, the
removed list with sizes, and ``last_prune``: when, how many deleted, bytes freed, the guard) →
and per root, the index. A failing run is reported with its error and the other runs go on. A
dry run writes nothing: no lock file, state dir, manifest or index is created, and files are not
hashed (only identified) since no manifest is written.

Locks are taken in one order, run lock then pins lock (``ckptd.retention.pins`` never waits for the run lock
while holding the pins lock), so a pin either lands before the re-read and is honoured, or waits
until the deletions are done and then finds its file gone and says so; it is never lost.

Runs may be spread over forked workers (``PassOptions.workers``, CLI only); what a worker sends
back is kept small: the run's report (or, through :func:`prune_all_rendered`, its rendering, e.g.
JSON text) and the run's line of the root index.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Generic, Protocol, TypeAlias, TypeVar

from ckptd.config.model import CheckpointsConfig, Config, Policy, RootConfig
from ckptd.errors import CkptdError, FileChangedError, ManifestError, UnsafePathError
from ckptd.frozen_build import build_frozen
from ckptd.manifest.model import Manifest, PruneRecord, RemovedEntry
from ckptd.manifest.root_index import INDEX_FILENAME, IndexRun, RootIndex, index_run
from ckptd.manifest.store import (
    load_index,
    try_load_manifest,
    write_index,
    write_manifest_if_changed,
)
from ckptd.retention.deletion import Deleted, DeleteMode, delete_checkpoints, purge_trash
from ckptd.retention.evaluations import load_evaluations
from ckptd.retention.fanout import map_in_order
from ckptd.retention.pins import pins_lock
from ckptd.retention.plan import Candidate, Evaluation, RunPlan, plan_run
from ckptd.retention.report import PathDecision, PruneReport, RootProblem, RunReport
from ckptd.runs.checkpoints import (
    Checkpoint,
    Identifier,
    InventoryOptions,
    RunInventory,
    utc_from_ns,
)
from ckptd.runs.inventory import default_identifier, inventory_run
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.rebuild import build_manifest
from ckptd.runs.roots import RunRef, find_runs
from ckptd.runs.statedir import Pin, StateLayout, read_pins, run_lock

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


# ---- public entry points ------------------------------------------------------------------------


def prune_all(
    config: Config, *, now: datetime, dry_run: bool, options: PassOptions = PassOptions()
) -> PruneReport:
    """One retention pass over every root of ``config``."""
    reports = [
        prune_root(config, root, now=now, dry_run=dry_run, options=options) for root in config.roots
    ]
    return PruneReport(
        runs=tuple(run for report in reports for run in report.runs),
        problems=tuple(problem for report in reports for problem in report.problems),
        dry_run=dry_run,
    )


Rendered = TypeVar("Rendered")


@dataclass(frozen=True)
class RenderedPass(Generic[Rendered]):
    """A pass whose run reports were rendered (e.g. to JSON text) by the process that made them."""

    runs: tuple[Rendered, ...]  # in the order prune_all lists runs
    problems: tuple[RootProblem, ...] = ()
    failed_runs: int = 0  # runs whose report carries an error
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Same meaning as PruneReport.ok."""
        return not self.problems and self.failed_runs == 0


def prune_all_rendered(
    config: Config,
    *,
    now: datetime,
    dry_run: bool,
    render: Callable[[RunReport], Rendered],
    options: PassOptions = PassOptions(),
) -> RenderedPass[Rendered]:
    """``prune_all``, with each RunReport passed through ``render`` where it was made.

    With forked workers (``options.workers``), only the rendered values travel back: 100,000
    decisions as JSON text cost the parent a memcpy, as RunReport objects ~0.6 s of unpickling.
    """
    runs: list[Rendered] = []
    problems: list[RootProblem] = []
    failed = 0
    for root in config.roots:
        outcome = _pass_over_root(
            config, root, now=now, dry_run=dry_run, prune=True, options=options, render=render
        )
        runs.extend(outcome.rendered)
        problems.extend(outcome.problems)
        failed += outcome.failed
    return RenderedPass(tuple(runs), tuple(problems), failed, dry_run)


def prune_root(
    config: Config,
    root: RootConfig,
    *,
    now: datetime,
    dry_run: bool,
    options: PassOptions = PassOptions(),
) -> PruneReport:
    """One retention pass over the runs of one root (and, unless dry, its index)."""
    outcome = _pass_over_root(
        config, root, now=now, dry_run=dry_run, prune=True, options=options, render=_as_is
    )
    return PruneReport(tuple(outcome.rendered), tuple(outcome.problems), dry_run)


def prune_run(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    dry_run: bool,
    options: PassOptions = PassOptions(),
) -> RunReport:
    """One retention pass over one run; errors are returned in the report, never raised."""
    return _guarded(config, root, run, now=now, dry_run=dry_run, prune=True, options=options)


def write_manifests(
    config: Config, *, now: datetime, options: PassOptions = PassOptions()
) -> PruneReport:
    """Write every run's manifest and every root's index now (no retention decisions are made)."""
    runs: list[RunReport] = []
    problems: list[RootProblem] = []
    for root in config.roots:
        outcome = _pass_over_root(
            config, root, now=now, dry_run=False, prune=False, options=options, render=_as_is
        )
        runs.extend(outcome.rendered)
        problems.extend(outcome.problems)
    return PruneReport(tuple(runs), tuple(problems))


def _as_is(report: RunReport) -> RunReport:
    return report


# ---- one root -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunOutcome(Generic[Rendered]):
    """What a (possibly forked) run pass sends back: small, whatever the run's size."""

    rendered: Rendered
    index_entry: IndexRun | None  # None in a dry run (no index is written)
    failed: bool


@dataclass(frozen=True)
class _RootOutcome(Generic[Rendered]):
    rendered: list[Rendered]
    problems: list[RootProblem]
    failed: int


def _pass_over_root(
    config: Config,
    root: RootConfig,
    *,
    now: datetime,
    dry_run: bool,
    prune: bool,
    options: PassOptions,
    render: Callable[[RunReport], Rendered],
) -> _RootOutcome[Rendered]:
    try:
        scan = find_runs(root.path, root.run_depth, config.state_dir)
    except OSError as err:
        message = f"cannot list root: {err.strerror or err}"
        logger.error("%s: %s", root.path, message)
        return _RootOutcome([], [RootProblem(root.path, message)], 0)
    problems = [RootProblem(root.path / relpath, message) for relpath, message in scan.errors]

    def one_run(run: RunRef) -> _RunOutcome[Rendered]:
        report = _guarded(config, root, run, now=now, dry_run=dry_run, prune=prune, options=options)
        entry = None if dry_run else _index_entry(config, report)
        return _RunOutcome(render(report), entry, report.error is not None)

    outcomes = map_in_order(one_run, scan.runs, workers=options.workers)
    if not dry_run:
        entries = [outcome.index_entry for outcome in outcomes if outcome.index_entry is not None]
        try:
            _write_root_index(root, entries, now)
        except (CkptdError, OSError) as err:
            logger.error("%s: cannot write the index: %s", root.path, err)
            problems.append(RootProblem(root.path, f"cannot write the index: {err}"))
    return _RootOutcome(
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
    index = RootIndex(str(root.path), now, tuple(entries))
    path = root.path / INDEX_FILENAME
    try:
        previous: RootIndex | None = load_index(path)
    except (FileNotFoundError, ManifestError):
        previous = None
    if not index.same_content(previous):
        write_index(path, index)


# ---- one run ------------------------------------------------------------------------------------


def _guarded(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    dry_run: bool,
    prune: bool,
    options: PassOptions,
) -> RunReport:
    try:
        return _process_run(
            config, root, run, now=now, dry_run=dry_run, prune=prune, options=options
        )
    except (CkptdError, OSError) as err:
        # One line naming the run; the other runs go on (docs/architecture.md, "Reliability rules").
        logger.error("run %s: %s", run.run_dir, err)
        return RunReport(root.path, run.relpath, error=str(err))


def _process_run(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    dry_run: bool,
    prune: bool,
    options: PassOptions,
) -> RunReport:
    layout = StateLayout(run.run_dir, config.state_dir)
    policy = config.policy_for(root)
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
        if not prune:
            manifest = build_manifest(
                inventory, run=run.relpath, policy=root.policy, now=now, previous=previous
            )
            written = write_manifest_if_changed(manifest_path, manifest, previous)
            return RunReport(root.path, run.relpath, manifest_written=written, manifest=manifest)
        evaluations = _evaluations(run.run_dir, policy)
        pins = read_pins(layout)
        plan = _plan(options.planner, inventory, pins, policy, config, now, evaluations)
        if dry_run:
            return _report(root.path, run.relpath, plan, inventory)
        # Held from the re-read through the last deletion: a pin cannot land in between unseen.
        with pins_lock(layout, timeout=options.lock_timeout):
            fresh_pins = read_pins(layout)  # the user may have pinned something while we judged
            if fresh_pins != pins:
                logger.info("run %s: pins changed during the pass; planning again", run.run_dir)
                plan = _plan(
                    options.planner, inventory, fresh_pins, policy, config, now, evaluations
                )
            doomed = _doomed(inventory, plan)
            deleted = options.deleter(layout, doomed, mode=config.delete.mode, now=now)
        outcomes = dict(zip((c.path for c in doomed), deleted, strict=True))
        return _apply(config, root, run, layout, inventory, plan, outcomes, previous, now)


@functools.lru_cache(maxsize=8)
def _matcher(checkpoints: CheckpointsConfig, manifest_filename: str) -> CheckpointMatcher:
    # Compiled once per config rather than once per run (a few globs, but 1,000 runs a pass).
    return CheckpointMatcher(checkpoints, manifest_filename)


def _evaluations(run_dir: Path, policy: Policy) -> list[Evaluation] | None:
    if policy.keep_best is None:
        return None

    return load_evaluations(run_dir, policy.keep_best)


def _pin_for(checkpoint: Checkpoint, pins: Mapping[str, Pin]) -> str | None:
    # A pin on the zip, on the pickle it was converted from, or on the archived copy all hold.
    for path in (
        checkpoint.path,
        checkpoint.converted_from,
        checkpoint.legacy and checkpoint.legacy.path,
    ):
        if path and path in pins:
            return pins[path].reason
    return None


def candidates_of(inventory: RunInventory, pins: Mapping[str, Pin]) -> list[Candidate]:
    """Retention's view of a run's checkpoints (an archived original's size counts toward its zip)."""
    # Positional arguments and the mtime computed here, not through Checkpoint.mtime: this runs
    # once per checkpoint of every pass.
    return [
        Candidate(
            checkpoint.path,
            checkpoint.step,
            utc_from_ns(checkpoint.identity.mtime_ns),
            checkpoint.total_size,
            checkpoint.complete,
            checkpoint.status,
            _pin_for(checkpoint, pins) if pins else None,
            _in_place_companion(checkpoint),
        )
        for checkpoint in inventory.checkpoints
    ]


def _in_place_companion(checkpoint: Checkpoint) -> tuple[str, ...]:
    legacy = checkpoint.legacy
    # An original kept in place is a live file of the run (an archived one is in the state dir).
    return (legacy.path,) if legacy is not None and legacy.path == checkpoint.converted_from else ()


def _plan(
    planner: Planner,
    inventory: RunInventory,
    pins: Mapping[str, Pin],
    policy: Policy,
    config: Config,
    now: datetime,
    evaluations: Sequence[Evaluation] | None,
) -> RunPlan:
    return planner(
        candidates_of(inventory, pins),
        policy,
        now=now,
        evaluations=evaluations,
        max_fraction=config.delete.max_fraction,
    )


def _report(root: Path, run: str, plan: RunPlan, inventory: RunInventory) -> RunReport:
    # One PathDecision per checkpoint of every run: built without the frozen per-field __init__.
    companions = _companions(inventory)
    decisions = tuple(
        build_frozen(
            PathDecision,
            {
                "path": d.path,
                "action": d.action,
                "reasons": d.reasons,
                "original": companions.get(d.path),
            },
        )
        for d in plan.decisions
    )
    return RunReport(root, run, decisions, plan.guard, plan.notes)


def _companions(inventory: RunInventory) -> dict[str, str]:
    """zip path -> the legacy original that is kept or deleted with it (shown in every report,
    so a dry run names every file the real pass would move)."""
    return {c.path: c.legacy.path for c in inventory.checkpoints if c.legacy is not None}


def _skip_reason(err: BaseException) -> str:
    if isinstance(err, FileChangedError):
        return "skip: changed since judged"
    if isinstance(err, UnsafePathError):
        return "skip: unsafe path"
    if isinstance(err, FileNotFoundError):
        return "skip: vanished"
    return f"skip: {getattr(err, 'strerror', None) or err}"


def _doomed(inventory: RunInventory, plan: RunPlan) -> list[Checkpoint]:
    by_path = {checkpoint.path: checkpoint for checkpoint in inventory.checkpoints}
    return [by_path[d.path] for d in plan.decisions if d.action == "delete"]


def _apply(
    config: Config,
    root: RootConfig,
    run: RunRef,
    layout: StateLayout,
    inventory: RunInventory,
    plan: RunPlan,
    outcomes: Mapping[str, DeleteOutcome],
    previous: Manifest | None,
    now: datetime,
) -> RunReport:
    """Report the deletions made, purge the trash and record it all in the manifest."""
    by_path = {checkpoint.path: checkpoint for checkpoint in inventory.checkpoints}
    companions = _companions(inventory)
    decisions = []
    deleted: list[Deleted] = []
    removed: list[RemovedEntry] = []
    for decision in plan.decisions:
        outcome = outcomes.get(decision.path)
        original = companions.get(decision.path)
        if isinstance(outcome, Deleted):
            deleted.append(outcome)
            removed.append(_removed_entry(by_path[decision.path], outcome, decision.reasons, now))
            decisions.append(
                PathDecision(decision.path, "delete", decision.reasons, outcome.legacy_path)
            )
        elif outcome is not None:
            decisions.append(
                PathDecision(
                    decision.path, "skip", (_skip_reason(outcome), *decision.reasons), original
                )
            )
        else:
            decisions.append(
                PathDecision(decision.path, decision.action, decision.reasons, original)
            )
    purge = purge_trash(layout, config.delete.trash_ttl, now)
    gone = {d.path for d in deleted} | {d.legacy_path for d in deleted if d.legacy_path}
    freed = sum(d.bytes for d in deleted)
    manifest = build_manifest(
        inventory,
        run=run.relpath,
        policy=root.policy,
        now=now,
        previous=previous,
        reasons={d.path: d.reasons for d in decisions},
        gone=gone,
        removed=removed,
        last_prune=PruneRecord(at=now, deleted=len(deleted), bytes_freed=freed, guard=plan.guard),
    )
    written = write_manifest_if_changed(run.run_dir / config.manifest.filename, manifest, previous)
    return RunReport(
        root.path,
        run.relpath,
        tuple(decisions),
        plan.guard,
        plan.notes,
        tuple(deleted),
        freed,
        purge.removed,
        purge.bytes,
        written,
        manifest=manifest,
    )


def _removed_entry(
    checkpoint: Checkpoint, deleted: Deleted, reasons: tuple[str, ...], now: datetime
) -> RemovedEntry:
    legacy = checkpoint.legacy if deleted.legacy_path else None
    return RemovedEntry(
        path=checkpoint.path,
        sha256=checkpoint.sha256,
        removed_at=now,
        reasons=reasons,
        trash=deleted.trash,
        converted_from=deleted.legacy_path,
        converted_from_sha256=legacy.sha256 if legacy else None,
        converted_from_trash=deleted.legacy_trash,
        size=checkpoint.size,
        converted_from_size=legacy.identity.size if legacy else None,
    )
