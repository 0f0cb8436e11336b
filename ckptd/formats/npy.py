"""The ``.npy`` header, parsed and built statically (no ``np.load``, no pickle, no ``eval``).

Building reproduces numpy's ``write_array_header_1_0`` byte for byte (sorted keys, the spare
"growth axis" spaces numpy >= 1.23 adds, padding to a 64-byte boundary), falling back to v2.0/v3.0
exactly as ``np.lib.format`` does. Parsing accepts v1.0/v2.0/v3.0, checks the header is a plain dict
literal of the three expected keys before evaluating anything, and refuses object, structured and
sub-array dtypes (those are what makes ``np.load`` unpickle or reinterpret data).
"""

from __future__ import annotations

import ast
import math
import re
import struct
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, BinaryIO

from ckptd.errors import FormatError
from ckptd.limits import shape_problem

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"\x93NUMPY"
ARRAY_ALIGN = 64
GROWTH_AXIS_MAX_DIGITS = 21  # numpy's spare room so the header can grow in place
MAX_HEADER_SIZE = 10_000  # numpy's own default cap (np.lib.format._MAX_HEADER_SIZE)
_PREFIX_SIZE = {(1, 0): 2, (2, 0): 4, (3, 0): 4}
_ENCODING = {(1, 0): "latin1", (2, 0): "latin1", (3, 0): "utf8"}
_DESCR_SHAPE = re.compile(r"[<>|=]?[A-Za-z]+[0-9]*(\[[A-Za-z0-9]+\])?")
_KEYS = ("descr", "fortran_order", "shape")
_LONG_NUMBER = re.compile(r"[0-9]{20,}")


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says about the array that follows it."""

    version: tuple[int, int]
    descr: str
    fortran_order: bool
    shape: tuple[int, ...]
    header_size: int  # bytes from the magic to the first data byte
    itemsize: int

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def data_size(self) -> int:
        """Bytes of array data the header promises."""
        return self.count * self.itemsize


def checked_dtype(descr: str, *, source: str | None = None) -> np.dtype[np.generic]:
    """The numpy dtype for a simple descr string; refuses object, structured and sub-array dtypes."""
    import numpy as np

    if not isinstance(descr, str) or not _DESCR_SHAPE.fullmatch(descr):
        raise FormatError(f"unsupported npy dtype descr {descr!r}", path=source)
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError) as err:
        raise FormatError(f"invalid npy dtype descr {descr!r}: {err}", path=source) from err
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise FormatError(f"refusing npy dtype {descr!r} (object or structured)", path=source)
    return dtype


def header_text(descr: str, fortran_order: bool, shape: tuple[int, ...]) -> str:
    """The header dict exactly as numpy's ``_write_array_header`` renders it (before padding)."""
    shape = tuple(int(dim) for dim in shape)  # repr of numpy ints would differ
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran_order!r}, 'shape': {shape!r}, }}"
    if shape:
        growth_dim = shape[-1 if fortran_order else 0]
        text += " " * max(0, GROWTH_AXIS_MAX_DIGITS - len(repr(growth_dim)))
    return text


def _wrap(text: str, version: tuple[int, int]) -> bytes:
    encoded = text.encode(_ENCODING[version])
    fmt = "<H" if _PREFIX_SIZE[version] == 2 else "<I"
    body_len = len(encoded) + 1  # the final newline
    pad = ARRAY_ALIGN - ((len(MAGIC) + 2 + struct.calcsize(fmt) + body_len) % ARRAY_ALIGN)
    prefix = MAGIC + bytes(version) + struct.pack(fmt, body_len + pad)  # struct.error if too big
    return prefix + encoded + b" " * pad + b"\n"


def npy_header_bytes(descr: str, fortran_order: bool, shape: tuple[int, ...]) -> bytes:
    """The complete header numpy writes for such an array (v1.0 unless it does not fit)."""
    normalized = checked_dtype(descr).str  # numpy writes dtype.str, e.g. '=f4' -> '<f4'
    text = header_text(normalized, fortran_order, shape)
    try:
        return _wrap(text, (1, 0))
    except struct.error:
        pass
    try:
        return _wrap(text, (2, 0))
    except UnicodeEncodeError:
        return _wrap(text, (3, 0))


def write_npy_header(
    handle: BinaryIO, descr: str, fortran_order: bool, shape: tuple[int, ...]
) -> int:
    """Write numpy's header for such an array to ``handle``; returns the bytes written."""
    header = npy_header_bytes(descr, fortran_order, shape)
    handle.write(header)
    return len(header)


def _literal_header(text: str, source: str | None) -> tuple[str, bool, tuple[int, ...]]:
    """Check the header is ``{'descr': str, 'fortran_order': bool, 'shape': (int, ...)}`` and read it."""
    # No array extent has more than 19 digits (numpy's index type); a longer number is refused
    # here, before Python's own (process-wide, changeable) digit limit is involved.
    long_number = _LONG_NUMBER.search(text)
    if long_number:
        raise FormatError(f"npy header holds a number of {len(long_number[0])} digits", path=source)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise FormatError(f"npy header is not a dict literal: {err}", path=source) from err
    body = tree.body
    if not isinstance(body, ast.Dict) or len(body.keys) != len(_KEYS):
        raise FormatError("npy header is not a dict of descr, fortran_order, shape", path=source)
    fields: dict[str, ast.expr] = {}
    for key, value in zip(body.keys, body.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise FormatError("npy header has a non-string key", path=source)
        fields[key.value] = value
    if sorted(fields) != list(_KEYS):
        raise FormatError(
            f"npy header keys are {sorted(fields)}, expected {list(_KEYS)}", path=source
        )
    descr_node, order_node, shape_node = (fields[key] for key in _KEYS)
    if not (isinstance(descr_node, ast.Constant) and isinstance(descr_node.value, str)):
        raise FormatError("npy header descr is not a plain dtype string", path=source)
    if not (isinstance(order_node, ast.Constant) and isinstance(order_node.value, bool)):
        raise FormatError("npy header fortran_order is not a bool", path=source)
    if not isinstance(shape_node, ast.Tuple):
        raise FormatError("npy header shape is not a tuple", path=source)
    shape: list[int] = []
    for dim in shape_node.elts:
        if not (
            isinstance(dim, ast.Constant)
            and type(dim.value) is int  # bool is an int subclass; refuse it
            and dim.value >= 0
        ):
            raise FormatError("npy header shape holds something other than sizes", path=source)
        shape.append(dim.value)
    problem = shape_problem(tuple(shape))
    if problem:
        raise FormatError(f"npy header: {problem}", path=source)
    return descr_node.value, order_node.value, tuple(shape)


def parse_npy_prefix(prefix: bytes) -> tuple[tuple[int, int], int]:
    """(version, bytes of magic + length field + header) from the first 12 bytes; raises ValueError."""
    if len(prefix) < 10 or prefix[:6] != MAGIC:
        raise ValueError("no npy magic")
    version = (prefix[6], prefix[7])
    if version not in _PREFIX_SIZE:
        raise ValueError(f"unsupported npy version {version[0]}.{version[1]}")
    if _PREFIX_SIZE[version] == 2:
        (length,) = struct.unpack_from("<H", prefix, 8)
        return version, 10 + length
    if len(prefix) < 12:
        raise ValueError("truncated npy header length")
    (length,) = struct.unpack_from("<I", prefix, 8)
    return version, 12 + length


def parse_npy_header(header: bytes, *, source: str | None = None) -> NpyHeader:
    """Parse a complete header (magic through the final newline); pure."""
    try:
        version, total = parse_npy_prefix(header[:12])
    except ValueError as err:
        raise FormatError(f"not an npy header: {err}", path=source) from err
    start = 10 if _PREFIX_SIZE[version] == 2 else 12
    if total - start > MAX_HEADER_SIZE:
        raise FormatError(
            f"npy header of {total - start} bytes exceeds {MAX_HEADER_SIZE}", path=source
        )
    if len(header) < total:
        raise FormatError("truncated npy header", path=source)
    try:
        text = header[start:total].decode(_ENCODING[version])
    except UnicodeDecodeError as err:
        raise FormatError(f"npy header is not {_ENCODING[version]} text", path=source) from err
    descr, fortran_order, shape = _literal_header(text, source)
    dtype = checked_dtype(descr, source=source)
    problem = shape_problem(shape, dtype.itemsize)
    if problem:
        raise FormatError(f"npy header: {problem}", path=source)
    return NpyHeader(version, descr, fortran_order, shape, total, dtype.itemsize)


def _read_exactly(handle: IO[bytes], size: int, source: str | None) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise FormatError("truncated npy header", path=source)
    return data


def read_npy_header(handle: IO[bytes], *, source: str | None = None) -> NpyHeader:
    """Read just the header from a stream positioned at an ``.npy``; leaves it at the first data byte."""
    first = _read_exactly(handle, 10, source)
    if _PREFIX_SIZE.get((first[6], first[7])) == 4:
        first += _read_exactly(handle, 2, source)
    try:
        _version, total = parse_npy_prefix(first)
    except ValueError as err:
        raise FormatError(f"not an npy header: {err}", path=source) from err
    if total - len(first) > MAX_HEADER_SIZE:
        raise FormatError(
            f"npy header of {total - len(first)} bytes exceeds {MAX_HEADER_SIZE}", path=source
        )
    rest = _read_exactly(handle, total - len(first), source)
    return parse_npy_header(first + rest, source=source)
