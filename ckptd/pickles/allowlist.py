"""The structural allowlist: which globals a checkpoint may name and how each may be used.

Step 4 of the safe legacy reader (docs/formats.md, "The safe legacy reader"). Every ``Global`` in
the graph must be listed here as an exact ``(module, name)`` pair (or fall under one of the few
prefix families below, never with a dotted name), in one of three layers:

* ``DATA``: things the reader materializes (OrderedDict, numpy arrays/dtypes/scalars, bytes);
* ``REFERENCE``: classes and functions a checkpoint refers to by name (policy classes, gym
  spaces, TF activations, RandomState constructors, ``functools.partial``...);
* ``CODE``: cloudpickle's helpers that rebuild functions and classes by value.

Each entry says whether it may be called by REDUCE (and with which argument shapes:
``ckptd.pickles.call_shapes``), used as a NEWOBJ class, or receive a BUILD; ``ckptd.pickles.graph_check``
applies the table to a graph. The one rule that separates a genuine checkpoint from an
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
from dataclasses import dataclass

from ckptd.pickles.call_shapes import (
    BIT_GENERATORS,
    GOAL_SELECTION_STRATEGY_GLOBAL,
    NUMPY_CORE,
    ShapeCheck,
    is_const,
    shape_bitgen_ctor,
    shape_builtin_type,
    shape_bytes,
    shape_class_setstate,
    shape_codecs_encode,
    shape_complex,
    shape_dtype,
    shape_dynamic_subimport,
    shape_enum,
    shape_fill_function,
    shape_frombuffer,
    shape_frozenset,
    shape_function_setstate,
    shape_getattr,
    shape_make_cell,
    shape_make_function,
    shape_make_skel_func,
    shape_make_skeleton_class,
    shape_method_wrapper,
    shape_no_args,
    shape_partial,
    shape_randomstate_ctor,
    shape_reconstruct,
    shape_rehydrate,
    shape_scalar,
    shape_subimport,
    shape_type,
)
from ckptd.pickles.nodes import CLOUDPICKLE_MODULES, Call, Global
from ckptd.pickles.pynames import in_package, name_problem

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


class Layer(enum.Enum):
    DATA = "data"
    REFERENCE = "reference"
    CODE = "code"


@dataclass(frozen=True)
class Rule:
    """How one allowlisted global may be used."""

    layer: Layer
    call: ShapeCheck | None = None  # None: may not be called
    newobj: bool = False  # may be the class of NEWOBJ / copyreg._reconstructor
    build: bool = False  # the object its call returns may receive BUILD


def shape_reconstructor(call: Call) -> str | None:
    # Here rather than in call_shapes: the class it rebuilds must itself be in the table.
    args = call.args.items
    if (
        len(args) == 3
        and isinstance(args[0], Global)
        and isinstance(args[1], Global)
        and args[1].is_("builtins", "object")
        and is_const(args[2], type(None))
    ):
        rule = lookup(args[0].module, args[0].name)
        if rule is not None and rule.newobj:
            return None
    return "copyreg._reconstructor is only accepted for an allowlisted class over object"


# --- the table -------------------------------------------------------------------------------

_DATA = Layer.DATA
_REF = Layer.REFERENCE
_CODE = Layer.CODE

_EXACT: dict[tuple[str, str], Rule] = {
    ("collections", "OrderedDict"): Rule(_DATA, call=shape_no_args, build=True),
    ("numpy", "dtype"): Rule(_DATA, call=shape_dtype, build=True),
    ("numpy", "ndarray"): Rule(_DATA),
    ("_codecs", "encode"): Rule(_DATA, call=shape_codecs_encode),
    ("builtins", "bytes"): Rule(_DATA, call=shape_bytes),
    ("builtins", "bytearray"): Rule(_DATA, call=shape_bytes),
    ("builtins", "frozenset"): Rule(_DATA, call=shape_frozenset),
    ("builtins", "set"): Rule(_DATA, call=shape_frozenset),
    ("builtins", "complex"): Rule(_DATA, call=shape_complex),
    ("builtins", "object"): Rule(_REF),
    ("builtins", "type"): Rule(_REF, call=shape_type),
    ("builtins", "Ellipsis"): Rule(_REF),
    ("builtins", "NotImplemented"): Rule(_REF),
    ("builtins", "getattr"): Rule(_REF, call=shape_getattr),
    ("builtins", "classmethod"): Rule(_REF, call=shape_method_wrapper),
    ("builtins", "staticmethod"): Rule(_REF, call=shape_method_wrapper),
    ("abc", "ABCMeta"): Rule(_REF),
    ("abc", "ABC"): Rule(_REF),
    ("functools", "partial"): Rule(_REF, call=shape_partial, build=True),
    ("copyreg", "_reconstructor"): Rule(_REF, call=shape_reconstructor, build=True),
    ("numpy.random", "__RandomState_ctor"): Rule(_REF, call=shape_randomstate_ctor, build=True),
    ("numpy.random._pickle", "__RandomState_ctor"): Rule(
        _REF, call=shape_randomstate_ctor, build=True
    ),
    ("numpy.random._pickle", "__randomstate_ctor"): Rule(
        _REF, call=shape_randomstate_ctor, build=True
    ),
    ("numpy.random._pickle", "__bit_generator_ctor"): Rule(
        _REF, call=shape_bitgen_ctor, build=True
    ),
    GOAL_SELECTION_STRATEGY_GLOBAL: Rule(_REF, call=shape_enum),
}
for _core in NUMPY_CORE:
    _EXACT[(f"{_core}.multiarray", "_reconstruct")] = Rule(
        _DATA, call=shape_reconstruct, build=True
    )
    _EXACT[(f"{_core}.multiarray", "scalar")] = Rule(_DATA, call=shape_scalar)
    _EXACT[(f"{_core}.numeric", "_frombuffer")] = Rule(_DATA, call=shape_frombuffer)
for _generator in BIT_GENERATORS:
    _module = {"MT19937": "_mt19937", "Philox": "_philox", "SFC64": "_sfc64"}.get(
        _generator, "_pcg64"
    )
    _EXACT[(f"numpy.random.{_module}", _generator)] = Rule(_REF)

_CLOUDPICKLE_HELPERS: dict[str, Rule] = {
    "_builtin_type": Rule(_CODE, call=shape_builtin_type),
    "_make_skel_func": Rule(_CODE, call=shape_make_skel_func),
    "_fill_function": Rule(_CODE, call=shape_fill_function),
    "_make_function": Rule(_CODE, call=shape_make_function),
    "_function_setstate": Rule(_CODE, call=shape_function_setstate),
    "_make_cell": Rule(_CODE, call=shape_make_cell),
    "_make_empty_cell": Rule(_CODE, call=shape_no_args),
    "_empty_cell_value": Rule(_CODE),
    "_make_skeleton_class": Rule(_CODE, call=shape_make_skeleton_class),
    "_rehydrate_skeleton_class": Rule(_CODE, call=shape_rehydrate),
    "_class_setstate": Rule(_CODE, call=shape_class_setstate),
    "subimport": Rule(_CODE, call=shape_subimport),
    "dynamic_subimport": Rule(_CODE, call=shape_dynamic_subimport),
    "_gen_ellipsis": Rule(_CODE, call=shape_no_args),
    "_gen_not_implemented": Rule(_CODE, call=shape_no_args),
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
