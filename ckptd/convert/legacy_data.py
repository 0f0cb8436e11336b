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

The parts: the JSON decision (``data_json``), type names (``data_types``), ``str()`` rendering and
first-level attributes (``data_render``); here the extras and the DataValue of each entry.
"""

from __future__ import annotations

from collections.abc import Mapping

from ckptd.convert.data_json import NotJson, json_key, json_value
from ckptd.convert.data_render import attribute_pairs, render
from ckptd.convert.data_types import (
    GOAL_SELECTION_ENUM,
    global_type_name,
    goal_selection_member,
    type_name,
)
from ckptd.formats.model import DataValue, JsonValue, OpaqueValue
from ckptd.pickles.allowlist import is_code_global
from ckptd.pickles.emit import emit_pickle
from ckptd.pickles.nodes import Global, Node, completed, reachable

# --- extras ------------------------------------------------------------------------------------


def extras_of(node: Node) -> dict[str, JsonValue]:
    """SB2's first-level extras, keyed as ``json.dumps`` writes the attribute names."""
    extras: dict[str, JsonValue] = {}
    if isinstance(node, Global) and global_type_name(node) != "<class 'function'>":
        extras["__module__"] = node.module
        return extras
    member = goal_selection_member(node)
    if member is not None:
        # vars() of an Enum member on Python 3.5-3.7: _value_, _name_, __objclass__.
        number, label = member
        return {"_value_": number, "_name_": label, "__objclass__": GOAL_SELECTION_ENUM}
    for key, value in attribute_pairs(node):
        try:
            # json.dumps turns True into "true", None into "null", 1.5 into "1.5", nan into "NaN".
            name = json_key(key)
        except NotJson:
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
