"""What stable-baselines' ``data_to_json`` would store for each ``data`` value, decided statically.

SB2's ``data_to_json`` (save_util.py) keeps a value as JSON when ``json.dumps(value)`` works, and
otherwise stores ``{":type:": str(type(value)), ":serialized:": b64(cloudpickle.dumps(value)),
**extras}`` where the extras are the value's first-level attributes (``__dict__``, or the items of
a dict) — JSON-able ones as they are, the rest as ``str(value)``. We compute the same from the
inert graph, for the value a trusted load of the original would give:

* JSON: None/bool/int/float/str, tuples and lists (as lists), dicts and OrderedDicts whose keys
  ``json.dumps`` accepts (str, int, float, bool, None; converted to strings the way ``json``
  does), and ``np.float64`` scalars (a float subclass). NaN and ±inf stay floats.
* Everything else is an :class:`OpaqueValue` whose ``pickled`` is re-emitted from the graph.

Approximations (a static reader cannot import the classes a checkpoint names):

* ``type_name`` is exact for instances (NEWOBJ), numpy values, functions, bytes, containers and
  by-value classes. For a class referenced by name we cannot see its metaclass: stable-baselines
  policies, models and noises are ``abc.ABCMeta`` (they derive from ``ABC``), schedules and
  ``AdaptiveParamNoiseSpec`` are ``type``; other CamelCase names are reported as ``type`` and
  lower-case names as ``function``. numpy dtypes are reported as numpy 1.x's ``numpy.dtype``.
* ``extras`` of a class referenced by name only hold ``__module__`` (its ``__dict__`` is not in
  the file). ``str()`` of arrays, dtypes, numpy scalars and containers of plain values is
  computed exactly with numpy; objects and functions render like CPython's default ``repr`` but
  without the memory address (``<function constfn.<locals>.func>``,
  ``<gym.spaces.box.Box object>``); a RandomState renders as numpy >= 1.17 does
  (``RandomState(MT19937)``) or, for numpy < 1.17 pickles, as ``<mtrand.RandomState object>``.
* A circular JSON-looking value (SB2 itself would crash with ``ValueError``) is stored opaque.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ckptd.errors import BudgetExceeded, FormatError
from ckptd.formats.model import DataValue, JsonValue, OpaqueValue
from ckptd.limits import DEFAULT_LIMITS
from ckptd.pickles import gym_repr
from ckptd.pickles.allowlist import is_code_global
from ckptd.pickles.arrays import (
    SCALAR_TYPE_NAMES,
    array_of,
    dtype_of,
    is_array_node,
    is_scalar_node,
    scalar_descr,
    scalar_of,
)
from ckptd.pickles.call_shapes import (
    GOAL_SELECTION_STRATEGIES,
    GOAL_SELECTION_STRATEGY_GLOBAL,
    is_builtin_type_call,
)
from ckptd.pickles.dictkeys import merged_pairs
from ckptd.pickles.emit import emit_pickle
from ckptd.pickles.nodes import (
    CLOUDPICKLE_MODULES,
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
    completed,
    is_ordered_dict_call,
    reachable,
)

# A tree walk's own ceiling (the graph's measured size is checked against limits before any walk;
# this catches what that measure cannot see exactly: the paths through a cycle).
_WALK_NODES = DEFAULT_LIMITS.max_expanded_nodes
_WALK_BYTES = DEFAULT_LIMITS.max_memory


class _NotJson(Exception):
    """Raised inside the JSON conversion when ``json.dumps`` would raise TypeError (or loop)."""


_RANDOM_STATE_CTORS = ("__RandomState_ctor", "__randomstate_ctor")
_FUNCTION_MAKERS = ("_fill_function", "_make_skel_func", "_make_function")
_CLASS_MAKERS = ("_make_skeleton_class", "_rehydrate_skeleton_class")
_PLAIN_SB2_CLASSES = frozenset(
    {
        "AdaptiveParamNoiseSpec",
        "Schedule",
        "ConstantSchedule",
        "PiecewiseSchedule",
        "LinearSchedule",
        "Memory",  # stable_baselines.ddpg.memory (<= 2.7), DDPG's memory_policy
    }
)


def _cp(node: Node, names: str | tuple[str, ...]) -> bool:
    return isinstance(node, Call) and node.func_is(CLOUDPICKLE_MODULES, names)


# --- JSON --------------------------------------------------------------------------------------


def _json_key(node: Node) -> str:
    value = node.value if isinstance(node, Const) else _NotJson
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    raise _NotJson


def _pairs_of(node: Node) -> list[tuple[Node, Node]] | None:
    """A dict's items as the loaded dict holds them: equal keys merged as Python merges them."""
    if isinstance(node, DictNode):
        return merged_pairs(node.items)
    if is_ordered_dict_call(node) and isinstance(node, Call) and node.build is None:
        return merged_pairs(node.setitems)
    return None


_GOAL_SELECTION_ENUM = "<enum 'GoalSelectionStrategy'>"


def _goal_selection_member(node: Node) -> tuple[int, str] | None:
    """(value, name) of a HER ``GoalSelectionStrategy(value)`` enum member, else None."""
    if not (isinstance(node, Call) and node.func_is(*GOAL_SELECTION_STRATEGY_GLOBAL)):
        return None
    value = node.args.items[0] if len(node.args.items) == 1 else None
    if isinstance(value, Const) and isinstance(value.value, int):
        name = GOAL_SELECTION_STRATEGIES.get(value.value)
        if name is not None:
            return value.value, name
    return None


def _to_json(node: Node, active: set[int], depth: int, work: list[int]) -> JsonValue:
    if depth > MAX_NESTING:
        raise _NotJson
    work[0] += 1
    if work[0] > _WALK_NODES:
        raise BudgetExceeded(
            "max_expanded_nodes", _WALK_NODES, "more nodes reached through cycles", offset=node.pos
        )
    if isinstance(node, Const):
        return node.value
    if is_scalar_node(node) and scalar_descr(node) == "f8":
        return float(scalar_of(node, None))  # np.float64 is a float: json writes it as one
    if id(node) in active:
        raise _NotJson  # circular: json.dumps raises ValueError, SB2 cannot save it as JSON
    active.add(id(node))
    try:
        if isinstance(node, TupleNode | ListNode):
            return [_to_json(item, active, depth + 1, work) for item in node.items]
        pairs = _pairs_of(node)
        if pairs is not None:
            result: dict[str, JsonValue] = {}
            for key, value in pairs:
                result[_json_key(key)] = _to_json(value, active, depth + 1, work)
            return result
        raise _NotJson
    finally:
        active.discard(id(node))


def json_value(node: Node) -> tuple[bool, JsonValue]:
    """(True, value) when SB2 would store ``node`` as plain JSON, else (False, None)."""
    try:
        return True, _to_json(node, set(), 0, [0])
    except (_NotJson, FormatError):
        return False, None


# --- type names ------------------------------------------------------------------------------


def _global_type_name(node: Global) -> str:
    module, name = node.module, node.name
    if module.startswith("stable_baselines") and name[:1].isupper():
        if name == "GoalSelectionStrategy":
            return "<class 'enum.EnumMeta'>"
        return "<class 'type'>" if name in _PLAIN_SB2_CLASSES else "<class 'abc.ABCMeta'>"
    if (module, name) == ("abc", "ABC"):
        return "<class 'abc.ABCMeta'>"
    if (module, name) == ("builtins", "getattr"):
        return "<class 'builtin_function_or_method'>"
    if (module, name) == ("builtins", "Ellipsis"):
        return "<class 'ellipsis'>"
    if (module, name) == ("builtins", "NotImplemented"):
        return "<class 'NotImplementedType'>"
    return "<class 'type'>" if name[:1].isupper() or module == "builtins" else "<class 'function'>"


def _metaclass_name(node: Node) -> str:
    maker = (
        node.args.items[0]
        if _cp(node, "_rehydrate_skeleton_class") and isinstance(node, Call)
        else node
    )
    if isinstance(maker, Call) and maker.args.items and isinstance(maker.args.items[0], Global):
        meta = maker.args.items[0]
        return "<class 'type'>" if meta.is_("builtins", "type") else f"<class '{meta.dotted}'>"
    return "<class 'type'>"


_BUILTIN_TYPE_INSTANCES = {
    "CodeType": "code",
    "MethodType": "method",
    "CellType": "cell",
    "FunctionType": "function",
    "ModuleType": "module",
}


def type_name(node: Node) -> str:
    """``str(type(value))`` for the value ``node`` loads to (see the module docstring for limits)."""
    simple = {TupleNode: "tuple", ListNode: "list", DictNode: "dict", Const: None}
    if isinstance(node, Const):
        return f"<class '{type(node.value).__name__}'>"
    if isinstance(node, BytesNode):
        return "<class 'bytearray'>" if node.mutable else "<class 'bytes'>"
    if isinstance(node, SetNode):
        return "<class 'frozenset'>" if node.frozen else "<class 'set'>"
    if type(node) in simple:
        return f"<class '{simple[type(node)]}'>"
    if isinstance(node, Global):
        return _global_type_name(node)
    if isinstance(node, NewObj):
        cls = node.cls
        return f"<class '{cls.dotted}'>" if isinstance(cls, Global) else "<class 'object'>"
    assert isinstance(node, Call)
    return _call_type_name(node)


def _call_type_name(node: Call) -> str:
    if is_array_node(node):
        return "<class 'numpy.ndarray'>"
    if is_scalar_node(node):
        descr = scalar_descr(node) or ""
        return f"<class 'numpy.{SCALAR_TYPE_NAMES.get(descr, 'generic')}'>"
    if node.func_is("numpy", "dtype"):
        return "<class 'numpy.dtype'>"
    if is_ordered_dict_call(node):
        return "<class 'collections.OrderedDict'>"
    if node.func_is(("numpy.random", "numpy.random._pickle"), _RANDOM_STATE_CTORS):
        return "<class 'numpy.random.mtrand.RandomState'>"
    if node.func_is("numpy.random._pickle", "__bit_generator_ctor"):
        arg = node.args.items[0] if node.args.items else None
        name = (
            arg.name
            if isinstance(arg, Global)
            else (arg.value if isinstance(arg, Const) else "MT19937")
        )
        return f"<class 'numpy.random._{str(name).lower()}.{name}'>"
    if _cp(node, _FUNCTION_MAKERS):
        return "<class 'function'>"
    if _cp(node, _CLASS_MAKERS):
        return _metaclass_name(node)
    if _cp(node, ("_make_cell", "_make_empty_cell")):
        return "<class 'cell'>"
    if _cp(node, ("subimport", "dynamic_subimport")):
        return "<class 'module'>"
    if _cp(node, "_builtin_type"):
        return "<class 'type'>"
    if is_builtin_type_call(node.func):
        assert isinstance(node.func, Call)
        const = node.func.args.items[0]
        assert isinstance(const, Const)
        return f"<class '{_BUILTIN_TYPE_INSTANCES.get(str(const.value), 'object')}'>"
    if node.func_is("functools", "partial"):
        return "<class 'functools.partial'>"
    if node.func_is("copyreg", "_reconstructor") and isinstance(node.args.items[0], Global):
        return f"<class '{node.args.items[0].dotted}'>"
    if node.func_is(*GOAL_SELECTION_STRATEGY_GLOBAL):
        return _GOAL_SELECTION_ENUM
    builtin_results = {
        "encode": "bytes",
        "bytes": "bytes",
        "bytearray": "bytearray",
        "frozenset": "frozenset",
        "set": "set",
        "complex": "complex",
        "type": "type",
    }
    if isinstance(node.func, Global) and node.func.module in ("_codecs", "builtins"):
        return f"<class '{builtin_results.get(node.func.name, 'object')}'>"
    if _cp(node, ("_gen_ellipsis",)):
        return "<class 'ellipsis'>"
    return "<class 'object'>"  # getattr(...) and state-setter results: not knowable statically


# --- str() rendering for extras -----------------------------------------------------------------


def _function_qualname(node: Call) -> str | None:
    """The qualname recorded in a by-value function's state (cloudpickle 1.x or 3.x)."""
    if _cp(node, "_fill_function") and len(node.args.items) == 2:
        state = node.args.items[1]
        for key, value in state.items if isinstance(state, DictNode) else []:
            if (
                isinstance(key, Const)
                and key.value in ("qualname", "name")
                and isinstance(value, Const)
            ):
                return str(value.value)
    if _cp(node, "_make_function"):
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
        self.nodes = _WALK_NODES
        self.text = _WALK_BYTES

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
    pairs = _pairs_of(node)
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
    member = _goal_selection_member(node)
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
        kind = _global_type_name(node)
        if kind == "<class 'function'>":
            return f"<function {node.name}>"
        return f"<class '{node.dotted}'>"
    if isinstance(node, Call) and _cp(node, _FUNCTION_MAKERS):
        return f"<function {_function_qualname(node) or '<lambda>'}>"
    bare = _bare_type(node)
    if bare.startswith("gym.spaces.") and bare.rpartition(".")[2] in gym_repr.SPACES:
        attributes = {
            key.value: value
            for key, value in _attribute_pairs(node)
            if isinstance(key, Const) and isinstance(key.value, str)
        }

        def show(item: Node) -> str:
            return render(item, depth=depth + 1, walk=walk)

        def items(item: Node) -> list[tuple[str, Node]] | None:
            pairs = _pairs_of(item)
            if pairs is not None:
                return [(show(key), value) for key, value in pairs]
            if isinstance(item, TupleNode | ListNode):
                return [("", value) for value in item.items]
            return None

        shown = gym_repr.space_repr(bare.rpartition(".")[2], attributes, show, items)
        if shown is not None:
            return shown
    return f"<{bare} object>"


# --- extras ------------------------------------------------------------------------------------


def _attribute_pairs(node: Node) -> list[tuple[Node, Node]]:
    """The first-level attributes SB2 would list: a dict's items or the object's ``__dict__``
    (equal keys merged, as in the loaded object)."""
    return merged_pairs(_raw_attribute_pairs(node))


def _raw_attribute_pairs(node: Node) -> list[tuple[Node, Node]]:
    pairs = _pairs_of(node)
    if pairs is not None:
        return pairs
    if isinstance(node, NewObj) or (
        isinstance(node, Call) and node.func_is("copyreg", "_reconstructor")
    ):
        state = node.build
        if isinstance(state, TupleNode) and len(state.items) == 2:
            state = state.items[0]
        return state.items if isinstance(state, DictNode) else []
    if isinstance(node, Call) and _cp(node, "_fill_function") and len(node.args.items) == 2:
        state = node.args.items[1]
        for key, value in state.items if isinstance(state, DictNode) else []:
            if isinstance(key, Const) and key.value == "dict" and isinstance(value, DictNode):
                return value.items
        return []
    if isinstance(node, Call) and _cp(node, ("_make_function", "_make_skeleton_class")):
        for setter in node.state_calls:
            state = setter.args.items[1]
            if isinstance(state, TupleNode) and isinstance(state.items[0], DictNode):
                return state.items[0].items
        return []
    if isinstance(node, Call) and _cp(node, "_rehydrate_skeleton_class"):
        class_dict = node.args.items[1]
        return class_dict.items if isinstance(class_dict, DictNode) else []
    return []


def extras_of(node: Node) -> dict[str, JsonValue]:
    """SB2's first-level extras, keyed as ``json.dumps`` writes the attribute names."""
    extras: dict[str, JsonValue] = {}
    if isinstance(node, Global) and _global_type_name(node) != "<class 'function'>":
        extras["__module__"] = node.module
        return extras
    member = _goal_selection_member(node)
    if member is not None:
        # vars() of an Enum member on Python 3.5-3.7: _value_, _name_, __objclass__.
        number, label = member
        return {"_value_": number, "_name_": label, "__objclass__": _GOAL_SELECTION_ENUM}
    for key, value in _attribute_pairs(node):
        try:
            # json.dumps turns True into "true", None into "null", 1.5 into "1.5", nan into "NaN".
            name = _json_key(key)
        except _NotJson:
            # SB2's json.dumps would raise TypeError here (its save fails); keep a readable name.
            name = render(key)
        ok, plain = json_value(value)
        extras[name] = plain if ok else render(value)
    return extras


# --- the entry point ---------------------------------------------------------------------------


def carries_code(node: Node) -> bool:
    """True when the value holds a function or class rebuilt by value (code that may run later)."""
    return any(isinstance(item, Global) and is_code_global(item) for item in reachable(node))


def data_value(node: Node, *, source: str | None) -> DataValue:
    """The DataValue SB2's ``data_to_json`` would derive from the trusted load of ``node``."""
    node = completed(node)  # a skeleton referenced again through the memo is the filled object
    ok, plain = json_value(node)
    if ok:
        return plain
    emitted = emit_pickle(node, source=source)
    return OpaqueValue(
        type_name=type_name(node),
        pickled=emitted.data,
        extras=extras_of(node),
        globals=emitted.globals,
        carries_code=carries_code(node),
    )


def data_values(pairs: Mapping[str, Node], *, source: str | None) -> dict[str, DataValue]:
    return {key: data_value(node, source=source) for key, node in pairs.items()}
