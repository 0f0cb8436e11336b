"""Reading zips defensively: declared sizes checked before any read, members streamed for CRCs.

CPython's zipfile trusts the central directory: it will happily start reading a member that claims
4 GiB in a 1 KiB file, or members that overlap (zip bombs), and only the CRC at the very end says
something was wrong (docs/formats.md, "Pitfalls the reader handles"). ``check_structure`` compares
every declared size and offset with the file before a single member byte is read; ``stream_crc``
then reads members in bounded chunks and lets zipfile's CRC check fire.
"""

from __future__ import annotations

import io
import itertools
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

CHUNK = 4 * 1024 * 1024
MAX_RATIO = 1000  # SB2/SB3 members are stored; a larger ratio is a bomb, not a checkpoint
MAX_TOTAL_UNCOMPRESSED = 1 << 40  # 1 TiB: more than any checkpoint ckptd is meant to manage
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_SUPPORTED_COMPRESSION = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
# What zipfile and zlib raise on damaged archives (OSError covers truncation of the file itself).
ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    ValueError,
    struct.error,
)


@dataclass(frozen=True)
class MemberInfo:
    """One member as the central and local headers describe it."""

    name: str
    size: int  # uncompressed, as declared
    compressed_size: int
    compress_type: int
    crc: int
    header_offset: int
    data_offset: int  # first byte of the member's data (after its local header)
    external_attr: int
    date_time: tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Structure:
    """Members whose declarations are sound, and one-line problems for the rest."""

    members: tuple[MemberInfo, ...]  # every member, in central-directory order
    sound: frozenset[str]  # names whose declared extent fits the file and can be read
    problems: tuple[str, ...]


def foreign_directory_problem(archive: zipfile.ZipFile) -> str | None:
    """A problem when the central directory zipfile found does not describe this file from byte 0.

    zipfile looks for the end-of-central-directory record in the last 64 KiB. When a checkpoint zip
    loses its tail, the last record left is often the one of the *stored npz inside it*, and
    zipfile then reads the npz as if it were the file (with the bytes before it as a "prefix").
    A checkpoint zip always starts with its first member, so such a prefix means truncation.
    """
    offsets = [info.header_offset for info in archive.infolist()]
    if offsets and min(offsets) > 0:
        return (
            f"the only central directory found describes an archive starting at byte {min(offsets)}"
            " (an embedded npz?): the file's own end is missing (truncated)"
        )
    return None


def check_structure(archive: zipfile.ZipFile, handle: BinaryIO, file_size: int) -> Structure:
    """Check every declared size/offset against the file, without reading member data."""
    problems: list[str] = []
    members: list[MemberInfo] = []
    sound: set[str] = set()
    # zipfile records where the central directory starts; member data must end before it.
    data_limit = min(int(getattr(archive, "start_dir", file_size)), file_size)
    seen: set[str] = set()
    total = 0
    extents: list[tuple[int, int, str]] = []
    for info in archive.infolist():
        name = info.filename
        member_problems: list[str] = []
        if name in seen:
            member_problems.append(f"{name}: duplicate member name")
        seen.add(name)
        data_offset = _local_data_offset(handle, info, file_size, member_problems)
        end = data_offset + info.compress_size
        if data_offset >= 0 and end > data_limit:
            member_problems.append(
                f"{name}: declares {info.compress_size} bytes at offset {data_offset}, but the file"
                f" holds only {max(0, data_limit - data_offset)} there"
            )
        if info.flag_bits & 0x1:
            member_problems.append(f"{name}: encrypted")
        if info.compress_type not in _SUPPORTED_COMPRESSION:
            member_problems.append(f"{name}: unsupported compression method {info.compress_type}")
        elif info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            member_problems.append(
                f"{name}: stored member declares {info.file_size} bytes but occupies "
                f"{info.compress_size}"
            )
        elif info.file_size > MAX_RATIO * max(info.compress_size, 1):
            member_problems.append(
                f"{name}: compression ratio {info.file_size // max(info.compress_size, 1)}:1 exceeds"
                f" {MAX_RATIO}:1"
            )
        total += info.file_size
        members.append(
            MemberInfo(
                name=name,
                size=info.file_size,
                compressed_size=info.compress_size,
                compress_type=info.compress_type,
                crc=info.CRC,
                header_offset=info.header_offset,
                data_offset=data_offset,
                external_attr=info.external_attr,
                date_time=info.date_time,
            )
        )
        if not member_problems:
            sound.add(name)
            extents.append((info.header_offset, end, name))
        problems.extend(member_problems)
    extents.sort()
    for (_, end, name), (next_start, _, next_name) in itertools.pairwise(extents):
        if end > next_start:
            problems.append(f"{name}: overlaps member {next_name}")
            sound.discard(name)
            sound.discard(next_name)
    if total > MAX_TOTAL_UNCOMPRESSED:
        problems.append(
            f"archive declares {total} uncompressed bytes, over the {MAX_TOTAL_UNCOMPRESSED} cap"
        )
        sound.clear()
    return Structure(tuple(members), frozenset(sound), tuple(problems))


def _local_data_offset(
    handle: BinaryIO, info: zipfile.ZipInfo, file_size: int, problems: list[str]
) -> int:
    """Where the member's data starts, read from its local header; -1 (and a problem) if unreadable."""
    if info.header_offset + _LOCAL_HEADER.size > file_size:
        problems.append(
            f"{info.filename}: local header offset {info.header_offset} is past the end"
        )
        return -1
    handle.seek(info.header_offset)
    raw = handle.read(_LOCAL_HEADER.size)
    fields = _LOCAL_HEADER.unpack(raw) if len(raw) == _LOCAL_HEADER.size else (b"",)
    if fields[0] != b"PK\x03\x04":
        problems.append(f"{info.filename}: no local header at offset {info.header_offset}")
        return -1
    name_len: int = fields[10]
    extra_len: int = fields[11]
    local_name = handle.read(name_len)
    central_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    if local_name != central_name:
        problems.append(f"{info.filename}: local header names {local_name!r}")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def stream_crc(archive: zipfile.ZipFile, name: str) -> str | None:
    """Read a member in bounded chunks; zipfile checks the CRC at its end. A problem, or None."""
    try:
        with archive.open(name) as member:
            while member.read(CHUNK):
                pass
    except ZIP_READ_ERRORS as err:
        return f"{name}: {err}"
    return None


def read_small_member(archive: zipfile.ZipFile, member: MemberInfo, limit: int) -> bytes:
    """A member's bytes, refusing members larger than ``limit`` (ValueError)."""
    if member.size > limit:
        raise ValueError(f"{member.size} bytes is over the {limit}-byte limit for this member")
    with archive.open(member.name) as stream:
        data = stream.read(limit + 1)
    if len(data) != member.size:
        raise ValueError(f"read {len(data)} bytes, header declares {member.size}")
    return data


class Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``handle`` starting at ``start``.

    Lets zipfile open a stored member (the ``parameters`` npz) as a zip in place, with real
    seeks into the outer file instead of re-reading the member from its start on every seek.
    """

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        super().__init__()
        self._handle = handle
        self._start = start
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the member")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(view.nbytes, self._length - self._pos))
        if count == 0:
            return 0
        self._handle.seek(self._start + self._pos)
        data = self._handle.read(count)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_window(handle: BinaryIO, member: MemberInfo) -> io.BufferedReader:
    """A buffered, seekable reader over a stored member's bytes in ``handle``."""
    return io.BufferedReader(Window(handle, member.data_offset, member.compressed_size), CHUNK)
