"""The object graph's size as the later passes will see it, measured before any of them runs.

The memo lets a pickle reference one node many times: a tuple nested 60 deep whose two halves are
the same memo entry is 1 KB of opcodes and 2^60 leaves to anything that walks it as a tree (the
JSON conversion, ``str()`` rendering, SB2's own ``json.dumps``). One iterative post-order walk
computes, for every distinct node, how many nodes and how many bytes of text and bytes a tree walk
from it visits (shared children counted as often as they are reachable, a back edge of a cycle
counted once), and how deep it nests. Memoized per node, so it is linear in the distinct graph; the
counts are floats, so 2^60 is a number and not a hang. Over ``limits`` is a refusal naming the
budget (docs/security.md, "Budgets").

The bytes approximate the text a walk produces: each node's own text (a string, bytes, an int's
digits) plus a few bytes of separators, plus the indentation ``json.dumps(indent=4)`` gives it
(four bytes per level it is nested below the value). Array payloads are not counted as bytes (they
are streamed to the zip, not walked as values); an array's nodes are.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptd.errors import BudgetExceeded
from ckptd.limits import DEFAULT_LIMITS, HARD_MAX_DEPTH, Limits, describe_count
from ckptd.pickles.arrays import is_array_node, is_scalar_node
from ckptd.pickles.graph import build_graph
from ckptd.pickles.graph_check import PickleReport, check_graph
from ckptd.pickles.nodes import BytesNode, Const, Node, children
from ckptd.pickles.ops import parse_ops


@dataclass(frozen=True)
class GraphSize:
    """A tree walk's cost from one root: nodes visited, text/bytes visited, longest nesting."""

    nodes: float
    bytes: float
    depth: int


# Separators and quotes around each value in JSON or rendered text, and the indentation that
# json.dumps(indent=4) adds per level of nesting.
_NODE_TEXT = 8.0
_INDENT = 4.0


def _own_bytes(node: Node) -> float:
    if isinstance(node, Const):
        value = node.value
        if isinstance(value, str):
            return float(len(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return value.bit_length() / 3.0  # about its decimal digits
        return 0.0
    if isinstance(node, BytesNode):
        return float(len(node.data))
    return 0.0


def measure(root: Node, limits: Limits = DEFAULT_LIMITS, *, source: str | None = None) -> GraphSize:
    """Measure the graph below ``root``; raise BudgetExceeded("max_depth") as soon as it nests deeper.

    Depth is checked during the walk (the walk's own stack is a path), so a chain nested 100,000
    deep costs ``max_depth`` steps before it is refused.
    """
    max_depth = min(limits.max_depth, HARD_MAX_DEPTH)
    done: dict[int, GraphSize] = {}
    on_path: set[int] = {id(root)}
    # Frames of the walk: the node, its children still to visit, and its running totals.
    frames: list[tuple[Node, list[Node], list[float]]] = [
        (root, list(children(root)), [1.0, 0.0, 0.0])
    ]
    while True:
        node, todo, totals = frames[-1]
        if todo:
            child = todo.pop()
            key = id(child)
            size = done.get(key)
            if size is None and key in on_path:
                totals[0] += 1.0  # a back edge: walkers stop at the cycle
                continue
            if size is None:
                if len(frames) >= max_depth:
                    raise BudgetExceeded(
                        "max_depth",
                        limits.max_depth,
                        f"values nested more than {max_depth} deep",
                        path=source,
                        offset=child.pos,
                    )
                on_path.add(key)
                frames.append((child, list(children(child)), [1.0, 0.0, 0.0]))
                continue
            _add(totals, size, child)
            continue
        frames.pop()
        on_path.discard(id(node))
        own = 0.0 if is_array_node(node) or is_scalar_node(node) else totals[1]
        result = GraphSize(totals[0], own + _own_bytes(node) + _NODE_TEXT, int(totals[2]))
        done[id(node)] = result
        if not frames:
            return result
        _add(frames[-1][2], result, node)


def _add(totals: list[float], size: GraphSize, child: Node) -> None:
    totals[0] += size.nodes
    totals[1] += size.bytes + _INDENT * size.nodes  # each node below is one level deeper
    totals[2] = max(totals[2], size.depth + 1)


def check_budget(
    root: Node, limits: Limits = DEFAULT_LIMITS, *, source: str | None = None
) -> GraphSize:
    """Refuse a graph whose tree walk would exceed ``limits``; otherwise return its size."""
    size = measure(root, limits, source=source)
    if size.nodes > limits.max_expanded_nodes:
        raise BudgetExceeded(
            "max_expanded_nodes",
            limits.max_expanded_nodes,
            f"{describe_count(size.nodes)} nodes reachable",
            path=source,
            offset=root.pos,
        )
    if size.bytes > limits.max_memory:
        raise BudgetExceeded(
            "max_memory",
            limits.max_memory,
            f"{describe_count(size.bytes)} bytes of text and bytes reachable",
            path=source,
            offset=root.pos,
        )
    return size


def check_pickle(
    blob: bytes | memoryview,
    *,
    source: str,
    limits: Limits = DEFAULT_LIMITS,
    max_ops: int | None = None,
) -> PickleReport:
    """``check_pickle_bytes`` plus the graph budgets: a ``:serialized:`` entry is judged by the same
    limits as a legacy file (``max_ops``: what is left of the file's opcode budget)."""
    parsed = parse_ops(blob, source=source, limits=limits, max_ops=max_ops)
    graph = build_graph(parsed, source=source, limits=limits)
    check_budget(graph.root, limits, source=source)
    report = check_graph(graph, source=source)
    return PickleReport(report.protocol, report.globals, report.carries_code, len(parsed.ops))
