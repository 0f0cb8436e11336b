"""Describe a legacy pickle held in memory (pure: bytes in, report out; nothing is executed).

The stream is parsed and replayed over inert nodes (``ckptd.pickles.ops`` / ``ckptd.pickles.graph``),
judged by the allowlist key by key (so a refused file still shows which ``data`` entry is the
problem and every global it names), described from the graph, and finally read by the safe legacy
reader itself, whose verdict is the one ``convert`` would reach.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ckptd.convert.data_json import json_value
from ckptd.convert.data_types import type_name
from ckptd.convert.legacy import read_legacy
from ckptd.errors import CkptdError, FormatError, UnsafeCheckpoint
from ckptd.formats import Format
from ckptd.formats.datajson import classify_entry
from ckptd.formats.sb2meta import guess_algorithm, guess_sb2_version
from ckptd.formats.sniff import Identification
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.ops.inspect_report import DataKey, GlobalRef, InspectReport, ParamRow, Refusal, Verdict
from ckptd.pickles.allowlist import is_code_global, lookup
from ckptd.pickles.arrays import array_of
from ckptd.pickles.budget import check_budget
from ckptd.pickles.graph import build_graph
from ckptd.pickles.graph_check import check_graph
from ckptd.pickles.nodes import (
    Call,
    Const,
    DictNode,
    Global,
    ListNode,
    Node,
    PickleGraph,
    TupleNode,
    is_ordered_dict_call,
    reachable,
)
from ckptd.pickles.ops import ParsedPickle, parse_ops

_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_MEMO_STORE_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_LOAD_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_PUSH_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE", *_MEMO_STORE_OPS})


def sb2_allowed(dotted: str) -> bool:
    """Whether the SB2 allowlist lists ``module.qualname``."""
    module, _, name = dotted.rpartition(".")
    return bool(module) and lookup(module, name) is not None


@dataclass(frozen=True)
class _Top:
    """The ``(data, params)`` top level, as graph nodes."""

    data: tuple[tuple[str, Node], ...]
    params: tuple[tuple[str, Node], ...]
    params_node: Node
    were_list: bool


def inspect_pickle_bytes(
    buf: bytes | bytearray | memoryview,
    *,
    source: str,
    identification: Identification,
    limits: Limits = DEFAULT_LIMITS,
) -> InspectReport:
    """Describe a legacy pickle held in memory; the verdict is the safe legacy reader's own.

    The graph's budgets are checked before anything walks it (a file over them is ``refused``).
    """
    view = memoryview(buf).cast("B")
    base: dict[str, Any] = {
        "path": source,
        "size": len(view),
        "format": identification.format,
        "format_note": identification.note,
    }
    try:
        parsed = parse_ops(view, source=source, limits=limits)
    except CkptdError as err:
        refs = tuple(GlobalRef(name, sb2_allowed(name)) for name in identification.globals)
        return _failed(base, err, refs, identification.protocol)
    try:
        graph = build_graph(parsed, source=source, limits=limits)
        check_budget(graph.root, limits, source=source)
    except CkptdError as err:
        return _failed(base, err, _op_globals(parsed), parsed.protocol)

    top = _split_top(graph.root)
    refusals = _refusals(graph, top, source)
    data = tuple(_data_key(key, node, refusals) for key, node in top.data) if top else ()
    params, param_error = _param_rows(top, source)
    error: str | None = None
    problems: tuple[str, ...] = ()
    if refusals:
        problems = (param_error,) if param_error else ()
    else:
        placeholders = [name for name, _ in top.params] if top and top.were_list else None
        try:
            read_legacy(
                view, source=source, allow_code=True, param_names=placeholders, limits=limits
            )
        except UnsafeCheckpoint as err:
            refusals = (Refusal.of(err, None),)
        except FormatError as err:
            error = str(err)
    verdict: Verdict = "safe"
    if refusals:
        verdict = "refused"
    elif error is not None:
        verdict = "unknown" if identification.format is Format.UNKNOWN else "broken"
    globals_ = _graph_globals(graph)
    keys = [key for key, _ in top.data] if top else []
    policy = dict(top.data).get("policy") if top else None
    algorithm = guess_algorithm(keys, policy.dotted if isinstance(policy, Global) else None)
    version = (
        guess_sb2_version(
            keys,
            container="pickle",
            params_were_list=top.were_list,
            referenced_globals=[ref.name for ref in globals_],
            algorithm=algorithm,
        )
        if top
        else None
    )
    return InspectReport(
        **base,
        verdict=verdict,
        error=error,
        refusals=refusals,
        problems=problems,
        protocol=parsed.protocol,
        globals=globals_,
        algorithm=algorithm,
        sb2_version=version,
        data=data,
        params=params,
        params_were_list=bool(top and top.were_list),
    )


def _failed(
    base: dict[str, Any], err: CkptdError, refs: tuple[GlobalRef, ...], protocol: int | None
) -> InspectReport:
    if isinstance(err, UnsafeCheckpoint):
        return InspectReport(
            **base,
            verdict="refused",
            refusals=(Refusal.of(err, None),),
            globals=refs,
            protocol=protocol,
        )
    verdict: Verdict = "unknown" if base["format"] is Format.UNKNOWN else "broken"
    return InspectReport(**base, verdict=verdict, error=str(err), globals=refs, protocol=protocol)


def _split_top(root: Node) -> _Top | None:
    """``(data dict, params OrderedDict | list)``, or None when the file is not shaped like that."""
    if not (isinstance(root, TupleNode) and len(root.items) == 2):
        return None
    data_node, params_node = root.items
    if not isinstance(data_node, DictNode):
        return None
    data = tuple(
        (key.value, value)
        for key, value in data_node.items
        if isinstance(key, Const) and isinstance(key.value, str)
    )
    if isinstance(params_node, ListNode):
        params = tuple((f"#{index}", node) for index, node in enumerate(params_node.items))
        return _Top(data, params, params_node, True)
    if is_ordered_dict_call(params_node) and isinstance(params_node, Call):
        named = tuple(
            (key.value, value)
            for key, value in params_node.setitems
            if isinstance(key, Const) and isinstance(key.value, str)
        )
        return _Top(data, named, params_node, False)
    return None


def _subgraph(graph: PickleGraph, root: Node) -> PickleGraph:
    """The nodes reachable from ``root``, in stream order (so the first breach is reported first)."""
    return PickleGraph(graph.protocol, root, sorted(reachable(root), key=lambda node: node.pos))


def _refusals(graph: PickleGraph, top: _Top | None, source: str) -> tuple[Refusal, ...]:
    """Every part of the file the allowlist refuses: per data key, the parameters, then the rest."""
    parts: list[tuple[str, Node]] = []
    if top:
        parts = [(f"data[{key!r}]", node) for key, node in top.data]
        parts.append(("parameters", top.params_node))
    found: list[Refusal] = []
    for where, node in parts:
        try:
            check_graph(_subgraph(graph, node), source=source)
        except UnsafeCheckpoint as err:
            found.append(Refusal.of(err, where))
    try:
        check_graph(graph, source=source)  # also judges nodes no key reaches (popped, unused)
    except UnsafeCheckpoint as err:
        if not any(refusal.offset == err.offset for refusal in found):
            found.append(Refusal.of(err, None))
    return tuple(found)


def _data_key(key: str, node: Node, refusals: Sequence[Refusal]) -> DataKey:
    is_json, _ = json_value(node)
    if is_json:
        return DataKey(key, "plain")
    nodes = list(reachable(node))
    names = tuple(sorted({item.dotted for item in nodes if isinstance(item, Global)}))
    code = any(isinstance(item, Global) and is_code_global(item) for item in nodes)
    try:
        text: str | None = type_name(node)
    except (CkptdError, LookupError, AssertionError, TypeError, ValueError):
        text = None  # a label only; the verdict does not depend on it
    where = f"data[{key!r}]"
    refusal = next((refusal for refusal in refusals if refusal.where == where), None)
    safety = f"refused: {refusal.reason}" if refusal else "ok"
    kind = classify_entry(text, code, builds_objects=not isinstance(node, Global), complete=True)
    return DataKey(key, kind, text, code, names, safety)


def _param_rows(top: _Top | None, source: str) -> tuple[tuple[ParamRow, ...], str | None]:
    if top is None:
        return (), None
    rows: list[ParamRow] = []
    for name, node in top.params:
        try:
            array = array_of(node, source)
        except (CkptdError, LookupError, AssertionError, TypeError, ValueError) as err:
            return tuple(rows), str(err) if isinstance(err, CkptdError) else (
                f"{source}: parameter {name!r} is not a readable numpy array"
            )
        rows.append(ParamRow(name, array.dtype.str, array.shape, array.raw.nbytes))
    return tuple(rows), None


def _graph_globals(graph: PickleGraph) -> tuple[GlobalRef, ...]:
    """Every global the stream names (reachable or not), first occurrence, in stream order."""
    seen: dict[str, GlobalRef] = {}
    for node in graph.nodes:
        if isinstance(node, Global) and node.dotted not in seen:
            allowed = lookup(node.module, node.name) is not None
            seen[node.dotted] = GlobalRef(node.dotted, allowed, node.opcode, node.pos)
    return tuple(seen.values())


def _op_globals(parsed: ParsedPickle) -> tuple[GlobalRef, ...]:
    """Globals straight from the opcodes, for streams the graph builder refused to replay."""
    seen: dict[str, GlobalRef] = {}
    for name, module, qualname, op_name, pos in _scan_globals(parsed):
        if name not in seen:
            seen[name] = GlobalRef(name, lookup(module, qualname) is not None, op_name, pos)
    return tuple(seen.values())


def _scan_globals(parsed: ParsedPickle) -> Iterator[tuple[str, str, str, str, int]]:
    # STACK_GLOBAL takes its operands from the stack: track the last two pushed strings,
    # through the memo, which is how every pickler writes them.
    memo: dict[int, str | None] = {}
    recent: list[str | None] = [None, None]
    for op in parsed.ops:
        if op.name in ("GLOBAL", "INST") and isinstance(op.arg, tuple):
            module, qualname = op.arg
            yield f"{module}.{qualname}", module, qualname, op.name, op.pos
        elif op.name == "STACK_GLOBAL" and recent[0] is not None and recent[1] is not None:
            yield f"{recent[0]}.{recent[1]}", recent[0], recent[1], op.name, op.pos
        if op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif op.name in _MEMO_STORE_OPS and isinstance(op.arg, int):
            memo[op.arg] = recent[-1]
        elif op.name not in _NO_PUSH_OPS:
            pushed = op.arg if op.name in _STRING_OPS and isinstance(op.arg, str) else None
            if op.name in _MEMO_LOAD_OPS and isinstance(op.arg, int):
                pushed = memo.get(op.arg)
            recent = [recent[-1], pushed]
