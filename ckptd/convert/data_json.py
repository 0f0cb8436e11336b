"""Whether SB2 would store a ``data`` value as plain JSON, and that JSON (``json.dumps``'s rules).

JSON: None/bool/int/float/str, tuples and lists (as lists), dicts and OrderedDicts whose keys
``json.dumps`` accepts (converted to strings the way ``json`` does), and ``np.float64`` scalars (a
float subclass). NaN and ±inf stay floats. A circular value (SB2 itself would crash with
``ValueError``) is not JSON. See ``ckptd.convert.legacy_data``.
"""

from __future__ import annotations

import math

from ckptd.errors import BudgetExceeded, FormatError
from ckptd.formats.model import JsonValue
from ckptd.limits import DEFAULT_LIMITS
from ckptd.pickles.arrays import is_scalar_node, scalar_descr, scalar_of
from ckptd.pickles.dictkeys import merged_pairs
from ckptd.pickles.nodes import (
    MAX_NESTING,
    Call,
    Const,
    DictNode,
    ListNode,
    Node,
    TupleNode,
    is_ordered_dict_call,
)

# A tree walk's own ceiling (the graph's measured size is checked against limits before any walk;
# this catches what that measure cannot see exactly: the paths through a cycle).
WALK_NODES = DEFAULT_LIMITS.max_expanded_nodes
WALK_BYTES = DEFAULT_LIMITS.max_memory


class NotJson(Exception):
    """Raised inside the JSON conversion when ``json.dumps`` would raise TypeError (or loop)."""


# --- JSON --------------------------------------------------------------------------------------


def json_key(node: Node) -> str:
    value = node.value if isinstance(node, Const) else NotJson
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
    raise NotJson


def pairs_of(node: Node) -> list[tuple[Node, Node]] | None:
    """A dict's items as the loaded dict holds them: equal keys merged as Python merges them."""
    if isinstance(node, DictNode):
        return merged_pairs(node.items)
    if is_ordered_dict_call(node) and isinstance(node, Call) and node.build is None:
        return merged_pairs(node.setitems)
    return None


def _to_json(node: Node, active: set[int], depth: int, work: list[int]) -> JsonValue:
    if depth > MAX_NESTING:
        raise NotJson
    work[0] += 1
    if work[0] > WALK_NODES:
        raise BudgetExceeded(
            "max_expanded_nodes", WALK_NODES, "more nodes reached through cycles", offset=node.pos
        )
    if isinstance(node, Const):
        return node.value
    if is_scalar_node(node) and scalar_descr(node) == "f8":
        return float(scalar_of(node, None))  # np.float64 is a float: json writes it as one
    if id(node) in active:
        raise NotJson  # circular: json.dumps raises ValueError, SB2 cannot save it as JSON
    active.add(id(node))
    try:
        if isinstance(node, TupleNode | ListNode):
            return [_to_json(item, active, depth + 1, work) for item in node.items]
        pairs = pairs_of(node)
        if pairs is not None:
            result: dict[str, JsonValue] = {}
            for key, value in pairs:
                result[json_key(key)] = _to_json(value, active, depth + 1, work)
            return result
        raise NotJson
    finally:
        active.discard(id(node))


def json_value(node: Node) -> tuple[bool, JsonValue]:
    """(True, value) when SB2 would store ``node`` as plain JSON, else (False, None)."""
    try:
        return True, _to_json(node, set(), 0, [0])
    except (NotJson, FormatError):
        return False, None
