"""Safe run-relative paths, and no-follow file operations under a run's directory.

A run directory is written by people ckptd must not trust (docs/security.md, "Paths inside a
run"). Every path that comes from a file in the run (manifest, trash index, pins, reason files,
archive names) is checked by :func:`check_relpath` before use, and every create, move, delete or
read of such a path goes through :class:`RunFS`: it walks from a descriptor of the run directory
one component at a time with ``O_DIRECTORY | O_NOFOLLOW`` and acts with ``dir_fd=`` on the last
directory. A symlink at any component, including one swapped in after a check, makes the open
fail (``ELOOP``/``ENOTDIR``) and the operation is refused with an :class:`UnsafePathError` naming
the path; nothing outside the run can be reached.

The run directory itself is what the operator or the config named, and is opened as given (a root
reached through ``/scratch -> /lustre/scratch`` still works); nothing below it is ever followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ckptd.errors import UnsafePathError
from ckptd.fs.files import TEMP_PREFIX, TEMP_SUFFIX, created_mode, is_temp_name

# Linux limits (NAME_MAX, PATH_MAX): a longer name cannot exist, so it can only be planted text.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def relpath_problem(relpath: object) -> str | None:
    """Why ``relpath`` is not a plain relative path inside a run, or None when it is one.

    Plain: a non-empty ``str`` of ``/``-separated components, none empty, ``.`` or ``..``; not
    absolute; no NUL; every component at most 255 bytes and the whole at most 4095 (UTF-8).
    Other control characters (a newline...) are legal in file names, so they are allowed here and
    every message quotes a path with ``repr`` to keep it on one line.
    """
    if not isinstance(relpath, str):
        return f"is a {type(relpath).__name__}, not a path"
    if not relpath:
        return "is empty"
    if relpath.startswith("/"):
        return "is absolute"
    if "\0" in relpath:
        return "contains a NUL byte"
    try:
        encoded = relpath.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return "is not encodable as a file name"
    if len(encoded) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    for part in relpath.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part!r} component" if part else "has an empty component"
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            return f"has a component longer than {MAX_NAME_BYTES} bytes"
    return None


def check_relpath(relpath: object, *, what: str, source: str) -> str:
    """``relpath`` when it is plain (see :func:`relpath_problem`); else UnsafePathError naming
    ``source`` (the file that held it) and quoting the value on one line."""
    problem = relpath_problem(relpath)
    if problem is not None:
        raise UnsafePathError(f"{what} {_quote(relpath)} {problem}; refusing it", path=source)
    assert isinstance(relpath, str)
    return relpath


def check_name(name: object, *, what: str, source: str) -> str:
    """A single plain file name (a plain relpath without ``/``)."""
    checked = check_relpath(name, what=what, source=source)
    if "/" in checked:
        raise UnsafePathError(f"{what} {_quote(checked)} is not a plain file name", path=source)
    return checked


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + "...(" + str(len(text)) + " chars)"


def join(*parts: str) -> str:
    """Run-relative components joined with ``/`` (empty parts dropped)."""
    return "/".join(part for part in parts if part)


def _components(relpath: str) -> list[str]:
    problem = relpath_problem(relpath)
    if problem is not None:
        raise UnsafePathError(f"path {_quote(relpath)} {problem}")
    return relpath.split("/")


def _split(relpath: str) -> tuple[list[str], str]:
    parts = _components(relpath)
    return parts[:-1], parts[-1]


def kind_of(mode: int) -> str:
    """A file type in words, for error messages."""
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a device or special file"


@dataclass(frozen=True)
class RunFS:
    """No-follow operations on run-relative paths below ``run_dir`` (see the module docstring)."""

    run_dir: Path

    def show(self, relpath: str) -> str:
        """The path as shown in messages."""
        return str(self.run_dir / relpath) if relpath else str(self.run_dir)

    # ---- directories ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def directory(self, reldir: str = "", *, create: bool = False) -> Iterator[int]:
        """A descriptor of ``run_dir/reldir``; each component below the run opened no-follow.

        With ``create``, missing components are made (mode 0755). UnsafePathError when a component
        is a symlink or not a directory; FileNotFoundError when one is missing.
        """
        parts = _components(reldir) if reldir else []
        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            walked: list[str] = []
            for part in parts:
                walked.append(part)
                child = self._open_child(fd, part, "/".join(walked), create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_child(self, fd: int, part: str, walked: str, create: bool) -> int:
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                # Name the whole path, as a path-based call would (the caller's one-line error).
                raise OSError(err.errno, err.strerror, self.show(walked)) from err
            raise UnsafePathError(
                f"is {self._kind_at(fd, part)}; refusing to go through it (ckptd never follows "
                "links below a run)",
                path=self.show(walked),
            ) from err

    @staticmethod
    def _kind_at(fd: int, name: str) -> str:
        try:
            return kind_of(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            return "not a directory"

    @contextlib.contextmanager
    def parent(self, relpath: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """(descriptor of the directory holding ``relpath``, its last component)."""
        parts, name = _split(relpath)
        with self.directory("/".join(parts), create=create) as fd:
            yield fd, name

    def is_real_dir(self, reldir: str) -> bool:
        """True when ``reldir`` is a directory reached without any symlink; False when absent.

        UnsafePathError when it (or a component) is a symlink, a FIFO, a file...
        """
        try:
            with self.directory(reldir):
                return True
        except FileNotFoundError:
            return False

    def listdir(self, reldir: str) -> list[str]:
        """Names in ``reldir`` (sorted); empty when it does not exist."""
        try:
            with self.directory(reldir) as fd:
                return sorted(os.listdir(fd))
        except FileNotFoundError:
            return []

    # ---- files ----------------------------------------------------------------------------------

    def lstat(self, relpath: str) -> os.stat_result | None:
        """``lstat`` of ``relpath`` through no-follow directories; None when it does not exist."""
        try:
            with _naming(self.show(relpath)), self.parent(relpath) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, relpath: str) -> bool:
        return self.lstat(relpath) is not None

    def regular(self, relpath: str) -> os.stat_result:
        """``lstat`` of a regular file; UnsafePathError for anything else, FileNotFoundError if absent."""
        st = self.lstat(relpath)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self.show(relpath))
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"is {kind_of(st.st_mode)}, not a regular file; ckptd never follows links",
                path=self.show(relpath),
            )
        return st

    def open_read(self, relpath: str) -> BinaryIO:
        """Open a regular file for reading, no symlink followed anywhere below the run."""
        with _naming(self.show(relpath)), self.parent(relpath) as (fd, name):
            try:
                file_fd = os.open(name, _READ_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UnsafePathError(
                        "is a symlink; ckptd never reads through links", path=self.show(relpath)
                    ) from err
                raise
        try:
            mode = os.fstat(file_fd).st_mode
            if not stat.S_ISREG(mode):
                raise UnsafePathError(
                    f"is {kind_of(mode)}, not a regular file", path=self.show(relpath)
                )
        except BaseException:
            os.close(file_fd)
            raise
        return os.fdopen(file_fd, "rb")

    def read_bytes(self, relpath: str, *, limit: int) -> bytes:
        """A small state file's bytes; UnsafePathError when it is larger than ``limit``."""
        with self.open_read(relpath) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise UnsafePathError(f"is larger than {limit} bytes", path=self.show(relpath))
        return data

    def write_atomic(self, relpath: str, data: bytes, *, mode: int | None = None) -> None:
        """Replace ``relpath`` atomically (temp beside it, fsync, rename, fsync the directory).

        Without ``mode`` the file gets what the process umask gives a new file (docs/conversion.md).
        """
        with _naming(self.show(relpath)), self.parent(relpath, create=True) as (fd, name):
            temp = f"{TEMP_PREFIX}{name[:200]}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
            file_fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=fd,
            )
            try:
                try:
                    _write_all(file_fd, data)
                    os.fchmod(file_fd, created_mode() if mode is None else mode)
                    os.fsync(file_fd)
                finally:
                    os.close(file_fd)
                os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=fd)
                raise
            os.fsync(fd)

    def chmod(self, relpath: str, mode: int) -> None:
        """``chmod`` a regular file without following a symlink (opened no-follow, then fchmod)."""
        with self.open_read(relpath) as handle:
            os.fchmod(handle.fileno(), mode)

    def unlink(self, relpath: str, *, missing_ok: bool = False) -> None:
        """Remove a file (never a directory; a symlink is removed as a link) and fsync its directory."""
        try:
            with _naming(self.show(relpath)), self.parent(relpath) as (fd, name):
                os.unlink(name, dir_fd=fd)
                os.fsync(fd)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_stale_temps(
        self, reldir: str, *, older_than_s: float, now: float, of: str | None = None
    ) -> list[str]:
        """Unlink ckptd temp files (``is_temp_name``) older than ``older_than_s`` in ``reldir``
        (with ``of``: only the temp files written for that file name); returns their names. On a
        no-follow descriptor, so a symlinked directory never gets files outside the run removed."""
        prefix = f"{TEMP_PREFIX}{of}." if of is not None else TEMP_PREFIX
        removed: list[str] = []
        with self.directory(reldir) as fd:
            for name in os.listdir(fd):
                if not (is_temp_name(name) and name.startswith(prefix)):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than_s:
                        os.unlink(name, dir_fd=fd)
                        removed.append(name)
        return removed

    def unique_name(self, reldir: str, name: str) -> str:
        """``name``, or ``name.1``, ``name.2``... whichever is free in ``reldir`` (never overwrite)."""
        with self.directory(reldir) as fd:
            return _free_name(fd, name)

    def move(self, source: str, destination: str, *, create_parents: bool = False) -> None:
        """Move ``source`` to ``destination`` (both run-relative, same filesystem), never overwriting.

        One ``renameat2(RENAME_NOREPLACE)`` makes "is the name free" and the move one atomic step;
        without it, ``link`` + ``unlink``, and on filesystems without hard links a check then
        ``rename`` (a window one syscall wide). Both directories are fsynced. FileExistsError when
        the destination is taken.
        """
        with (
            _naming(self.show(source)),
            self.parent(source) as (src_fd, src_name),
            self.parent(destination, create=create_parents) as (dst_fd, dst_name),
        ):
            _move_at(src_fd, src_name, dst_fd, dst_name, shown=self.show(destination))
            os.fsync(dst_fd)
            os.fsync(src_fd)

    def move_unique(self, source: str, reldir: str, name: str, *, create: bool = False) -> str:
        """Move ``source`` into ``reldir`` as ``name`` or the first free ``name.N``; returns the
        name used (see :func:`move_unique_at`)."""
        with (
            _naming(self.show(source)),
            self.parent(source) as (src_fd, src_name),
            self.directory(reldir, create=create) as dst_fd,
        ):
            chosen = move_unique_at(src_fd, src_name, dst_fd, name, shown=self.show(reldir))
            os.fsync(dst_fd)
            os.fsync(src_fd)
            return chosen


def move_unique_at(src_fd: int, src_name: str, dst_fd: int, name: str, *, shown: str) -> str:
    """Move ``src_name`` into the directory ``dst_fd`` as ``name`` or the first free ``name.N``
    (never overwriting: the free name is found and taken on the same descriptor). Returns the
    name used; the caller fsyncs both directories."""
    for _ in range(10_000):
        chosen = _free_name(dst_fd, name)
        try:
            _move_at(src_fd, src_name, dst_fd, chosen, shown=shown)
        except FileExistsError:
            continue  # taken between the look and the move: try the next number
        return chosen
    raise UnsafePathError(f"no free name for {name!r}", path=shown)


@contextlib.contextmanager
def _naming(shown: str) -> Iterator[None]:
    """Re-raise an OSError of a ``dir_fd=`` call (which names only the last component) with the
    whole path, so the one-line error says which file."""
    try:
        yield
    except OSError as err:
        if isinstance(err, UnsafePathError) or (
            isinstance(err.filename, str) and err.filename.startswith("/")
        ):
            raise
        raise OSError(err.errno, err.strerror, shown) from err


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _free_name(dir_fd: int, name: str) -> str:
    candidate, counter = name, 1
    while True:
        try:
            os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
        candidate = f"{name}.{counter}"
        counter += 1


def _move_at(src_fd: int, src_name: str, dst_fd: int, dst_name: str, *, shown: str) -> None:
    try:
        if _rename_noreplace(src_fd, src_name, dst_fd, dst_name):
            return
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "a file of that name is already there", shown) from None
    # No RENAME_NOREPLACE here (an old kernel, or a filesystem without it): a hard link refuses to
    # overwrite too, but a kill between the link and the unlink leaves the file under both names.
    try:
        os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "a file of that name is already there", shown) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOTSUP):
            raise
        try:
            os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            return
        raise FileExistsError(errno.EEXIST, "a file of that name is already there", shown) from None
    os.unlink(src_name, dir_fd=src_fd)


_RENAME_NOREPLACE = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAMEAT2 = getattr(_LIBC, "renameat2", None)
if _RENAMEAT2 is not None:
    _RENAMEAT2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    _RENAMEAT2.restype = ctypes.c_int


def _rename_noreplace(src_fd: int, src_name: str, dst_fd: int, dst_name: str) -> bool:
    """One atomic rename that never overwrites (Linux renameat2 with RENAME_NOREPLACE).

    Returns False where the C library, kernel or filesystem lacks it, so the caller falls back;
    raises FileExistsError when the destination name is taken.
    """
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(
        src_fd, os.fsencode(src_name), dst_fd, os.fsencode(dst_name), _RENAME_NOREPLACE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), dst_name)
