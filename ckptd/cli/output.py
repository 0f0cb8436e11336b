"""Shared output helpers for the CLI: JSON documents, one-line errors, progress bars.

Every string that came from a file, a name or a pickle goes through :func:`ckptd.textsafe.shown`
before it reaches the terminal (control characters escaped), and through :func:`lit` where rich
would read markup (``rl_model_[bold]_1_steps.zip`` stays exactly that). See ``docs/security.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

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


def lit(value: object) -> str:
    """``value`` for a rich markup string: control characters escaped, markup shown literally."""
    return escape(shown(value))


def say(line: object) -> None:
    """One plain line on stdout (no markup), control characters escaped."""
    print(shown(line))


def error_line(message: object) -> None:
    """One line on stderr, prefixed so it is obvious in logs which tool spoke."""
    print(f"ckptd: {shown(message)}", file=sys.stderr)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def progress_bar(*, enabled: bool) -> Progress:
    """A byte-based progress bar on stderr; disabled for --json and non-terminal stderr."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}"),
        console=console,
        disable=not enabled or not console.is_terminal,
        transient=False,
    )
