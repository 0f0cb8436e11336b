"""A writer in one thread, a reader following it in another: how far the writer has come.

The conversion's re-read of its temp file (``ckptd.formats.storedzip.compare_file_with_pieces``)
follows the kernel copy that writes it (``ckptd.formats.sb2zip.write_checked_sb2_zip``) instead
of waiting for its end: on two cores the copy and the re-read's sha256 overlap (README,
"Benchmarks"). The reader never reads a byte before the writer says it is written, and sees the
writer's error as its own.
"""

from __future__ import annotations

import threading


class WriteFollower:
    """How far a writer in another thread has come, for a reader that follows it.

    The writer calls ``advance(n)`` as the first n bytes are written and ``finish(error)`` when it
    stops; the reader's ``wait_for(n)`` returns once n bytes are there, or raises the writer's
    error (the same exception object). ``stop()`` asks the writer to end early (its next
    ``advance`` raises): the reader failed, the rest of the copy is of no use.
    """

    def __init__(self) -> None:
        self._written = 0
        self._finished = False
        self._error: BaseException | None = None
        self._stop = False
        self._changed = threading.Condition()

    def advance(self, count: int) -> None:
        if self._stop:
            raise _Stopped
        with self._changed:
            self._written = max(self._written, count)
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._changed:
            self._finished = True
            self._error = error
            self._changed.notify_all()

    def stop(self) -> None:
        self._stop = True

    def wait_for(self, count: int) -> None:
        """Return once ``count`` bytes are written (or the writer finished); raise its error."""
        if self._written >= count:
            return
        with self._changed:
            while self._written < count and not self._finished:
                self._changed.wait()
            if self._error is not None:
                raise self._error

    def wait_done(self) -> None:
        """Return once the writer finished; raise its error."""
        with self._changed:
            while not self._finished:
                self._changed.wait()
            if self._error is not None:
                raise self._error


class _Stopped(Exception):
    """The reader that a follower serves has given up (``WriteFollower.stop``)."""
