"""A file's sha256 and CRC-32 from a read of its own, in a helper thread, beside other work.

The conversion records its source's sha256 (docs/architecture.md, "The conversion"). Hashing
the bytes its first pass parses would put that sha256 pass (0.1 s per 200 MiB) before the
output's, one after the other; a second, independent read (its own descriptor, so its own
read-ahead; its own 1 MiB buffer, so memory stays flat) lets the two sha256 passes run on two
cores at once. What ties this read to the bytes parsed is the caller's to check: this read
reports the CRC-32 of every byte it saw and the file's stat when it opened the file and after
its last read (``ckptd.convert.legacy_stream.SourceDigest``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ckptd.fs.closing import ClosesOnExit
from ckptd.fs.digest import crc32
from ckptd.fs.files import open_regular_nofollow

__all__ = ["CHUNK", "DigestRead", "ReadDigests", "SecondRead"]

# Small enough that the sha256 and the CRC-32 of a chunk just read hit the CPU cache.
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ReadDigests:
    """What one read of a file saw: its digests, its length, its stat before and after."""

    sha256: str
    crc: int
    size: int
    opened: os.stat_result  # fstat right after it was opened
    finished: os.stat_result  # fstat after the last read


class DigestRead(Protocol):
    """A read of a whole file beside other work: ``SecondRead`` (a thread) or
    ``ckptd.fs.digest_child.ChildRead`` (a child process)."""

    def result(self) -> ReadDigests:
        """Its digests once it is done, or the error it met."""
        ...

    def close(self) -> None:
        """Stop it if it still runs (idempotent)."""
        ...


def _read_into(fd: int, buffer: memoryview) -> int:
    """The read the digest loop uses (a seam: tests replace it with a reader that lies)."""
    return os.readv(fd, [buffer])


class SecondRead(ClosesOnExit):
    """``path`` read to its end by a descriptor of its own: sha256, CRC-32, stat before and after.

    Threaded, it runs in a helper thread from the constructor on; otherwise in ``result()``.
    ``result()`` returns its ``ReadDigests`` or raises what it raised (OSError, UnsafePathError).
    Use as a context manager: leaving it stops the thread at its next chunk and joins it.
    """

    def __init__(self, path: Path, *, threaded: bool = True) -> None:
        self.path = Path(path)
        self._stop = False
        self._outcome: ReadDigests | BaseException | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            thread = threading.Thread(target=self._run, name="ckptd-second-read", daemon=True)
            thread.start()  # its failure (no thread to be had) is the caller's error
            self._thread = thread

    def result(self) -> ReadDigests:
        if self._thread is not None:
            self._thread.join()
        elif self._outcome is None:
            self._run()
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is None:  # stopped before its end: close() came first
            raise RuntimeError(f"{self.path}: its second read was stopped")
        return outcome

    def close(self) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            self._outcome = self._digest()
        except BaseException as err:  # handed to result()
            self._outcome = err

    def _digest(self) -> ReadDigests | None:
        with open_regular_nofollow(self.path) as handle:
            fd = handle.fileno()
            opened = os.fstat(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            view = memoryview(bytearray(min(CHUNK, max(opened.st_size, 1))))
            digest = hashlib.sha256()
            crc = 0
            size = 0
            while not self._stop:
                count = _read_into(fd, view)
                if not count or size > opened.st_size:  # past its size: it grew, say so
                    return ReadDigests(digest.hexdigest(), crc, size, opened, os.fstat(fd))
                chunk = view[:count]
                digest.update(chunk)  # both release the GIL: the parse runs on meanwhile
                crc = crc32(chunk, crc)
                size += count
        return None
