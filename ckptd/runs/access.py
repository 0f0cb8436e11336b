"""Operator access to one run: find the run a path belongs to, and edit its manifest safely.

Shared by the operator commands (``pin``, ``trash``, ``quarantine``, ``scrub``). A path is resolved
to its run in one of two ways:

* with a config: the root it lies under and ``run_depth`` say which directory is the run (the same
  rule the daemon and prune use, so both always agree on what "the run" is);
* without one: walk up from the path to the nearest directory holding a manifest
  (``ckptd-manifest.json``) or a state dir (``.ckptd/``): what the daemon leaves in every run.

Manifest edits are made by the caller while it holds the run lock (``statedir.run_lock``), through
:func:`load_manifest_or_none` and :func:`save_manifest`, so they never interleave with a daemon batch
or a prune writing the same file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ckptd.config.model import (
    DEFAULT_MANIFEST_FILENAME,
    DEFAULT_STATE_DIR,
    CheckpointsConfig,
    Config,
    RootConfig,
)
from ckptd.errors import UnsafePathError
from ckptd.fs.files import sha256_stream
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.model import Manifest
from ckptd.manifest.store import try_load_manifest, write_manifest_if_changed
from ckptd.runs.roots import RunRef, find_runs
from ckptd.runs.statedir import StateLayout

logger = logging.getLogger(__name__)

# Operator commands wait this long for a daemon batch or a prune to release a run (seconds). A
# prune holds a run's lock for one pass over it; the daemon for about a second at a time.
OPS_LOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class RunHandle:
    """A run as the operator commands see it: where it is and how its state is named."""

    run_dir: Path
    state_dir_name: str = DEFAULT_STATE_DIR
    manifest_filename: str = DEFAULT_MANIFEST_FILENAME
    root: Path | None = None  # the config root it lies under (None when found by walking up)
    relpath: str = "."  # relative to the root; the directory name when found by walking up
    checkpoints: CheckpointsConfig = field(default_factory=CheckpointsConfig)
    policy: str = "default"

    @property
    def layout(self) -> StateLayout:
        return StateLayout(self.run_dir, self.state_dir_name)

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / self.manifest_filename

    def in_state_dir(self, relpath: str) -> bool:
        return relpath == self.state_dir_name or relpath.startswith(self.state_dir_name + "/")

    def state_relpath(self, *parts: str) -> str:
        return "/".join((self.state_dir_name, *parts))


def absolute(path: Path) -> Path:
    """``path`` made absolute and normalized (``..`` removed) without following any symlink."""
    return Path(os.path.abspath(path))


def handle_for_root(config: Config, root: RootConfig, run_dir: Path, relpath: str) -> RunHandle:
    return RunHandle(
        run_dir=run_dir,
        state_dir_name=config.state_dir,
        manifest_filename=config.manifest.filename,
        root=root.path,
        relpath=relpath,
        checkpoints=config.checkpoints,
        policy=root.policy,
    )


def locate(path: Path, config: Config | None = None) -> tuple[RunHandle, str]:
    """The run ``path`` belongs to and ``path`` relative to it (posix; "" for the run itself).

    Raises UnsafePathError (naming the path) when it lies in no run.
    """
    target = absolute(path)
    if config is not None:
        return _locate_in_roots(target, config)
    return _locate_by_walking_up(target)


def locate_run_dir(directory: Path, config: Config | None = None) -> RunHandle:
    """The run that ``directory`` is, or lies in (for commands that act on a whole run)."""
    handle, _ = locate(directory, config)
    return handle


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _locate_in_roots(target: Path, config: Config) -> tuple[RunHandle, str]:
    for root in config.roots:
        for root_path, candidate in _comparable(root.path, target):
            try:
                parts = candidate.relative_to(root_path).parts
            except ValueError:
                continue
            if len(parts) < root.run_depth:
                continue  # above the runs of this root
            run_parts = parts[: root.run_depth]
            if any(part.startswith(".") or part == config.state_dir for part in run_parts):
                continue
            run_dir = root.path.joinpath(*run_parts)
            relpath = "/".join(run_parts) if run_parts else "."
            inner = "/".join(parts[root.run_depth :])
            return handle_for_root(config, root, run_dir, relpath), inner
    roots = ", ".join(str(root.path) for root in config.roots)
    raise UnsafePathError(f"not inside a run of any configured root ({roots})", path=str(target))


def _comparable(root: Path, target: Path) -> list[tuple[Path, Path]]:
    # Compare as written first; then with symlinked parents resolved on both sides, so a root
    # reached through /scratch -> /lustre/scratch still matches (the last component is never
    # resolved: a symlinked checkpoint is not followed anywhere in ckptd).
    pairs = [(absolute(root), target)]
    with contextlib.suppress(OSError):
        pairs.append((root.resolve(), target.parent.resolve() / target.name))
    return pairs


def _locate_by_walking_up(target: Path) -> tuple[RunHandle, str]:
    candidates = [target, *target.parents] if _is_dir(target) else list(target.parents)
    for directory in candidates:
        if directory.name == DEFAULT_STATE_DIR:
            continue  # the state dir of a run is never a run itself
        has_manifest = (directory / DEFAULT_MANIFEST_FILENAME).is_file()
        has_state = _is_dir(directory / DEFAULT_STATE_DIR)
        if has_manifest or has_state:
            inner = "" if directory == target else target.relative_to(directory).as_posix()
            return RunHandle(run_dir=directory, relpath=directory.name), inner
    raise UnsafePathError(
        f"not inside a ckptd run (no {DEFAULT_MANIFEST_FILENAME} or {DEFAULT_STATE_DIR}/ in any "
        "directory above it); pass -c CONFIG if the run uses other names",
        path=str(target),
    )


def require_plain_relpath(handle: RunHandle, relpath: str) -> None:
    """Refuse an empty, absolute, ``..``-bearing, NUL-bearing or otherwise odd run-relative path."""
    problem = relpath_problem(relpath)
    if problem is not None:
        raise UnsafePathError(
            f"is not a file inside the run ({relpath!r} {problem})",
            path=str(handle.run_dir),
        )


def sha256_in_run(handle: RunHandle, relpath: str) -> str:
    """sha256 of the regular file ``relpath``, read with no symlink followed below the run."""
    with handle.layout.fs.open_read(relpath) as stream:
        return sha256_stream(stream)[0]


def load_manifest_or_none(handle: RunHandle) -> Manifest | None:
    """The run's manifest; None when there is none or it cannot be parsed (logged).

    A broken manifest is rebuilt by the next manifest pass; an operator command must not fail
    because of it, but it cannot record anything in it either.
    """
    return try_load_manifest(
        handle.manifest_path, logger, "not recording this change in it", logging.WARNING
    )


def save_manifest(handle: RunHandle, new: Manifest, old: Manifest | None, now: datetime) -> bool:
    """Write ``new`` atomically unless it equals ``old``; hold the run lock. True when written."""
    return write_manifest_if_changed(handle.manifest_path, new, old, now)


def runs_of_all_roots(config: Config) -> tuple[list[tuple[RootConfig, RunRef]], list[str]]:
    """Every run under every root, with one-line errors for roots or run dirs that cannot be listed.

    A root that cannot be listed does not stop the others: operator commands report it and go on.
    """
    found: list[tuple[RootConfig, RunRef]] = []
    errors: list[str] = []
    for root in config.roots:
        try:
            scan = find_runs(root.path, root.run_depth, config.state_dir)
        except OSError as err:
            errors.append(f"{root.path}: cannot list root: {err.strerror or err}")
            continue
        errors.extend(f"{root.path / relpath}: {message}" for relpath, message in scan.errors)
        found.extend((root, run) for run in scan.runs)
    return found, errors
