"""Describe one checkpoint file without executing or importing anything from it (``ckptd inspect``).

Legacy pickles are parsed and replayed over inert nodes (``pickle_ops`` / ``pickle_graph``), judged
by the allowlist key by key (so a refused file still shows which ``data`` entry is the problem and
every global it names), described from the graph, and finally read by the safe legacy reader
itself, whose verdict is the one ``convert`` would reach. Zips get one static examination
(``zipexam``: members, ``data`` labels, the static check of each ``:serialized:`` entry, npy
headers); CRCs are ``ckptd verify``'s job.

``InspectReport.as_json()`` is the documented ``inspect --json`` document::

    {"path": str, "size": int, "format": "sb2-pickle" | "sb2-zip" | "sb3-zip" | "pickle" | "joblib"
               | "torch-zip" | "torch-legacy" | "unknown",
     "format_note": str,                       # why sniffing gave that label
     "verdict": "safe" | "refused" | "broken" | "unchecked" | "unknown",
     "error": str | null,                      # one line naming the file, for broken/unknown
     "refusals": [{"reason": str, "where": "data['key']" | "parameters" | null,
                   "global": str | null, "opcode": str | null, "offset": int | null}],
     "problems": [str],                        # zips: one line per problem, member first
     "protocol": int | null,                   # pickles
     "globals": [{"name": "module.qualname", "allowed": bool | null,
                  "opcode": str | null, "offset": int | null}],
     "algorithm": str | null,
     "sb2_version": {"range": str, "min": str | null, "max": str | null, "evidence": [str]} | null,
     "data": [{"key": str, "kind": "plain" | "class" | "space" | "function" | "numpy-scalar"
               | "other", "type": str | null, "carries_code": bool, "globals": [str],
               "safety": "ok" | "n/a" | "refused: ..." | "unchecked: ..."}],
     "carries_code": [str],                    # contract: the data keys that carry code
     "params": {"count": int, "bytes": int, "were_list": bool,
                "arrays": [{"name": str, "dtype": str, "shape": [int], "bytes": int}]},
     "members": [{"name": str, "size": int, "compressed_size": int}],
     "sb3": {"version": str | null, "system_info": {str: str}} | null,
     "pickle_verdict": {"safe": bool, "globals": [str], "reason": str} | null}

``pickle_verdict`` is the manifest's ``verdict`` for plain pickles, joblib dumps, torch files and
SB3 zips (docs/security.md, "Verdicts"); for them ``verdict`` is ``safe`` or ``refused`` from it.

Verdicts: ``safe`` (nothing outside the allowlist, structure sound), ``refused`` (something outside
the allowlist; ``refusals`` say what and where), ``broken`` (truncated or malformed; ``error``),
``unchecked`` (an SB3 zip whose pickles got no verdict), ``unknown`` (not a stable-baselines checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ckptd.convert.legacy import read_file_bytes, read_legacy
from ckptd.convert.legacy_data import json_value, type_name
from ckptd.errors import CkptdError, FormatError, UnsafeCheckpoint, unexpected_text
from ckptd.formats import VERDICT_FORMATS, Format
from ckptd.formats.datajson import Kind, classify_entry
from ckptd.formats.sb2meta import VersionRange, guess_algorithm, guess_sb2_version
from ckptd.formats.sb3zip import parse_system_info
from ckptd.formats.sniff import ZIP_MAGIC, Identification, identify
from ckptd.formats.zipexam import examine_zip
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.allowlist import check_graph, is_code_global, lookup
from ckptd.pickles.arrays import array_of
from ckptd.pickles.budget import check_budget
from ckptd.pickles.graph import (
    Call,
    Const,
    DictNode,
    Global,
    ListNode,
    Node,
    PickleGraph,
    TupleNode,
    build_graph,
    is_ordered_dict_call,
    reachable,
)
from ckptd.pickles.ops import ParsedPickle, parse_ops
from ckptd.pickles.verdict import Verdict as PickleVerdict
from ckptd.pickles.verdict_policy import Policy, allowed_in, policy_for_plain

logger = logging.getLogger(__name__)

Verdict = Literal["safe", "refused", "broken", "unchecked", "unknown"]
PICKLE_MAGIC = 0x80
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_MEMO_STORE_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_LOAD_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_PUSH_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE", *_MEMO_STORE_OPS})


@dataclass(frozen=True)
class GlobalRef:
    """One global the file names; ``allowed`` is None where the SB2 allowlist does not apply."""

    name: str  # "module.qualname"
    allowed: bool | None
    opcode: str | None = None  # of its first occurrence, when known
    offset: int | None = None


@dataclass(frozen=True)
class Refusal:
    """Why (part of) a file is refused, as precisely as the check could say."""

    reason: str
    where: str | None = None  # "data['key']", "parameters", or None for the file as a whole
    global_name: str | None = None
    opcode: str | None = None
    offset: int | None = None  # byte offset in the file (pickles) or in the entry's pickle (zips)

    @classmethod
    def of(cls, err: UnsafeCheckpoint, where: str | None) -> Refusal:
        return cls(err.reason, where, err.global_name, err.opcode, err.offset)

    def line(self) -> str:
        detail = [f"opcode {self.opcode}"] if self.opcode else []
        if self.offset is not None:
            detail.append(f"offset {self.offset}")
        suffix = f" ({', '.join(detail)})" if detail else ""
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.reason}{suffix}"


@dataclass(frozen=True)
class DataKey:
    """One ``data`` entry: what kind of value it is and whether it passed the allowlist."""

    key: str
    kind: Kind
    type_name: str | None = None  # str(type(value)) for non-JSON values
    carries_code: bool = False
    globals: tuple[str, ...] = ()
    safety: str = "n/a"  # "ok", "refused: ...", "unchecked: ..." (non-JSON values); "n/a" (JSON)


@dataclass(frozen=True)
class ParamRow:
    name: str
    dtype: str  # numpy descr with byte order, e.g. "<f4"
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class MemberRow:
    name: str
    size: int
    compressed_size: int


@dataclass(frozen=True)
class InspectReport:
    """Everything ``ckptd inspect`` says about one file (see the module docstring for the JSON)."""

    path: str
    size: int
    format: Format
    format_note: str
    verdict: Verdict
    error: str | None = None
    refusals: tuple[Refusal, ...] = ()
    problems: tuple[str, ...] = ()
    protocol: int | None = None
    globals: tuple[GlobalRef, ...] = ()
    algorithm: str | None = None
    sb2_version: VersionRange | None = None
    data: tuple[DataKey, ...] = ()
    params: tuple[ParamRow, ...] = ()
    params_were_list: bool = False
    members: tuple[MemberRow, ...] = ()
    sb3_version: str | None = None
    system_info: tuple[tuple[str, str], ...] = ()
    pickle_verdict: PickleVerdict | None = None

    @property
    def carries_code(self) -> tuple[str, ...]:
        return tuple(entry.key for entry in self.data if entry.carries_code)

    @property
    def params_bytes(self) -> int:
        return sum(param.nbytes for param in self.params)

    @property
    def sound(self) -> bool:
        """Readable and acceptable: ``safe``, or ``unchecked`` for an intact SB3 zip."""
        return self.verdict in ("safe", "unchecked")

    def as_json(self) -> dict[str, Any]:
        version = self.sb2_version
        return {
            "path": self.path,
            "size": self.size,
            "format": str(self.format),
            "format_note": self.format_note,
            "verdict": self.verdict,
            "error": self.error,
            "refusals": [
                {
                    "reason": refusal.reason,
                    "where": refusal.where,
                    "global": refusal.global_name,
                    "opcode": refusal.opcode,
                    "offset": refusal.offset,
                }
                for refusal in self.refusals
            ],
            "problems": list(self.problems),
            "protocol": self.protocol,
            "globals": [
                {
                    "name": ref.name,
                    "allowed": ref.allowed,
                    "opcode": ref.opcode,
                    "offset": ref.offset,
                }
                for ref in self.globals
            ],
            "algorithm": self.algorithm,
            "sb2_version": None
            if version is None
            else {
                "range": str(version),
                "min": version.minimum,
                "max": version.maximum,
                "evidence": list(version.evidence),
            },
            "data": [
                {
                    "key": entry.key,
                    "kind": entry.kind,
                    "type": entry.type_name,
                    "carries_code": entry.carries_code,
                    "globals": list(entry.globals),
                    "safety": entry.safety,
                }
                for entry in self.data
            ],
            "carries_code": list(self.carries_code),
            "params": {
                "count": len(self.params),
                "bytes": self.params_bytes,
                "were_list": self.params_were_list,
                "arrays": [
                    {"name": p.name, "dtype": p.dtype, "shape": list(p.shape), "bytes": p.nbytes}
                    for p in self.params
                ],
            },
            "members": [
                {"name": m.name, "size": m.size, "compressed_size": m.compressed_size}
                for m in self.members
            ],
            "sb3": None
            if self.format is not Format.SB3_ZIP
            else {"version": self.sb3_version, "system_info": dict(self.system_info)},
            "pickle_verdict": None
            if self.pickle_verdict is None
            else self.pickle_verdict.to_json_obj(),
        }


# --- the I/O edge ----------------------------------------------------------------------------


def inspect_path(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> InspectReport:
    """Inspect ``path`` by content; never raises for bad content (the report says what is wrong)."""
    path = Path(path)
    source = str(path)
    try:
        identification = identify(path)
        verdict = identification.verdict
        if verdict is not None and identification.format is not Format.SB3_ZIP:
            return _judged(source, identification, verdict)
        magic = _leading_bytes(path, len(ZIP_MAGIC))
        if magic == ZIP_MAGIC:
            return inspect_zip(path, identification, limits=limits)
        if magic[:1] == bytes([PICKLE_MAGIC]):
            buf, _ = read_file_bytes(path)
            return inspect_pickle_bytes(
                buf, source=source, identification=identification, limits=limits
            )
    except CkptdError as err:
        return _unreadable(source, str(err))
    except OSError as err:
        return _unreadable(source, f"{source}: cannot read: {err.strerror or err}")
    except Exception as err:  # the last resort: a surprise is this file's verdict, not a traceback
        logger.debug("unexpected error inspecting %s", source, exc_info=True)
        return _unreadable(source, f"{source}: {unexpected_text(err)}")
    return InspectReport(
        source,
        identification.size,
        identification.format,
        identification.note,
        "unknown",
        error=f"{source}: not a stable-baselines checkpoint ({identification.note})",
    )


def _judged(source: str, found: Identification, verdict: PickleVerdict) -> InspectReport:
    """A plain pickle, joblib dump or torch file: its verdict is the report."""
    assert found.format in VERDICT_FORMATS
    breach = verdict.detail
    refusal = (
        Refusal(breach.reason, None, breach.global_name, breach.opcode, breach.offset)
        if breach is not None
        else Refusal(verdict.reason)
    )
    outcome: Verdict = "safe" if verdict.safe else "broken" if verdict.broken else "refused"
    torch = found.format in (Format.TORCH_ZIP, Format.TORCH_LEGACY)
    policy = Policy.TORCH if torch else policy_for_plain(verdict.globals)
    return InspectReport(
        source,
        found.size,
        found.format,
        found.note,
        outcome,
        error=f"{source}: {verdict.reason}" if verdict.broken else None,
        refusals=() if outcome != "refused" else (refusal,),
        protocol=found.protocol,
        globals=tuple(GlobalRef(name, allowed_in(policy, name)) for name in verdict.globals),
        members=(),
        pickle_verdict=verdict,
    )


def _leading_bytes(path: Path, count: int) -> bytes:
    with open_regular_nofollow(path) as handle:
        return handle.read(count)


def _unreadable(source: str, error: str) -> InspectReport:
    return InspectReport(source, 0, Format.UNKNOWN, "unreadable", "broken", error=error)


# --- zips ------------------------------------------------------------------------------------


def inspect_zip(
    path: Path, identification: Identification, *, limits: Limits = DEFAULT_LIMITS
) -> InspectReport:
    """An SB2/SB3 (or any) zip, statically: members, data labels, npy headers; no CRC pass."""
    exam = examine_zip(path, check_crc=False, limits=limits)
    source = str(path)
    entries = exam.data.entries if exam.data else ()
    refusals = tuple(
        Refusal(
            entry.safety.removeprefix("refused: "),
            f"data[{entry.key!r}]",
            entry.refused_global,
            entry.refused_opcode,
            entry.refused_offset,
        )
        for entry in entries
        if entry.safety.startswith("refused")
    )
    verdict: Verdict
    if exam.format is Format.UNKNOWN:
        verdict = "unknown" if exam.members else "broken"
    elif refusals:
        verdict = "refused"
    elif exam.problems:
        verdict = "broken"
    else:
        verdict = "unchecked" if exam.format is Format.SB3_ZIP else "safe"
    judged = identification.verdict if exam.format is Format.SB3_ZIP else None
    if judged is not None and verdict == "unchecked":
        # Its .pth members and :serialized: entries judged (ckptd.formats.verdict_files).
        verdict = "safe" if judged.safe else "refused"
        refusals = refusals if judged.safe else (*refusals, Refusal(judged.reason))
    is_sb2 = exam.format is Format.SB2_ZIP
    names = sorted({name for entry in entries for name in entry.globals})
    globals_ = tuple(GlobalRef(name, _allowed(name) if is_sb2 else None) for name in names)
    keys = [entry.key for entry in entries]
    algorithm = version = None
    if is_sb2:
        policy = next((entry for entry in entries if entry.key == "policy"), None)
        policy_global = policy.globals[0] if policy and len(policy.globals) == 1 else None
        algorithm = guess_algorithm(keys, policy_global)
        version = guess_sb2_version(
            keys, container="zip", referenced_globals=names, algorithm=algorithm
        )
    error = None
    if verdict in ("broken", "unknown") and exam.problems:
        error = f"{source}: {exam.problems[0]}"
    return InspectReport(
        path=source,
        size=exam.size,
        format=exam.format,
        format_note=identification.note,
        verdict=verdict,
        error=error,
        refusals=refusals,
        problems=exam.problems,
        globals=globals_,
        algorithm=algorithm,
        sb2_version=version,
        data=tuple(
            DataKey(
                entry.key,
                entry.kind,
                entry.type_name,
                entry.carries_code,
                entry.globals,
                entry.safety,
            )
            for entry in entries
        ),
        params=tuple(
            ParamRow(param.name, param.descr, param.shape, param.nbytes) for param in exam.params
        ),
        members=tuple(
            MemberRow(member.name, member.size, member.compressed_size) for member in exam.members
        ),
        sb3_version=exam.sb3_version,
        system_info=parse_system_info(exam.system_info or ""),
        pickle_verdict=judged,
    )


def _allowed(dotted: str) -> bool:
    module, _, name = dotted.rpartition(".")
    return bool(module) and lookup(module, name) is not None


# --- legacy pickles (pure: bytes in, report out) ---------------------------------------------


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
        refs = tuple(GlobalRef(name, _allowed(name)) for name in identification.globals)
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
