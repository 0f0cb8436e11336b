"""A cheap, bounded look at a pickle's opcodes: protocol, referenced globals, top-level shape.

For identification and labelling only (what is this file, what kind of ``data`` entry is this):
it never builds objects and is NOT a safety check. Safety is ``ckptd.pickles.graph_check``'s job.
``pickletools.genops`` runs over an in-memory prefix, so a huge length field in the input reads as
"truncated" instead of allocating.
"""

from __future__ import annotations

import io
import pickletools
import re
from collections.abc import Callable
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


def peek_pickle(
    data: bytes | memoryview,
    *,
    max_opcodes: int = MAX_OPCODES,
    stop_at: Callable[[str], bool] | None = None,
) -> PicklePeek:
    """Scan up to ``max_opcodes`` opcodes of ``data`` (a whole pickle or just its first bytes).

    With ``stop_at``, the scan ends right after the first global for which it returns True (that
    global is the last one in ``globals``; ``complete`` is False and ``error`` None): callers that
    only ask "is there such a reference?" need not walk megabytes of opcodes after the answer.

    STACK_GLOBAL's operands are approximated by the values of the last two pushes (every opcode
    but PROTO, FRAME and the memo stores counts as one push; only strings, directly or through
    the memo, carry a value), which is how SB2's cloudpickle writes them.
    """
    protocol: int | None = None
    found: dict[str, None] = {}
    memo: dict[int, str | None] = {}
    previous: str | None = None  # the values of the last two pushes, if strings
    last: str | None = None
    builds = False
    count = 0
    complete = False
    error: str | None = None
    # The loop body runs once per opcode of every legacy file a cold pass identifies: branches
    # are ordered by frequency and the push window is two locals, not a list.
    try:
        for opcode, arg, _pos in pickletools.genops(io.BytesIO(data)):
            count += 1
            name = opcode.name
            if name in _STRING_OPS:
                previous, last = last, arg if isinstance(arg, str) else None
            elif name in _MEMO_LOAD_OPS:
                previous, last = last, memo.get(arg) if isinstance(arg, int) else None
            elif name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in _MEMO_STORE_OPS:
                if isinstance(arg, int):
                    memo[arg] = last
            elif name == "PROTO" or name == "FRAME":
                if name == "PROTO" and count == 1 and isinstance(arg, int):
                    protocol = arg
            elif name == "STOP":
                complete = True
                break
            else:
                reference = None
                if name == "GLOBAL" and isinstance(arg, str):
                    reference = arg.replace(" ", ".", 1)
                elif name == "STACK_GLOBAL" and previous is not None and last is not None:
                    reference = f"{previous}.{last}"
                if reference is not None:
                    found.setdefault(reference, None)
                    if stop_at is not None and stop_at(reference):
                        break
                builds = builds or name in _BUILDING_OPS
                previous, last = last, None
            if count >= max_opcodes:
                error = f"stopped after {max_opcodes} opcodes"
                break
    except ValueError as err:  # truncated prefix or an invalid opcode
        error = str(err)
    except DeprecationWarning as err:
        # pickletools escape-decodes text GLOBAL lines; an invalid escape (``\8``) in a name
        # warns, which is an exception where warnings are errors: that is a broken name too.
        error = f"invalid escape in a text argument ({err})"
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
