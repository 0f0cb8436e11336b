"""The structural allowlist: which globals a checkpoint may name and how each may be used.

Step 4 of the safe legacy reader (docs/formats.md, "The safe legacy reader"). Every ``Global`` in
the graph must be listed here as an exact ``(module, name)`` pair (or fall under one of the few
prefix families below, never with a dotted name), in one of three layers:

* ``DATA``: things the reader materializes (OrderedDict, numpy arrays/dtypes/scalars, bytes);
* ``REFERENCE``: classes and functions a checkpoint refers to by name (policy classes, gym
  spaces, TF activations, RandomState constructors, ``functools.partial``...);
* ``CODE``: cloudpickle's helpers that rebuild functions and classes by value.

Each entry says whether it may be called by REDUCE (and with which argument shapes), used as a
NEWOBJ class, or receive a BUILD. The one rule that separates a genuine checkpoint from an
attack (both use the same helpers) is that **nothing constructed is ever called**: ``Call.func``
must be a ``Global``, except ``_builtin_type(<CodeType|MethodType|CellType|FunctionType>)``,
whose result is a type whose call only builds an object. Shapes are checked so that no allowed
helper calls one of its arguments either (``_make_skeleton_class`` calls its metaclass argument,
``__randomstate_ctor`` its bit-generator constructor, ``copyreg._reconstructor`` its base...).

Known gaps, by design: a function carried by value may do anything *when it is called later*
(a schedule lambda); that cannot be decided statically and is reported as ``carries_code``.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from ckptd.errors import UnsafeCheckpoint
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.graph import (
    CLOUDPICKLE_MODULES,
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
    build_graph,
    is_ordered_dict_call,
)
from ckptd.pickles.ops import parse_ops
from ckptd.pickles.pynames import in_package, is_dotted_name, is_identifier, name_problem

logger = logging.getLogger(__name__)

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
TF_ACTIVATIONS = frozenset(
    {
        "relu",
        "relu6",
        "elu",
        "selu",
        "softplus",
        "softsign",
        "tanh",
        "sigmoid",
        "leaky_relu",
        "swish",
        "crelu",
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


class Layer(enum.Enum):
    DATA = "data"
    REFERENCE = "reference"
    CODE = "code"


# A call-shape check returns None when the call is acceptable, else the reason it is not.
ShapeCheck = Callable[[Call], "str | None"]


@dataclass(frozen=True)
class Rule:
    """How one allowlisted global may be used."""

    layer: Layer
    call: ShapeCheck | None = None  # None: may not be called
    newobj: bool = False  # may be the class of NEWOBJ / copyreg._reconstructor
    build: bool = False  # the object its call returns may receive BUILD


@dataclass(frozen=True)
class PickleReport:
    """What the static check of one pickle found."""

    protocol: int
    globals: tuple[str, ...]  # "module.name", sorted
    carries_code: bool
    opcodes: int = 0  # how many the stream has (a zip's pickles share one budget of them)


# --- argument-shape helpers ------------------------------------------------------------------


def _const(node: Node, *types: type) -> bool:
    return isinstance(node, Const) and isinstance(node.value, types)


def _str_in(node: Node, allowed: tuple[str, ...] | frozenset[str]) -> bool:
    return isinstance(node, Const) and isinstance(node.value, str) and node.value in allowed


def _flag_in(node: Node, allowed: tuple[int, ...]) -> bool:
    """An int or bool constant among ``allowed`` (False == 0 and True == 1)."""
    return isinstance(node, Const) and isinstance(node.value, int) and node.value in allowed


def _arity(call: Call, *allowed: int) -> str | None:
    count = len(call.args.items)
    return None if count in allowed else f"called with {count} arguments"


def _is_call_of(node: Node, module: str | tuple[str, ...], name: str | tuple[str, ...]) -> bool:
    return isinstance(node, Call) and node.func_is(module, name)


def is_bytes_like(node: Node) -> bool:
    """A bytes payload: a BINBYTES node or the protocol-2 spellings of bytes."""
    if isinstance(node, BytesNode):
        return True
    return _is_call_of(node, "_codecs", "encode") or _is_call_of(
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
        _is_call_of(node, "numpy", "dtype")
        and isinstance(node, Call)
        and len(node.args.items) >= 1
        and isinstance(node.args.items[0], Const)
        and isinstance(node.args.items[0].value, str)
        and SAFE_DTYPE.fullmatch(node.args.items[0].value) is not None
    )


def _shape_no_args(call: Call) -> str | None:
    return _arity(call, 0)


def _shape_codecs_encode(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and _const(args[0], str) and _str_in(args[1], ("latin1", "latin-1")):
        return None
    return "_codecs.encode is only accepted as encode(<str>, 'latin1')"


def _shape_bytes(call: Call) -> str | None:
    args = call.args.items
    if not args or (len(args) == 1 and is_bytes_like(args[0])):
        return None
    if len(args) == 2 and _const(args[0], str) and _str_in(args[1], ("latin1", "latin-1")):
        return None
    return "bytes/bytearray are only accepted from bytes or a latin-1 string"


def _shape_dtype(call: Call) -> str | None:
    args = call.args.items
    if not is_safe_dtype_call(call):
        return "numpy.dtype of anything but a plain numeric or bool type (object/record dtypes run code)"
    # numpy 2 writes dtype('f4', False, True); numpy 1.x wrote dtype('f4', 0, 1).
    if len(args) == 3 and all(_flag_in(arg, (0, 1)) for arg in args[1:]):
        return None
    return "numpy.dtype with unexpected arguments"


def _shape_reconstruct(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 3
        and isinstance(args[0], Global)
        and args[0].is_("numpy", "ndarray")
        and isinstance(args[1], TupleNode)
        and all(_const(item, int) for item in args[1].items)
        and (is_bytes_like(args[2]) or _const(args[2], str))
    ):
        return None
    return "_reconstruct is only accepted as _reconstruct(numpy.ndarray, (0,), b'b')"


def _shape_frombuffer(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 4
        and is_bytes_like(args[0])
        and is_safe_dtype_call(args[1])
        and isinstance(args[2], TupleNode)
        and all(_const(item, int) for item in args[2].items)
        and _str_in(args[3], ("C", "F"))
    ):
        return None
    return "_frombuffer is only accepted with bytes, a numeric dtype, a shape and an order"


def _shape_scalar(call: Call) -> str | None:
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


def _shape_randomstate_ctor(call: Call) -> str | None:
    for arg in call.args.items:
        if _str_in(arg, BIT_GENERATORS) or _is_call_of(
            arg, "numpy.random._pickle", "__bit_generator_ctor"
        ):
            continue
        if isinstance(arg, Global) and arg.is_("numpy.random._pickle", "__bit_generator_ctor"):
            continue
        return "RandomState constructor with an argument it would call"
    return _arity(call, 0, 1, 2)


def _shape_bitgen_ctor(call: Call) -> str | None:
    args = call.args.items
    if len(args) <= 1 and all(
        _str_in(arg, BIT_GENERATORS) or _is_bitgen_class(arg) for arg in args
    ):
        return None
    return "bit generator constructor of something but a numpy bit generator"


def _shape_getattr(call: Call) -> str | None:
    # cloudpickle 1.x writes getattr(<class>, <name>) for descriptors and getattr(sys, 'stdout')
    # for files. Its result can never be called (only Globals may be), so the lookup is inert.
    args = call.args.items
    if len(args) == 2 and _const(args[1], str):
        assert isinstance(args[1], Const)
        if not is_identifier(args[1].value):
            return "getattr of a name that is not a Python identifier"
        target = args[0]
        if isinstance(target, Global) or _is_call_of(target, CLOUDPICKLE_MODULES, "subimport"):
            return None
    return "getattr is only accepted on a named class or module with a constant name"


def _shape_type(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 1 and _const(args[0], type(None)):
        return None  # cloudpickle's type(None) for NoneType
    return "type() is only accepted as type(None)"


def _shape_partial(call: Call) -> str | None:
    return _arity(call, 1)


def _shape_reconstructor(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 3
        and isinstance(args[0], Global)
        and isinstance(args[1], Global)
        and args[1].is_("builtins", "object")
        and _const(args[2], type(None))
    ):
        rule = lookup(args[0].module, args[0].name)
        if rule is not None and rule.newobj:
            return None
    return "copyreg._reconstructor is only accepted for an allowlisted class over object"


def _shape_frozenset(call: Call) -> str | None:
    args = call.args.items
    if not args or (len(args) == 1 and isinstance(args[0], ListNode)):
        return None
    return "set/frozenset is only accepted from a list"


def _shape_complex(call: Call) -> str | None:
    if len(call.args.items) == 2 and all(_const(arg, int, float) for arg in call.args.items):
        return None
    return "complex() is only accepted from two numbers"


def _shape_method_wrapper(call: Call) -> str | None:
    # classmethod(f) / staticmethod(f) only wrap; cloudpickle writes them for by-value classes.
    return _arity(call, 1)


# HER's enum, defined in stable_baselines/her/replay_buffer.py in every version that has HER
# (2.6.0-2.10.2), with these members; an Enum member pickles as ``GoalSelectionStrategy(value)``.
GOAL_SELECTION_STRATEGY_GLOBAL = ("stable_baselines.her.replay_buffer", "GoalSelectionStrategy")
GOAL_SELECTION_STRATEGIES = {0: "FUTURE", 1: "FINAL", 2: "EPISODE", 3: "RANDOM"}


def _shape_enum(call: Call) -> str | None:
    if len(call.args.items) == 1 and _const(call.args.items[0], int):
        value = call.args.items[0]
        assert isinstance(value, Const)
        if not isinstance(value.value, bool) and value.value in GOAL_SELECTION_STRATEGIES:
            return None
        return f"GoalSelectionStrategy has no member with value {value.value!r}"
    return "enum lookup with a non-constant value"


# cloudpickle helpers


def _shape_builtin_type(call: Call) -> str | None:
    if is_builtin_type_call(call, (*BUILTIN_TYPE_CALLABLE, "ModuleType")):
        return None
    return "_builtin_type of a type outside CodeType/MethodType/CellType/FunctionType"


def _shape_subimport(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 1 and _const(args[0], str):
        assert isinstance(args[0], Const) and isinstance(args[0].value, str)
        module = args[0].value
        if any(in_package(module, package) for package in SUBIMPORT_PACKAGES):
            return None
        return f"subimport of {module!r} (importing runs its code; not an allowed package)"
    return "subimport of a non-constant name"


def _shape_dynamic_subimport(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and _const(args[0], str) and isinstance(args[1], DictNode):
        assert isinstance(args[0], Const)
        if is_dotted_name(args[0].value):
            return None
    return "dynamic_subimport with unexpected arguments"


def _shape_make_skel_func(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) in (2, 3)
        and is_code_object(args[0])
        and _const(args[1], int)
        and (len(args) == 2 or isinstance(args[2], DictNode) or _const(args[2], str, type(None)))
    ):
        return None
    return "_make_skel_func without a code object"


def _shape_fill_function(call: Call) -> str | None:
    args = call.args.items
    if len(args) in (2, 5, 6) and _is_call_of(args[0], CLOUDPICKLE_MODULES, "_make_skel_func"):
        return None
    return "_fill_function applied to something _make_skel_func did not create"


def _shape_make_function(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 5 and is_code_object(args[0]) and isinstance(args[1], DictNode):
        return None
    return "_make_function without a code object and a globals dict"


def _shape_make_cell(call: Call) -> str | None:
    return _arity(call, 0, 1)


def _class_state_problem(state: Node) -> str | None:
    """A by-value class's dict may not define hooks Python would call while loading."""
    if not isinstance(state, DictNode):
        return "class state is not a dict"
    for key, value in state.items:
        if not _const(key, str):
            return "class state with a non-string key"
        assert isinstance(key, Const) and isinstance(key.value, str)
        if key.value in _CLASS_HOOKS:
            return f"class state defines {key.value}, which Python calls while loading"
        if key.value == "_abc_impl" and not (isinstance(value, ListNode) and not value.items):
            return "class state registers ABC subclasses (register() would be called)"
    return None


def _is_skeleton_class(node: Node) -> bool:
    return _is_call_of(
        node, CLOUDPICKLE_MODULES, ("_make_skeleton_class", "_rehydrate_skeleton_class")
    )


def _shape_make_skeleton_class(call: Call) -> str | None:
    args = call.args.items
    if len(args) != 6:
        return "_make_skeleton_class with unexpected arguments"
    meta, name, bases, type_kwargs = args[0], args[1], args[2], args[3]
    if not (
        isinstance(meta, Global) and (meta.is_("builtins", "type") or meta.is_("abc", "ABCMeta"))
    ):
        return "_make_skeleton_class with a metaclass other than type/ABCMeta"
    if not _const(name, str) or not isinstance(bases, TupleNode):
        return "_make_skeleton_class with a non-constant name or bases"
    for base in bases.items:
        if not (isinstance(base, Global) or _is_skeleton_class(base)):
            return "_make_skeleton_class with a base that is not a named or by-value class"
    if not isinstance(type_kwargs, DictNode) or not all(
        _const(value, str, type(None)) or isinstance(value, TupleNode | ListNode)
        for _, value in type_kwargs.items
    ):
        return "_make_skeleton_class with type arguments that are not constants"
    return None


def _shape_rehydrate(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 2 and _is_call_of(args[0], CLOUDPICKLE_MODULES, "_make_skeleton_class"):
        return _class_state_problem(args[1])
    return "_rehydrate_skeleton_class of something _make_skeleton_class did not create"


def _setter_state(call: Call) -> tuple[Node, Node] | None:
    args = call.args.items
    if len(args) == 2 and isinstance(args[1], TupleNode) and len(args[1].items) == 2:
        return args[1].items[0], args[1].items[1]
    return None


def _shape_function_setstate(call: Call) -> str | None:
    state = _setter_state(call)
    if (
        state is not None
        and _is_call_of(call.args.items[0], CLOUDPICKLE_MODULES, "_make_function")
        and isinstance(state[0], DictNode)
        and isinstance(state[1], DictNode)
    ):
        return None
    return "_function_setstate applied to something _make_function did not create"


def _shape_class_setstate(call: Call) -> str | None:
    state = _setter_state(call)
    if state is not None and _is_call_of(
        call.args.items[0], CLOUDPICKLE_MODULES, "_make_skeleton_class"
    ):
        return _class_state_problem(state[0])
    return "_class_setstate applied to something _make_skeleton_class did not create"


# --- the table -------------------------------------------------------------------------------

_DATA = Layer.DATA
_REF = Layer.REFERENCE
_CODE = Layer.CODE

_EXACT: dict[tuple[str, str], Rule] = {
    ("collections", "OrderedDict"): Rule(_DATA, call=_shape_no_args, build=True),
    ("numpy", "dtype"): Rule(_DATA, call=_shape_dtype, build=True),
    ("numpy", "ndarray"): Rule(_DATA),
    ("_codecs", "encode"): Rule(_DATA, call=_shape_codecs_encode),
    ("builtins", "bytes"): Rule(_DATA, call=_shape_bytes),
    ("builtins", "bytearray"): Rule(_DATA, call=_shape_bytes),
    ("builtins", "frozenset"): Rule(_DATA, call=_shape_frozenset),
    ("builtins", "set"): Rule(_DATA, call=_shape_frozenset),
    ("builtins", "complex"): Rule(_DATA, call=_shape_complex),
    ("builtins", "object"): Rule(_REF),
    ("builtins", "type"): Rule(_REF, call=_shape_type),
    ("builtins", "Ellipsis"): Rule(_REF),
    ("builtins", "NotImplemented"): Rule(_REF),
    ("builtins", "getattr"): Rule(_REF, call=_shape_getattr),
    ("builtins", "classmethod"): Rule(_REF, call=_shape_method_wrapper),
    ("builtins", "staticmethod"): Rule(_REF, call=_shape_method_wrapper),
    ("abc", "ABCMeta"): Rule(_REF),
    ("abc", "ABC"): Rule(_REF),
    ("functools", "partial"): Rule(_REF, call=_shape_partial, build=True),
    ("copyreg", "_reconstructor"): Rule(_REF, call=_shape_reconstructor, build=True),
    ("numpy.random", "__RandomState_ctor"): Rule(_REF, call=_shape_randomstate_ctor, build=True),
    ("numpy.random._pickle", "__RandomState_ctor"): Rule(
        _REF, call=_shape_randomstate_ctor, build=True
    ),
    ("numpy.random._pickle", "__randomstate_ctor"): Rule(
        _REF, call=_shape_randomstate_ctor, build=True
    ),
    ("numpy.random._pickle", "__bit_generator_ctor"): Rule(
        _REF, call=_shape_bitgen_ctor, build=True
    ),
    GOAL_SELECTION_STRATEGY_GLOBAL: Rule(_REF, call=_shape_enum),
}
for _core in NUMPY_CORE:
    _EXACT[(f"{_core}.multiarray", "_reconstruct")] = Rule(
        _DATA, call=_shape_reconstruct, build=True
    )
    _EXACT[(f"{_core}.multiarray", "scalar")] = Rule(_DATA, call=_shape_scalar)
    _EXACT[(f"{_core}.numeric", "_frombuffer")] = Rule(_DATA, call=_shape_frombuffer)
for _generator in BIT_GENERATORS:
    _module = {"MT19937": "_mt19937", "Philox": "_philox", "SFC64": "_sfc64"}.get(
        _generator, "_pcg64"
    )
    _EXACT[(f"numpy.random.{_module}", _generator)] = Rule(_REF)

_CLOUDPICKLE_HELPERS: dict[str, Rule] = {
    "_builtin_type": Rule(_CODE, call=_shape_builtin_type),
    "_make_skel_func": Rule(_CODE, call=_shape_make_skel_func),
    "_fill_function": Rule(_CODE, call=_shape_fill_function),
    "_make_function": Rule(_CODE, call=_shape_make_function),
    "_function_setstate": Rule(_CODE, call=_shape_function_setstate),
    "_make_cell": Rule(_CODE, call=_shape_make_cell),
    "_make_empty_cell": Rule(_CODE, call=_shape_no_args),
    "_empty_cell_value": Rule(_CODE),
    "_make_skeleton_class": Rule(_CODE, call=_shape_make_skeleton_class),
    "_rehydrate_skeleton_class": Rule(_CODE, call=_shape_rehydrate),
    "_class_setstate": Rule(_CODE, call=_shape_class_setstate),
    "subimport": Rule(_CODE, call=_shape_subimport),
    "dynamic_subimport": Rule(_CODE, call=_shape_dynamic_subimport),
    "_gen_ellipsis": Rule(_CODE, call=_shape_no_args),
    "_gen_not_implemented": Rule(_CODE, call=_shape_no_args),
}
for _cp_module in CLOUDPICKLE_MODULES:
    for _helper, _rule in _CLOUDPICKLE_HELPERS.items():
        _EXACT[(_cp_module, _helper)] = _rule

_GYM_SPACES = frozenset(
    {"Box", "Discrete", "MultiDiscrete", "MultiBinary", "Tuple", "Dict", "Space"}
)
_NEWOBJ_REFERENCE = Rule(_REF, newobj=True, build=True)
_PLAIN_REFERENCE = Rule(_REF)


def lookup(module: str, name: str) -> Rule | None:
    """The rule for ``module.name``, or None when it is not allowed at all.

    Both must be well formed first (``ckptd.pickles.pynames``): a module string that merely
    starts like an allowed package (``gym.spaces.box\\n...``) is never matched, and packages
    match at identifier boundaries only.
    """
    if name_problem(module, name) is not None:
        # Also refuses attribute traversal (protocol 4 dotted names): no listed name has a dot.
        return None
    rule = _EXACT.get((module, name))
    if rule is not None:
        return rule
    if in_package(module, "gym.spaces") and module != "gym.spaces" and name in _GYM_SPACES:
        return _NEWOBJ_REFERENCE
    if in_package(module, "stable_baselines"):
        # Classes and functions of the library the checkpoint belongs to, by reference only:
        # instances may be rebuilt (NEWOBJ + BUILD, e.g. action noise), nothing may be called.
        return _NEWOBJ_REFERENCE
    if (
        in_package(module, "tensorflow.python.ops")
        and module != "tensorflow.python.ops"
        and name in TF_ACTIVATIONS
    ):
        return _PLAIN_REFERENCE
    return None


def is_code_global(node: Global) -> bool:
    rule = lookup(node.module, node.name)
    return rule is not None and rule.layer is Layer.CODE


# --- the policy ------------------------------------------------------------------------------


def _refuse(
    source: str | None, node: Node, reason: str, global_name: str | None = None
) -> UnsafeCheckpoint:
    opcode = node.opcode if isinstance(node, Global) else _OPCODE_OF.get(type(node))
    return UnsafeCheckpoint(
        reason, path=source, offset=node.pos, opcode=opcode, global_name=global_name
    )


_OPCODE_OF: dict[type, str] = {Call: "REDUCE", NewObj: "NEWOBJ"}


def _build_state_problem(node: Call | NewObj, state: Node) -> str | None:
    """Instance state goes into ``__dict__``/setattr: plain names only, no planted dunders."""
    if (
        isinstance(node, Call)
        and not is_ordered_dict_call(node)
        and not node.func_is("copyreg", "_reconstructor")
    ):
        return None  # numpy / partial / RandomState states are tuples and dicts read by C code
    dicts = [state]
    if isinstance(state, TupleNode) and len(state.items) == 2:
        dicts = [item for item in state.items if not _const(item, type(None))]
    for mapping in dicts:
        if not isinstance(mapping, DictNode):
            return f"object state is a {mapping.kind()}, not a dict"
        for key, _ in mapping.items:
            if not _const(key, str):
                return "object state with a non-string attribute name"
            assert isinstance(key, Const) and isinstance(key.value, str)
            if key.value.startswith("__") and key.value.endswith("__"):
                return f"object state sets {key.value} (a special attribute)"
    return None


def _not_allowed(source: str | None, node: Global) -> UnsafeCheckpoint:
    problem = name_problem(node.module, node.name)
    if problem is not None and not (is_dotted_name(node.module) and is_dotted_name(node.name)):
        # Quoted by repr: attacker-chosen text, its control characters written as escapes.
        what = f"global {node.module!r} {node.name!r}: {problem}"
        return _refuse(source, node, what, node.dotted)
    return _refuse(source, node, f"global {node.dotted} is not on the allowlist", node.dotted)


def _check_node(node: Node, source: str | None) -> None:
    if isinstance(node, Global):
        if lookup(node.module, node.name) is None:
            raise _not_allowed(source, node)
    elif isinstance(node, Call):
        _check_call(node, source)
    elif isinstance(node, NewObj):
        cls = node.cls
        rule = lookup(cls.module, cls.name) if isinstance(cls, Global) else None
        if rule is None or not rule.newobj:
            what = cls.dotted if isinstance(cls, Global) else f"a constructed {cls.kind()}"
            raise _refuse(
                source, node, f"NEWOBJ of {what} (only allowlisted classes may be instantiated)"
            )
        if node.args.items:
            raise _refuse(source, node, "NEWOBJ with constructor arguments")
        if node.build is not None:
            problem = _build_state_problem(node, node.build)
            if problem:
                raise _refuse(source, node, problem)
    elif isinstance(node, SetNode | DictNode | TupleNode | ListNode | Const | BytesNode):
        return
    else:  # pragma: no cover - every node type is handled above
        raise _refuse(source, node, f"unexpected node {node.kind()}")


def _check_call(node: Call, source: str | None) -> None:
    func = node.func
    if isinstance(func, Global):
        rule = lookup(func.module, func.name)
        if rule is None:
            raise _not_allowed(source, func)
        if rule.call is None:
            raise _refuse(
                source, node, f"{func.dotted} may be referenced but not called", func.dotted
            )
        problem = rule.call(node)
        if problem:
            raise _refuse(source, node, f"{func.dotted}: {problem}", func.dotted)
        if node.build is not None:
            if not rule.build:
                raise _refuse(source, node, f"BUILD on the result of {func.dotted}", func.dotted)
            problem = _build_state_problem(node, node.build)
            if problem:
                raise _refuse(source, node, problem, func.dotted)
    elif is_builtin_type_call(func):
        if node.build is not None:
            raise _refuse(source, node, "BUILD on a code/function/method/cell object")
    else:
        raise _refuse(
            source,
            node,
            f"call of a constructed callable ({func.kind()} built by the pickle itself)",
        )
    if node.setitems and not is_ordered_dict_call(node):
        raise _refuse(
            source, node, "SETITEM on a call result that is not an OrderedDict"
        )  # pragma: no cover


def check_graph(graph: PickleGraph, *, source: str | None = None) -> PickleReport:
    """Apply the policy to every node (reachable or not); raise UnsafeCheckpoint at the first breach."""
    names: set[str] = set()
    carries_code = False
    for node in graph.nodes:
        _check_node(node, source)
        if isinstance(node, Global):
            names.add(node.dotted)
            carries_code = carries_code or is_code_global(node)
    return PickleReport(
        protocol=graph.protocol, globals=tuple(sorted(names)), carries_code=carries_code
    )


def check_pickle_bytes(
    blob: bytes | memoryview,
    *,
    source: str,
    limits: Limits = DEFAULT_LIMITS,
    max_ops: int | None = None,
) -> PickleReport:
    """Statically check one pickle (e.g. a ``:serialized:`` entry of an SB2 zip); executes nothing.

    Raises FormatError for a broken stream and UnsafeCheckpoint for anything outside the policy
    (BudgetExceeded over ``limits``; ``max_ops`` is what is left of the file's opcode budget).
    Linear in the stream: nothing here walks the graph as a tree.
    """
    parsed = parse_ops(blob, source=source, limits=limits, max_ops=max_ops)
    graph = build_graph(parsed, source=source, limits=limits)
    report = check_graph(graph, source=source)
    return PickleReport(report.protocol, report.globals, report.carries_code, len(parsed.ops))
