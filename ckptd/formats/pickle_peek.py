"""A cheap, bounded look at a pickle's opcodes: protocol, referenced globals, top-level shape.

For identification and labelling only (what is this file, what kind of ``data`` entry is this):
it never builds objects and is NOT a safety check. Safety is ``ckptd.formats.allowlist``'s job.
``pickletools.genops`` runs over an in-memory prefix, so a huge length field in the input reads as
"truncated" instead of allocating.
"""

from __future__ import annotations

import io
import pickletools
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_OPCODES = 200_000
MAX_GLOBALS = 256
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)
_MEMO_STORE_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_LOAD_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_PUSH_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE", *_MEMO_STORE_OPS})
_BUILDING_OPS = frozenset({"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"})
# The last bytes of a pickle whose top-level object is a 2-tuple: TUPLE2, an optional memo store
# (MEMOIZE, BINPUT n, LONG_BINPUT n), STOP. That is how cloudpickle ends ``(data, params)``.
_TUPLE2_TAIL = re.compile(rb"\x86(?:\x94|q[\x00-\xff]|r[\x00-\xff]{4})?\.\Z")


@dataclass(frozen=True)
class PicklePeek:
    """What the first opcodes of a pickle say about it."""

    protocol: int | None  # from a leading PROTO opcode; None for protocol 0/1 streams
    globals: tuple[str, ...]  # "module.name", first occurrence order, at most MAX_GLOBALS
    complete: bool  # reached STOP within the bytes and opcode budget given
    opcodes: int
    builds_objects: bool  # REDUCE/BUILD/NEWOBJ seen: more than a bare reference
    error: str | None = None  # why the scan stopped early (truncated prefix, bad opcode)


def _ops(data: bytes | memoryview) -> Iterator[tuple[str, object]]:
    for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
        yield opcode.name, arg


def peek_pickle(data: bytes | memoryview, *, max_opcodes: int = MAX_OPCODES) -> PicklePeek:
    """Scan up to ``max_opcodes`` opcodes of ``data`` (a whole pickle or just its first bytes)."""
    protocol: int | None = None
    found: dict[str, None] = {}
    memo: dict[int, str | None] = {}
    recent: list[str | None] = [None, None]  # the values of the last two pushes, if strings
    builds = False
    count = 0
    complete = False
    error: str | None = None
    try:
        for name, arg in _ops(data):
            count += 1
            if name == "PROTO" and count == 1 and isinstance(arg, int):
                protocol = arg
            elif name == "STOP":
                complete = True
                break
            elif name == "GLOBAL" and isinstance(arg, str):
                found.setdefault(arg.replace(" ", ".", 1), None)
            elif name == "STACK_GLOBAL":
                module, qualname = recent
                if module is not None and qualname is not None:
                    found.setdefault(f"{module}.{qualname}", None)
            builds = builds or name in _BUILDING_OPS
            if name == "MEMOIZE":
                memo[len(memo)] = recent[-1]
            elif name in _MEMO_STORE_OPS and isinstance(arg, int):
                memo[arg] = recent[-1]
            elif name not in _NO_PUSH_OPS:
                pushed = arg if name in _STRING_OPS and isinstance(arg, str) else None
                if name in _MEMO_LOAD_OPS and isinstance(arg, int):
                    pushed = memo.get(arg)
                recent = [recent[-1], pushed]
            if count >= max_opcodes:
                error = f"stopped after {max_opcodes} opcodes"
                break
    except ValueError as err:  # truncated prefix or an invalid opcode
        error = str(err)
    return PicklePeek(
        protocol=protocol,
        globals=tuple(found)[:MAX_GLOBALS],
        complete=complete,
        opcodes=count,
        builds_objects=builds,
        error=error,
    )


def ends_with_tuple2(tail: bytes) -> bool:
    """True when the last bytes of a pickle build a 2-tuple as its top-level object."""
    return _TUPLE2_TAIL.search(tail) is not None
