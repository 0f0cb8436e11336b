"""Per-file budgets: how much work and memory one checkpoint may cost before it is refused.

A pickle is a program for a stack machine, and a few kilobytes of it can describe an object graph
that is exponentially large once its shared parts are expanded (a tuple nested 60 deep whose two
halves are the same memo entry has 2^60 leaves). Every per-file pass ckptd makes is bounded by these
numbers, checked before any recursive work (docs/security.md, "Budgets"). Over a budget, the file is
refused and the message names the budget (``exceeds limits.max_expanded_nodes (1000000): ...``).

Pure: the config (``limits:``) builds one of these; the library takes it with these defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

# The walkers that render, convert and re-emit values recurse (two or three Python frames per
# level); a deeper limit could reach Python's recursion limit, so max_depth is capped here.
HARD_MAX_DEPTH = 200
# numpy 1.x (the stable-baselines runtime) supports at most 32 dimensions.
MAX_DIMS = 32
# The largest array extent numpy can index (npy_intp).
MAX_EXTENT = 2**63 - 1
# What the daemon's parser process needs beyond the content max_memory counts (see
# Limits.address_space; measured figures in docs/security.md, "Isolation").
PARSER_HEADROOM = 768 * 1024**2


@dataclass(frozen=True)
class Limits:
    """The budgets of one checkpoint file (defaults fit every genuine stable-baselines checkpoint)."""

    # Opcodes in one file (all of a zip's ``:serialized:`` pickles together).
    max_opcodes: int = 1_000_000
    # Nesting depth of the object graph (containers in containers), at most HARD_MAX_DEPTH.
    max_depth: int = 100
    # Nodes of the object graph with shared parts counted as often as they are reachable.
    max_expanded_nodes: int = 1_000_000
    # Bytes of non-array content (strings, bytes, JSON, rendered text) reachable, counted the same
    # way; array payloads are streamed separately and bounded by the file.
    max_memory: int = 256 * 1024**2
    # Wall-clock time one file may take in a daemon worker (its parser process is then killed).
    max_seconds: timedelta = timedelta(minutes=10)
    # Decimal digits of one integer (Python's own default str() limit; not a config key).
    max_int_digits: int = 4300
    # Memo slots one pickle may use (not a config key: bounded by the opcodes anyway).
    max_memo: int = 1_000_000

    @property
    def address_space(self) -> int:
        """RLIMIT_AS of the daemon's process that parses one file (``ckptd.isolation.supervisor``).

        ``max_memory`` counts only a file's non-array content, and RLIMIT_AS counts virtual memory,
        not what is resident: the interpreter with numpy and ckptd imported, OpenBLAS's per-thread
        arenas, the streamed array and zip buffers, and the Python objects that hold the counted
        content all come on top. ``PARSER_HEADROOM`` covers them with room to spare (measured: 110
        MiB for any genuine fixture, arrays being streamed). The child adds each file's size while
        it parses that file: a legacy pickle is read into an anonymous sparse buffer as large as
        the file, which costs no memory where untouched but counts against RLIMIT_AS. A file that
        needs more is refused naming ``limits.max_memory``, the one key that raises this cap.
        """
        return self.max_memory + PARSER_HEADROOM

    @property
    def max_int_bits(self) -> int:
        """The bit length an integer of ``max_int_digits`` decimal digits can reach."""
        return math.ceil(self.max_int_digits * math.log2(10))


DEFAULT_LIMITS = Limits()


def describe_count(count: float) -> str:
    """A count for a message: exact when small, as a power of two when astronomically large."""
    if count < 1e15:
        return str(int(count))
    if math.isinf(count):
        return "more than 2^1024"
    return f"about 2^{math.log2(count):.0f}"


def shape_problem(shape: tuple[int, ...], itemsize: int = 1) -> str | None:
    """Why numpy could not make an array of ``shape`` (None if it can): too many dimensions, or
    extents whose product (zeros aside: numpy still checks them) overflows its index type."""
    if len(shape) > MAX_DIMS:
        return f"array of {len(shape)} dimensions (numpy supports at most {MAX_DIMS})"
    if any(dim < 0 for dim in shape):
        return "array shape with a negative dimension"
    extent = itemsize
    for dim in shape:
        extent *= max(dim, 1)
        if extent > MAX_EXTENT:
            return f"array shape of {len(shape)} dimensions whose size overflows numpy's index type"
    return None
