"""Checkpoints that cost the parser time or memory: inputs for the isolation tests.

* ``shared_memo_pickle``: about 1 KB of legacy pickle whose data holds a list built from itself,
  ``x = [x, x]`` ``depth`` times through the memo: a DAG a converter walks as a tree (2**depth
  nodes). It hung the converter before budgets; ``limits.max_expanded_nodes`` refuses it now.
* ``padded_pickle``: a genuine DQN checkpoint with ``pairs`` no-op ``NONE POP`` pairs before its
  STOP: valid, allowlisted, and slow to parse however the parser is written (every opcode is
  read), and it needs memory in proportion (1,000,000 pairs: about 5 s and 320 MiB). Over the
  default ``limits.max_opcodes``; with that raised it is slow, and ``limits.max_seconds: 1s``
  makes it exceed.
* ``big_data_pickle``: a genuine checkpoint whose data carries a ``text``-byte string: whatever
  the converter does, it holds that string (and its JSON) in memory, about five times ``text``
  of address space at its peak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.sb2_fixtures import dqn_data, dqn_params, dumps, stand_ins


def _checkpoint(extra: dict[str, Any] | None = None) -> bytes:
    with stand_ins():
        data = dqn_data()
        data.update(extra or {})
        return dumps((data, dqn_params()), 4)


def genuine_pickle(path: Path) -> Path:
    path.write_bytes(_checkpoint())
    return path


def shared_memo_pickle(path: Path, depth: int = 40) -> Path:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested, nested]
    path.write_bytes(_checkpoint({"policy_kwargs": {"layers": nested}}))
    return path


def padded_bytes(pairs: int = 1_000_000) -> bytes:
    blob = _checkpoint()
    assert blob.endswith(b".")
    return blob[:-1] + b"N0" * pairs + b"."


def padded_pickle(path: Path, pairs: int = 1_000_000) -> Path:
    path.write_bytes(padded_bytes(pairs))
    return path


def big_data_pickle(path: Path, text: int = 160 * 1024**2) -> Path:
    path.write_bytes(_checkpoint({"description": "x" * text}))
    return path
