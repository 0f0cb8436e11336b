"""Durable, atomic file operations: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from ckptd.errors import UnsafePathError

# Every temp file ckptd writes starts with this prefix and ends with ".tmp", so no checkpoint
# pattern or watcher ever mistakes one for a checkpoint (our own writes come back as events).
TEMP_PREFIX = ".ckptd-tmp-"
TEMP_SUFFIX = ".tmp"
CHUNK_SIZE = 4 * 1024 * 1024
# From this size on, a written file is fsynced in a helper thread while it is checked; below it,
# a thread costs more than the short fsync it would hide.
_FSYNC_BESIDE_CHECK_MIN = 8 * 1024 * 1024


def is_temp_name(name: str) -> bool:
    """True for names ckptd uses for files still being written."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temp_path_for(dest: Path) -> Path:
    """A fresh temp name in dest's directory (same filesystem, so the final rename is atomic)."""
    return dest.parent / f"{TEMP_PREFIX}{dest.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CarriedAttributes:
    """What a file written in another's place keeps of it: mode, owner and times.

    A converted checkpoint is the same checkpoint in another format, so it keeps the original's
    permission bits (never wider), its owner and group where the process may set them, and its
    access and modification times to the nanosecond (docs/conversion.md).
    """

    mode: int  # permission bits only (S_IMODE)
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> CarriedAttributes:
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns)


def apply_attributes(fd: int, attributes: CarriedAttributes) -> None:
    """Give the open file ``fd`` the carried owner, mode and times (in that order).

    Owner first: chown clears set-id bits, and a mode set before it could be undone. As root the
    owner and group are the original's. Otherwise the group is carried when the process may
    (it is a member); when the file ends up in another group than the original's, the group
    permission bits are cleared, so nobody gets access they did not have. Times last: they are
    the last change to the file's data or metadata before its rename.
    """
    mode = attributes.mode
    if os.geteuid() == 0:
        os.fchown(fd, attributes.uid, attributes.gid)
    elif os.fstat(fd).st_gid != attributes.gid:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, attributes.gid)
        if os.fstat(fd).st_gid != attributes.gid:
            mode &= ~stat.S_IRWXG
    os.fchmod(fd, mode)
    os.utime(fd, ns=(attributes.atime_ns, attributes.mtime_ns))


def _process_umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def created_mode() -> int:
    """The mode a file ckptd creates for itself gets: 0666 minus the process umask, as open(2)
    would give (the systemd unit's UMask=0027 makes that 0640)."""
    return 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_write(
    dest: Path,
    *,
    mode: int | None = None,
    attributes: CarriedAttributes | None = None,
    before_replace: Callable[[Path], None] | None = None,
    synced_by_check: bool = False,
) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``dest`` atomically when the block exits without error.

    Readers see either the old file or the complete new one; ``kill -9`` at any point leaves at
    most a temp file (``.ckptd-tmp-*.tmp``) that no pattern matches, never a partial ``dest``.
    The file gets ``attributes`` (a converted checkpoint carries its original's), else ``mode``,
    else what the process umask gives a new file. ``before_replace(temp_path)`` runs after the
    data is durable (for a large file: while it is made durable, by an fsync in a helper thread;
    both must succeed) and before the attributes are applied and the file renamed; if either
    fails (e.g. verification), the temp file is removed and ``dest`` is untouched.
    With ``synced_by_check``, the block leaves the writing to a helper thread that fsyncs the
    file itself and ``before_replace`` returns only once that is done (``ckptd.formats.sb2zip``'s
    large zips): no fsync here would find the data complete.
    """
    dest = Path(dest)
    tmp = temp_path_for(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            if attributes is None:
                os.fchmod(handle.fileno(), created_mode() if mode is None else mode)
            yield handle
            handle.flush()
            if synced_by_check:
                if before_replace is not None:
                    before_replace(tmp)
            elif os.fstat(handle.fileno()).st_size < _FSYNC_BESIDE_CHECK_MIN:
                os.fsync(handle.fileno())
                if before_replace is not None:
                    before_replace(tmp)
            else:
                # The check reads the same page cache before and after the fsync, so the disk
                # works while the check computes; both must succeed before the rename.
                with _fsync_meanwhile(handle.fileno()):
                    if before_replace is not None:
                        before_replace(tmp)
            if attributes is not None:
                # After the check (reading the temp file may move its access time), and made
                # durable with the data before the rename.
                apply_attributes(handle.fileno(), attributes)
                os.fsync(handle.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _fsync_meanwhile(fd: int) -> Iterator[None]:
    """fsync ``fd`` in a helper thread while the block runs; its error is raised at the end."""
    failed: list[OSError] = []

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError as err:
            failed.append(err)

    thread = threading.Thread(target=sync, name="ckptd-fsync", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


def write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until every byte of ``data`` is written (one write may take fewer)."""
    while data.nbytes:
        data = data[os.write(fd, data) :]


def write_bytes_atomic(dest: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write a small file atomically (manifests, pins, reason files); umask decides the mode."""
    with atomic_write(dest, mode=mode) as handle:
        handle.write(data)


@dataclass(frozen=True)
class FileIdentity:
    """What a file was when it was judged; compared again right before acting on it."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class FoundFile:
    """A checkpoint file found by a scan, as it was when stat'ed."""

    path: Path
    identity: FileIdentity


def _open_noatime(path: Path, flags: int) -> int:
    """``os.open`` with O_NOATIME where allowed (the file's owner, or root): reading a checkpoint
    to judge, hash or convert it must not make it look recently used."""
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


def open_regular_nofollow(path: Path) -> BinaryIO:
    """Open ``path`` for reading without following a final symlink; refuse anything not a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer. It has
        # no effect on regular files, the only kind this returns.
        fd = _open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePathError(
                "is a symlink; ckptd never reads through links", path=str(path)
            ) from err
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError("is not a regular file", path=str(path))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def open_for_writing(path: Path) -> bool | None:
    """Whether any process has ``path`` open for writing (or mapped writable), asked of the kernel.

    Linux grants a read lease (``fcntl(F_SETLEASE, F_RDLCK)``) only while no process holds the
    file open for writing; the lease is released at once. None where the kernel cannot tell us:
    not the file's owner and no ``CAP_LEASE``, a file system without leases (NFS, FUSE), leases
    disabled (``fs.leases-enable``), or not a regular file. A writer opening the file in the
    microseconds the lease is held waits for its release, and the lease holder gets SIGIO, which
    the daemon ignores (docs/architecture.md, "Watching": a new run directory's first files).
    """
    try:
        fd = _open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as err:
            return True if err.errno in (errno.EAGAIN, errno.EBUSY) else None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def sha256_stream(handle: IO[bytes]) -> tuple[str, int]:
    """Stream an open file through sha256 from where it stands; returns (hex digest, bytes read).

    The one hashing loop for whatever ckptd reads whole: a file (``sha256_file``), a file checked
    against its identity (``hash_if_unchanged``), a file below a run, a member of a zip."""
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """Stream a file through sha256; returns (hex digest, bytes read)."""
    with open_regular_nofollow(path) as handle:
        return sha256_stream(handle)


def hash_if_unchanged(path: Path, identity: FileIdentity) -> str | None:
    """sha256 of ``path`` if it is still the file ``identity`` describes before and after reading.

    Returns None when it changed (it is being written: treat it as incomplete). Never follows a
    final symlink (open_regular_nofollow).
    """
    with open_regular_nofollow(path) as handle:
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            return None
        digest, _ = sha256_stream(handle)
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            return None
    return digest
