"""One manifest pass (``ckptd manifest``): write every run's manifest and every root's index now.

No retention decision is made: on the walk of ``ckptd.retention.passes`` (run lock, previous
manifest, inventory), each run's manifest is rebuilt from its files and written if it changed.
:func:`write_run_manifest` does the same for one run (the daemon asks for it when a directory
checkpoint of the run is complete); the root's index waits for the next full pass.
"""

from __future__ import annotations

from datetime import datetime

from ckptd.config.model import Config, RootConfig
from ckptd.retention.passes import (
    DEFAULT_OPTIONS,
    OpenRun,
    PassOptions,
    guarded,
    pass_over_root,
    unrendered,
    write_if_changed,
)
from ckptd.retention.report import PruneReport, RootProblem, RunReport
from ckptd.retention.unrecorded import unrecorded_removals
from ckptd.runs.rebuild import build_manifest
from ckptd.runs.roots import RunRef


def write_manifests(
    config: Config, *, now: datetime, options: PassOptions = DEFAULT_OPTIONS
) -> PruneReport:
    """Write every run's manifest and every root's index now (no retention decisions are made)."""
    runs: list[RunReport] = []
    problems: list[RootProblem] = []
    for root in config.roots:
        outcome = pass_over_root(
            config,
            root,
            now=now,
            dry_run=False,
            step=manifest_step,
            options=options,
            render=unrendered,
        )
        runs.extend(outcome.rendered)
        problems.extend(outcome.problems)
    return PruneReport(tuple(runs), tuple(problems))


def write_run_manifest(
    config: Config,
    root: RootConfig,
    run: RunRef,
    *,
    now: datetime,
    options: PassOptions = DEFAULT_OPTIONS,
) -> RunReport:
    """One run's manifest pass (under its lock); errors are in the report, never raised. A run
    this daemon does not own (``options.select``) is left alone."""
    if options.select is not None and not options.select(run):
        return RunReport(root.path, run.relpath)
    return guarded(config, root, run, now=now, dry_run=False, step=manifest_step, options=options)


def manifest_step(opened: OpenRun) -> RunReport:
    """Rebuild one open run's manifest from its files; write it if it changed."""
    run, root = opened.run, opened.root
    on_disk = {checkpoint.path: checkpoint for checkpoint in opened.inventory.checkpoints}
    manifest = build_manifest(
        opened.inventory,
        run=run.relpath,
        policy=root.policy,
        now=opened.now,
        previous=opened.previous,
        removed=unrecorded_removals(opened.layout, opened.previous, on_disk),
    )
    written = write_if_changed(opened, manifest)
    return RunReport(root.path, run.relpath, manifest_written=written, manifest=manifest)
