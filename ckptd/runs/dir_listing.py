"""Read a directory checkpoint from disk: its listing for the completion rules, its files' hashes.

The I/O edge of ``ckptd.formats.trainer_dirs``: one walk from the run's directory handle
(``RunFS``), every directory opened no-follow relative to its parent, so nothing a run contains
can make ckptd list, read or hash a path outside the checkpoint directory (docs/security.md,
"Paths inside a run"). Symlinks, FIFOs and devices inside are listed by name (a change to them
is a change to the directory) and never opened. Small marker files are read whole, up to
``MARKER_BYTES``; the parent's DeepSpeed ``latest`` likewise.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from ckptd.errors import FileChangedError, UnsafePathError
from ckptd.formats.trainer_dirs import (
    DEEPSPEED_LATEST,
    MARKER_BYTES,
    MARKER_FILES,
    DirFile,
    DirListing,
)
from ckptd.fs.files import sha256_stream
from ckptd.fs.runfs import RunFS

MAX_FILES = 1_000_000  # a directory checkpoint with more entries is not listed (one-line error)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)


@dataclass(frozen=True)
class Walked:
    """A listing plus what it holds that is not a regular file (relative paths)."""

    listing: DirListing
    irregular: tuple[str, ...]


def list_directory(fs: RunFS, reldir: str) -> Walked:
    """The listing of ``run_dir/reldir`` (a directory checkpoint), markers read.

    FileNotFoundError when it is gone; UnsafePathError when it (or a component) is a symlink or
    not a directory, or holds more than ``MAX_FILES`` entries.
    """
    files: list[DirFile] = []
    irregular: list[str] = []
    markers: dict[str, bytes] = {}
    with fs.directory(reldir) as top:
        newest_dir = os.fstat(top).st_mtime_ns
        for relpath, st, parent_fd, name in _walk(top, "", fs.show(reldir)):
            if len(files) + len(irregular) >= MAX_FILES:
                raise UnsafePathError(f"holds more than {MAX_FILES} entries", path=fs.show(reldir))
            if stat.S_ISDIR(st.st_mode):
                newest_dir = max(newest_dir, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                files.append(DirFile(relpath, st.st_size, st.st_mtime_ns))
                if relpath in MARKER_FILES and st.st_size <= MARKER_BYTES:
                    markers[relpath] = _read_small(parent_fd, name)
            else:
                irregular.append(relpath)
    listing = DirListing(
        name=reldir.rpartition("/")[2] or fs.run_dir.name,
        files=tuple(files),
        markers=markers,
        parent_latest=_parent_latest(fs, reldir),
        newest_dir_mtime_ns=newest_dir,
    )
    return Walked(listing, tuple(irregular))


def _walk(dir_fd: int, prefix: str, shown: str) -> Iterator[tuple[str, os.stat_result, int, str]]:
    """(relative path, lstat, parent descriptor, name) of everything below ``dir_fd``, sorted;
    subdirectories are yielded, then entered no-follow."""
    for name in sorted(os.listdir(dir_fd)):
        relpath = f"{prefix}{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while listed: the next listing sees the change
        yield relpath, st, dir_fd, name
        if stat.S_ISDIR(st.st_mode):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link meanwhile
                    raise UnsafePathError(
                        "changed into a link while listed", path=f"{shown}/{relpath}"
                    ) from err
                raise
            try:
                yield from _walk(child, f"{relpath}/", shown)
            finally:
                os.close(child)


def _read_small(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MARKER_BYTES)


def _parent_latest(fs: RunFS, reldir: str) -> str | None:
    """The DeepSpeed ``latest`` beside ``reldir`` (stripped), or None when there is none."""
    parent = reldir.rpartition("/")[0]
    relpath = f"{parent}/{DEEPSPEED_LATEST}" if parent else DEEPSPEED_LATEST
    try:
        raw = fs.read_bytes(relpath, limit=4096)
    except (FileNotFoundError, UnsafePathError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        return None


def hash_files(fs: RunFS, reldir: str, listing: DirListing) -> dict[str, str]:
    """sha256 of every file of ``listing``, read no-follow.

    FileChangedError names a file whose size or mtime is no longer the listing's: the directory
    changed, so the hashes would describe no state it was ever in.
    """
    hashes: dict[str, str] = {}
    for item in listing.files:
        relpath = f"{reldir}/{item.path}" if reldir else item.path
        with fs.open_read(relpath) as handle:
            hashes[item.path] = hash_listed(handle, item, fs.show(relpath))
    return hashes


def hash_listed(handle: IO[bytes], item: DirFile, shown: str) -> str:
    """sha256 of ``handle``, a file opened from a listing's ``item``, read from where it stands.

    FileChangedError when it is no longer the size and mtime listed.
    """
    sha256, _ = sha256_stream(handle)
    st = os.fstat(handle.fileno())
    if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
        raise FileChangedError("changed since the directory was listed", path=shown)
    return sha256
