"""``str(type(value))`` for the value a ``data`` node loads to, decided statically.

Exact for instances (NEWOBJ), numpy values, functions, bytes, containers and by-value classes; for
a class referenced by name the metaclass is inferred (see ``ckptd.convert.legacy_data``).
"""

from __future__ import annotations

from ckptd.pickles.arrays import SCALAR_TYPE_NAMES, is_array_node, is_scalar_node, scalar_descr
from ckptd.pickles.call_shapes import (
    GOAL_SELECTION_STRATEGIES,
    GOAL_SELECTION_STRATEGY_GLOBAL,
    is_builtin_type_call,
)
from ckptd.pickles.nodes import (
    CLOUDPICKLE_MODULES,
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
    is_ordered_dict_call,
)

_RANDOM_STATE_CTORS = ("__RandomState_ctor", "__randomstate_ctor")
FUNCTION_MAKERS = ("_fill_function", "_make_skel_func", "_make_function")
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


def cloudpickle_call(node: Node, names: str | tuple[str, ...]) -> bool:
    return isinstance(node, Call) and node.func_is(CLOUDPICKLE_MODULES, names)


GOAL_SELECTION_ENUM = "<enum 'GoalSelectionStrategy'>"


def goal_selection_member(node: Node) -> tuple[int, str] | None:
    """(value, name) of a HER ``GoalSelectionStrategy(value)`` enum member, else None."""
    if not (isinstance(node, Call) and node.func_is(*GOAL_SELECTION_STRATEGY_GLOBAL)):
        return None
    value = node.args.items[0] if len(node.args.items) == 1 else None
    if isinstance(value, Const) and isinstance(value.value, int):
        name = GOAL_SELECTION_STRATEGIES.get(value.value)
        if name is not None:
            return value.value, name
    return None


# --- type names ------------------------------------------------------------------------------


def global_type_name(node: Global) -> str:
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
        if cloudpickle_call(node, "_rehydrate_skeleton_class") and isinstance(node, Call)
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
        return global_type_name(node)
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
    if cloudpickle_call(node, FUNCTION_MAKERS):
        return "<class 'function'>"
    if cloudpickle_call(node, _CLASS_MAKERS):
        return _metaclass_name(node)
    if cloudpickle_call(node, ("_make_cell", "_make_empty_cell")):
        return "<class 'cell'>"
    if cloudpickle_call(node, ("subimport", "dynamic_subimport")):
        return "<class 'module'>"
    if cloudpickle_call(node, "_builtin_type"):
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
        return GOAL_SELECTION_ENUM
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
    if cloudpickle_call(node, ("_gen_ellipsis",)):
        return "<class 'ellipsis'>"
    return "<class 'object'>"  # getattr(...) and state-setter results: not knowable statically
