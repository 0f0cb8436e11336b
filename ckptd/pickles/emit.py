"""Re-emit a node of the inert graph as a fresh, canonical protocol-2 pickle.

Step 7 of the safe legacy reader (docs/formats.md, "The safe legacy reader"): an SB2 ``data`` value
that is not plain JSON (a policy class, a gym space, a schedule function) is stored in the zip as a
pickle. We never copy the input's bytes for it: we write our own stream from the *checked* graph, so
parser-differential tricks in the input cannot survive into the output.

The output is loadable by Python 3.5-3.7 + cloudpickle 1.2 + numpy 1.x (the SB2 runtime) and by
Python 3.11 + cloudpickle 3 + numpy 2:

* protocol 2 opcodes only (GLOBAL, REDUCE, NEWOBJ, BUILD, SETITEMS, APPENDS, BINPUT/BINGET);
* ``numpy._core.*`` names are written as ``numpy.core.*`` (numpy 2 still resolves those);
* bytes are ``_codecs.encode(<latin-1 str>, 'latin1')``, empty bytes ``bytes()``;
* Python 3 names are written with the Python 2 spellings CPython's protocol-2 pickler uses
  (``__builtin__``, ``copy_reg``), which every Python 3 unpickler maps back;
* shared nodes and cycles go through the memo, exactly once per node;
* a cloudpickle skeleton reached before its filler is written as the filler call (which writes the
  skeleton first and returns it filled), never bare: a memo reference to a function or class
  skeleton in the input means the filled object (docs/compatibility.md);
* a global whose module or name is not a dotted ASCII identifier is never written (UnsafeCheckpoint):
  the text GLOBAL opcode would end the name at its first newline and read the rest as opcodes;
* dicts and sets are written with equal keys already merged as Python merges them when it loads
  the input (``ckptd.pickles.dictkeys``), so the output loads to the same value even where that
  depended on object identity (a NaN key shared through the input's memo);
* functions saved by cloudpickle 1.x stay in that form (``_fill_function``...); no translation
  between cloudpickle versions is attempted.
"""

from __future__ import annotations

import _compat_pickle
import logging
import struct
from dataclasses import dataclass

from ckptd.errors import FormatError, UnsafeCheckpoint
from ckptd.pickles.dictkeys import merged_items, merged_pairs
from ckptd.pickles.nodes import (
    MAX_NESTING,
    BytesNode,
    Call,
    Const,
    DictNode,
    Global,
    ListNode,
    NewObj,
    Node,
    SetNode,
    TupleNode,
)
from ckptd.pickles.pynames import name_problem

logger = logging.getLogger(__name__)

_BATCH = 1000  # items per APPENDS / SETITEMS, as CPython's pickler does


@dataclass(frozen=True)
class EmittedPickle:
    """A fresh pickle and the globals it references (Python 3 names, after renaming)."""

    data: bytes
    globals: tuple[str, ...]


def emitted_name(module: str, name: str) -> tuple[str, str]:
    """The (module, name) we write for a global: numpy 2's private core path made portable."""
    if module == "numpy._core" or module.startswith("numpy._core."):
        module = "numpy.core" + module[len("numpy._core") :]
    return module, name


def _python2_spelling(module: str, name: str) -> tuple[str, str]:
    if (module, name) in _compat_pickle.REVERSE_NAME_MAPPING:
        return _compat_pickle.REVERSE_NAME_MAPPING[(module, name)]
    return _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module), name


class _Emitter:
    def __init__(self, source: str | None) -> None:
        self.source = source
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[int, int] = {}
        self.global_memo: dict[tuple[str, str], int] = {}
        self.next_index = 0
        self.globals: set[str] = set()
        self.started_calls: set[int] = set()

    # -- primitives ---------------------------------------------------------------------------
    def fresh_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index

    def memoize(self, node: Node) -> None:
        index = self.fresh_index()
        self.memo[id(node)] = index
        self.put(index)

    def memoize_anonymous(self) -> None:
        # Argument tuples written directly are memoized like the ones written from nodes, so
        # that re-emitting our own output gives the same bytes (the output is canonical).
        self.put(self.fresh_index())

    def put(self, index: int) -> None:
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)

    def get(self, index: int) -> None:
        self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)

    def unicode(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(encoded)) + encoded

    def global_(self, module: str, name: str) -> None:
        module, name = emitted_name(module, name)
        self.globals.add(f"{module}.{name}")
        key = (module, name)
        if key in self.global_memo:
            self.get(self.global_memo[key])
            return
        written_module, written_name = _python2_spelling(module, name)
        for checked_module, checked_name in ((module, name), (written_module, written_name)):
            # A text GLOBAL ends each name at a newline: a name that is not a dotted identifier
            # could carry opcodes into the output. Never write one, whatever the graph says.
            problem = name_problem(checked_module, checked_name)
            if problem is not None:
                raise UnsafeCheckpoint(
                    f"cannot write global {checked_module!r} {checked_name!r}: {problem}",
                    path=self.source,
                    opcode="GLOBAL",
                    global_name=f"{checked_module}.{checked_name}",
                )
        self.out += b"c" + f"{written_module}\n{written_name}\n".encode()
        index = self.fresh_index()
        self.global_memo[key] = index
        self.put(index)

    def const(self, value: bool | int | float | str | None) -> None:
        if value is None:
            self.out += b"N"
        elif value is True:
            self.out += b"\x88"
        elif value is False:
            self.out += b"\x89"
        elif isinstance(value, int):
            if 0 <= value < 256:
                self.out += b"K" + bytes([value])
            elif 0 <= value < 65536:
                self.out += b"M" + struct.pack("<H", value)
            elif -(2**31) <= value < 2**31:
                self.out += b"J" + struct.pack("<i", value)
            else:
                encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
                if len(encoded) < 256:
                    self.out += b"\x8a" + bytes([len(encoded)]) + encoded
                else:
                    self.out += b"\x8b" + struct.pack("<i", len(encoded)) + encoded
        elif isinstance(value, float):
            self.out += b"G" + struct.pack(">d", value)
        else:
            self.unicode(value)

    def raw_bytes(self, data: bytes | memoryview) -> None:
        if len(data) == 0:
            self.global_("builtins", "bytes")
            self.out += b")"
            self.memoize_anonymous()
            self.out += b"R"
            return
        self.global_("_codecs", "encode")
        self.unicode(bytes(data).decode("latin-1"))
        self.unicode("latin1")
        self.out += b"\x86"
        self.memoize_anonymous()
        self.out += b"R"

    # -- nodes --------------------------------------------------------------------------------
    def emit(self, node: Node, depth: int) -> None:
        if depth > MAX_NESTING:
            raise FormatError(f"object nested deeper than {MAX_NESTING} levels", path=self.source)
        if isinstance(node, Const):
            self.const(node.value)
            return
        if isinstance(node, Global):
            self.global_(node.module, node.name)
            return
        if id(node) in self.memo:
            self.get(self.memo[id(node)])
            return
        filler = node.filled_by if isinstance(node, Call | NewObj) else None
        if filler is not None and id(filler) not in self.started_calls:
            # The skeleton alone would load empty (a closure cell never set: NameError on call).
            # The filler writes the skeleton as its first argument, then fills and returns it.
            self.emit(filler, depth)
            return
        if isinstance(node, TupleNode):
            self.tuple_(node, depth)
        elif isinstance(node, BytesNode):
            self.bytes_(node)
        elif isinstance(node, ListNode):
            self.out += b"]"
            self.memoize(node)
            self.batched(b"e", [(item,) for item in node.items], depth)
        elif isinstance(node, DictNode):
            self.out += b"}"
            self.memoize(node)
            self.batched(b"u", merged_pairs(node.items), depth)
        elif isinstance(node, SetNode):
            self.global_("builtins", "frozenset" if node.frozen else "set")
            self.out += b"]"
            self.memoize_anonymous()
            self.batched(b"e", [(item,) for item in merged_items(node.items)], depth)
            self.out += b"\x85"
            self.memoize_anonymous()
            self.out += b"R"
            self.memoize(node)
        elif isinstance(node, Call):
            self.started_calls.add(id(node))
            self.emit(node.func, depth + 1)
            self.emit(node.args, depth + 1)
            self.out += b"R"
            self.memoize(node)
            self.after_construction(node, depth)
        elif isinstance(node, NewObj):
            self.emit(node.cls, depth + 1)
            self.emit(node.args, depth + 1)
            self.out += b"\x81"
            self.memoize(node)
            self.after_construction(node, depth)
        else:  # pragma: no cover - every node type is handled above
            raise FormatError(f"cannot re-emit a {node.kind()}", path=self.source)

    def tuple_(self, node: TupleNode, depth: int) -> None:
        count = len(node.items)
        if count == 0:
            self.out += b")"
            self.memoize(node)
            return
        if count > 3:
            self.out += b"("
        for item in node.items:
            self.emit(item, depth + 1)
        if id(node) in self.memo:
            # The tuple was reached through its own items (a cycle via a list or dict): drop
            # the copies just written and use the memoized one, as CPython's pickler does.
            self.out += b"1" if count > 3 else b"0" * count
            self.get(self.memo[id(node)])
            return
        self.out += b"t" if count > 3 else {1: b"\x85", 2: b"\x86", 3: b"\x87"}[count]
        self.memoize(node)

    def bytes_(self, node: BytesNode) -> None:
        if node.mutable:
            self.global_("builtins", "bytearray")
            self.raw_bytes(node.data)
            self.memoize_anonymous()  # the bytes object, as a node would be
            self.out += b"\x85"
            self.memoize_anonymous()
            self.out += b"R"
        else:
            self.raw_bytes(node.data)
        self.memoize(node)

    def batched(
        self, opcode: bytes, entries: list[tuple[Node]] | list[tuple[Node, Node]], depth: int
    ) -> None:
        for start in range(0, len(entries), _BATCH):
            self.out += b"("
            for entry in entries[start : start + _BATCH]:
                for part in entry:
                    self.emit(part, depth + 1)
            self.out += opcode

    def after_construction(self, node: Call | NewObj, depth: int) -> None:
        if node.setitems:
            self.batched(b"u", merged_pairs(node.setitems), depth)
        if node.build is not None:
            self.emit(node.build, depth + 1)
            self.out += b"b"
        for setter in node.state_calls:
            # cloudpickle's state setters: setter(obj, state) then POP, right after the object.
            self.emit(setter.func, depth + 1)
            self.emit(setter.args, depth + 1)
            self.out += b"R0"


def emit_pickle(node: Node, *, source: str | None = None) -> EmittedPickle:
    """A protocol-2 pickle that rebuilds ``node`` (and everything it references)."""
    emitter = _Emitter(source)
    emitter.emit(node, 0)
    emitter.out += b"."
    return EmittedPickle(bytes(emitter.out), tuple(sorted(emitter.globals)))
