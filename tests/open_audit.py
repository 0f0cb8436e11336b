"""Record which paths this process opens during a test (a warm pass must read no checkpoint).

Audit hooks cannot be removed once added, so the one hook is installed once, here, and test modules
share the ``opened`` fixture instead of each adding a hook of their own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        # A directory opened to list it (os.open(..., O_DIRECTORY), as the inventory's walk does)
        # reads no file's contents.
        flags = args[2]
        if isinstance(flags, int) and flags & os.O_DIRECTORY:
            return
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Paths opened (open(), os.open(), io.open()) by this process during the test, directories
    opened to be listed left out."""
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None
