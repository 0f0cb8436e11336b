"""One manifest pass (``ckptd manifest``): write every run's manifest and every root's index now.

No retention decision is made: on the walk of ``ckptd.retention.passes`` (run lock, previous
manifest, inventory), each run's manifest is rebuilt from its files and written if it changed.
"""

from __future__ import annotations

from datetime import datetime

from ckptd.config.model import Config
from ckptd.retention.passes import (
    DEFAULT_OPTIONS,
    OpenRun,
    PassOptions,
    pass_over_root,
    unrendered,
    write_if_changed,
)
from ckptd.retention.report import PruneReport, RootProblem, RunReport
from ckptd.runs.rebuild import build_manifest


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


def manifest_step(opened: OpenRun) -> RunReport:
    """Rebuild one open run's manifest from its files; write it if it changed."""
    run, root = opened.run, opened.root
    manifest = build_manifest(
        opened.inventory,
        run=run.relpath,
        policy=root.policy,
        now=opened.now,
        previous=opened.previous,
    )
    written = write_if_changed(opened, manifest)
    return RunReport(root.path, run.relpath, manifest_written=written, manifest=manifest)
