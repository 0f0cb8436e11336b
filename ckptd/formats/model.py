"""The format model: what a stable-baselines checkpoint holds, as inert values (no code, no I/O).

The safe legacy reader produces these from a pickle without executing it; the SB2 zip writer
turns them into ``data`` / ``parameters`` / ``parameter_list``; inspect and the manifest report them.

A parameter is either resident (``ParamArray``: its bytes are in memory) or file-backed
(``FileParamArray``: its bytes stay in the source file and are re-read in bounded chunks, each
re-read checked against the CRC-32 taken when the file was first read). They are distinct types on
purpose: a file-backed parameter has no ``raw`` that could silently stand for bytes never read.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias

from ckptd.errors import FileChangedError
from ckptd.fs.digest import crc32
from ckptd.fs.files import write_all

if TYPE_CHECKING:
    import numpy as np

# copy_file_range's ways of saying "not here": fall back to reading and writing.
_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}
)
# A copy that a reader follows reports its progress this often: the reader's next chunk is never
# far behind (VERIFY_CHUNK is 1 MiB), and 50 calls per 200 MiB cost nothing.
COPY_STEP = 4 * 1024 * 1024

# A value SB2's data_to_json stores as plain JSON: None, bool, int, float (incl. nan/inf), str,
# and lists / str-keyed dicts of these (tuples already turned into lists, as json.dumps would).
JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None


@dataclass(frozen=True)
class OpaqueValue:
    """A ``data`` entry SB2 stores as ``{":type:": ..., ":serialized:": base64(pickle), **extras}``.

    ``pickled`` is a fresh pickle (protocol <= 4, module names that resolve on numpy 1.x and 2.x)
    re-emitted from the inert object graph, never bytes copied from the input.
    """

    type_name: str  # what str(type(value)) gives, e.g. "<class 'gym.spaces.box.Box'>"
    pickled: bytes
    extras: Mapping[str, JsonValue] = field(default_factory=dict)  # SB2's first-level attributes
    globals: tuple[str, ...] = ()  # "module.qualname" of every global the pickle references
    carries_code: bool = False  # holds a function/code object (a schedule lambda, a closure)


DataValue: TypeAlias = JsonValue | OpaqueValue


@dataclass(frozen=True)
class ParamArray:
    """One parameter array, kept as its raw bytes (a view into the source, not a copy)."""

    name: str  # TF variable name, e.g. "model/pi_fc0/w:0"
    descr: str  # numpy dtype descr with byte order, e.g. "<f4"
    shape: tuple[int, ...]
    fortran_order: bool
    raw: memoryview  # exactly prod(shape) * itemsize bytes, in the stored memory order

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def as_array(self) -> np.ndarray:
        """A zero-copy, read-only ndarray over ``raw``."""
        import numpy as np

        flat = np.frombuffer(self.raw, dtype=np.dtype(self.descr))
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")


class PayloadReader(Protocol):
    """Re-reads byte ranges of a source file that was already read (and hashed) once."""

    @property
    def name(self) -> str:
        """The source's path, for error messages."""
        ...

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the bytes at ``offset``; FileChangedError if the file is shorter."""
        ...

    def check_unchanged(self) -> None:
        """FileChangedError unless the file's identity (size, mtime, inode...) is as first read."""
        ...

    def copy_into(self, offset: int, length: int, out_fd: int) -> int:
        """Copy up to ``length`` bytes at ``offset`` to ``out_fd`` (at its position) inside the
        kernel; the count copied, 0 at the end of the file. OSError where the kernel or the file
        systems cannot (``FilePayload.copy_to`` then reads and writes)."""
        ...


@dataclass(frozen=True)
class FilePayload:
    """A run of inert payload bytes left in the source file, with the CRC-32 of its first read."""

    reader: PayloadReader
    offset: int
    length: int
    crc: int  # CRC-32 of these bytes as they were read (and hashed) in the first pass

    @property
    def size(self) -> int:
        return self.length

    @property
    def source(self) -> str:
        return self.reader.name

    def chunks(self, buffer: memoryview, *, verify_crc: bool = True) -> Iterator[memoryview]:
        """The bytes in order, read into ``buffer`` (each chunk is valid until the next one).

        After the last chunk the file must still have its first identity and, with
        ``verify_crc``, the re-read bytes the first read's CRC-32; else FileChangedError. A
        consumer that reads to the end never gets bytes other than those that were hashed
        (``verify_crc=False`` is for a consumer that compares them with bytes already verified).
        """
        if buffer.nbytes == 0 and self.length:
            raise ValueError("an empty buffer cannot carry any bytes")
        crc = 0
        done = 0
        while done < self.length:
            count = min(buffer.nbytes, self.length - done)
            chunk = buffer[:count]
            self.reader.read_into(self.offset + done, chunk)
            if verify_crc:
                crc = crc32(chunk, crc)
            done += count
            yield chunk
        if verify_crc and crc != self.crc:
            raise FileChangedError(
                f"bytes at offset {self.offset} changed since the file was first read",
                path=self.source,
            )
        self.reader.check_unchanged()

    def copy_to(
        self,
        out_fd: int,
        buffer: memoryview,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Append the bytes to ``out_fd``: a kernel-side copy (``copy_file_range``: no pass
        through this process, on ext4 about 4x faster than reading and writing), or through
        ``buffer`` where the kernel cannot. No CRC here: for a writer that then re-reads its
        output and checks these bytes there against ``crc``
        (``ckptd.formats.storedzip.compare_file_with_pieces``).
        With ``progress``, the copy goes in steps of at most ``COPY_STEP`` bytes and
        ``progress(n)`` is told after each that the first n bytes are written (a reader may
        follow the copy). The file's identity is checked after the last byte; FileChangedError
        if it is shorter.
        """
        done = 0
        in_kernel = True
        while done < self.length:
            want = self.length - done
            if progress is not None:
                want = min(want, COPY_STEP)
            if in_kernel:
                try:
                    count = self.reader.copy_into(self.offset + done, want, out_fd)
                except OSError as err:
                    if err.errno not in _NO_KERNEL_COPY:
                        raise
                    in_kernel = False  # e.g. across file systems on an older kernel
                    continue
                if not count:
                    raise FileChangedError(
                        f"ends before byte {self.offset + self.length} that it had when first read",
                        path=self.source,
                    )
            else:
                count = min(buffer.nbytes, want)
                self.reader.read_into(self.offset + done, buffer[:count])
                write_all(out_fd, buffer[:count])
            done += count
            if progress is not None:
                progress(done)
        self.reader.check_unchanged()


@dataclass(frozen=True)
class FileParamArray:
    """One parameter array whose bytes are still in the source file (see ``FilePayload``)."""

    name: str
    descr: str
    shape: tuple[int, ...]
    fortran_order: bool
    payload: FilePayload  # exactly prod(shape) * itemsize bytes, in the stored memory order

    @property
    def nbytes(self) -> int:
        return self.payload.length

    def as_array(self) -> np.ndarray:
        """Read the bytes (checked as ``FilePayload.chunks`` does) into a new read-only ndarray."""
        import numpy as np

        data = bytearray(self.payload.length)
        for _ in self.payload.chunks(memoryview(data)):
            pass  # one chunk, read straight into ``data``
        flat = np.frombuffer(data, dtype=np.dtype(self.descr))
        flat.flags.writeable = False  # like ParamArray.as_array: a value, not a scratch buffer
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")


# What a checkpoint's parameters are: resident, or file-backed and streamed by the writer.
Param: TypeAlias = ParamArray | FileParamArray


@dataclass(frozen=True)
class LegacyCheckpoint:
    """A legacy ``(data, params)`` pickle, read statically."""

    protocol: int
    data: Mapping[str, DataValue]  # insertion order = SB2's save() literal order
    params: tuple[Param, ...]  # order = get_parameter_list() order
    params_were_list: bool = False  # SB2 <= 2.5.1 saved a list without names
    globals: tuple[str, ...] = ()  # every global referenced anywhere in the file, sorted
    notes: tuple[str, ...] = ()  # what reading it changed that a reader should know (one line each)

    @property
    def carries_code(self) -> tuple[str, ...]:
        """The ``data`` keys whose values hold code (schedules, lambdas)."""
        return tuple(
            key
            for key, value in self.data.items()
            if isinstance(value, OpaqueValue) and value.carries_code
        )

    @property
    def params_bytes(self) -> int:
        return sum(param.nbytes for param in self.params)
