"""Symbolic pickle machine: runs the opcodes over inert nodes and returns the object graph.

Step 3 of the safe legacy reader (docs/formats.md, "The safe legacy reader"). Nothing is imported,
resolved or called: GLOBAL becomes a :class:`Global` node (``ckptd.pickles.nodes``), REDUCE a :class:`Call` node, NEWOBJ a
:class:`NewObj` node, and BUILD / SETITEM(S) / APPEND(S) are recorded on their target node.
The structural rules that do not need the allowlist are enforced here, at the opcode that breaks
them (errors carry the opcode and its offset):

* opcodes that call or look up things by other means are refused: INST, OBJ, NEWOBJ_EX,
  EXT1/2/4, PERSID, BINPERSID, NEXT_BUFFER, READONLY_BUFFER, and the protocol-0/1 STRING family
  (never written by a Python 3 pickler, and a known way to feed STACK_GLOBAL);
* STACK_GLOBAL operands must be string constants (directly or through the memo);
* APPEND(S) only on lists, SETITEM(S) only on dicts and on ``collections.OrderedDict()`` calls,
  ADDITEMS only on sets, BUILD only on Call/NewObj nodes and at most once per node;
* POP (and POP_MARK) may not discard the result of a call, which would hide it, except the
  cloudpickle state setters (``_function_setstate`` / ``_class_setstate``), which are attached
  to the object they update;
* the cloudpickle fillers (``_fill_function`` / ``_rehydrate_skeleton_class``) are recorded on
  the skeleton they fill (``filled_by``), at most one per skeleton: they update it in place and
  return it, so the unpickler's memo slot of the skeleton holds the *filled* object, and a memo
  reference to the skeleton (a function or class referenced twice) means the filled one;
* the memo is modelled by value exactly like the C unpickler (MEMOIZE uses the number of
  filled slots), with caps on memo size and MARK nesting.
"""

from __future__ import annotations

import _compat_pickle
import logging

from ckptd.errors import FormatError, UnsafeCheckpoint
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.nodes import (
    BytesNode,
    Call,
    Const,
    DictNode,
    Global,
    ListNode,
    NewObj,
    Node,
    PickleGraph,
    SetNode,
    TupleNode,
    is_filler,
    is_ordered_dict_call,
    is_state_setter,
)
from ckptd.pickles.ops import Op, ParsedPickle

logger = logging.getLogger(__name__)

DEFAULT_MAX_MEMO = DEFAULT_LIMITS.max_memo
DEFAULT_MAX_MARK_DEPTH = 200


_REFUSED_OPCODES = {
    "INST": "INST calls a class found by name",
    "OBJ": "OBJ calls a class from the stack",
    "NEWOBJ_EX": "NEWOBJ_EX (keyword-argument construction) is never needed by stable-baselines",
    "EXT1": "extension-registry opcodes resolve globals indirectly",
    "EXT2": "extension-registry opcodes resolve globals indirectly",
    "EXT4": "extension-registry opcodes resolve globals indirectly",
    "PERSID": "persistent ids hand objects to external code",
    "BINPERSID": "persistent ids hand objects to external code",
    "NEXT_BUFFER": "out-of-band buffers are never used by stable-baselines",
    "READONLY_BUFFER": "out-of-band buffers are never used by stable-baselines",
    "STRING": "protocol-0 STRING is never written by a Python 3 pickler",
    "BINSTRING": "protocol-1 BINSTRING is never written by a Python 3 pickler",
    "SHORT_BINSTRING": "protocol-1 SHORT_BINSTRING is never written by a Python 3 pickler",
}


class _Machine:
    """The stack machine. One instance replays one stream."""

    def __init__(self, protocol: int, source: str | None, max_memo: int, max_marks: int) -> None:
        self.protocol = protocol
        self.source = source
        self.max_memo = max_memo
        self.max_marks = max_marks
        self.stack: list[Node] = []
        self.marks: list[int] = []
        self.memo: dict[int, Node] = {}
        self.nodes: list[Node] = []
        self.inert_keys: set[int] = set()  # ids of tuples already accepted as keys
        self.op: Op = Op("PROTO", protocol, 0, 0)

    # -- errors -------------------------------------------------------------------------------
    def broken(self, message: str) -> FormatError:
        return FormatError(f"{message} ({self.op.name})", path=self.source, offset=self.op.pos)

    def refused(self, reason: str, *, global_name: str | None = None) -> UnsafeCheckpoint:
        return UnsafeCheckpoint(
            reason,
            path=self.source,
            offset=self.op.pos,
            opcode=self.op.name,
            global_name=global_name,
        )

    # -- stack primitives ---------------------------------------------------------------------
    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def push(self, node: Node) -> None:
        self.stack.append(node)

    def new(self, node: Node) -> Node:
        self.nodes.append(node)
        self.push(node)
        return node

    def pop(self) -> Node:
        if len(self.stack) <= self.fence():
            raise self.broken("stack underflow")
        return self.stack.pop()

    def top(self) -> Node:
        if len(self.stack) <= self.fence():
            raise self.broken("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Node]:
        if not self.marks:
            raise self.broken("no MARK to pop to")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    # -- helpers ------------------------------------------------------------------------------
    def str_operand(self, node: Node, what: str) -> str:
        if not (isinstance(node, Const) and isinstance(node.value, str)):
            raise self.refused(f"STACK_GLOBAL {what} is not a string constant but {node.kind()}")
        return node.value

    def check_key(self, key: Node) -> None:
        """Dict keys and set items are hashed by the VM; only let inert values be hashed.

        Iterative, and each tuple is checked once per stream: a tuple nested 100,000 deep, or one
        whose halves are the same memo entry (2^60 leaves), costs its distinct nodes, no more.
        """
        todo = [key]
        while todo:
            node = todo.pop()
            if isinstance(node, Const | Global | BytesNode) and not (
                isinstance(node, BytesNode) and node.mutable
            ):
                continue
            if isinstance(node, TupleNode):
                if id(node) not in self.inert_keys:
                    self.inert_keys.add(id(node))
                    todo.extend(node.items)
                continue
            raise self.refused(f"a {node.kind()} used as a dict key or set item")

    def set_items(self, target: Node, pairs: list[tuple[Node, Node]]) -> None:
        if isinstance(target, DictNode):
            bucket = target.items
        elif is_ordered_dict_call(target):
            assert isinstance(target, Call)
            bucket = target.setitems
        else:
            raise self.refused(f"SETITEM on a {target.kind()} (only dicts and OrderedDict)")
        for key, _ in pairs:
            self.check_key(key)
        bucket.extend(pairs)

    def global_node(self, module: str, name: str) -> Node:
        # The VM maps Python 2 names for protocol < 3 (fix_imports) before it imports anything,
        # so the allowlist must judge the mapped names.
        if self.protocol < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return self.new(Global(module, name, self.op.pos, self.op.name))

    def memo_index(self, index: int) -> int:
        if index < 0 or index >= self.max_memo:
            raise self.refused(f"memo index {index} beyond the limit of {self.max_memo}")
        return index

    # -- the loop -----------------------------------------------------------------------------
    def run(self, ops: tuple[Op, ...]) -> PickleGraph:
        for op in ops:
            self.step(op)
        return self.graph()

    def step(self, op: Op) -> None:
        """Replay one opcode (streams that interleave raw bytes are fed one opcode at a time)."""
        self.op = op
        handler = getattr(self, f"op_{op.name}", None)
        if handler is None:
            reason = _REFUSED_OPCODES.get(op.name, f"opcode {op.name} is not supported")
            raise self.refused(reason)
        handler(op)

    def graph(self) -> PickleGraph:
        if not hasattr(self, "result"):
            raise self.broken("no STOP opcode")
        return PickleGraph(self.protocol, self.result, self.nodes)

    def peek(self) -> Node | None:
        """The top of the stack (None when empty), for callers that feed opcodes one by one
        (``ckptd.pickles.stream``)."""
        return self.stack[-1] if self.stack else None

    result: Node

    def op_PROTO(self, op: Op) -> None:
        pass

    def op_FRAME(self, op: Op) -> None:
        pass

    def op_STOP(self, op: Op) -> None:
        if self.marks:
            raise self.broken("STOP with an open MARK")
        if len(self.stack) != 1:
            raise self.broken(f"STOP with {len(self.stack)} items on the stack (expected 1)")
        self.result = self.stack.pop()

    def op_MARK(self, op: Op) -> None:
        if len(self.marks) >= self.max_marks:
            raise self.refused(f"MARK nesting deeper than {self.max_marks}")
        self.marks.append(len(self.stack))

    def op_POP(self, op: Op) -> None:
        if not self.marks or len(self.stack) > self.fence():
            node = self.pop()
        else:  # POP right after MARK discards the mark, as the C VM does
            self.marks.pop()
            return
        if isinstance(node, Call | NewObj):
            if not is_state_setter(node):
                raise self.refused("the result of a call is discarded with POP (a hidden call)")
            self.attach_state_setter(node)

    def attach_state_setter(self, node: Node) -> None:
        assert isinstance(node, Call)
        args = node.args.items
        if len(args) != 2 or not isinstance(args[0], Call):
            raise self.refused("a cloudpickle state setter applied to something it did not create")
        args[0].state_calls.append(node)

    def op_POP_MARK(self, op: Op) -> None:
        for node in self.pop_mark():
            if isinstance(node, Call | NewObj):
                raise self.refused(
                    "the result of a call is discarded with POP_MARK (a hidden call)"
                )

    def op_DUP(self, op: Op) -> None:
        self.push(self.top())

    # constants
    def const(self, value: bool | int | float | str | None) -> None:
        self.new(Const(value, self.op.pos))

    def op_NONE(self, op: Op) -> None:
        self.const(None)

    def op_NEWTRUE(self, op: Op) -> None:
        self.const(True)

    def op_NEWFALSE(self, op: Op) -> None:
        self.const(False)

    def op_INT(self, op: Op) -> None:
        assert isinstance(op.arg, int)
        self.const(op.arg)

    op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = op_INT

    def op_FLOAT(self, op: Op) -> None:
        assert isinstance(op.arg, float)
        self.const(op.arg)

    op_BINFLOAT = op_FLOAT

    def op_UNICODE(self, op: Op) -> None:
        assert isinstance(op.arg, str)
        self.const(op.arg)

    op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = op_UNICODE

    def op_BINBYTES(self, op: Op) -> None:
        assert isinstance(op.arg, memoryview)
        self.new(BytesNode(op.arg, op.pos))

    op_SHORT_BINBYTES = op_BINBYTES8 = op_BINBYTES

    def op_BYTEARRAY8(self, op: Op) -> None:
        assert isinstance(op.arg, memoryview)
        self.new(BytesNode(op.arg, op.pos, mutable=True))

    # containers
    def op_EMPTY_TUPLE(self, op: Op) -> None:
        self.new(TupleNode((), op.pos))

    def tuple_of(self, count: int) -> None:
        items = [self.pop() for _ in range(count)][::-1]
        self.new(TupleNode(tuple(items), self.op.pos))

    def op_TUPLE1(self, op: Op) -> None:
        self.tuple_of(1)

    def op_TUPLE2(self, op: Op) -> None:
        self.tuple_of(2)

    def op_TUPLE3(self, op: Op) -> None:
        self.tuple_of(3)

    def op_TUPLE(self, op: Op) -> None:
        self.new(TupleNode(tuple(self.pop_mark()), op.pos))

    def op_EMPTY_LIST(self, op: Op) -> None:
        self.new(ListNode([], op.pos))

    def op_LIST(self, op: Op) -> None:
        self.new(ListNode(self.pop_mark(), op.pos))

    def op_EMPTY_DICT(self, op: Op) -> None:
        self.new(DictNode([], op.pos))

    def op_DICT(self, op: Op) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise self.broken("odd number of items for DICT")
        node = DictNode([], op.pos)
        self.set_items(node, list(zip(items[::2], items[1::2], strict=True)))
        self.new(node)

    def op_EMPTY_SET(self, op: Op) -> None:
        self.new(SetNode([], op.pos, frozen=False))

    def op_FROZENSET(self, op: Op) -> None:
        items = self.pop_mark()
        for item in items:
            self.check_key(item)
        self.new(SetNode(items, op.pos, frozen=True))

    def op_ADDITEMS(self, op: Op) -> None:
        items = self.pop_mark()
        target = self.top()
        if not (isinstance(target, SetNode) and not target.frozen):
            raise self.refused(f"ADDITEMS on a {target.kind()} (only sets)")
        for item in items:
            self.check_key(item)
        target.items.extend(items)

    def op_APPEND(self, op: Op) -> None:
        value = self.pop()
        self.append_to(self.top(), [value])

    def op_APPENDS(self, op: Op) -> None:
        items = self.pop_mark()
        self.append_to(self.top(), items)

    def append_to(self, target: Node, items: list[Node]) -> None:
        if not isinstance(target, ListNode):
            raise self.refused(f"APPEND on a {target.kind()} (only lists)")
        target.items.extend(items)

    def op_SETITEM(self, op: Op) -> None:
        value = self.pop()
        key = self.pop()
        self.set_items(self.top(), [(key, value)])

    def op_SETITEMS(self, op: Op) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise self.broken("odd number of items for SETITEMS")
        self.set_items(self.top(), list(zip(items[::2], items[1::2], strict=True)))

    # memo
    def op_MEMOIZE(self, op: Op) -> None:
        # The C VM stores at memo_len, the number of filled slots (not the highest index + 1).
        self.memo[self.memo_index(len(self.memo))] = self.top()

    def op_PUT(self, op: Op) -> None:
        assert isinstance(op.arg, int)
        self.memo[self.memo_index(op.arg)] = self.top()

    op_BINPUT = op_LONG_BINPUT = op_PUT

    def op_GET(self, op: Op) -> None:
        assert isinstance(op.arg, int)
        node = self.memo.get(op.arg)
        if node is None:
            raise self.broken(f"memo slot {op.arg} is read before it is written")
        self.push(node)

    op_BINGET = op_LONG_BINGET = op_GET

    # globals and calls
    def op_GLOBAL(self, op: Op) -> None:
        assert isinstance(op.arg, tuple)
        self.global_node(*op.arg)

    def op_STACK_GLOBAL(self, op: Op) -> None:
        name = self.str_operand(self.pop(), "name")
        module = self.str_operand(self.pop(), "module")
        self.global_node(module, name)

    def op_REDUCE(self, op: Op) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(args, TupleNode):
            raise self.broken(f"REDUCE arguments are a {args.kind()}, not a tuple")
        call = Call(func, args, op.pos)
        if is_filler(call) and args.items and isinstance(args.items[0], Call | NewObj):
            skeleton = args.items[0]
            if skeleton.filled_by is not None:
                # Both would update the same object; a pickler never writes that.
                raise self.refused("a second cloudpickle filler on the same object")
            skeleton.filled_by = call
        self.new(call)

    def op_NEWOBJ(self, op: Op) -> None:
        args = self.pop()
        cls = self.pop()
        if not isinstance(args, TupleNode):
            raise self.broken(f"NEWOBJ arguments are a {args.kind()}, not a tuple")
        self.new(NewObj(cls, args, op.pos))

    def op_BUILD(self, op: Op) -> None:
        state = self.pop()
        target = self.top()
        if not isinstance(target, Call | NewObj):
            raise self.refused(f"BUILD on a {target.kind()} (only on constructed objects)")
        if target.build is not None:
            # A second BUILD is how a planted __setstate__ gets called; pickle never writes one.
            raise self.refused("a second BUILD on the same object")
        target.build = state


def build_graph(
    parsed: ParsedPickle,
    *,
    source: str | None = None,
    max_memo: int | None = None,
    max_marks: int = DEFAULT_MAX_MARK_DEPTH,
    limits: Limits = DEFAULT_LIMITS,
) -> PickleGraph:
    """Replay ``parsed`` symbolically; raise FormatError / UnsafeCheckpoint at the first violation."""
    if max_memo is None:
        max_memo = limits.max_memo
    graph = _Machine(parsed.protocol, source, max_memo, max_marks).run(parsed.ops)
    logger.debug("built %d nodes from %d opcodes", len(graph.nodes), len(parsed.ops))
    return graph
