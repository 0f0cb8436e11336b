"""A root's runs: the directories exactly ``run_depth`` below a root (0 = the root itself).

Symlinked directories, dot-directories and the state dir are never entered, so nothing outside a
root is seen (README, "Configuration").
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunRef:
    """A run directory and where it sits under its root."""

    root: Path
    run_dir: Path
    relpath: str  # posix, relative to the root; "." when run_depth is 0

    def matches(self, run_glob: str | None) -> bool:
        """``--run GLOB`` against the run's path relative to its root, or its absolute path."""
        if run_glob is None:
            return True
        return fnmatch.fnmatchcase(self.relpath, run_glob) or fnmatch.fnmatchcase(
            str(self.run_dir), run_glob
        )


@dataclass(frozen=True)
class RunScan:
    """The runs of one root, plus directories that could not be listed (relpath, error)."""

    runs: tuple[RunRef, ...]
    errors: tuple[tuple[str, str], ...] = ()


def find_runs(root: Path, run_depth: int, state_dir: str) -> RunScan:
    """Every run exactly ``run_depth`` directories below ``root``, sorted by relative path.

    Raises OSError when the root itself cannot be listed; an unreadable directory further down is
    reported in ``errors`` and the scan goes on.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: root is not a directory")
    runs: list[RunRef] = []
    errors: list[tuple[str, str]] = []
    level: list[tuple[Path, str]] = [(root, ".")]
    for _ in range(run_depth):
        next_level: list[tuple[Path, str]] = []
        for directory, relpath in level:
            try:
                names = _child_dirs(directory, state_dir)
            except OSError as err:
                errors.append((relpath, f"cannot list directory: {err.strerror}"))
                continue
            next_level.extend(
                (directory / name, name if relpath == "." else f"{relpath}/{name}")
                for name in names
            )
        level = next_level
    runs.extend(RunRef(root, directory, relpath) for directory, relpath in level)
    runs.sort(key=lambda run: run.relpath)
    return RunScan(tuple(runs), tuple(errors))


def _child_dirs(directory: Path, state_dir: str) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.is_dir(follow_symlinks=False) and not skipped_dir(entry.name, state_dir)
        )


def skipped_dir(name: str, state_dir: str) -> bool:
    """Whether a walk below a root or run leaves out the directory ``name``."""
    return name.startswith(".") or name == state_dir
