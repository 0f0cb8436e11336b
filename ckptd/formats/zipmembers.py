"""An open zip's members, read once for the passes that share the archive.

``ckptd.formats.onepass`` identifies a zip, judges its pickles and verifies it with one open, one
read of the file and one parse of its central directory. The passes read some members more than
once (the verdict and the verification both read SB3's ``data``; both read each ``*.pth``, one to
judge its pickle, the other for its CRC): :class:`SharedMembers` reads each such member once. When
the whole file is in memory (:class:`FileImage`), a stored member's CRC-32 is taken straight from
the file's bytes and a stored ``*.pth`` is judged from them (:class:`MemberImage`) instead of
through zipfile's member reader; every answer is the one zipfile would give, and wherever the
bytes in memory could tell a different story (a CRC that does not match, a member zipfile would
find elsewhere) the member is read through zipfile exactly as before, for its exact error.
"""

from __future__ import annotations

import errno
import io
import zipfile
import zlib

from ckptd.formats.zipread import ZIP_READ_ERRORS, MemberInfo, read_small_member, stream_crc

_WHENCE_TEXT = "whence must be os.SEEK_SET (0), os.SEEK_CUR (1), or os.SEEK_END (2)"


class FileImage(io.BytesIO):
    """A whole file's bytes that seek like the file: a position before its start is
    ``OSError(EINVAL)``, as ``lseek`` answers, where BytesIO would clamp it to 0 or raise
    ValueError. zipfile and ``check_structure`` then take the same turns, with the same messages,
    on the image as on the file."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)  # shares ``data`` until written to (never)
        self.data = data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence == io.SEEK_END:
            offset += len(self.data)
        elif whence != io.SEEK_SET:
            return super().seek(offset, whence)  # its ValueError, as a file's
        if offset < 0:
            raise OSError(errno.EINVAL, "Invalid argument")
        return super().seek(offset)


class MemberImage(io.BytesIO):
    """A stored member's bytes that read and seek like zipfile's ``ZipExtFile`` of that member:
    positions are clamped to the member (CPython's ``ZipExtFile.seek``), so a zip parsed from it
    (a ``*.pth``, torch's zip inside SB3's) is read as from zipfile's own member reader."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name
        self._size = len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence == io.SEEK_END:
            offset += self._size
        elif whence != io.SEEK_SET:
            raise ValueError(_WHENCE_TEXT)
        return super().seek(min(max(offset, 0), self._size))


class SharedMembers:
    """Reads of one open archive's members shared by the passes over it.

    ``image`` is the whole file when it was read into memory (the archive parsed from a
    :class:`FileImage` of it), else None: then every read goes through zipfile, once per member.
    """

    def __init__(self, archive: zipfile.ZipFile, image: bytes | None = None) -> None:
        self.archive = archive
        self._image = memoryview(image) if image is not None else None
        self._small: dict[str, bytes] = {}
        self._crc: dict[str, str | None] = {}

    def read_small(self, member: MemberInfo, limit: int) -> bytes:
        """``read_small_member(archive, member, limit)``: the same bytes or the same error."""
        if member.size > limit:
            return read_small_member(self.archive, member, limit)  # raises, before any read
        data = self._small.get(member.name)
        if data is None:
            stored = self._stored_bytes(member)
            if stored is None:
                data = read_small_member(self.archive, member, limit)
                self._small[member.name] = data
                return data
            data = self._small[member.name] = stored
        # What a read of up to limit + 1 bytes of that member gives, checked as that read is.
        data = data[: limit + 1]
        if len(data) != member.size:
            raise ValueError(f"read {len(data)} bytes, header declares {member.size}")
        return data

    def crc_problem(self, member: MemberInfo) -> str | None:
        """``stream_crc(archive, member.name)``: None when the member's CRC-32 checks out, else the
        same one-line problem. ``member`` is its entry from ``check_structure``."""
        name = member.name
        if name not in self._crc:
            if self._fast(member) is None:
                self._crc[name] = stream_crc(self.archive, name)
            else:
                self._crc[name] = self._image_crc(member)
        return self._crc[name]

    def judging_stream(self, member: MemberInfo) -> io.BytesIO | None:
        """The stored member's bytes to parse, as zipfile's reader would give them, when they are
        in memory and their CRC-32 checks out; None when the caller must open it through zipfile
        (whose reader then says what is wrong with it)."""
        stored = self._stored_bytes(member)
        return None if stored is None else MemberImage(stored, member.name)

    def _stored_bytes(self, member: MemberInfo) -> bytes | None:
        span = self._fast(member)
        if span is None or self.crc_problem(member) is not None:
            return None
        assert self._image is not None  # _fast found a span in it
        return bytes(self._image[span[0] : span[1]])

    def _fast(self, member: MemberInfo) -> tuple[int, int] | None:
        """Where a stored member's bytes lie in the image, when zipfile would read exactly those
        for ``member.name`` (its central entry is this member's, the sizes agree, it fits the
        file); None when zipfile must read it."""
        if self._image is None or member.data_offset < 0:
            return None
        try:
            info = self.archive.getinfo(member.name)
        except KeyError:
            return None
        end = member.data_offset + member.size
        if (
            info.header_offset != member.header_offset
            or info.compress_type != zipfile.ZIP_STORED
            or member.compress_type != zipfile.ZIP_STORED
            or info.file_size != info.compress_size
            or info.file_size != member.size
            or member.crc != info.CRC
            or end > len(self._image)
        ):
            return None
        return member.data_offset, end

    def _image_crc(self, member: MemberInfo) -> str | None:
        # zipfile's open checks the local header (magic, name, flags, overlaps): same errors.
        try:
            with self.archive.open(member.name):
                pass
        except ZIP_READ_ERRORS as err:
            return f"{member.name}: {err}"
        span = self._fast(member)
        assert span is not None and self._image is not None
        if zlib.crc32(self._image[span[0] : span[1]]) == member.crc:
            return None
        return stream_crc(self.archive, member.name)  # zipfile's own words for the mismatch
