"""Which files of a run are checkpoints: the name filters and the walk below a run.

Checkpoints are regular files below a run (any depth; no symlinks, dot-directories or state dir)
whose *name* matches one of ``checkpoints.patterns`` and none of ``checkpoints.ignore``; never ckptd
temp files, the manifest or the root index.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from ckptd.config.model import CheckpointsConfig
from ckptd.frozen_build import build_frozen
from ckptd.fs.files import FileIdentity, is_temp_name
from ckptd.fs.walk import walk_entries
from ckptd.manifest.root_index import INDEX_FILENAME

logger = logging.getLogger(__name__)


class Found(NamedTuple):
    """A listed file. A tuple, and ``abspath`` a str, not a Path: a cold pass lists 100,000 files,
    and building objects per file costs more than the stat calls themselves."""

    relpath: str
    name: str
    abspath: str
    identity: FileIdentity

    @property
    def path(self) -> Path:
        return Path(self.abspath)


class CheckpointMatcher:
    """Name filters compiled once per config: patterns, ignore, temp names, ckptd's own files."""

    def __init__(self, checkpoints: CheckpointsConfig, manifest_filename: str) -> None:
        self._include = _compile_globs(checkpoints.patterns)
        self._ignore = _compile_globs(checkpoints.ignore)
        self._directories = _compile_globs(checkpoints.directories)
        self._has_directories = bool(checkpoints.directories)
        self._own = frozenset({manifest_filename, INDEX_FILENAME})
        self._step = re.compile(checkpoints.step_pattern)

    def matches(self, name: str) -> bool:
        # Once per file of every pass: the pattern first (it rules out most other files), then
        # ignore, temp names and ckptd's own files.
        return (
            self._include.match(name) is not None
            and self._ignore.match(name) is None
            and name not in self._own
            and not is_temp_name(name)
        )

    @property
    def has_directories(self) -> bool:
        """Whether any directory can be one checkpoint (``checkpoints.directories`` not empty)."""
        return self._has_directories

    def matches_directory(self, name: str) -> bool:
        """Whether a directory named ``name`` is one checkpoint (``checkpoints.directories``)."""
        if is_temp_name(name):
            return False
        return bool(self._directories.match(name)) and not self._ignore.match(name)

    def step_of(self, name: str) -> int | None:
        match = self._step.search(name)
        if match is None:
            return None
        try:
            return int(match.group(1))
        except (IndexError, TypeError, ValueError):
            return None


def _compile_globs(globs: tuple[str, ...]) -> re.Pattern[str]:
    if not globs:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def walk_files(
    directory: str,
    relpath: str,
    skip_dir: Callable[[str], bool],
    wanted: Callable[[str], bool],
    *,
    visit_dir: Callable[[str], None] | None = None,
) -> Iterator[Found]:
    """Regular files below ``directory`` whose name is ``wanted`` (never through symlinks), their
    paths relative to the run given ``directory``'s own ``relpath`` there ("" for the run).
    ``visit_dir`` is called with each directory's path before ``skip_dir`` judges its entries."""
    cut = len(directory) + 1
    prefix = f"{relpath}/" if relpath else ""
    for entry in walk_entries(directory, skip_dir, _not_inventoried, visit_dir=visit_dir):
        name = entry.name
        if wanted(name) and entry.is_file(follow_symlinks=False):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished between listing and stat
            # identity_of(st), inlined: once per file of every pass
            identity = build_frozen(
                FileIdentity,
                {
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "inode": st.st_ino,
                    "device": st.st_dev,
                },
            )
            yield Found(prefix + entry.path[cut:], name, entry.path, identity)


def _not_inventoried(directory: str, err: OSError) -> None:
    logger.warning("%s: cannot list directory (%s); its files are not inventoried", directory, err)


def identity_of(st: os.stat_result) -> FileIdentity:
    """``FileIdentity.of(st)`` without the frozen dataclass's per-field __init__ (hot loop)."""
    return build_frozen(
        FileIdentity,
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev},
    )
