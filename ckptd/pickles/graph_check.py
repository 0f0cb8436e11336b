"""Apply the allowlist to a pickle's graph: every node, reachable or not; refuse at the first breach.

The one rule that separates a genuine checkpoint from an attack (both use the same helpers) is
that **nothing constructed is ever called**: ``Call.func`` must be a ``Global`` (whose rule in
``ckptd.pickles.allowlist`` allows the call and its argument shapes), except
``_builtin_type(<CodeType|MethodType|CellType|FunctionType>)``, whose result is a type whose call
only builds an object. Instance state (BUILD) sets plain attribute names only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptd.errors import UnsafeCheckpoint
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.allowlist import is_code_global, lookup
from ckptd.pickles.call_shapes import is_builtin_type_call, is_const
from ckptd.pickles.graph import build_graph
from ckptd.pickles.nodes import (
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
    is_ordered_dict_call,
)
from ckptd.pickles.ops import parse_ops
from ckptd.pickles.pynames import is_dotted_name, name_problem


@dataclass(frozen=True)
class PickleReport:
    """What the static check of one pickle found."""

    protocol: int
    globals: tuple[str, ...]  # "module.name", sorted
    carries_code: bool
    opcodes: int = 0  # how many the stream has (a zip's pickles share one budget of them)


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
        dicts = [item for item in state.items if not is_const(item, type(None))]
    for mapping in dicts:
        if not isinstance(mapping, DictNode):
            return f"object state is a {mapping.kind()}, not a dict"
        for key, _ in mapping.items:
            if not is_const(key, str):
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
