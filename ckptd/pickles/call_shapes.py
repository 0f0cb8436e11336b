"""The argument shapes an allowlisted call may have (docs/formats.md, "The safe legacy reader").

A shape check returns None when a REDUCE of an allowlisted global has acceptable arguments, else the
reason it does not; ``ckptd.pickles.allowlist`` says which global gets which check. Shapes are
checked so that no allowed helper calls one of its arguments (``_make_skeleton_class`` calls its
metaclass argument, ``__randomstate_ctor`` its bit-generator constructor, ``copyreg._reconstructor``
its base...). The predicates (``is_bytes_like``, ``is_safe_dtype_call``...) are shared with the
reader and the verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ckptd.pickles.nodes import (
    CLOUDPICKLE_MODULES,
    BytesNode,
    Call,
    Const,
    DictNode,
    Global,
    ListNode,
    Node,
    TupleNode,
)
from ckptd.pickles.pynames import in_package, is_dotted_name, is_identifier

# numpy dtypes the reader accepts anywhere: plain numbers and bools, never objects or records.
# Always used with fullmatch: "$" would also accept a trailing newline ('f4\n').
SAFE_DTYPE = re.compile(r"b1|[iu][1248]|f[248]|c(8|16)")
NUMPY_CORE = ("numpy.core", "numpy._core")
BIT_GENERATORS = ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64")
BUILTIN_TYPE_CALLABLE = ("CodeType", "MethodType", "CellType", "FunctionType")
# subimport runs a module's import-time code: only these top-level packages may be imported.
SUBIMPORT_PACKAGES = frozenset(
    {
        "numpy",
        "gym",
        "stable_baselines",
        "tensorflow",
        "math",
        "collections",
        "functools",
        "abc",
        "sys",
    }
)
# Class-dict entries Python calls implicitly while building or subclassing a class.
_CLASS_HOOKS = frozenset(
    {
        "__init_subclass__",
        "__set_name__",
        "__class_getitem__",
        "__mro_entries__",
        "__prepare__",
        "register",
    }
)


# A call-shape check returns None when the call is acceptable, else the reason it is not.
ShapeCheck = Callable[[Call], "str | None"]


def is_const(node: Node, *types: type) -> bool:
    return isinstance(node, Const) and isinstance(node.value, types)


def _str_in(node: Node, allowed: tuple[str, ...] | frozenset[str]) -> bool:
    return isinstance(node, Const) and isinstance(node.value, str) and node.value in allowed


def _flag_in(node: Node, allowed: tuple[int, ...]) -> bool:
    """An int or bool constant among ``allowed`` (False == 0 and True == 1)."""
    return isinstance(node, Const) and isinstance(node.value, int) and node.value in allowed


def _arity(call: Call, *allowed: int) -> str | None:
    count = len(call.args.items)
    return None if count in allowed else f"called with {count} arguments"


def is_call_of(node: Node, module: str | tuple[str, ...], name: str | tuple[str, ...]) -> bool:
    """A REDUCE of the global ``module.name`` (either may be a tuple of choices)."""
    return isinstance(node, Call) and node.func_is(module, name)


def is_bytes_like(node: Node) -> bool:
    """A bytes payload: a BINBYTES node or the protocol-2 spellings of bytes."""
    if isinstance(node, BytesNode):
        return True
    return is_call_of(node, "_codecs", "encode") or is_call_of(
        node, "builtins", ("bytes", "bytearray")
    )


def is_builtin_type_call(node: Node, names: tuple[str, ...] = BUILTIN_TYPE_CALLABLE) -> bool:
    return (
        isinstance(node, Call)
        and node.func_is(CLOUDPICKLE_MODULES, "_builtin_type")
        and len(node.args.items) == 1
        and _str_in(node.args.items[0], names)
    )


def is_code_object(node: Node) -> bool:
    return isinstance(node, Call) and is_builtin_type_call(node.func, ("CodeType",))


def is_safe_dtype_call(node: Node) -> bool:
    return (
        is_call_of(node, "numpy", "dtype")
        and isinstance(node, Call)
        and len(node.args.items) >= 1
        and isinstance(node.args.items[0], Const)
        and isinstance(node.args.items[0].value, str)
        and SAFE_DTYPE.fullmatch(node.args.items[0].value) is not None
    )


def shape_no_args(call: Call) -> str | None:
    return _arity(call, 0)


def shape_codecs_encode(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and is_const(args[0], str) and _str_in(args[1], ("latin1", "latin-1")):
        return None
    return "_codecs.encode is only accepted as encode(<str>, 'latin1')"


def shape_bytes(call: Call) -> str | None:
    args = call.args.items
    if not args or (len(args) == 1 and is_bytes_like(args[0])):
        return None
    if len(args) == 2 and is_const(args[0], str) and _str_in(args[1], ("latin1", "latin-1")):
        return None
    return "bytes/bytearray are only accepted from bytes or a latin-1 string"


def shape_dtype(call: Call) -> str | None:
    args = call.args.items
    if not is_safe_dtype_call(call):
        return "numpy.dtype of anything but a plain numeric or bool type (object/record dtypes run code)"
    # numpy 2 writes dtype('f4', False, True); numpy 1.x wrote dtype('f4', 0, 1).
    if len(args) == 3 and all(_flag_in(arg, (0, 1)) for arg in args[1:]):
        return None
    return "numpy.dtype with unexpected arguments"


def shape_reconstruct(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 3
        and isinstance(args[0], Global)
        and args[0].is_("numpy", "ndarray")
        and isinstance(args[1], TupleNode)
        and all(is_const(item, int) for item in args[1].items)
        and (is_bytes_like(args[2]) or is_const(args[2], str))
    ):
        return None
    return "_reconstruct is only accepted as _reconstruct(numpy.ndarray, (0,), b'b')"


def shape_frombuffer(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 4
        and is_bytes_like(args[0])
        and is_safe_dtype_call(args[1])
        and isinstance(args[2], TupleNode)
        and all(is_const(item, int) for item in args[2].items)
        and _str_in(args[3], ("C", "F"))
    ):
        return None
    return "_frombuffer is only accepted with bytes, a numeric dtype, a shape and an order"


def shape_scalar(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and is_safe_dtype_call(args[0]) and is_bytes_like(args[1]):
        return None
    return "numpy scalar of anything but a numeric dtype and its bytes"


def _is_bitgen_class(node: Node) -> bool:
    return (
        isinstance(node, Global)
        and in_package(node.module, "numpy.random")
        and node.name in BIT_GENERATORS
    )


def shape_randomstate_ctor(call: Call) -> str | None:
    for arg in call.args.items:
        if _str_in(arg, BIT_GENERATORS) or is_call_of(
            arg, "numpy.random._pickle", "__bit_generator_ctor"
        ):
            continue
        if isinstance(arg, Global) and arg.is_("numpy.random._pickle", "__bit_generator_ctor"):
            continue
        return "RandomState constructor with an argument it would call"
    return _arity(call, 0, 1, 2)


def shape_bitgen_ctor(call: Call) -> str | None:
    args = call.args.items
    if len(args) <= 1 and all(
        _str_in(arg, BIT_GENERATORS) or _is_bitgen_class(arg) for arg in args
    ):
        return None
    return "bit generator constructor of something but a numpy bit generator"


def shape_getattr(call: Call) -> str | None:
    # cloudpickle 1.x writes getattr(<class>, <name>) for descriptors and getattr(sys, 'stdout')
    # for files. Its result can never be called (only Globals may be), so the lookup is inert.
    args = call.args.items
    if len(args) == 2 and is_const(args[1], str):
        assert isinstance(args[1], Const)
        if not is_identifier(args[1].value):
            return "getattr of a name that is not a Python identifier"
        target = args[0]
        if isinstance(target, Global) or is_call_of(target, CLOUDPICKLE_MODULES, "subimport"):
            return None
    return "getattr is only accepted on a named class or module with a constant name"


def shape_type(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 1 and is_const(args[0], type(None)):
        return None  # cloudpickle's type(None) for NoneType
    return "type() is only accepted as type(None)"


def shape_partial(call: Call) -> str | None:
    return _arity(call, 1)


def shape_frozenset(call: Call) -> str | None:
    args = call.args.items
    if not args or (len(args) == 1 and isinstance(args[0], ListNode)):
        return None
    return "set/frozenset is only accepted from a list"


def shape_complex(call: Call) -> str | None:
    if len(call.args.items) == 2 and all(is_const(arg, int, float) for arg in call.args.items):
        return None
    return "complex() is only accepted from two numbers"


def shape_method_wrapper(call: Call) -> str | None:
    # classmethod(f) / staticmethod(f) only wrap; cloudpickle writes them for by-value classes.
    return _arity(call, 1)


# HER's enum, defined in stable_baselines/her/replay_buffer.py in every version that has HER
# (2.6.0-2.10.2), with these members; an Enum member pickles as ``GoalSelectionStrategy(value)``.
GOAL_SELECTION_STRATEGY_GLOBAL = ("stable_baselines.her.replay_buffer", "GoalSelectionStrategy")
GOAL_SELECTION_STRATEGIES = {0: "FUTURE", 1: "FINAL", 2: "EPISODE", 3: "RANDOM"}


def shape_enum(call: Call) -> str | None:
    if len(call.args.items) == 1 and is_const(call.args.items[0], int):
        value = call.args.items[0]
        assert isinstance(value, Const)
        if not isinstance(value.value, bool) and value.value in GOAL_SELECTION_STRATEGIES:
            return None
        return f"GoalSelectionStrategy has no member with value {value.value!r}"
    return "enum lookup with a non-constant value"


# cloudpickle helpers


def shape_builtin_type(call: Call) -> str | None:
    if is_builtin_type_call(call, (*BUILTIN_TYPE_CALLABLE, "ModuleType")):
        return None
    return "_builtin_type of a type outside CodeType/MethodType/CellType/FunctionType"


def shape_subimport(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 1 and is_const(args[0], str):
        assert isinstance(args[0], Const) and isinstance(args[0].value, str)
        module = args[0].value
        if any(in_package(module, package) for package in SUBIMPORT_PACKAGES):
            return None
        return f"subimport of {module!r} (importing runs its code; not an allowed package)"
    return "subimport of a non-constant name"


def shape_dynamic_subimport(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and is_const(args[0], str) and isinstance(args[1], DictNode):
        assert isinstance(args[0], Const)
        if is_dotted_name(args[0].value):
            return None
    return "dynamic_subimport with unexpected arguments"


def shape_make_skel_func(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) in (2, 3)
        and is_code_object(args[0])
        and is_const(args[1], int)
        and (len(args) == 2 or isinstance(args[2], DictNode) or is_const(args[2], str, type(None)))
    ):
        return None
    return "_make_skel_func without a code object"


def shape_fill_function(call: Call) -> str | None:
    args = call.args.items
    if len(args) in (2, 5, 6) and is_call_of(args[0], CLOUDPICKLE_MODULES, "_make_skel_func"):
        return None
    return "_fill_function applied to something _make_skel_func did not create"


def shape_make_function(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 5 and is_code_object(args[0]) and isinstance(args[1], DictNode):
        return None
    return "_make_function without a code object and a globals dict"


def shape_make_cell(call: Call) -> str | None:
    return _arity(call, 0, 1)


def _class_state_problem(state: Node) -> str | None:
    """A by-value class's dict may not define hooks Python would call while loading."""
    if not isinstance(state, DictNode):
        return "class state is not a dict"
    for key, value in state.items:
        if not is_const(key, str):
            return "class state with a non-string key"
        assert isinstance(key, Const) and isinstance(key.value, str)
        if key.value in _CLASS_HOOKS:
            return f"class state defines {key.value}, which Python calls while loading"
        if key.value == "_abc_impl" and not (isinstance(value, ListNode) and not value.items):
            return "class state registers ABC subclasses (register() would be called)"
    return None


def _is_skeleton_class(node: Node) -> bool:
    return is_call_of(
        node, CLOUDPICKLE_MODULES, ("_make_skeleton_class", "_rehydrate_skeleton_class")
    )


def shape_make_skeleton_class(call: Call) -> str | None:
    args = call.args.items
    if len(args) != 6:
        return "_make_skeleton_class with unexpected arguments"
    meta, name, bases, type_kwargs = args[0], args[1], args[2], args[3]
    if not (
        isinstance(meta, Global) and (meta.is_("builtins", "type") or meta.is_("abc", "ABCMeta"))
    ):
        return "_make_skeleton_class with a metaclass other than type/ABCMeta"
    if not is_const(name, str) or not isinstance(bases, TupleNode):
        return "_make_skeleton_class with a non-constant name or bases"
    for base in bases.items:
        if not (isinstance(base, Global) or _is_skeleton_class(base)):
            return "_make_skeleton_class with a base that is not a named or by-value class"
    if not isinstance(type_kwargs, DictNode) or not all(
        is_const(value, str, type(None)) or isinstance(value, TupleNode | ListNode)
        for _, value in type_kwargs.items
    ):
        return "_make_skeleton_class with type arguments that are not constants"
    return None


def shape_rehydrate(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and is_call_of(args[0], CLOUDPICKLE_MODULES, "_make_skeleton_class"):
        return _class_state_problem(args[1])
    return "_rehydrate_skeleton_class of something _make_skeleton_class did not create"


def _setter_state(call: Call) -> tuple[Node, Node] | None:
    args = call.args.items
    if len(args) == 2 and isinstance(args[1], TupleNode) and len(args[1].items) == 2:
        return args[1].items[0], args[1].items[1]
    return None


def shape_function_setstate(call: Call) -> str | None:
    state = _setter_state(call)
    if (
        state is not None
        and is_call_of(call.args.items[0], CLOUDPICKLE_MODULES, "_make_function")
        and isinstance(state[0], DictNode)
        and isinstance(state[1], DictNode)
    ):
        return None
    return "_function_setstate applied to something _make_function did not create"


def shape_class_setstate(call: Call) -> str | None:
    state = _setter_state(call)
    if state is not None and is_call_of(
        call.args.items[0], CLOUDPICKLE_MODULES, "_make_skeleton_class"
    ):
        return _class_state_problem(state[0])
    return "_class_setstate applied to something _make_skeleton_class did not create"
