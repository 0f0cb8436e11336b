"""A safety verdict on one pickle stream, from the static reader; nothing is imported or called.

Every pickle-bearing file gets one (docs/security.md, "Verdicts"): ``{"safe", "globals",
"reason"}``. The stream is parsed (``pickles.ops``), replayed over inert nodes (``pickles.stream``,
fed one opcode at a time so joblib's raw array bytes are skipped in place), and every node is
judged by the policy of the file's kind (``ckptd.pickles.verdict_policy``). A stream that cannot be
parsed is not safe (a real unpickler may run what comes before the break: nullifAI), except a
plain truncation with nothing outside the policy before it, which is ``broken``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ckptd.errors import FormatError, UnsafeCheckpoint
from ckptd.pickles.nodes import Global, NewObj
from ckptd.pickles.ops import Op, parse_ops
from ckptd.pickles.peek import peek_pickle
from ckptd.pickles.stream import GraphBuilder
from ckptd.pickles.verdict_policy import (
    JOBLIB_WRAPPER,
    Breach,
    Judge,
    Policy,
    joblib_raw_length,
)
from ckptd.textsafe import shown

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Whether loading a pickle-bearing file could run code, and what it references."""

    safe: bool
    globals: tuple[str, ...]  # every module.name referenced, deduplicated, sorted, escaped
    reason: str
    # Not in the manifest: a truncated stream with nothing outside the policy before its end is
    # ``broken`` rather than refused; where the first breach is (for inspect's refusal line).
    broken: bool = field(default=False, compare=False)
    detail: Breach | None = field(default=None, compare=False, repr=False)

    def to_json_obj(self) -> dict[str, object]:
        return {"safe": self.safe, "globals": list(self.globals), "reason": self.reason}


def merge(kind: str, parts: list[tuple[str, Verdict]]) -> Verdict:
    """One verdict for a container from its members' (name, verdict) pairs."""
    names = sorted({name for _, verdict in parts for name in verdict.globals})
    unsafe = [(name, verdict) for name, verdict in parts if not verdict.safe]
    refused = [(name, verdict) for name, verdict in unsafe if not verdict.broken]
    if unsafe:
        name, first = (refused or unsafe)[0]
        more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
        detail = first.detail and Breach(
            f"{name}: {first.detail.reason}",
            first.detail.global_name,
            first.detail.opcode,
            first.detail.offset,
        )
        reason = f"{name}: {first.reason}{more}"
        return Verdict(False, tuple(names), reason, broken=not refused, detail=detail)
    return Verdict(True, tuple(names), f"{kind}: {len(parts)} pickle(s), every reference allowed")


# --- policies ----------------------------------------------------------------------------------


def judge_stream(
    blob: bytes | bytearray | memoryview,
    policy: Policy,
    *,
    source: str,
    text_protocols: bool = False,
) -> Verdict:
    """The verdict on one whole pickle stream (joblib's raw array bytes are skipped in place)."""
    data = memoryview(blob).cast("B")
    builder: GraphBuilder | None = None
    named: set[str] = set()  # GLOBAL/INST names as decoded, before the machine may stop at one

    def feed(op: Op) -> int:
        nonlocal builder
        if op.name in ("GLOBAL", "INST") and isinstance(op.arg, tuple):
            named.add(".".join(op.arg))
        if builder is None:
            protocol = op.arg if op.name == "PROTO" and isinstance(op.arg, int) else 0
            builder = GraphBuilder(
                protocol,
                source=source,
                persistent_ids=policy is Policy.TORCH,
                text_strings=text_protocols,
                deque_appends=policy is Policy.SB3,
            )
        builder.step(op)
        top = builder.peek()
        if (
            op.name == "BUILD"
            and policy is Policy.DATA
            and isinstance(top, NewObj)
            and isinstance(top.cls, Global)
            and (top.cls.module, top.cls.name) == JOBLIB_WRAPPER
        ):
            return joblib_raw_length(top, data, op.end)
        return 0

    try:
        parsed = parse_ops(
            data, source=source, min_protocol=0 if text_protocols else 2, raw_after=feed
        )
        assert builder is not None
        builder.step(parsed.ops[-1])  # STOP: raw_after is not called for it
        graph = builder.graph()
    except UnsafeCheckpoint as err:
        refusal = Breach(err.reason, err.global_name, err.opcode, err.offset)
        seen = _globals_seen(builder, data, named)
        return Verdict(False, seen, _reason(err.message), detail=refusal)
    except FormatError as err:
        return _unparsed(err, policy, builder, data, named)
    names = tuple(sorted({shown(node.dotted) for node in graph.nodes if isinstance(node, Global)}))
    breach = Judge(policy).problem(graph.nodes)
    if breach is not None:
        return Verdict(False, names, _line(breach), detail=breach)
    return Verdict(True, names, f"only {policy.value} references ({len(names)} globals)")


def _line(breach: Breach) -> str:
    return f"{breach.reason} (offset {breach.offset})"


def _unparsed(
    err: FormatError,
    policy: Policy,
    builder: GraphBuilder | None,
    data: memoryview,
    named: set[str],
) -> Verdict:
    """A stream that does not parse. A real unpickler runs what comes before the break
    (nullifAI), so anything outside the policy there refuses the file; a plainly truncated
    stream without such a thing is broken; any other malformation (a FRAME straddled, bytes
    after STOP) is how parser differentials hide payloads, so it is refused."""
    names = _globals_seen(builder, data, named)
    message = _reason(err.message)
    judge = Judge(policy)
    breach = judge.problem(builder.nodes) if builder is not None else None
    outside = [name for name in names if judge.lookup(*_split(name)) is None]
    if breach is None and outside:
        breach = Breach(
            f"global {outside[0]} is not allowed in a {policy.value} pickle", outside[0]
        )
    if breach is not None:
        return Verdict(False, names, f"{_line(breach)}, then: {message}", detail=breach)
    if message.startswith("truncated pickle"):
        return Verdict(False, names, message, broken=True)
    reason = f"cannot be checked statically, so it may run code when loaded: {message}"
    return Verdict(False, names, reason, detail=Breach(reason, offset=err.offset))


def _split(name: str) -> tuple[str, str]:
    module, _, attribute = name.rpartition(".")
    return module, attribute


def _reason(message: str) -> str:
    return message.removeprefix("refused: ")


def _globals_seen(
    builder: GraphBuilder | None, data: memoryview, named: set[str]
) -> tuple[str, ...]:
    """Globals of a stream that stopped early: what was decoded and what the machine saw, plus
    a lenient scan's."""
    names = set(named)
    if builder is not None:
        names.update(node.dotted for node in builder.nodes if isinstance(node, Global))
    if ".".join(JOBLIB_WRAPPER) not in names:
        # A lenient scan finds the names after the point of refusal; not through joblib's raw
        # array bytes, which it would read as opcodes.
        names.update(peek_pickle(data).globals)
    return tuple(sorted(shown(name) for name in names))
