"""A file's sha256 and CRC-32 from a read by a child process, begun before its reader's imports.

``ckptd convert`` records its source's sha256 (docs/architecture.md, "The conversion"): 0.13 CPU s
per 200 MiB. In a helper thread of the converting process that pass stalls on the GIL while the
converter's modules are imported (0.06-0.1 s in which one core is otherwise idle), so it cannot
start before they are. A child interpreter (``python -I -S``: no site, no environment, a few
milliseconds) has a GIL of its own: started by the CLI as soon as it has parsed its arguments, it
hashes on the other core while this process imports the converter, and its result is ready about
when the conversion needs it (README, "Benchmarks").

The child runs this module's fixed code, never anything named by the file or its path. It reads
the file through the descriptor this process opened (no symlink followed, a regular file), by
offset, so the name is never resolved again. What ties its digests to the bytes the conversion
parses is the same as for ``SecondRead``: the CRC-32 of every byte read, and the file's stat on that
descriptor when the child was started and after it ended (``ckptd.convert.legacy_stream``'s
``SourceDigest``).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

from ckptd.fs.closing import ClosesOnExit
from ckptd.fs.files import open_regular_nofollow
from ckptd.fs.second_read import CHUNK, ReadDigests

__all__ = ["ChildRead"]

# The child's whole program. It gets the file as descriptor 3 and the directory isal is installed
# in (its CRC-32 is zlib's function, 4x faster), and prints "sha256-hex crc size" on one line.
_CHILD_CODE = """
import hashlib, os, sys
if sys.argv[1]:
    sys.path.append(sys.argv[1])  # after the standard library: nothing there shadows it
try:
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32
fd, chunk = 3, int(sys.argv[2])
limit = os.fstat(fd).st_size
view = memoryview(bytearray(max(1, min(chunk, limit))))
digest, crc, size = hashlib.sha256(), 0, 0
while size <= limit:
    count = os.preadv(fd, [view], size)
    if not count:
        break
    digest.update(view[:count])
    crc = crc32(view[:count], crc)
    size += count
sys.stdout.write(f"{digest.hexdigest()} {crc} {size}\\n")
"""

_CHILD_FD = 3


class ChildRead(ClosesOnExit):
    """``path`` read to its end by a child process; ``result()`` as ``SecondRead.result()``.

    The constructor opens ``path`` (UnsafePathError for a symlink or anything not a regular file;
    OSError if it cannot be opened) and starts the child (OSError if it cannot be started: the
    caller falls back to a thread). ``result()`` waits for it and returns its ``ReadDigests``, or
    raises OSError naming what went wrong. ``close()`` (also on leaving a ``with`` block) kills a
    child still running and reaps it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open_regular_nofollow(self.path)
        self._pid: int | None = None
        self._outcome: ReadDigests | None = None
        try:
            self._opened = os.fstat(self._handle.fileno())
            read_end, write_end = os.pipe()
        except BaseException:
            self._handle.close()
            raise
        self._pipe = read_end
        try:
            self._pid = os.posix_spawn(
                sys.executable,
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    _CHILD_CODE,
                    _isal_location(),
                    str(CHUNK),
                ],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self._handle.fileno(), _CHILD_FD),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ],
            )
        except BaseException:
            os.close(read_end)
            self._handle.close()
            raise
        finally:
            os.close(write_end)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (None once it has been reaped)."""
        return self._pid

    def result(self) -> ReadDigests:
        if self._outcome is not None:
            return self._outcome
        if self._pid is None:
            raise RuntimeError(f"{self.path}: its digest process was stopped")
        output = _read_to_end(self._pipe)
        status = self._reap()
        finished = os.fstat(self._handle.fileno())
        fields = output.split()
        if status != 0 or len(fields) != 3:
            last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise OSError(
                errno.EIO,
                f"the process hashing {self.path} failed (exit status {status}): {last[0]}",
            )
        self._outcome = ReadDigests(
            sha256=fields[0].decode(),
            crc=int(fields[1]),
            size=int(fields[2]),
            opened=self._opened,
            finished=finished,
        )
        self.close()
        return self._outcome

    def close(self) -> None:
        if self._pid is not None:
            os.kill(self._pid, signal.SIGKILL)
            self._reap()
        if not self._handle.closed:
            os.close(self._pipe)
            self._handle.close()

    def _reap(self) -> int:
        pid, self._pid = self._pid, None
        assert pid is not None
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)


def _isal_location() -> str:
    """The directory holding the isal package this process uses (``ckptd.fs.digest`` imported
    it), or "" if it has none: the child then takes zlib's CRC-32, the same values."""
    module = sys.modules.get("isal")
    location = getattr(module, "__file__", None)
    return str(Path(location).parent.parent) if location else ""


def _read_to_end(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 4096):
        parts.append(chunk)
    return b"".join(parts)
