"""Linear, strict opcode parser for pickle streams held in memory (nothing is unpickled).

This is step 2 of the safe legacy reader (docs/formats.md, "The safe legacy reader"): it turns bytes
into a list of :class:`Op` and rejects every stream whose structure a real unpickler could read
differently from us:

* unknown opcodes, truncated arguments, a missing STOP, and any byte after STOP (a stacked
  pickle runs on a second ``load``);
* an opcode that straddles the end of its FRAME, or a FRAME opened inside a frame (the C
  unpickler reading from a *file* used to read across frame ends, cpython#154848);
* PROTO anywhere but first, or a protocol outside 2..5;
* more than ``limits.max_opcodes`` opcodes (a cheap bound on everything built from them), and
  integers of more digits than ``limits.max_int_digits`` (Python refuses to print them, and
  ``sys.set_int_max_str_digits`` is process-wide, so we never rely on it): both are refused.

Large byte payloads (BINBYTES*, BYTEARRAY8) are not copied: their argument is a ``memoryview``
slice of the source buffer, so parameter arrays can later be viewed in place and the whole
checkpoint costs one copy of its bytes.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ckptd.errors import BudgetExceeded, FormatError, UnsafeCheckpoint
from ckptd.limits import DEFAULT_LIMITS, Limits

logger = logging.getLogger(__name__)

MIN_PROTOCOL = 2
MAX_PROTOCOL = 5
DEFAULT_MAX_OPS = DEFAULT_LIMITS.max_opcodes

_FRAME_HEADER = 9  # FRAME opcode byte + 8-byte length


class Op(NamedTuple):
    """One decoded opcode: its name, decoded argument and the byte offset where it starts.

    A named tuple rather than a frozen dataclass: a file holds up to ``limits.max_opcodes`` of
    them, and a tuple is built several times faster (refusing a flood is bounded by this).

    ``arg`` is None for argument-less opcodes; an ``int``, ``float``, ``str`` or
    ``tuple[str, str]`` (GLOBAL/INST module and name) for scalar ones; and a ``memoryview``
    slice of the source buffer for byte payloads (BINBYTES*, BYTEARRAY8, and the legacy
    BINSTRING family, whose bytes a Python 3 unpickler would decode).
    """

    name: str
    arg: int | float | str | tuple[str, str] | memoryview | None
    pos: int
    end: int  # offset just past the opcode and its argument


@dataclass(frozen=True, slots=True)
class ParsedPickle:
    """A fully parsed stream: the protocol it declares and its opcodes, STOP last."""

    protocol: int
    ops: tuple[Op, ...]
    size: int


# Argument encodings, keyed by opcode byte: (name, kind). ``kind`` selects the decoder below.
_OPCODES: dict[int, tuple[str, str]] = {
    0x28: ("MARK", "none"),
    0x2E: ("STOP", "none"),
    0x30: ("POP", "none"),
    0x31: ("POP_MARK", "none"),
    0x32: ("DUP", "none"),
    0x46: ("FLOAT", "floatnl"),
    0x49: ("INT", "decimalnl_int"),
    0x4A: ("BININT", "int4"),
    0x4B: ("BININT1", "uint1"),
    0x4C: ("LONG", "decimalnl_long"),
    0x4D: ("BININT2", "uint2"),
    0x4E: ("NONE", "none"),
    0x50: ("PERSID", "stringnl_noescape"),
    0x51: ("BINPERSID", "none"),
    0x52: ("REDUCE", "none"),
    0x53: ("STRING", "stringnl"),
    0x54: ("BINSTRING", "bytes4"),
    0x55: ("SHORT_BINSTRING", "bytes1"),
    0x56: ("UNICODE", "unicodestringnl"),
    0x58: ("BINUNICODE", "unicode4"),
    0x61: ("APPEND", "none"),
    0x62: ("BUILD", "none"),
    0x63: ("GLOBAL", "global"),
    0x64: ("DICT", "none"),
    0x7D: ("EMPTY_DICT", "none"),
    0x65: ("APPENDS", "none"),
    0x67: ("GET", "decimalnl_int"),
    0x68: ("BINGET", "uint1"),
    0x69: ("INST", "global"),
    0x6A: ("LONG_BINGET", "uint4"),
    0x6C: ("LIST", "none"),
    0x5D: ("EMPTY_LIST", "none"),
    0x6F: ("OBJ", "none"),
    0x70: ("PUT", "decimalnl_int"),
    0x71: ("BINPUT", "uint1"),
    0x72: ("LONG_BINPUT", "uint4"),
    0x73: ("SETITEM", "none"),
    0x74: ("TUPLE", "none"),
    0x29: ("EMPTY_TUPLE", "none"),
    0x75: ("SETITEMS", "none"),
    0x47: ("BINFLOAT", "float8"),
    0x80: ("PROTO", "uint1"),
    0x81: ("NEWOBJ", "none"),
    0x82: ("EXT1", "uint1"),
    0x83: ("EXT2", "uint2"),
    0x84: ("EXT4", "int4"),
    0x85: ("TUPLE1", "none"),
    0x86: ("TUPLE2", "none"),
    0x87: ("TUPLE3", "none"),
    0x88: ("NEWTRUE", "none"),
    0x89: ("NEWFALSE", "none"),
    0x8A: ("LONG1", "long1"),
    0x8B: ("LONG4", "long4"),
    0x42: ("BINBYTES", "bytes4"),
    0x43: ("SHORT_BINBYTES", "bytes1"),
    0x8C: ("SHORT_BINUNICODE", "unicode1"),
    0x8D: ("BINUNICODE8", "unicode8"),
    0x8E: ("BINBYTES8", "bytes8"),
    0x8F: ("EMPTY_SET", "none"),
    0x90: ("ADDITEMS", "none"),
    0x91: ("FROZENSET", "none"),
    0x92: ("NEWOBJ_EX", "none"),
    0x93: ("STACK_GLOBAL", "none"),
    0x94: ("MEMOIZE", "none"),
    0x95: ("FRAME", "uint8"),
    0x96: ("BYTEARRAY8", "bytes8"),
    0x97: ("NEXT_BUFFER", "none"),
    0x98: ("READONLY_BUFFER", "none"),
}

_FIXED = {
    "uint1": struct.Struct("<B"),
    "uint2": struct.Struct("<H"),
    "uint4": struct.Struct("<I"),
    "int4": struct.Struct("<i"),
    "uint8": struct.Struct("<Q"),
    "float8": struct.Struct(">d"),
}
_LENGTH_PREFIX = {
    "bytes1": _FIXED["uint1"],
    "unicode1": _FIXED["uint1"],
    "long1": _FIXED["uint1"],
    "bytes4": _FIXED["uint4"],
    "unicode4": _FIXED["uint4"],
    "long4": _FIXED["int4"],
    "bytes8": _FIXED["uint8"],
    "unicode8": _FIXED["uint8"],
}
# A text line argument longer than this is not something any pickler writes.
_MAX_LINE = 1 << 16


class _Reader:
    """Decodes one opcode at a time from a buffer; every read is bounds-checked."""

    def __init__(self, buf: memoryview, source: str | None, limits: Limits) -> None:
        self.buf = buf
        self.size = len(buf)
        self.source = source
        self.max_digits = limits.max_int_digits
        self.max_bits = limits.max_int_bits

    def huge_int(self, digits: int, name: str, start: int) -> UnsafeCheckpoint:
        return UnsafeCheckpoint(
            f"an integer of {digits} digits (more than {self.max_digits}; Python will not print it)",
            path=self.source,
            offset=start,
            opcode=name,
        )

    def fail(self, message: str, offset: int) -> FormatError:
        return FormatError(message, path=self.source, offset=offset)

    def need(self, pos: int, count: int, name: str, start: int) -> None:
        if count < 0 or pos + count > self.size:
            raise self.fail(
                f"truncated pickle: {name} argument runs past the end of the data", start
            )

    def line(self, pos: int, name: str, start: int) -> tuple[bytes, int]:
        limit = min(self.size, pos + _MAX_LINE)
        newline = bytes(self.buf[pos:limit]).find(b"\n")
        if newline < 0:
            raise self.fail(f"truncated pickle: {name} argument has no end of line", start)
        return bytes(self.buf[pos : pos + newline]), pos + newline + 1

    def decode(self, kind: str, pos: int, name: str, start: int) -> tuple[object, int]:
        """Decode the argument of kind ``kind`` at ``pos``; return it and the offset after it."""
        fixed = _FIXED.get(kind)
        if fixed is not None:
            self.need(pos, fixed.size, name, start)
            return fixed.unpack_from(self.buf, pos)[0], pos + fixed.size
        prefix = _LENGTH_PREFIX.get(kind)
        if prefix is not None:
            self.need(pos, prefix.size, name, start)
            length = int(prefix.unpack_from(self.buf, pos)[0])
            pos += prefix.size
            if length < 0:
                raise self.fail(f"{name} has a negative length", start)
            self.need(pos, length, name, start)
            payload = self.buf[pos : pos + length]
            end = pos + length
            if kind.startswith("unicode"):
                try:
                    return str(payload, "utf-8", "surrogatepass"), end
                except UnicodeDecodeError as err:
                    raise self.fail(f"{name} is not valid UTF-8", start) from err
            if kind.startswith("long"):
                if length * 8 > self.max_bits + 8:  # refused before the int is even built
                    raise self.huge_int(int(length * 8 * math.log10(2)), name, start)
                value = int.from_bytes(payload, "little", signed=True)
                if value.bit_length() > self.max_bits:
                    raise self.huge_int(int(value.bit_length() * math.log10(2)) + 1, name, start)
                return value, end
            return payload, end  # zero-copy slice
        if kind == "none":
            return None, pos
        if kind == "global":
            module, after_module = self.line(pos, name, start)
            qualname, end = self.line(after_module, name, start)
            try:
                return (module.decode("utf-8"), qualname.decode("utf-8")), end
            except UnicodeDecodeError as err:
                raise self.fail(f"malformed {name} argument", start) from err
        text, end = self.line(pos, name, start)
        return self.decode_text(kind, text, name, start), end

    def decode_text(self, kind: str, text: bytes, name: str, start: int) -> object:
        if kind in ("decimalnl_int", "decimalnl_long") and len(text) > self.max_digits + 2:
            raise self.huge_int(len(text.strip(b"-+L ")), name, start)
        try:
            if kind == "decimalnl_int":
                # INT's "00"/"01" are False/True in protocol 0; keep them as ints (never written
                # by Python 3 picklers at protocol >= 2 anyway).
                return int(text)
            if kind == "decimalnl_long":
                return int(text[:-1] if text.endswith(b"L") else text)
            if kind == "floatnl":
                return float(text)
            if kind == "unicodestringnl":
                return text.decode("raw-unicode-escape")
            if kind in ("stringnl", "stringnl_noescape"):
                return text.decode("latin-1")
        except (ValueError, UnicodeDecodeError) as err:
            raise self.fail(f"malformed {name} argument", start) from err
        raise AssertionError(f"unhandled argument kind {kind}")  # pragma: no cover


def parse_ops(
    data: bytes | bytearray | memoryview,
    *,
    source: str | None = None,
    max_ops: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    min_protocol: int = MIN_PROTOCOL,
    raw_after: Callable[[Op], int] | None = None,
) -> ParsedPickle:
    """Parse a whole pickle stream; raise :class:`FormatError` (with the offset) on anything odd.

    Over ``max_ops`` opcodes (default ``limits.max_opcodes``; a zip's pickles share one budget, so
    the caller passes what is left of it) raises :class:`BudgetExceeded`.
    ``min_protocol=0`` also accepts protocol 0/1 streams, which have no PROTO opcode (reported as
    protocol 0); verdicts on plain pickles need them, stable-baselines never wrote them.
    ``raw_after`` is called with each opcode as it is decoded and returns how many raw bytes
    follow it outside the pickle stream (joblib writes array bytes after a wrapper's BUILD); they
    are skipped, and may only sit between frames.
    """
    if max_ops is None:
        max_ops = limits.max_opcodes
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    size = len(buf)
    if size == 0:
        raise FormatError("empty file, not a pickle", path=source)
    text_protocol = min_protocol < MIN_PROTOCOL and buf[0] != 0x80
    if text_protocol:
        protocol = 0
    elif buf[0] != 0x80 or size < 2:
        raise FormatError(
            "not a pickle of protocol 2-5 (no PROTO opcode at the start)", path=source, offset=0
        )
    else:
        protocol = buf[1]
    if not text_protocol and not MIN_PROTOCOL <= protocol <= MAX_PROTOCOL:
        raise FormatError(
            f"unsupported pickle protocol {protocol} (stable-baselines wrote 2-5)",
            path=source,
            offset=1,
        )
    reader = _Reader(buf, source, limits)
    ops: list[Op] = []
    pos = 0
    frame_end: int | None = None
    while True:
        if pos >= size:
            raise reader.fail("truncated pickle: no STOP opcode", pos)
        if frame_end is not None and pos >= frame_end:
            frame_end = None
        code = buf[pos]
        spec = _OPCODES.get(code)
        if spec is None:
            raise reader.fail(f"unknown pickle opcode 0x{code:02x}", pos)
        name, kind = spec
        if kind == "none":  # most opcodes: no argument to decode
            arg, end = None, pos + 1
        else:
            arg, end = reader.decode(kind, pos + 1, name, pos)
        if name == "FRAME":
            if frame_end is not None:
                raise reader.fail("FRAME opened inside another frame", pos)
            assert isinstance(arg, int)
            if end + arg > size:
                raise reader.fail("truncated pickle: FRAME is longer than the data", pos)
            frame_end = end + arg
        elif frame_end is not None and end > frame_end:
            raise reader.fail(f"{name} straddles the end of its FRAME", pos)
        if name == "PROTO" and pos != 0:
            raise reader.fail("PROTO opcode after the start of the stream", pos)
        ops.append(Op(name, arg, pos, end))  # type: ignore[arg-type]
        if len(ops) > max_ops:
            shared = (
                "" if max_ops == limits.max_opcodes else " (what was left of the file's budget)"
            )
            raise BudgetExceeded(
                "max_opcodes",
                limits.max_opcodes,
                f"more than {max_ops} opcodes{shared}",
                path=source,
            )
        pos = end
        if name == "STOP":
            break
        skip = raw_after(ops[-1]) if raw_after is not None else 0
        if skip:
            if frame_end is not None and pos != frame_end:
                raise reader.fail("raw bytes inside a FRAME", pos)
            reader.need(pos, skip, "raw payload", pos)
            pos += skip
    if pos != size:
        raise reader.fail(
            f"{size - pos} trailing bytes after STOP (stacked pickles are not accepted)", pos
        )
    if frame_end is not None and frame_end != pos:
        raise reader.fail("STOP inside a FRAME that claims more bytes", pos)
    logger.debug("parsed %d opcodes (protocol %d, %d bytes)", len(ops), protocol, size)
    return ParsedPickle(protocol=protocol, ops=tuple(ops), size=size)


def opcode_names(ops: Sequence[Op]) -> list[str]:
    """The opcode names of ``ops`` in order (handy for tests and reports)."""
    return [op.name for op in ops]
