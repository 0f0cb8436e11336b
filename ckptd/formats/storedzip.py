"""A streaming writer for ZIP_STORED archives whose member sizes and CRCs are known before writing.

Why not ``zipfile``: it writes a placeholder local header and seeks back to patch sizes and CRC
(or appends data descriptors when it cannot seek). Both defeat what the SB2 writer needs: a nested
zip (the ``parameters`` npz inside the outer zip) streamed in one pass with O(1) extra memory,
a sha256 of exactly the bytes that reach the disk, and headers that carry real sizes (streaming
readers such as Java's ZipInputStream refuse STORED members with data descriptors). Every CRC is
known up front (one CRC-32 pass over an array in memory, or taken while a file-backed
array's source was first read) and combined arithmetically (``crc32_combine``), so nothing is
buffered and nothing is patched afterwards.

The layout (``layout_stored_zip``) is pure: it returns the archive as a list of ``Piece``s (header
bytes and zero-copy views of the payload) and ``StreamedPiece``s (payloads that stay in a source
file, whose CRC is known from when that file was first read; they are re-read in bounded chunks,
or copied by the kernel and then checked against that CRC in the written file).
``write_pieces``, ``copy_pieces`` and ``compare_file_with_pieces`` are the only functions doing
I/O. Records follow CPython's zipfile byte for byte (versions, attributes, zip64 rules of
``_write_end_record``), except that the local header carries the real CRC and sizes (no data
descriptor).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeAlias

from ckptd.errors import VerifyError
from ckptd.fs.digest import THREADED_MIN_BYTES, BufferRing, Sha256Feed, crc32, crc32_combine
from ckptd.fs.files import write_all
from ckptd.fs.follow import WriteFollower

# zipfile's limits and record formats (CPython Lib/zipfile.py).
ZIP64_LIMIT = (1 << 31) - 1
ZIP_FILECOUNT_LIMIT = (1 << 16) - 1
_DEFAULT_VERSION = 20
_ZIP64_VERSION = 45
_CREATE_SYSTEM_UNIX = 3
_UTF8_FLAG = 0x800
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_CENTRAL_DIR = struct.Struct("<4s4B4HL2L5H2L")
_END_ARCHIVE = struct.Struct("<4s4H2LH")
_END_ARCHIVE64 = struct.Struct("<4sQ2H2L4Q")
_END_ARCHIVE64_LOCATOR = struct.Struct("<4sLQL")
WRITE_CHUNK = 4 * 1024 * 1024  # bounded buffers: a few of these are all the writer holds
# Re-reading: small enough that the compare and the CRC of a chunk find it still in the CPU cache.
VERIFY_CHUNK = 1024 * 1024
DOS_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Piece:
    """A run of bytes to write, with its CRC-32 computed once."""

    data: memoryview  # a flat byte view ("B" format, C-contiguous); large payloads are not copied
    crc: int

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Piece:
        view = as_byte_view(data)
        return cls(view, crc32(view))

    @property
    def size(self) -> int:
        return self.data.nbytes


class StreamedContent(Protocol):
    """Payload bytes read on demand (``ckptd.formats.model.FilePayload`` is one)."""

    @property
    def size(self) -> int: ...

    @property
    def crc(self) -> int: ...

    def chunks(self, buffer: memoryview, *, verify_crc: bool = True) -> Iterator[memoryview]:
        """The bytes in order, read into ``buffer``; raises (e.g. FileChangedError) after the last
        chunk if the source changed or (with ``verify_crc``) the bytes do not have ``crc``."""
        ...

    def copy_to(
        self, out_fd: int, buffer: memoryview, progress: Callable[[int], None] | None = None
    ) -> None:
        """Append the bytes to ``out_fd`` (in the kernel where it can), unchecked by CRC, telling
        ``progress(n)`` as the first n are written; raises after the last byte if the source
        changed."""
        ...


@dataclass(frozen=True)
class StreamedPiece:
    """A run of bytes that is not in memory: written and compared chunk by chunk from its source."""

    content: StreamedContent

    @property
    def crc(self) -> int:
        return self.content.crc

    @property
    def size(self) -> int:
        return self.content.size


AnyPiece: TypeAlias = Piece | StreamedPiece


class _Scratch:
    """One buffer for streamed pieces, allocated on first use and then reused (a fresh buffer
    per piece costs a page fault per 4 KiB)."""

    def __init__(self, size: int = WRITE_CHUNK) -> None:
        self.size = size
        self._buffer: memoryview | None = None

    def get(self) -> memoryview:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(self.size))
        return self._buffer


def _chunks(piece: AnyPiece, scratch: _Scratch, *, verify_crc: bool = True) -> Iterator[memoryview]:
    """A piece's bytes in slices of at most ``scratch.size``."""
    if isinstance(piece, StreamedPiece):
        yield from piece.content.chunks(scratch.get(), verify_crc=verify_crc)
        return
    data = piece.data
    for start in range(0, data.nbytes, scratch.size):
        yield data[start : start + scratch.size]


def as_byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of ``data`` in memory order, without copying."""
    view = memoryview(data)
    if view.nbytes == 0:
        return memoryview(b"")
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.contiguous:
        raise ValueError("a zip payload must be a contiguous buffer")
    if not view.c_contiguous:
        # A Fortran-ordered buffer: its memory is one contiguous block; expose it flat via numpy
        # (imported here so this module stays usable without it).
        import numpy as np

        flat = np.asarray(view).ravel(order="K")
        return memoryview(flat.view(np.uint8).data)
    return view.cast("B")


def combined_crc(pieces: Iterable[AnyPiece]) -> tuple[int, int]:
    """(crc32, size) of the concatenation of ``pieces``."""
    crc = 0
    size = 0
    for piece in pieces:
        crc = crc32_combine(crc, piece.crc, piece.size)
        size += piece.size
    return crc, size


@dataclass(frozen=True)
class MemberSpec:
    """One stored member: its name, content (as pieces) and the header fields SB2/numpy write."""

    name: str
    content: tuple[AnyPiece, ...]
    date_time: tuple[int, int, int, int, int, int] = DOS_EPOCH
    external_attr: int = 0o600 << 16


@dataclass(frozen=True)
class MemberLayout:
    """Where a member landed: offsets are relative to the start of the archive."""

    name: str
    header_offset: int
    data_offset: int
    size: int
    crc: int


@dataclass(frozen=True)
class ZipLayout:
    """A whole archive as pieces to write in order, plus where each member is."""

    pieces: tuple[AnyPiece, ...]
    members: tuple[MemberLayout, ...]

    @property
    def size(self) -> int:
        return sum(piece.size for piece in self.pieces)

    @property
    def crc(self) -> int:
        return combined_crc(self.pieces)[0]


def _dos_date_time(date_time: tuple[int, int, int, int, int, int]) -> tuple[int, int]:
    year, month, day, hour, minute, second = date_time
    if year < 1980:
        raise ValueError("ZIP does not support timestamps before 1980")
    return (year - 1980) << 9 | month << 5 | day, hour << 11 | minute << 5 | second // 2


def _encode_name(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), 0
    except UnicodeEncodeError:
        return name.encode("utf-8"), _UTF8_FLAG


def layout_stored_zip(members: Sequence[MemberSpec]) -> ZipLayout:
    """Lay out a ZIP_STORED archive (pure: no I/O, no copies of member content)."""
    pieces: list[AnyPiece] = []
    placed: list[tuple[MemberLayout, MemberSpec, bytes, int, int]] = []
    offset = 0
    seen: set[str] = set()
    for spec in members:
        if spec.name in seen:
            raise ValueError(f"duplicate zip member name {spec.name!r}")
        seen.add(spec.name)
        name_bytes, flags = _encode_name(spec.name)
        crc, size = combined_crc(spec.content)
        dosdate, dostime = _dos_date_time(spec.date_time)
        # Local header: zip64 only when the size needs it (as Python 3.7's numpy/zipfile wrote).
        extra = b""
        header_size_field = size
        version = _DEFAULT_VERSION
        if size > ZIP64_LIMIT:
            extra = struct.pack("<HHQQ", 1, 16, size, size)
            header_size_field = 0xFFFFFFFF
            version = _ZIP64_VERSION
        header = _LOCAL_HEADER.pack(
            b"PK\x03\x04",
            version,
            0,
            flags,
            0,  # ZIP_STORED
            dostime,
            dosdate,
            crc,
            header_size_field,
            header_size_field,
            len(name_bytes),
            len(extra),
        )
        header_piece = Piece.of(header + name_bytes + extra)
        layout = MemberLayout(
            name=spec.name,
            header_offset=offset,
            data_offset=offset + header_piece.size,
            size=size,
            crc=crc,
        )
        placed.append((layout, spec, name_bytes, flags, version))
        pieces.append(header_piece)
        pieces.extend(spec.content)
        offset = layout.data_offset + size

    central_start = offset
    central = bytearray()
    for layout, spec, name_bytes, flags, local_version in placed:
        zip64_fields: list[int] = []
        size_field = layout.size
        if layout.size > ZIP64_LIMIT:
            zip64_fields += [layout.size, layout.size]
            size_field = 0xFFFFFFFF
        offset_field = layout.header_offset
        if layout.header_offset > ZIP64_LIMIT:
            zip64_fields.append(layout.header_offset)
            offset_field = 0xFFFFFFFF
        extra = b""
        version = local_version
        if zip64_fields:
            extra = struct.pack(f"<HH{len(zip64_fields)}Q", 1, 8 * len(zip64_fields), *zip64_fields)
            version = _ZIP64_VERSION
        dosdate, dostime = _dos_date_time(spec.date_time)
        central += _CENTRAL_DIR.pack(
            b"PK\x01\x02",
            version,
            _CREATE_SYSTEM_UNIX,
            version,
            0,
            flags,
            0,
            dostime,
            dosdate,
            layout.crc,
            size_field,
            size_field,
            len(name_bytes),
            len(extra),
            0,  # comment length
            0,  # disk number start
            0,  # internal attributes
            spec.external_attr,
            offset_field,
        )
        central += name_bytes + extra
    count = len(placed)
    central_size = len(central)
    end_offset = central_start + central_size
    if count > ZIP_FILECOUNT_LIMIT or central_start > ZIP64_LIMIT or central_size > ZIP64_LIMIT:
        central += _END_ARCHIVE64.pack(
            b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, central_size, central_start
        )
        central += _END_ARCHIVE64_LOCATOR.pack(b"PK\x06\x07", 0, end_offset, 1)
    central += _END_ARCHIVE.pack(
        b"PK\x05\x06",
        0,
        0,
        min(count, 0xFFFF),
        min(count, 0xFFFF),
        min(central_size, 0xFFFFFFFF),
        min(central_start, 0xFFFFFFFF),
        0,
    )
    pieces.append(Piece.of(bytes(central)))
    return ZipLayout(tuple(pieces), tuple(layout for layout, *_ in placed))


@dataclass(frozen=True)
class WriteResult:
    """How many bytes were written and their sha256."""

    size: int
    sha256: str


def write_pieces(handle: BinaryIO, pieces: Iterable[AnyPiece]) -> WriteResult:
    """Write ``pieces`` in order, in bounded slices, hashing exactly what is written.

    A streamed piece's source raises after its last chunk if the bytes were not those whose CRC
    the layout carries (e.g. FileChangedError), so a wrong zip never completes without an error.
    """
    digest = hashlib.sha256()
    written = 0
    scratch = _Scratch()
    for piece in pieces:
        for chunk in _chunks(piece, scratch):
            digest.update(chunk)
            _write_all(handle, chunk)
            written += chunk.nbytes
    return WriteResult(written, digest.hexdigest())


def _write_all(handle: BinaryIO, chunk: memoryview) -> None:
    # Raw (unbuffered) files may write less than asked; buffered ones write all or raise.
    remaining = chunk
    while remaining.nbytes:
        count = handle.write(remaining)
        if not count:  # a non-blocking raw stream that could not take anything
            raise BlockingIOError("output stream accepted no bytes")
        remaining = remaining[count:]


def copy_pieces(
    handle: BinaryIO,
    pieces: Iterable[AnyPiece],
    written: Callable[[int], None] | None = None,
) -> int:
    """Write ``pieces`` in order, neither hashed nor CRC-checked; the number of bytes written.

    Only for a writer that then checks the file with ``compare_file_with_pieces``, which hashes
    the bytes as they are on disk and checks every streamed piece's CRC there (each checksum
    computed once). Streamed pieces go from
    their source file to ``handle``'s file inside the kernel where it can (``copy_to``); the
    handle's own buffer is flushed first and not used. ``written(n)`` is told, as the copy
    goes, that the first n bytes are in the file (``ckptd.fs.follow.WriteFollower.advance``: the re-read may
    follow the copy instead of waiting for its end).
    """
    handle.flush()
    fd = handle.fileno()
    total = 0
    scratch = _Scratch()
    for piece in pieces:
        if isinstance(piece, StreamedPiece):
            progress = None if written is None else _offset_by(written, total)
            piece.content.copy_to(fd, scratch.get(), progress)
        else:
            write_all(fd, piece.data)
        total += piece.size
        if written is not None:
            written(total)
    return total


def _offset_by(written: Callable[[int], None], base: int) -> Callable[[int], None]:
    """``written`` for counts that start at ``base`` bytes into the file."""

    def progress(count: int) -> None:
        written(base + count)

    return progress


def compare_file_with_pieces(
    path: Path, pieces: Sequence[AnyPiece], follow: WriteFollower | None = None
) -> WriteResult:
    """Re-read ``path`` once and require it to be exactly ``pieces`` laid end to end; its size and
    sha256.

    This is how a freshly written zip is verified before it is renamed into place. Every header
    and every in-memory piece must be byte-identical on disk to the layout (which is tested against
    zipfile, numpy and stable-baselines' own loaders); the bytes of each streamed piece (an array
    left in the source file and copied by the kernel) must have the CRC-32 its source had when it
    was first read and hashed: the CRC the layout's headers carry, which is what any zip reader
    checks. The source is not read again (``copy_to`` already checked its identity after copying),
    except to tell why a streamed piece failed: if the source's own bytes no longer have that CRC
    it changed (FileChangedError), else the written bytes are wrong (VerifyError).

    One pass over the file: the sha256 of the bytes read back is computed in a helper thread while
    this thread reads the next chunk, compares headers and takes the CRC-32 of payloads
    (``ckptd.fs.digest``; both release the GIL). With ``follow``, the file is still being
    written by another thread: each chunk is read once the writer is past it, and the file's
    end is checked once the writer is done (its error, if any, is raised here).
    """
    scratch = _Scratch(VERIFY_CHUNK)
    offset = 0
    with (
        open(path, "rb", buffering=0) as handle,
        # Sized by the layout: a file still being written (``follow``) is short when opened.
        Sha256Feed(threaded=sum(piece.size for piece in pieces) >= THREADED_MIN_BYTES) as hasher,
    ):
        ring = BufferRing(hasher, VERIFY_CHUNK)

        def read_next(count: int) -> tuple[bytearray, memoryview]:
            """The next ``count`` bytes of the file (at the start of a ring buffer, and a view of
            them), handed to the hasher; valid until the ring comes round to that buffer again."""
            slot, full = ring.take()
            view = memoryview(full)[:count]
            if follow is not None:
                follow.wait_for(offset + count)
            got = _read_into(handle, view)
            if got != count:
                raise VerifyError(f"written file ends early at byte {offset + got}", path=str(path))
            ring.handed(slot, hasher.feed(view))
            return full, view

        for piece in pieces:
            if isinstance(piece, StreamedPiece):
                start = offset
                crc = 0
                while offset < start + piece.size:
                    _, view = read_next(min(VERIFY_CHUNK, start + piece.size - offset))
                    crc = crc32(view, crc)
                    offset += view.nbytes
                if crc != piece.crc:
                    _explain_streamed_mismatch(piece, scratch, path, start)
                continue
            for expected in _chunks(piece, scratch):
                full, view = read_next(expected.nbytes)
                # A memcmp of the first expected.nbytes bytes (memoryview == memoryview would
                # compare item by item, and slicing ``full`` would copy).
                if full.startswith(expected):
                    offset += view.nbytes
                    continue
                raise VerifyError(
                    f"written bytes differ from the layout near byte {offset}", path=str(path)
                )
        if follow is not None:
            follow.wait_done()
        if handle.read(1):
            raise VerifyError(
                f"written file is longer than its layout ({offset} bytes)", path=str(path)
            )
        return WriteResult(offset, hasher.hexdigest())


def _explain_streamed_mismatch(
    piece: StreamedPiece, scratch: _Scratch, path: Path, offset: int
) -> None:
    """A streamed piece on disk lacks its first-read CRC: FileChangedError if its source no longer
    has it either (the source changed under the copy), else VerifyError (the write went wrong)."""
    for _ in piece.content.chunks(scratch.get()):  # raises after the last chunk if the CRC differs
        pass
    raise VerifyError(
        f"written bytes of the payload at byte {offset} ({piece.size} bytes) differ from the "
        "source's as first read (CRC-32)",
        path=str(path),
    )


def _read_into(handle: io.RawIOBase, view: memoryview) -> int:
    filled = 0
    while filled < view.nbytes:
        count = handle.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled
