"""An approximation of ``str(value)`` for a ``data`` value's extras, computed statically.

Arrays, dtypes, numpy scalars and containers of plain values render exactly (with numpy); objects
and functions like CPython's default ``repr`` without the memory address. Also the value's
first-level attributes, which both the rendering of gym spaces and SB2's extras list.
"""

from __future__ import annotations

from ckptd.convert.data_json import WALK_BYTES, WALK_NODES, pairs_of
from ckptd.convert.data_types import (
    FUNCTION_MAKERS,
    cloudpickle_call,
    global_type_name,
    goal_selection_member,
    type_name,
)
from ckptd.errors import FormatError
from ckptd.pickles import gym_repr
from ckptd.pickles.arrays import array_of, dtype_of, is_array_node, is_scalar_node, scalar_of
from ckptd.pickles.dictkeys import merged_pairs
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
    TupleNode,
    completed,
)

# --- str() rendering for extras -----------------------------------------------------------------


def _function_qualname(node: Call) -> str | None:
    """The qualname recorded in a by-value function's state (cloudpickle 1.x or 3.x)."""
    if cloudpickle_call(node, "_fill_function") and len(node.args.items) == 2:
        state = node.args.items[1]
        for key, value in state.items if isinstance(state, DictNode) else []:
            if (
                isinstance(key, Const)
                and key.value in ("qualname", "name")
                and isinstance(value, Const)
            ):
                return str(value.value)
    if cloudpickle_call(node, "_make_function"):
        for setter in node.state_calls:
            slots = (
                setter.args.items[1].items[1]
                if isinstance(setter.args.items[1], TupleNode)
                else None
            )
            for key, value in slots.items if isinstance(slots, DictNode) else []:
                if (
                    isinstance(key, Const)
                    and key.value == "__qualname__"
                    and isinstance(value, Const)
                ):
                    return str(value.value)
        name = node.args.items[2]
        return str(name.value) if isinstance(name, Const) else None
    return None


def _bare_type(node: Node) -> str:
    """``gym.spaces.box.Box`` out of ``<class 'gym.spaces.box.Box'>``."""
    name = type_name(node)
    return name.split("'")[1] if name.count("'") == 2 else name.strip("<>")


class _Walk:
    """One ``render`` call's state: the containers being rendered (a cycle shows as ``...``, as
    Python's repr shows ``[...]``) and what is left of its node and text budget."""

    def __init__(self) -> None:
        self.active: set[int] = set()
        self.nodes = WALK_NODES
        self.text = WALK_BYTES

    def spend(self, size: int) -> bool:
        """Take ``size`` bytes of text from the budget; False (nothing taken) if it would run out."""
        if size > self.text:
            return False
        self.text -= size
        return True


def render(node: Node, *, nested: bool = False, depth: int = 0, walk: _Walk | None = None) -> str:
    """An approximation of ``str(value)`` (``repr`` inside containers), computed statically.

    Bounded: each node is rendered at most once per path (cycles show ``...``), and one call
    renders at most the walk budget's nodes and text, then ``...``.
    """
    walk = walk if walk is not None else _Walk()
    if depth > MAX_NESTING or walk.nodes <= 0 or id(node) in walk.active:
        return "..."
    walk.nodes -= 1
    walk.active.add(id(node))
    try:
        return _render(completed(node), nested, depth, walk)
    except FormatError:
        return f"<{_bare_type(node)} object>"
    finally:
        walk.active.discard(id(node))


def _render(node: Node, nested: bool, depth: int, walk: _Walk) -> str:
    if isinstance(node, Const):
        text = repr(node.value) if nested else str(node.value)
        return text if walk.spend(len(text)) else "..."
    if isinstance(node, BytesNode):
        if not walk.spend(4 * len(node.data) + 16):  # repr is at most 4 characters a byte
            return "..."
        text = repr(bytes(node.data))
        return f"bytearray({text})" if node.mutable else text
    # Plain loops, not generator expressions: two Python frames per level of nesting, no more.
    if isinstance(node, TupleNode | ListNode):
        parts = []
        for item in node.items:
            parts.append(render(item, nested=True, depth=depth + 1, walk=walk))
        joined = ", ".join(parts)
        if isinstance(node, ListNode):
            return f"[{joined}]"
        return f"({joined},)" if len(node.items) == 1 else f"({joined})"
    pairs = pairs_of(node)
    if pairs is not None:
        parts = []
        ordered = isinstance(node, Call)  # OrderedDict's repr lists (key, value) pairs
        for key, value in pairs:
            key_text = render(key, nested=True, depth=depth + 1, walk=walk)
            value_text = render(value, nested=True, depth=depth + 1, walk=walk)
            parts.append(f"({key_text}, {value_text})" if ordered else f"{key_text}: {value_text}")
        joined = ", ".join(parts)
        return f"OrderedDict([{joined}])" if ordered else "{" + joined + "}"
    if is_array_node(node):
        array = array_of(node, None).as_array()
        return repr(array) if nested else str(array)
    if is_scalar_node(node):
        return str(scalar_of(node, None))
    member = goal_selection_member(node)
    if member is not None:
        number, name = member
        return (
            f"<GoalSelectionStrategy.{name}: {number}>"
            if nested
            else f"GoalSelectionStrategy.{name}"
        )
    if isinstance(node, Call) and node.func_is("numpy", "dtype"):
        dtype = dtype_of(node, None)
        return f"dtype('{dtype}')" if nested else str(dtype)
    if isinstance(node, Call) and node.func_is("numpy.random._pickle", "__randomstate_ctor"):
        return "RandomState(MT19937)"
    if isinstance(node, Call) and node.func_is("numpy.random", "__RandomState_ctor"):
        return "<mtrand.RandomState object>"
    if isinstance(node, Global):
        kind = global_type_name(node)
        if kind == "<class 'function'>":
            return f"<function {node.name}>"
        return f"<class '{node.dotted}'>"
    if isinstance(node, Call) and cloudpickle_call(node, FUNCTION_MAKERS):
        return f"<function {_function_qualname(node) or '<lambda>'}>"
    bare = _bare_type(node)
    if bare.startswith("gym.spaces.") and bare.rpartition(".")[2] in gym_repr.SPACES:
        attributes = {
            key.value: value
            for key, value in attribute_pairs(node)
            if isinstance(key, Const) and isinstance(key.value, str)
        }

        def show(item: Node) -> str:
            return render(item, depth=depth + 1, walk=walk)

        def items(item: Node) -> list[tuple[str, Node]] | None:
            pairs = pairs_of(item)
            if pairs is not None:
                return [(show(key), value) for key, value in pairs]
            if isinstance(item, TupleNode | ListNode):
                return [("", value) for value in item.items]
            return None

        shown = gym_repr.space_repr(bare.rpartition(".")[2], attributes, show, items)
        if shown is not None:
            return shown
    return f"<{bare} object>"


def attribute_pairs(node: Node) -> list[tuple[Node, Node]]:
    """The first-level attributes SB2 would list: a dict's items or the object's ``__dict__``
    (equal keys merged, as in the loaded object)."""
    return merged_pairs(_raw_attribute_pairs(node))


def _raw_attribute_pairs(node: Node) -> list[tuple[Node, Node]]:
    pairs = pairs_of(node)
    if pairs is not None:
        return pairs
    if isinstance(node, NewObj) or (
        isinstance(node, Call) and node.func_is("copyreg", "_reconstructor")
    ):
        state = node.build
        if isinstance(state, TupleNode) and len(state.items) == 2:
            state = state.items[0]
        return state.items if isinstance(state, DictNode) else []
    if (
        isinstance(node, Call)
        and cloudpickle_call(node, "_fill_function")
        and len(node.args.items) == 2
    ):
        state = node.args.items[1]
        for key, value in state.items if isinstance(state, DictNode) else []:
            if isinstance(key, Const) and key.value == "dict" and isinstance(value, DictNode):
                return value.items
        return []
    if isinstance(node, Call) and cloudpickle_call(
        node, ("_make_function", "_make_skeleton_class")
    ):
        for setter in node.state_calls:
            state = setter.args.items[1]
            if isinstance(state, TupleNode) and isinstance(state.items[0], DictNode):
                return state.items[0].items
        return []
    if isinstance(node, Call) and cloudpickle_call(node, "_rehydrate_skeleton_class"):
        class_dict = node.args.items[1]
        return class_dict.items if isinstance(class_dict, DictNode) else []
    return []
