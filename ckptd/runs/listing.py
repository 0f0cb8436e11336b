"""Which files of a run are checkpoints: the name filters, the walk below a run, and hashing a
listed file only while it is still the file that was listed.

Checkpoints are regular files below a run (any depth; no symlinks, dot-directories or state dir)
whose *name* matches one of ``checkpoints.patterns`` and none of ``checkpoints.ignore``; never ckptd
temp files, the manifest or the root index.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from ckptd.config.model import CheckpointsConfig
from ckptd.frozen_build import build_frozen
from ckptd.fs.files import CHUNK_SIZE, FileIdentity, is_temp_name, open_regular_nofollow
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
        self._own = frozenset({manifest_filename, INDEX_FILENAME})
        self._step = re.compile(checkpoints.step_pattern)

    def matches(self, name: str) -> bool:
        if name in self._own or is_temp_name(name):
            return False
        return bool(self._include.match(name)) and not self._ignore.match(name)

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
    directory: str, relpath: str, skip_dir: Callable[[str], bool], wanted: Callable[[str], bool]
) -> Iterator[Found]:
    """Regular files below ``directory`` whose name is ``wanted`` (never through symlinks)."""
    with os.scandir(directory) as entries:
        subdirs = []
        for entry in entries:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                if not skip_dir(name):
                    subdirs.append((entry.path, f"{relpath}/{name}" if relpath else name))
            elif wanted(name) and entry.is_file(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished between listing and stat
                child = f"{relpath}/{name}" if relpath else name
                yield Found(child, name, entry.path, identity_of(st))
    for subdir, child in subdirs:
        try:
            yield from walk_files(subdir, child, skip_dir, wanted)
        except OSError as err:
            logger.warning(
                "%s: cannot list directory (%s); its files are not inventoried", subdir, err
            )


def identity_of(st: os.stat_result) -> FileIdentity:
    """``FileIdentity.of(st)`` without the frozen dataclass's per-field __init__ (hot loop)."""
    return build_frozen(
        FileIdentity,
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev},
    )


def hash_if_unchanged(path: Path, identity: FileIdentity) -> str | None:
    """sha256 of ``path`` if it is still the file ``identity`` describes before and after reading.

    Returns None when it changed (it is being written: treat it as incomplete). Never follows a
    final symlink (open_regular_nofollow).
    """
    digest = hashlib.sha256()
    with open_regular_nofollow(path) as handle:
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            return None
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            return None
    return digest.hexdigest()
