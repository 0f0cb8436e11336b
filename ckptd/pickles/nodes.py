"""The inert nodes a pickle replays into (``ckptd.pickles.graph``), and walks over them.

GLOBAL becomes a :class:`Global` node, REDUCE a :class:`Call` node, NEWOBJ a :class:`NewObj` node;
BUILD / SETITEM(S) / APPEND(S) are recorded on their target node. Nothing here imports, resolves
or calls anything.

Nodes are mutable while the stream is being replayed (BUILD and SETITEMS arrive after the node
is created), and are compared by identity, which is how shared references and cycles survive.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ckptd.limits import HARD_MAX_DEPTH

# Deep enough for any genuine checkpoint (a lambda's code object nests a few levels); recursive
# walkers over the graph (JSON conversion, emitter) stop here instead of exhausting the stack.
# The graph's depth is checked against limits.max_depth (at most this) before any of them runs.
MAX_NESTING = HARD_MAX_DEPTH

CLOUDPICKLE_MODULES = ("cloudpickle.cloudpickle", "cloudpickle.cloudpickle_fast")
STATE_SETTER_NAMES = ("_function_setstate", "_class_setstate")
FILLER_NAMES = ("_fill_function", "_rehydrate_skeleton_class")


class Node:
    """Base of every graph node; ``pos`` is the offset of the opcode that created it."""

    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def kind(self) -> str:
        return type(self).__name__


class Const(Node):
    """None, a bool, an int, a float or a str."""

    __slots__ = ("value",)

    def __init__(self, value: bool | int | float | str | None, pos: int) -> None:
        super().__init__(pos)
        self.value = value


class BytesNode(Node):
    """bytes (or a bytearray when ``mutable``); ``data`` may be a zero-copy view of the source."""

    __slots__ = ("data", "mutable")

    def __init__(self, data: memoryview | bytes, pos: int, *, mutable: bool = False) -> None:
        super().__init__(pos)
        self.data = data
        self.mutable = mutable


class TupleNode(Node):
    __slots__ = ("items",)

    def __init__(self, items: tuple[Node, ...], pos: int) -> None:
        super().__init__(pos)
        self.items = items


class ListNode(Node):
    __slots__ = ("items",)

    def __init__(self, items: list[Node], pos: int) -> None:
        super().__init__(pos)
        self.items = items


class DictNode(Node):
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Node, Node]], pos: int) -> None:
        super().__init__(pos)
        self.items = items


class SetNode(Node):
    """A set (EMPTY_SET + ADDITEMS) or, when ``frozen``, a frozenset (FROZENSET)."""

    __slots__ = ("frozen", "items")

    def __init__(self, items: list[Node], pos: int, *, frozen: bool) -> None:
        super().__init__(pos)
        self.items = items
        self.frozen = frozen


class Global(Node):
    """A module attribute found by name (after the protocol<3 name mapping the VM applies)."""

    __slots__ = ("module", "name", "opcode")

    def __init__(self, module: str, name: str, pos: int, opcode: str) -> None:
        super().__init__(pos)
        self.module = module
        self.name = name
        self.opcode = opcode

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"

    def is_(self, module: str | tuple[str, ...], name: str | tuple[str, ...]) -> bool:
        modules = (module,) if isinstance(module, str) else module
        names = (name,) if isinstance(name, str) else name
        return self.module in modules and self.name in names


class _Mutable(Node):
    """A node that later opcodes may update: items set on it, its BUILD state, state setters,
    and the filler call that completes it (a skeleton's ``filled_by``)."""

    __slots__ = ("build", "filled_by", "setitems", "state_calls")

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.build: Node | None = None
        self.setitems: list[tuple[Node, Node]] = []
        self.state_calls: list[Call] = []
        self.filled_by: Call | None = None


class Call(_Mutable):
    """REDUCE: ``func(*args)``. Whether that call is acceptable is the allowlist's decision."""

    __slots__ = ("args", "func")

    def __init__(self, func: Node, args: TupleNode, pos: int) -> None:
        super().__init__(pos)
        self.func = func
        self.args = args

    def func_is(self, module: str | tuple[str, ...], name: str | tuple[str, ...]) -> bool:
        return isinstance(self.func, Global) and self.func.is_(module, name)


class NewObj(_Mutable):
    """NEWOBJ: ``cls.__new__(cls, *args)``."""

    __slots__ = ("args", "cls")

    def __init__(self, cls: Node, args: TupleNode, pos: int) -> None:
        super().__init__(pos)
        self.cls = cls
        self.args = args


def is_state_setter(node: Node) -> bool:
    """A cloudpickle ``_function_setstate`` / ``_class_setstate`` call."""
    return isinstance(node, Call) and node.func_is(CLOUDPICKLE_MODULES, STATE_SETTER_NAMES)


def is_filler(node: Node) -> bool:
    """A cloudpickle ``_fill_function`` / ``_rehydrate_skeleton_class`` call."""
    return isinstance(node, Call) and node.func_is(CLOUDPICKLE_MODULES, FILLER_NAMES)


def completed(node: Node) -> Node:
    """The node that stands for the object a real unpickle leaves in ``node``'s memo slot.

    A skeleton (``_make_skel_func`` / ``_make_skeleton_class``) is that object only once its
    filler has run on it, and the filler returns it: so the filler call stands for it. Every other
    node already carries its later updates (BUILD, SETITEMS, APPENDS, state setters).
    """
    if isinstance(node, Call | NewObj) and node.filled_by is not None:
        return node.filled_by
    return node


def is_ordered_dict_call(node: Node) -> bool:
    return isinstance(node, Call) and node.func_is("collections", "OrderedDict")


def children(node: Node) -> Iterator[Node]:
    """Every node ``node`` refers to directly (for graph walks)."""
    if isinstance(node, TupleNode | ListNode | SetNode):
        yield from node.items
    elif isinstance(node, DictNode):
        for key, value in node.items:
            yield key
            yield value
    elif isinstance(node, Call | NewObj):
        yield node.func if isinstance(node, Call) else node.cls
        yield node.args
        for key, value in node.setitems:
            yield key
            yield value
        if node.build is not None:
            yield node.build
        yield from node.state_calls
        if node.filled_by is not None:
            yield node.filled_by


def reachable(root: Node) -> Iterator[Node]:
    """Every node reachable from ``root`` (each once), iteratively: cycles and depth are safe."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        todo.extend(children(node))


@dataclass
class PickleGraph:
    """The result of replaying a stream: its root and every node created (reachable or not)."""

    protocol: int
    root: Node
    nodes: list[Node] = field(default_factory=list)
