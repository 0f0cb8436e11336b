"""The symbolic machine fed one opcode at a time, with what verdicts on non-SB2 pickles need.

``ckptd.pickles.graph`` replays stable-baselines files and refuses what they never hold.
Verdicts on plain pickles and torch files (``ckptd.pickles.verdict``) need three more things,
added here as opt-ins so the SB2 reader keeps refusing them:

* protocol 0/1 STRING/BINSTRING read as string constants (Python 3 decodes them to str);
* BINPERSID as an inert :class:`PersistentId` node (torch's storages), judged by the policy;
* APPEND(S) on a ``collections.deque(...)`` call (how a deque pickles its items: SB3's episode
  info buffers);
* feeding opcodes one by one (``step``), so joblib's raw array bytes can be skipped in place.
"""

from __future__ import annotations

import codecs

from ckptd.pickles.graph import DEFAULT_MAX_MARK_DEPTH, DEFAULT_MAX_MEMO, _Machine
from ckptd.pickles.nodes import Call, Node
from ckptd.pickles.ops import Op


class PersistentId(Node):
    """BINPERSID: ``persistent_load(pid)``; whether ``pid`` is a torch storage is the policy's call."""

    __slots__ = ("pid",)

    def __init__(self, pid: Node, pos: int) -> None:
        super().__init__(pos)
        self.pid = pid


class GraphBuilder(_Machine):
    """The machine with the opt-ins above; feed it with ``step`` and finish with ``graph``."""

    def __init__(
        self,
        protocol: int,
        *,
        source: str | None = None,
        max_memo: int = DEFAULT_MAX_MEMO,
        max_marks: int = DEFAULT_MAX_MARK_DEPTH,
        persistent_ids: bool = False,
        text_strings: bool = False,
        deque_appends: bool = False,
    ) -> None:
        super().__init__(protocol, source, max_memo, max_marks)
        self.persistent_ids = persistent_ids
        self.text_strings = text_strings
        self.deque_appends = deque_appends

    def step(self, op: Op) -> None:
        if op.name in ("STRING", "BINSTRING", "SHORT_BINSTRING") and self.text_strings:
            self.op = op
            self.text_string(op)
        elif op.name == "BINPERSID" and self.persistent_ids:
            self.op = op
            self.new(PersistentId(self.pop(), op.pos))
        else:
            super().step(op)

    def append_to(self, target: Node, items: list[Node]) -> None:
        if (
            self.deque_appends
            and isinstance(target, Call)
            and target.func_is("collections", "deque")
        ):
            # The items stay nodes of the graph (each judged by the policy); the deque is data.
            return
        super().append_to(target, items)

    def text_string(self, op: Op) -> None:
        if isinstance(op.arg, memoryview):
            text = bytes(op.arg).decode("latin-1")
        else:
            assert isinstance(op.arg, str)
            quoted = op.arg.encode("latin-1")
            if len(quoted) < 2 or quoted[:1] not in (b"'", b'"') or quoted[-1:] != quoted[:1]:
                raise self.broken("STRING argument is not quoted")
            text = codecs.escape_decode(quoted[1:-1])[0].decode("latin-1")
        self.const(text)
