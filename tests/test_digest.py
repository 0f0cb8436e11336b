"""The sha256 computed beside a reader (ckptd.fs.digest): same digest as hashlib, buffers reused safely."""

from __future__ import annotations

import hashlib
import os
import random
import zlib

import pytest

from ckptd.fs import digest
from ckptd.fs.digest import BufferRing, Sha256Feed, crc32


@pytest.mark.parametrize("threaded", [True, False])
def test_fed_chunks_give_hashlibs_digest(threaded: bool) -> None:
    rng = random.Random(7)
    chunks = [os.urandom(rng.randrange(0, 300_000)) for _ in range(60)]
    with Sha256Feed(threaded=threaded) as hasher:
        for chunk in chunks:
            hasher.feed(memoryview(chunk))
        assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_ring_buffers_are_not_overwritten_before_they_are_hashed() -> None:
    """Each ring buffer is refilled right after it is handed over; if the ring gave it out again
    before the hasher was done with it, the digest would be of the wrong bytes."""
    data = os.urandom(64 * 64 * 1024)
    size = 64 * 1024
    with Sha256Feed(threaded=True) as hasher:
        ring = BufferRing(hasher, size, count=2)
        for start in range(0, len(data), size):
            slot, buffer = ring.take()
            buffer[:] = data[start : start + size]
            ring.handed(slot, hasher.feed(memoryview(buffer)))
        digest = hasher.hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()


def test_wait_for_nothing_returns_and_close_is_idempotent() -> None:
    hasher = Sha256Feed(threaded=True)
    hasher.wait(0)
    assert hasher.done(0)
    ticket = hasher.feed(b"abc" * 10_000)
    hasher.wait(ticket)
    assert hasher.done(ticket)
    hasher.close()
    hasher.close()
    assert hasher.hexdigest() == hashlib.sha256(b"abc" * 10_000).hexdigest()


def test_crc32_is_zlibs_bit_for_bit_and_isals_where_installed() -> None:
    """The fast CRC-32 must give zlib's values (zip headers carry them), chained over chunks too."""
    rng = random.Random(11)
    chunks = [os.urandom(rng.randrange(0, 200_000)) for _ in range(40)] + [b"", b"\x00" * 4096]
    ours = theirs = 0
    for chunk in chunks:
        assert crc32(memoryview(chunk)) == zlib.crc32(chunk)
        ours = crc32(memoryview(bytearray(chunk)), ours)
        theirs = zlib.crc32(chunk, theirs)
    assert ours == theirs
    # A dependency (pyproject.toml): a test environment without it would measure the slow one.
    assert digest.crc32.__module__.startswith("isal")
