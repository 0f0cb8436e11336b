"""One retention pass (``ckptd prune``) over every run: judge, re-check the pins, delete, record.

Per run, on the walk of ``ckptd.retention.passes`` (run lock, previous manifest, inventory):
evaluations (keep_best) → pins → ``retention.plan_run`` → (real pass only) under the pins lock:
pins re-read (a changed pin set re-plans) and deletions (trash or unlink, each re-checked against
what was judged) → trash purge → manifest (kept states with reasons, the removed list with sizes,
and ``last_prune``: when, how many deleted, bytes freed, the guard) → and per root, the index.

Locks are taken in one order, run lock then pins lock (``ckptd.retention.pins`` never waits for the run lock
while holding the pins lock), so a pin either lands before the re-read and is honoured, or waits
until the deletions are done and then finds its file gone and says so; it is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Generic

from ckptd.config.model import Config, Policy, RootConfig
from ckptd.errors import FileChangedError, UnsafePathError
from ckptd.frozen_build import build_frozen
from ckptd.manifest.model import PruneRecord, RemovedEntry
from ckptd.retention.deletion import Deleted, purge_trash
from ckptd.retention.evaluations import load_evaluations
from ckptd.retention.passes import (
    DEFAULT_OPTIONS,
    DeleteOutcome,
    OpenRun,
    PassOptions,
    Rendered,
    guarded,
    pass_over_root,
    unrendered,
    write_if_changed,
)
from ckptd.retention.pins import pins_lock
from ckptd.retention.plan import Candidate, Evaluation, RunPlan
from ckptd.retention.report import PathDecision, PruneReport, RootProblem, RunReport
from ckptd.retention.unrecorded import unrecorded_removals
from ckptd.runs.checkpoints import Checkpoint, RunInventory, utc_from_ns
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.rebuild import build_manifest
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import Pin, read_pins

logger = logging.getLogger(__name__)


def prune_all(
    config: Config, *, now: datetime, dry_run: bool, options: PassOptions = DEFAULT_OPTIONS
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
    options: PassOptions = DEFAULT_OPTIONS,
) -> RenderedPass[Rendered]:
    """``prune_all``, with each RunReport passed through ``render`` where it was made.

    With forked workers (``options.workers``), only the rendered values travel back: 100,000
    decisions as JSON text cost the parent a memcpy, as RunReport objects ~0.6 s of unpickling.
    """
    runs: list[Rendered] = []
    problems: list[RootProblem] = []
    failed = 0
    for root in config.roots:
        outcome = pass_over_root(
            config, root, now=now, dry_run=dry_run, step=prune_step, options=options, render=render
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
    options: PassOptions = DEFAULT_OPTIONS,
) -> PruneReport:
    """One retention pass over the runs of one root (and, unless dry, its index)."""
    outcome = pass_over_root(
        config, root, now=now, dry_run=dry_run, step=prune_step, options=options, render=unrendered
    )
    return PruneReport(tuple(outcome.rendered), tuple(outcome.problems), dry_run)


def prune_run(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    dry_run: bool,
    options: PassOptions = DEFAULT_OPTIONS,
) -> RunReport:
    """One retention pass over one run; errors are returned in the report, never raised."""
    return guarded(config, root, run, now=now, dry_run=dry_run, step=prune_step, options=options)


# ---- one run ------------------------------------------------------------------------------------


def prune_step(opened: OpenRun) -> RunReport:
    """Judge one open run and (unless dry) delete what the plan condemns, then record it."""
    config, root, run, layout = opened.config, opened.root, opened.run, opened.layout
    inventory, now, options = opened.inventory, opened.now, opened.options
    policy = config.policy_for(root)
    evaluations = _evaluations(run.run_dir, policy, config)
    pins = read_pins(layout)
    plan = _plan(options, inventory, pins, policy, config, now, evaluations)
    if opened.dry_run:
        return _report(root.path, run.relpath, plan, inventory)
    # Held from the re-read through the last deletion: a pin cannot land in between unseen.
    with pins_lock(layout, timeout=options.lock_timeout):
        fresh_pins = read_pins(layout)  # the user may have pinned something while we judged
        if fresh_pins != pins:
            logger.info("run %s: pins changed during the pass; planning again", run.run_dir)
            plan = _plan(options, inventory, fresh_pins, policy, config, now, evaluations)
        doomed = _doomed(inventory, plan)
        deleted = _delete(opened, doomed)
    outcomes = dict(zip((c.path for c in doomed), deleted, strict=True))
    if options.fence is not None:
        options.fence(run)  # the trash purge that follows (the manifest write checks again)
    return _apply(opened, plan, outcomes)


def _delete(opened: OpenRun, doomed: Sequence[Checkpoint]) -> list[DeleteOutcome]:
    """The deletions, each one checked against the run's lease first when there is one."""
    options, mode, now = opened.options, opened.config.delete.mode, opened.now
    run = opened.run.relpath  # for the deletion events' ``run``
    if options.fence is None:
        return list(options.deleter(opened.layout, doomed, mode=mode, now=now, run=run))
    outcomes: list[DeleteOutcome] = []
    for checkpoint in doomed:
        options.fence(opened.run)
        outcomes.extend(options.deleter(opened.layout, [checkpoint], mode=mode, now=now, run=run))
    return outcomes


def _evaluations(run_dir: Path, policy: Policy, config: Config) -> list[Evaluation] | None:
    if policy.keep_best is None:
        return None
    # The directory checkpoints, for source: trainer_state.json (ckptd.retention.trainer_metrics).
    matcher = CheckpointMatcher(config.checkpoints, config.manifest.filename)
    return load_evaluations(run_dir, policy.keep_best, matcher)


def _pin_for(checkpoint: Checkpoint, pins: Mapping[str, Pin]) -> str | None:
    # A pin on the zip, on the pickle it was converted from, or on the archived copy all hold.
    for path in (
        checkpoint.path,
        checkpoint.converted_from,
        checkpoint.legacy and checkpoint.legacy.path,
        # A directory checkpoint ("checkpoint-500/") pinned by its name without the slash.
        checkpoint.path[:-1] if checkpoint.path.endswith("/") else None,
    ):
        if path and path in pins:
            return pins[path].reason
    return None


def candidates_of(inventory: RunInventory, pins: Mapping[str, Pin]) -> list[Candidate]:
    """Retention's view of a run's checkpoints (an archived original's size counts toward its zip)."""
    # Positional arguments and the mtime computed here, not through Checkpoint.mtime: this runs
    # once per checkpoint of every pass, and most have no legacy original (no companion).
    # Checkpoint.total_size inlined too (two property calls per checkpoint otherwise).
    return [
        Candidate(
            checkpoint.path,
            checkpoint.step,
            utc_from_ns(checkpoint.identity.mtime_ns),
            checkpoint.identity.size
            if checkpoint.legacy is None
            else checkpoint.identity.size + checkpoint.legacy.identity.size,
            checkpoint.complete,
            checkpoint.status,
            _pin_for(checkpoint, pins) if pins else None,
            () if checkpoint.legacy is None else _in_place_companion(checkpoint),
        )
        for checkpoint in inventory.checkpoints
    ]


def _in_place_companion(checkpoint: Checkpoint) -> tuple[str, ...]:
    legacy = checkpoint.legacy
    # An original kept in place is a live file of the run (an archived one is in the state dir).
    return (legacy.path,) if legacy is not None and legacy.path == checkpoint.converted_from else ()


def _plan(
    options: PassOptions,
    inventory: RunInventory,
    pins: Mapping[str, Pin],
    policy: Policy,
    config: Config,
    now: datetime,
    evaluations: Sequence[Evaluation] | None,
) -> RunPlan:
    max_fraction = options.max_fraction
    return options.planner(
        candidates_of(inventory, pins),
        policy,
        now=now,
        evaluations=evaluations,
        max_fraction=config.delete.max_fraction if max_fraction is None else max_fraction,
    )


def _report(root: Path, run: str, plan: RunPlan, inventory: RunInventory) -> RunReport:
    by_path = {checkpoint.path: checkpoint for checkpoint in inventory.checkpoints}
    decisions = tuple(
        _decision(by_path[d.path], d.action, d.reasons, _original(by_path[d.path]))
        for d in plan.decisions
    )
    return RunReport(root, run, decisions, plan.guard, plan.notes)


def _decision(
    checkpoint: Checkpoint, action: str, reasons: tuple[str, ...], original: str | None
) -> PathDecision:
    # One PathDecision per checkpoint of every run: built without the frozen per-field __init__.
    return build_frozen(
        PathDecision,
        {
            "path": checkpoint.path,
            "action": action,
            "reasons": reasons,
            "original": original,
            "step": checkpoint.step,
            "size": checkpoint.size,
            "mtime_ns": checkpoint.identity.mtime_ns,
            "format": str(checkpoint.format),
        },
    )


def _original(checkpoint: Checkpoint) -> str | None:
    """The legacy original kept or deleted with a zip (shown in every report, so a dry run
    names every file the real pass would move)."""
    return checkpoint.legacy.path if checkpoint.legacy is not None else None


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


def _apply(opened: OpenRun, plan: RunPlan, outcomes: Mapping[str, DeleteOutcome]) -> RunReport:
    """Report the deletions made, purge the trash and record it all in the manifest."""
    config, root, run = opened.config, opened.root, opened.run
    inventory, now = opened.inventory, opened.now
    by_path = {checkpoint.path: checkpoint for checkpoint in inventory.checkpoints}
    decisions = []
    deleted: list[Deleted] = []
    removed = unrecorded_removals(opened.layout, opened.previous, by_path)
    for decision in plan.decisions:
        outcome = outcomes.get(decision.path)
        checkpoint = by_path[decision.path]
        if isinstance(outcome, Deleted):
            deleted.append(outcome)
            removed.append(_removed_entry(checkpoint, outcome, decision.reasons, now))
            decisions.append(_decision(checkpoint, "delete", decision.reasons, outcome.legacy_path))
        elif outcome is not None:
            reasons = (_skip_reason(outcome), *decision.reasons)
            decisions.append(_decision(checkpoint, "skip", reasons, _original(checkpoint)))
        else:
            decisions.append(
                _decision(checkpoint, decision.action, decision.reasons, _original(checkpoint))
            )
    purge = purge_trash(opened.layout, config.delete.trash_ttl, now)
    gone = {d.path for d in deleted} | {d.legacy_path for d in deleted if d.legacy_path}
    freed = sum(d.bytes for d in deleted)
    manifest = build_manifest(
        inventory,
        run=run.relpath,
        policy=root.policy,
        now=now,
        previous=opened.previous,
        reasons={d.path: d.reasons for d in decisions},
        gone=gone,
        removed=removed,
        last_prune=PruneRecord(at=now, deleted=len(deleted), bytes_freed=freed, guard=plan.guard),
    )
    written = write_if_changed(opened, manifest)
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
