"""Output that needs no rich: one JSON document, one plain line, one error line.

``ckptd convert`` of a single file prints only these, so it starts without importing rich (20 ms
of a conversion that should take 0.3 s: README, "Benchmarks"); ``ckptd.cli.output`` re-exports
them beside its tables and progress bars. Strings from files go through ``shown`` as everywhere
(docs/security.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ckptd.textsafe import shown


def print_json(document: Any) -> None:
    """One JSON document on stdout (sorted keys are not used: the contract's key order reads better)."""
    json.dump(document, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def say(line: object) -> None:
    """One plain line on stdout (no markup), control characters escaped."""
    print(shown(line))


def error_line(message: object) -> None:
    """One line on stderr, prefixed so it is obvious in logs which tool spoke."""
    print(f"ckptd: {shown(message)}", file=sys.stderr)
