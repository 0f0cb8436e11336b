"""Checksums of large streams: a sha256 computed beside the reader, and the fastest CRC-32 at hand.

Conversion and verification read hundreds of megabytes and must hash all of it (docs/conversion.md).
``hashlib`` releases the GIL while it hashes a buffer of more than 2 KiB, so a second thread can
hash chunk N while the reader fetches, frames and CRCs chunk N+1: on two cores the sha256 pass
costs the reader only the hand-over. The reader may not touch a buffer it handed over until
``Sha256Feed.wait`` says the hasher is done with it (a ring of buffers keeps it busy meanwhile).

``crc32`` is ISA-L's (the ``isal`` package: Intel's CRC folding with carry-less multiplication),
zlib's where isal cannot be installed; the same function, bit for bit. A conversion takes two CRC
passes (the source's first read, the written zip's re-read): 200 MiB costs 0.047 s per pass with
zlib 1.2.13 and 0.007 s with isal 1.9 on this project's machine (README, "Benchmarks").
``crc32_combine`` joins the CRCs of adjacent runs without reading them again (the zip writer knows
every member's CRC before writing it: ``ckptd.formats.storedzip``).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import TypeAlias

from ckptd.fs.closing import ClosesOnExit

try:
    from isal.isal_zlib import crc32
except ImportError:  # no wheel for this platform: zlib's, slower, same values
    from zlib import crc32

Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["THREADED_MIN_BYTES", "BufferRing", "Sha256Feed", "crc32", "crc32_combine"]

# Below this many bytes in all, a thread costs more than it saves: hash inline.
THREADED_MIN_BYTES = 8 * 1024 * 1024

# CRC-32 (reflected polynomial) arithmetic for ``crc32_combine``.
_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected), as zlib's crc32_combine computes it."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B) (zlib's algorithm; Python does not expose it)."""
    power = 1 << 31  # x^0
    bits = len2
    k = 3  # len2 bytes = len2 * 2^3 bits
    while bits:
        if bits & 1:
            power = _multmodp(_X2N[k & 31], power)
        bits >>= 1
        k += 1
    return _multmodp(power, crc1) ^ crc2


class Sha256Feed(ClosesOnExit):
    """The sha256 of buffers fed in order, hashed by a helper thread (or inline when small).

    ``feed`` returns a ticket; ``wait(ticket)`` returns once that buffer (and all before it) has
    been hashed, so its memory may be reused. ``hexdigest`` waits for everything fed. Use as a
    context manager: leaving it stops the thread, whatever happened.
    """

    def __init__(self, *, threaded: bool = True) -> None:
        self._digest = hashlib.sha256()
        self._fed = 0
        self._done = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._progress = threading.Condition()
        if threaded:
            self._thread = threading.Thread(target=self._run, name="ckptd-sha256", daemon=True)
            self._thread.start()

    def feed(self, data: Buffer) -> int:
        """Hash ``data`` after everything fed before; the ticket to ``wait`` for."""
        self._fed += 1
        if self._thread is None:
            self._digest.update(data)
            self._done = self._fed
        else:
            self._queue.put(memoryview(data))
        return self._fed

    def wait(self, ticket: int) -> None:
        """Return once the buffer of ``ticket`` has been hashed (0: nothing to wait for)."""
        if self._done >= ticket:
            return
        with self._progress:
            while self._done < ticket and self._error is None:
                self._progress.wait()
        if self._error is not None:
            raise self._error

    def done(self, ticket: int) -> bool:
        """Whether the buffer of ``ticket`` has been hashed (without waiting)."""
        return self._done >= ticket

    def hexdigest(self) -> str:
        self.wait(self._fed)
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the helper thread (after it has hashed what is queued)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._digest.update(item)
            except BaseException as err:  # reported to the reader by wait()
                with self._progress:
                    self._error = err
                    self._progress.notify_all()
                return
            finally:
                item.release()  # no view of the reader's buffer outlives its hashing
                del item
            with self._progress:
                self._done += 1
                self._progress.notify_all()


class BufferRing:
    """A few equal buffers used in turn, each reused only after the hasher is done with it."""

    def __init__(self, hasher: Sha256Feed, size: int, count: int = 3) -> None:
        self._hasher = hasher
        self._size = size
        self._buffers: list[bytearray] = []
        self._tickets = [0] * count
        self._next = 0

    def take(self) -> tuple[int, bytearray]:
        """(slot, buffer) free for the next read; ``handed(slot, ticket)`` once it is fed."""
        slot = self._next
        self._next = (slot + 1) % len(self._tickets)
        self._hasher.wait(self._tickets[slot])
        if slot == len(self._buffers):  # allocated on first use only
            self._buffers.append(bytearray(self._size))
        return slot, self._buffers[slot]

    def handed(self, slot: int, ticket: int) -> None:
        self._tickets[slot] = ticket
