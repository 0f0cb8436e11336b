"""Python's merging of equal dict keys, applied to the inert graph (docs/conversion.md).

A dict rebuilt by unpickling is filled by SETITEM(S) one pair at a time, so keys Python treats as
equal collapse: ``{True: 'a', 1: 'b'}`` loads as ``{True: 'b'}`` (the FIRST key object, at the
first key's position, with the LAST value), and so do ``0``, ``-0.0`` and ``False``, or ``1`` and
``1.0``. stable-baselines saves what it loaded, so ckptd must merge the same way before it writes
JSON, ``str()`` extras or a fresh pickle of such a dict.

Equality is Python's, computed on the constants the graph holds, with one refinement: Python
compares keys by identity before ``==``, so a NaN key equals only itself, i.e. the same node (one
object shared through the pickle memo), never another NaN. Tuples compare item by item with the
same identity rule. Globals (a class by reference) are equal when they name the same attribute,
because both load as that one object. Only the key kinds the graph admits (constants, bytes,
globals, tuples of these) can occur; anything else is never equal to another node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ckptd.pickles.nodes import MAX_NESTING, BytesNode, Const, Global, Node, TupleNode


def keys_equal(a: Node, b: Node, depth: int = 0) -> bool:
    """``a == b`` as Python decides it for dict keys (identity first, then ``==``)."""
    if a is b:
        return True
    if depth > MAX_NESTING:
        return False
    if isinstance(a, Const) and isinstance(b, Const):
        return bool(a.value == b.value)
    if isinstance(a, BytesNode) and isinstance(b, BytesNode):
        return not a.mutable and not b.mutable and bytes(a.data) == bytes(b.data)
    if isinstance(a, Global) and isinstance(b, Global):
        return (a.module, a.name) == (b.module, b.name)
    if isinstance(a, TupleNode) and isinstance(b, TupleNode):
        return len(a.items) == len(b.items) and all(
            keys_equal(x, y, depth + 1) for x, y in zip(a.items, b.items, strict=True)
        )
    return False


def key_hash(node: Node, depth: int = 0) -> int:
    """A hash consistent with ``keys_equal`` (equal keys hash alike; used only for bucketing)."""
    if depth > MAX_NESTING:
        return 0
    if isinstance(node, Const):
        value = node.value
        if isinstance(value, float) and math.isnan(value):
            return 0  # NaN equals only itself; any constant is consistent with that
        return hash(value)
    if isinstance(node, BytesNode):
        return hash(bytes(node.data))
    if isinstance(node, Global):
        return hash((node.module, node.name))
    if isinstance(node, TupleNode):
        return hash(tuple(key_hash(item, depth + 1) for item in node.items))
    return id(node)


def merged_pairs(pairs: Sequence[tuple[Node, Node]]) -> list[tuple[Node, Node]]:
    """The (key, value) pairs of the dict Python builds by assigning ``pairs`` in order."""
    buckets: dict[int, list[int]] = {}
    merged: list[tuple[Node, Node]] = []
    for key, value in pairs:
        bucket = buckets.setdefault(key_hash(key), [])
        for index in bucket:
            if keys_equal(merged[index][0], key):
                merged[index] = (merged[index][0], value)
                break
        else:
            bucket.append(len(merged))
            merged.append((key, value))
    return merged


def merged_items(items: Sequence[Node]) -> list[Node]:
    """The elements of the set Python builds by adding ``items`` in order (first one kept)."""
    return [key for key, _ in merged_pairs([(item, item) for item in items])]
