"""The policies a pickle is judged by, one per kind of file (pure; nothing is imported or called).

Each policy maps ``(module, name)`` to an allowlist ``Rule`` (``ckptd.pickles.allowlist``: may it
be called and with which argument shapes, instantiated by NEWOBJ, receive a BUILD), and
:class:`Judge` applies it to every node of a replayed graph (docs/security.md, "Verdicts"):

* ``DATA`` (plain pickles, joblib): the data layer of the SB2 allowlist (containers, numpy arrays,
  dtypes and scalars, ``collections.OrderedDict``, bytes) with its shape checks, plus joblib's
  ``NumpyArrayWrapper`` of a plain numeric array;
* ``TORCH`` (torch checkpoints): exactly the globals ``torch.load(weights_only=True)`` allows
  (``ckptd.pickles.torch_globals``); persistent ids only as ``('storage', type, key, location,
  numel)``;
* ``SB2``: the SB2 allowlist itself (plain pickles naming cloudpickle, gym or stable_baselines);
* ``SB3`` (``:serialized:`` entries): the SB2 allowlist plus references to stable-baselines3,
  gymnasium spaces, torch activation and optimizer classes, and the few numpy/SB3 pickles genuine
  SB3 files hold (``Generator``, ``SeedSequence``, ``deque``, ``TrainFreq``).

As in the SB2 allowlist, nothing the pickle constructs may be called.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from ckptd.errors import FormatError, UnsafeCheckpoint
from ckptd.pickles import allowlist
from ckptd.pickles.allowlist import Layer, Rule
from ckptd.pickles.call_shapes import (
    BIT_GENERATORS,
    is_builtin_type_call,
    is_call_of,
    is_safe_dtype_call,
)
from ckptd.pickles.nodes import (
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
from ckptd.pickles.pynames import in_package, name_problem
from ckptd.pickles.stream import PersistentId
from ckptd.pickles.torch_globals import TORCH_BLOCKED_MODULES, TORCH_WEIGHTS_ONLY_GLOBALS
from ckptd.textsafe import shown

JOBLIB_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_JOBLIB_STATE_KEYS = frozenset(
    {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}
)
# SB3's own classes, its spaces and the torch classes its policy_kwargs name (by reference).
# Packages whose classes an SB3 pickle may name (matched at identifier boundaries).
_SB3_REFERENCE_PACKAGES = (
    "stable_baselines3",
    "gymnasium.spaces",
    "gym.spaces",
    "torch.nn.modules.activation",
    "torch.optim",
)


class Policy(enum.Enum):
    DATA = "data"
    TORCH = "torch"
    SB2 = "sb2"
    SB3 = "sb3"


# A plain pickle naming these is stable-baselines-era content (a truncated SB2 file, a pickled
# policy): judged by the SB2 allowlist, which knows cloudpickle's function builders.
SB2_HINTS = ("cloudpickle.", "gym.", "stable_baselines.")


def policy_for_plain(referenced: tuple[str, ...]) -> Policy:
    return Policy.SB2 if any(name.startswith(SB2_HINTS) for name in referenced) else Policy.DATA


def allowed_in(policy: Policy, dotted: str) -> bool:
    """Whether ``module.name`` may be referenced at all in a pickle judged by ``policy``."""
    module, _, name = dotted.rpartition(".")
    return _LOOKUPS[policy](module, name) is not None


@dataclass(frozen=True)
class Breach:
    """The first thing a policy refused: what, which global, which opcode, at which offset."""

    reason: str
    global_name: str | None = None
    opcode: str | None = None
    offset: int | None = None


def _any_args(call: Call) -> str | None:
    return None


_TORCH_RULE = Rule(Layer.DATA, call=_any_args, newobj=True, build=True)
_JOBLIB_RULE = Rule(Layer.DATA, newobj=True, build=True)
_SB3_REFERENCE = Rule(Layer.REFERENCE, newobj=True, build=True)
_PLAIN_REFERENCE = Rule(Layer.REFERENCE)
_BUILTIN_TYPES = frozenset({"int", "float", "bool", "str", "bytes", "list", "dict", "tuple"})


def _deque_shape(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 2
        and (
            isinstance(args[0], ListNode) or (isinstance(args[0], TupleNode) and not args[0].items)
        )
        and isinstance(args[1], Const)
        and (args[1].value is None or type(args[1].value) is int)
    ):
        return None
    return "collections.deque is only accepted as deque(<list or ()>, <maxlen>)"


def _generator_shape(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 1 and (
        is_call_of(args[0], "numpy.random._pickle", "__bit_generator_ctor")
        or (isinstance(args[0], Const) and args[0].value in BIT_GENERATORS)
    ):
        return None
    if len(args) == 2 and isinstance(args[0], Const) and args[0].value in BIT_GENERATORS:
        ctor = args[1]
        if isinstance(ctor, Global) and ctor.is_("numpy.random._pickle", "__bit_generator_ctor"):
            return None
    return "__generator_ctor is only accepted with a bit generator or its name"


# Cython's pickle helper for numpy's SeedSequence: ``__pyx_unpickle_SeedSequence(cls, checksum,
# state)`` allocates ``cls`` (which must be SeedSequence) and BUILD sets its typed fields.
_SEED_SEQUENCE_UNPICKLE = ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence")


def _seed_sequence_shape(call: Call) -> str | None:
    args = call.args.items
    if (
        len(args) == 3
        and isinstance(args[0], Global)
        and args[0].is_("numpy.random.bit_generator", "SeedSequence")
        and isinstance(args[1], Const)
        and type(args[1].value) is int
        and isinstance(args[2], Const)
        and args[2].value is None
    ):
        return None
    return "__pyx_unpickle_SeedSequence is only accepted as (SeedSequence, <checksum>, None)"


# SB3's train_freq: the namedtuple TrainFreq(int, TrainFrequencyUnit('step' | 'episode')).
_SB3_TRAIN_FREQ_UNIT = ("stable_baselines3.common.type_aliases", "TrainFrequencyUnit")


def _enum_value_shape(call: Call) -> str | None:
    args = call.args.items
    if len(args) == 1 and isinstance(args[0], Const) and isinstance(args[0].value, str):
        return None
    return "an Enum is only accepted looked up by one string value"


def _is_train_freq(node: NewObj) -> bool:
    """NEWOBJ of the TrainFreq namedtuple (tuple.__new__ stores its arguments, nothing else)."""
    args = node.args.items
    return (
        isinstance(node.cls, Global)
        and node.cls.is_("stable_baselines3.common.type_aliases", "TrainFreq")
        and len(args) == 2
        and isinstance(args[0], Const)
        and type(args[0].value) is int
        and is_call_of(args[1], *_SB3_TRAIN_FREQ_UNIT)
        and node.build is None
    )


def _lookup_data(module: str, name: str) -> Rule | None:
    if (module, name) == JOBLIB_WRAPPER:
        return _JOBLIB_RULE
    rule = allowlist.lookup(module, name)
    return rule if rule is not None and rule.layer is Layer.DATA else None


def _lookup_torch(module: str, name: str) -> Rule | None:
    # torch compares f"{module}.{name}" against its dict, so a dotted name is a lookup, not a walk.
    if module in TORCH_BLOCKED_MODULES or f"{module}.{name}" not in TORCH_WEIGHTS_ONLY_GLOBALS:
        return None
    return _TORCH_RULE


def _lookup_sb3(module: str, name: str) -> Rule | None:
    rule = allowlist.lookup(module, name)
    if rule is not None:
        return rule
    if name_problem(module, name) is not None:
        return None  # the names grammar of ckptd.pickles.pynames, as the SB2 allowlist applies it
    if (module, name) == ("collections", "deque"):
        return Rule(Layer.DATA, call=_deque_shape)
    if (module, name) == ("numpy.random._pickle", "__generator_ctor"):
        return Rule(Layer.REFERENCE, call=_generator_shape, build=True)  # gymnasium's np_random
    if (module, name) == _SEED_SEQUENCE_UNPICKLE:
        return Rule(Layer.REFERENCE, call=_seed_sequence_shape, build=True)
    if (module, name) == ("numpy.random.bit_generator", "SeedSequence"):
        return _PLAIN_REFERENCE
    if (module, name) == _SB3_TRAIN_FREQ_UNIT:
        return Rule(Layer.REFERENCE, call=_enum_value_shape)  # an Enum looked up by its value
    if module == "builtins" and name in _BUILTIN_TYPES:
        return _PLAIN_REFERENCE  # e.g. a space's dtype argument or a class attribute
    if any(in_package(module, package) for package in _SB3_REFERENCE_PACKAGES):
        return _SB3_REFERENCE
    return _lookup_torch(module, name)


_LOOKUPS: dict[Policy, Callable[[str, str], Rule | None]] = {
    Policy.DATA: _lookup_data,
    Policy.TORCH: _lookup_torch,
    Policy.SB2: allowlist.lookup,
    Policy.SB3: _lookup_sb3,
}


_OPCODE_OF: dict[type, str] = {Call: "REDUCE", NewObj: "NEWOBJ", PersistentId: "BINPERSID"}


def _callee(node: Node) -> str | None:
    target = node.func if isinstance(node, Call) else node.cls if isinstance(node, NewObj) else None
    return target.dotted if isinstance(target, Global) else None


_CODE_POLICIES = frozenset({Policy.SB2, Policy.SB3})  # cloudpickle's helpers are allowed


class Judge:
    """Applies one policy to every node of a graph; ``problem`` returns the first breach."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.lookup = _LOOKUPS[policy]

    def problem(self, nodes: list[Node]) -> Breach | None:
        for node in nodes:
            found = self.node_problem(node)
            if found is not None:
                opcode = node.opcode if isinstance(node, Global) else _OPCODE_OF.get(type(node))
                name = node.dotted if isinstance(node, Global) else _callee(node)
                return Breach(found, name and shown(name), opcode, node.pos)
        return None

    def node_problem(self, node: Node) -> str | None:
        if isinstance(node, Global):
            if self.lookup(node.module, node.name) is None:
                return f"global {shown(node.dotted)} is not allowed in a {self.policy.value} pickle"
            return None
        if isinstance(node, Call):
            return self.call_problem(node)
        if isinstance(node, NewObj):
            return self.newobj_problem(node)
        if isinstance(node, PersistentId):
            return self.persistent_id_problem(node)
        if isinstance(node, SetNode | DictNode | TupleNode | ListNode | Const | BytesNode):
            return None
        return f"unexpected {node.kind()}"  # pragma: no cover - every node type is listed

    def call_problem(self, node: Call) -> str | None:
        func = node.func
        if not isinstance(func, Global):
            if self.policy in _CODE_POLICIES and is_builtin_type_call(func):
                return "BUILD on a code object" if node.build is not None else None
            return f"call of a constructed callable ({func.kind()} built by the pickle itself)"
        rule = self.lookup(func.module, func.name)
        if rule is None:
            return f"global {shown(func.dotted)} is not allowed"
        if rule.call is None:
            return f"{shown(func.dotted)} may be referenced but not called"
        problem = rule.call(node)
        if problem:
            return f"{shown(func.dotted)}: {problem}"
        if node.build is not None:
            if not rule.build:
                return f"BUILD on the result of {shown(func.dotted)}"
            if is_ordered_dict_call(node) or node.func_is("copyreg", "_reconstructor"):
                return _state_problem(node.build)
        return None

    def newobj_problem(self, node: NewObj) -> str | None:
        cls = node.cls
        rule = self.lookup(cls.module, cls.name) if isinstance(cls, Global) else None
        if rule is None or not rule.newobj:
            what = shown(cls.dotted) if isinstance(cls, Global) else cls.kind()
            return f"NEWOBJ of {what} (not a class this kind of file may instantiate)"
        if isinstance(cls, Global) and (cls.module, cls.name) == JOBLIB_WRAPPER:
            return _joblib_state_problem(node)
        if self.policy in _CODE_POLICIES and node.args.items and not _is_train_freq(node):
            return "NEWOBJ with constructor arguments"
        if node.build is not None and self.policy is not Policy.TORCH:
            return _state_problem(node.build)
        return None

    def persistent_id_problem(self, node: PersistentId) -> str | None:
        if self.policy is not Policy.TORCH:
            return "a persistent id (hands an object to the loader's own code)"
        pid = node.pid
        # torch's zip format writes 5 items; its legacy format adds view metadata (None or a tuple).
        if not (isinstance(pid, TupleNode) and len(pid.items) in (5, 6)):
            return "persistent id that is not ('storage', type, key, location, numel)"
        tag, storage_type, key, location, numel = pid.items[:5]
        if len(pid.items) == 6 and not _is_view_metadata(pid.items[5]):
            return "persistent id with unexpected view metadata"
        if not (isinstance(tag, Const) and tag.value == "storage"):
            return "persistent id that is not a torch storage"
        if not (
            isinstance(storage_type, Global)
            and _lookup_torch(storage_type.module, storage_type.name) is not None
            and storage_type.name.endswith("Storage")
        ):
            return "persistent id whose storage type is not a torch storage class"
        if not all(
            isinstance(item, Const) and isinstance(item.value, str) for item in (key, location)
        ):
            return "persistent id whose key or location is not a string"
        if not (isinstance(numel, Const) and type(numel.value) is int):
            return "persistent id whose size is not an integer"
        return None


def _is_view_metadata(node: Node) -> bool:
    if isinstance(node, Const):
        return node.value is None
    return isinstance(node, TupleNode) and all(
        isinstance(item, Const) and isinstance(item.value, str | int) for item in node.items
    )


def _state_problem(state: Node) -> str | None:
    """Instance state goes into ``__dict__``: plain names only, no planted special attributes."""
    dicts = [state]
    if isinstance(state, TupleNode) and len(state.items) == 2:
        dicts = [
            item for item in state.items if not (isinstance(item, Const) and item.value is None)
        ]
    for mapping in dicts:
        if not isinstance(mapping, DictNode):
            return f"object state is a {mapping.kind()}, not a dict"
        for key, _ in mapping.items:
            if not (isinstance(key, Const) and isinstance(key.value, str)):
                return "object state with a non-string attribute name"
            if key.value.startswith("__") and key.value.endswith("__"):
                return f"object state sets {shown(key.value)} (a special attribute)"
    return None


def _joblib_state_problem(node: NewObj) -> str | None:
    if node.args.items:
        return "NumpyArrayWrapper with constructor arguments"
    if node.build is None:
        return None  # never filled in: the raw-bytes hook below already refused it
    if not isinstance(node.build, DictNode):
        return "NumpyArrayWrapper state is not a dict"
    for key, value in node.build.items:
        if not (isinstance(key, Const) and key.value in _JOBLIB_STATE_KEYS):
            return "NumpyArrayWrapper state with an unexpected attribute"
        if key.value == "subclass" and not (
            isinstance(value, Global) and value.is_("numpy", "ndarray")
        ):
            return "NumpyArrayWrapper of an ndarray subclass"
    return None


# --- joblib's raw array bytes ----------------------------------------------------------------


def joblib_raw_length(wrapper: NewObj, data: memoryview, at: int) -> int:
    """How many raw bytes joblib wrote after this wrapper's BUILD (padding, then the array)."""
    state = wrapper.build
    if not isinstance(state, DictNode):
        raise UnsafeCheckpoint("NumpyArrayWrapper state is not a dict")
    fields = {key.value: value for key, value in state.items if isinstance(key, Const)}
    dtype_node, shape_node = fields.get("dtype"), fields.get("shape")
    if dtype_node is None or not is_safe_dtype_call(dtype_node):
        # An object array is a nested pickle that joblib loads with a fresh unpickler.
        raise UnsafeCheckpoint("joblib array of a non-numeric dtype (a nested pickle)")
    assert isinstance(dtype_node, Call)
    descr = dtype_node.args.items[0]
    assert isinstance(descr, Const) and isinstance(descr.value, str)
    if not (
        isinstance(shape_node, TupleNode)
        and all(
            isinstance(item, Const) and type(item.value) is int and item.value >= 0
            for item in shape_node.items
        )
    ):
        raise UnsafeCheckpoint("joblib array whose shape is not a tuple of sizes")
    count = math.prod(
        int(item.value)
        for item in shape_node.items
        if isinstance(item, Const) and isinstance(item.value, int)
    )
    # numpy only here: most processes (``ckptd prune``) never judge a joblib array.
    import numpy as np

    length = count * np.dtype(descr.value).itemsize
    if "numpy_array_alignment_bytes" in fields:
        if at >= len(data):
            raise FormatError("joblib padding byte missing", offset=at)
        length += 1 + data[at]
    return length


# --- one stream ------------------------------------------------------------------------------
