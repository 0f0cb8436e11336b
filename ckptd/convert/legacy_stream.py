"""The first pass of a low-memory legacy read: stream the file once, keep all but its big payloads.

A legacy checkpoint is mostly parameter bytes (BINBYTES8 / BYTEARRAY8 payloads). ``scan_source``
reads the file once, in bounded chunks, taking the CRC-32 of every byte, and frames opcodes as it
goes with a small length-aware scanner. Every byte except the payloads of large byte opcodes is
copied into an anonymous private mapping at its own offset; the large payloads are left as
untouched zero pages (which cost no memory) and recorded as ``Region``s with the CRC-32 of the
bytes as read.

The static parser then runs unchanged on that buffer: opcodes, globals and every data value it
sees are bytes read once in this pass. Zeros never masquerade as payload: the reader
(``ckptd.convert.legacy``) checks that every region is exactly the payload of one byte opcode and
is used only as a parameter array's bytes; the writer copies those bytes from the still-open file
(``SourceFile``), checking the file's identity after the copy, and the re-read of the written zip
checks the copied bytes against the CRC-32 of the first read. The file's sha256 comes from a
second, independent read in a helper thread (``ckptd.fs.second_read``), so that it overlaps the
output's sha256 instead of preceding it; ``SourceDigest`` ties it to the first read the same way:
the two reads' CRC-32s over the whole file must be equal, and the file's stat unchanged.

The input file is never mapped: a writer truncating it would SIGBUS the daemon.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ckptd.errors import FileChangedError, FormatError
from ckptd.fs import files as fsio
from ckptd.fs.closing import ClosesOnExit
from ckptd.fs.digest import crc32
from ckptd.fs.second_read import DigestRead, ReadDigests
from ckptd.limits import DEFAULT_LIMITS

# The opcode table is pickles.ops' own, so this framer and the parser agree by construction
# (and ``legacy`` checks that they did).
from ckptd.pickles.ops import _FIXED, _LENGTH_PREFIX, _MAX_LINE, _OPCODES

logger = logging.getLogger(__name__)

# Payloads at least this big stay in the file; smaller ones are cheaper to keep than to re-read.
DEFAULT_MIN_DEFERRED = 1024 * 1024
# Small enough that hashing and CRC-ing a chunk just read still hit the CPU cache (measured: 1 MiB
# scans 200 MB ~20% faster than 4 MiB), large enough that syscalls do not matter.
READ_CHUNK = 1024 * 1024
# Reads into the kept buffer are smaller: a read that runs into a large payload has put that
# payload's first bytes there, and each page of them is a page fault before it is given back.
# At 1 MiB that was ~250 faults per payload (9,000 of a 200 MiB conversion's 20,000, 0.02 CPU s);
# at 64 KiB it is 16, and the payload's rest goes through the scratch buffer, faulted once.
KEPT_CHUNK = 64 * 1024
_DEFERRABLE = frozenset({"BINBYTES", "BINBYTES8", "BYTEARRAY8"})


@dataclass(frozen=True)
class Region:
    """A large byte payload left in the file: where it is and the CRC-32 of its first read."""

    offset: int
    length: int
    crc: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class SparseRead:
    """The file as the first pass saw it, minus its large payloads."""

    buffer: mmap.mmap  # file bytes at their own offsets; region bytes are not kept
    regions: tuple[Region, ...]
    crc: int  # CRC-32 of every byte of the file, regions included, as read in this pass
    size: int


class SourceFile(ClosesOnExit):
    """An open legacy file (never through a symlink): re-reads by offset and identity checks.

    Implements ``ckptd.formats.model.PayloadReader``. The descriptor stays open while payloads may
    be re-read, so a rename over the path cannot swap the file under the writer. Its identity
    check adds the inode's ctime to ``fsio.FileIdentity``: any write (or chmod, link, utime)
    moves it, and unlike mtime an unprivileged writer cannot set it back.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = fsio.open_regular_nofollow(self.path)
        self._fd = self._handle.fileno()
        info = os.fstat(self._fd)
        self.identity = fsio.FileIdentity.of(info)
        self._ctime_ns = info.st_ctime_ns

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def fd(self) -> int:
        if self._handle.closed:
            raise ValueError(f"{self.path} is closed; its payloads can no longer be read")
        return self._fd

    def read_into(self, offset: int, buffer: memoryview) -> None:
        filled = 0
        while filled < buffer.nbytes:
            count = os.preadv(self.fd, [buffer[filled:]], offset + filled)
            if not count:
                raise FileChangedError(
                    f"ends before byte {offset + buffer.nbytes} that it had when first read",
                    path=self.name,
                )
            filled += count

    def copy_into(self, offset: int, length: int, out_fd: int) -> int:
        return os.copy_file_range(self.fd, out_fd, length, offset)

    def same_as_opened(self, info: os.stat_result) -> bool:
        """Whether ``info`` is this file as it was opened (size, mtime, ctime, inode, device)."""
        return (
            stat.S_ISREG(info.st_mode)
            and fsio.FileIdentity.of(info) == self.identity
            and info.st_ctime_ns == self._ctime_ns
        )

    def check_unchanged(self) -> None:
        if not self.same_as_opened(os.fstat(self.fd)):
            raise FileChangedError(
                "changed since it was first read (size, mtime, ctime, inode or device)",
                path=self.name,
            )

    def close(self) -> None:
        self._handle.close()


class _Framer:
    """Walks opcode headers in the bytes read so far and reports large byte payloads.

    It only decides which bytes are kept; it judges nothing. When it meets anything it cannot
    frame (an unknown opcode, a line that is too long, a length past the end) it stops, and
    every later byte is kept, so the parser sees the real bytes where it will fail.
    """

    def __init__(self, buffer: mmap.mmap, size: int, min_deferred: int, max_ops: int) -> None:
        self.buffer = buffer
        self.size = size
        self.min_deferred = min_deferred
        self.pos = 0  # offset of the next opcode to frame
        self.stopped = False
        # Past the file's opcode budget the parser refuses the file anyway: stop framing (and
        # keep the rest) instead of walking millions of opcodes first.
        self.ops_left = max_ops

    def next_payload(self, filled: int) -> tuple[int, int] | None:
        """Frame opcodes below ``filled``; the (offset, length) of the next large payload, if any."""
        while not self.stopped and self.pos < filled:
            self.ops_left -= 1
            if self.ops_left < 0:
                self.stopped = True
                break
            code = self.buffer[self.pos]
            spec = _OPCODES.get(code)
            if spec is None:
                self.stopped = True
                break
            name, kind = spec
            arg_start = self.pos + 1
            fixed = _FIXED.get(kind)
            prefix = _LENGTH_PREFIX.get(kind)
            if fixed is not None:
                self.pos = arg_start + fixed.size
            elif prefix is not None:
                if arg_start + prefix.size > filled:
                    return None  # the length is not read yet
                length = int(prefix.unpack_from(self.buffer, arg_start)[0])
                payload = arg_start + prefix.size
                if length < 0 or payload + length > self.size:
                    self.stopped = True
                    break
                self.pos = payload + length
                if name in _DEFERRABLE and length >= self.min_deferred:
                    return payload, length
            elif kind == "none":
                self.pos = arg_start
            else:
                lines = 2 if kind == "global" else 1
                end = self._lines_end(arg_start, lines, filled)
                if end is None:
                    return None
                if end < 0:
                    self.stopped = True
                    break
                self.pos = end
            if name == "STOP":
                self.stopped = True
        return None

    def _lines_end(self, start: int, lines: int, filled: int) -> int | None:
        """Offset after ``lines`` newline-terminated lines; None: need more bytes; -1: malformed."""
        pos = start
        for _ in range(lines):
            limit = min(self.size, pos + _MAX_LINE)
            newline = self.buffer.find(b"\n", pos, min(limit, filled))
            if newline < 0:
                return None if filled < limit else -1
            pos = newline + 1
        return pos


def _drop_pages(buffer: mmap.mmap, start: int, end: int) -> None:
    """Give back the whole pages of [start, end) that a read put there (payload bytes not kept)."""
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        buffer.madvise(mmap.MADV_DONTNEED, first, last - first)


def scan_source(
    source: SourceFile,
    *,
    max_bytes: int,
    min_deferred: int = DEFAULT_MIN_DEFERRED,
    max_ops: int = DEFAULT_LIMITS.max_opcodes,
) -> SparseRead:
    """Read ``source`` once from the start, CRC-ing everything; keep all but large payloads.

    FormatError for an empty or oversized file; FileChangedError if it changes size while read.
    """
    if min_deferred < 1:
        raise ValueError("min_deferred must be at least 1 byte")
    size = source.identity.size
    if size == 0:
        raise FormatError("empty file, not a stable-baselines checkpoint", path=source.name)
    if size > max_bytes:
        raise FormatError(
            f"{size} bytes is over the {max_bytes}-byte limit for legacy checkpoints",
            path=source.name,
        )
    # Private and anonymous: untouched pages read as zeros without being allocated, and
    # MADV_DONTNEED really frees pages (it would not on a shared mapping).
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(buffer)
    framer = _Framer(buffer, size, min_deferred, max_ops)
    regions: list[Region] = []
    pending: tuple[int, int, int] | None = None  # (offset, length, crc so far) of a region
    whole = 0  # CRC-32 of every byte read, to tie the source's sha256 to them (SourceDigest)
    filled = 0
    fd = source.fd
    try:
        scratch = memoryview(bytearray(min(READ_CHUNK, size)))
        while filled < size:
            if pending is not None:
                # Inside a large payload: CRC it through the scratch buffer only.
                offset, length, crc = pending
                want = min(scratch.nbytes, offset + length - filled)
                count = os.readv(fd, [scratch[:want]])
                if not count:
                    break
                chunk = scratch[:count]
                crc = crc32(chunk, crc)
                whole = crc32(chunk, whole)
                filled += count
                pending = (offset, length, crc)
                if filled == offset + length:
                    regions.append(Region(offset, length, crc))
                    pending = None
                continue
            count = os.readv(fd, [view[filled : min(size, filled + KEPT_CHUNK)]])
            if not count:
                break
            whole = crc32(view[filled : filled + count], whole)
            filled += count
            while (found := framer.next_payload(filled)) is not None:
                offset, length = found
                # The read may have carried the payload's first bytes into the buffer.
                kept_end = min(offset + length, filled)
                crc = crc32(view[offset:kept_end])
                _drop_pages(buffer, offset, kept_end)
                if kept_end == offset + length:
                    regions.append(Region(offset, length, crc))
                else:
                    pending = (offset, length, crc)
                    break
        if filled != size or os.read(fd, 1):
            raise FileChangedError("file changed size while it was being read", path=source.name)
    finally:
        view.release()
    logger.debug(
        "scanned %s: %d bytes, %d payloads (%d bytes) left in the file",
        source.name,
        size,
        len(regions),
        sum(region.length for region in regions),
    )
    return SparseRead(buffer=buffer, regions=tuple(regions), crc=whole, size=size)


class SourceDigest:
    """The source's sha256, from a second read tied to the first pass (docs/architecture.md,
    "The conversion").

    The second read (``SecondRead``, started with the file's opening, or a ``ChildRead`` the CLI
    started before it imported the converter: ``ckptd.fs.digest_child``) hashes bytes other than
    those parsed; as the kernel copy's payloads are tied to the parsed read by their CRC-32, so is
    this digest: its read's CRC-32 over the whole file must equal the first pass's, its stat when
    it opened the file and after its last read must be the file's as first opened, and so must the
    still-open source's now. ``sha256()`` (after the last read of the source: the copy's) joins it
    and checks all that; FileChangedError naming the file if anything differs.
    """

    def __init__(self, second: DigestRead, sparse: SparseRead, source: SourceFile) -> None:
        self._second = second
        self._sparse = sparse
        self._source = source
        self._sha256: str | None = None

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = _tied(self._second.result(), self._sparse, self._source)
        return self._sha256


def _tied(read: ReadDigests, sparse: SparseRead, source: SourceFile) -> str:
    """``read``'s sha256 if it read what the first pass read; else FileChangedError."""
    source.check_unchanged()
    if not (source.same_as_opened(read.opened) and source.same_as_opened(read.finished)):
        raise FileChangedError(
            "changed while it was being converted (size, mtime, ctime, inode or device)",
            path=source.name,
        )
    if (read.size, read.crc) != (sparse.size, sparse.crc):
        raise FileChangedError(
            "changed while it was being converted: a second read to hash it found other bytes "
            f"(CRC-32 {read.crc:08x} of {read.size} bytes, first read {sparse.crc:08x} of "
            f"{sparse.size})",
            path=source.name,
        )
    return read.sha256
