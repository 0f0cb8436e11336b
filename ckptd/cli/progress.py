"""Progress bars and markup-literal text: rich, imported only by a command that shows them.

rich costs 20 ms to import, a tenth of what ``ckptd convert`` of one 200 MiB file should take
(README, "Benchmarks"); a single file shows no bar, so that command never imports it
(``ckptd.cli.lines`` prints its lines). ``ckptd.cli.output`` re-exports both functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckptd.textsafe import shown

if TYPE_CHECKING:
    from rich.progress import Progress


def lit(value: object) -> str:
    """``value`` for a rich markup string: control characters escaped, markup shown literally."""
    from rich.markup import escape

    return escape(shown(value))


def progress_bar(*, enabled: bool) -> Progress:
    """A byte-based progress bar on stderr; disabled for --json and non-terminal stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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
