"""Shared output helpers for the CLI: JSON documents, one-line errors, progress bars."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


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


def error_line(message: str) -> None:
    """One line on stderr, prefixed so it is obvious in logs which tool spoke."""
    print(f"ckptd: {message}", file=sys.stderr)


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
