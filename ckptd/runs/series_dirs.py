"""Is ``run_depth`` too shallow? A run whose stepped checkpoints sit in several directories.

With ``run_depth: 1`` over ``runs/ppo/seed1/rl_model_1000_steps.zip`` and
``runs/ppo/seed2/rl_model_1000_steps.zip``, ``ppo`` is one run and both seeds are pruned as one
series (README, "Configuration"): nothing fails, the wrong checkpoints are kept. ``config validate``
and ``status`` say so. Checkpoints without a step (``best/best_model.zip``) are outside the series
and do not count: a run with its series in one directory and a best model in another is fine.
:func:`layout_warnings` also notes an optional root that is not there yet.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator

from ckptd.config.model import Config
from ckptd.fs.walk import walk_entries
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef, find_runs


def series_directories(checkpoints: Iterable[tuple[str, int | None]]) -> tuple[str, ...]:
    """The run-relative directories (``.`` for the run itself) that hold checkpoints with a step
    (``(path, step)`` pairs), when there is more than one; else ``()``."""
    # A directory checkpoint ("global_step5/") lies in the directory holding it.
    found = {
        posixpath.dirname(path.rstrip("/")) or "." for path, step in checkpoints if step is not None
    }
    return tuple(sorted(found)) if len(found) > 1 else ()


def merged_series_warning(directories: tuple[str, ...], run_depth: int) -> str:
    """The one line ``validate`` and ``status`` print for such a run."""
    shown = ", ".join(f"{directory}/" for directory in directories[:3])
    more = f" and {len(directories) - 3} more" if len(directories) > 3 else ""
    return (
        f"checkpoints with a step in {len(directories)} directories ({shown}{more}) are pruned as"
        f" one series: is run_depth {run_depth} too shallow?"
    )


def named_checkpoints(
    run: RunRef, matcher: CheckpointMatcher, state_dir: str
) -> Iterator[tuple[str, int | None]]:
    """``(run-relative path, step)`` of the files named like checkpoints (no link followed, the
    state dir and hidden directories skipped, like the inventory). OSError if the run cannot be
    listed."""

    def skip_dir(name: str) -> bool:
        # A directory checkpoint's files are not checkpoints of their own (checkpoints.directories).
        return name.startswith(".") or name == state_dir or matcher.matches_directory(name)

    def unlisted(directory: str, err: OSError) -> None:
        pass  # a subdirectory that cannot be listed: the inventory reports it, not this hint

    top = str(run.run_dir)
    for entry in walk_entries(top, skip_dir, unlisted):
        if matcher.matches(entry.name):
            yield entry.path[len(top) + 1 :], matcher.step_of(entry.name)


def layout_warnings(config: Config) -> Iterator[str]:
    """What is not an error but probably not meant: an optional root not there yet, a run whose
    series spans several directories (run_depth too shallow)."""
    for root in config.roots:
        if not root.path.is_dir():  # only an optional one gets here: the others are errors
            yield f"note: optional root {root.path} is not there (yet)"
            continue
        matcher = CheckpointMatcher(config.checkpoints, config.manifest.filename)
        scan = find_runs(root.path, root.run_depth, config.state_dir)
        for run in scan.runs:
            try:
                directories = series_directories(named_checkpoints(run, matcher, config.state_dir))
            except OSError as err:
                yield f"warning: run {run.run_dir}: cannot list: {err.strerror or err}"
                continue
            if directories:
                yield f"warning: run {run.run_dir}: " + merged_series_warning(
                    directories, root.run_depth
                )
