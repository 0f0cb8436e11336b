"""Shared output helpers for the CLI: JSON documents, one-line errors, tables, progress bars.

Every string that came from a file, a name or a pickle goes through :func:`ckptd.textsafe.shown`
before it reaches the terminal (control characters escaped), and through :func:`lit` where rich
would read markup (``rl_model_[bold]_1_steps.zip`` stays exactly that). See ``docs/security.md``.

Tables (:func:`print_table`) take their cells as plain text, never markup, and never break a word:
names, sizes and ages stay on one line, only free text (reasons, problems) wraps, at spaces. A table
wider than the terminal is printed at the width it needs (the terminal wraps the lines, the cells
stay whole); when stdout is not a terminal nothing wraps at all, one row per line.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from ckptd.cli.lines import error_line as error_line
from ckptd.cli.lines import print_json as print_json
from ckptd.cli.lines import say as say
from ckptd.cli.progress import lit as lit
from ckptd.cli.progress import progress_bar as progress_bar
from ckptd.textsafe import shown

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# The tables import rich when they first draw, like the progress bars (ckptd.cli.progress): a
# command module may import this one and still print JSON without loading rich (``ckptd prune
# --json``: ~20 ms of its start-up).


@functools.cache
def _console_class() -> type[Console]:
    """A console class that lets a closed pipe reach ``cli.main`` (rich would exit 1 on its own)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return _Console


def stdout_console() -> Console:
    return _console_class()(highlight=False, soft_wrap=True)


@dataclass(frozen=True)
class Column:
    """A table column: ``wrap`` columns hold free text that may wrap at spaces; the others
    (names, paths, sizes, ages) are never broken."""

    header: str
    wrap: bool = False
    justify: Literal["left", "right"] = "left"


Cell: TypeAlias = "str | Text"


def cell(value: object, style: str = "") -> Text:
    """A table cell showing ``value`` literally (control characters escaped, no markup)."""
    from rich.text import Text

    return Text(shown(value), style=style)


def print_table(
    title: str,
    columns: Sequence[Column],
    rows: Iterable[Sequence[Cell]],
    *,
    console: Console | None = None,
    row_styles: Sequence[str] = (),
) -> None:
    """Print one table (see the module docstring); ``str`` cells are shown literally too."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    console = console or stdout_console()
    body = [[value if isinstance(value, Text) else cell(value) for value in row] for row in rows]
    # The title is a line of its own: a table's title wraps at the table's width.
    table = Table()
    for index, column in enumerate(columns):
        longest = max((cell_len(row[index].plain) for row in body), default=0)
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=not column.wrap,
            overflow="fold" if column.wrap else "ignore",
            # A whole name, size or age is the least a column gets: rich shrinks only free text.
            min_width=None if column.wrap else max(longest, cell_len(column.header)),
        )
    for index, row in enumerate(body):
        table.add_row(*row, style=row_styles[index] if index < len(row_styles) else None)
    needs = console.measure(table, options=console.options.update_width(_UNLIMITED))
    width = max(console.width, needs.minimum) if console.is_terminal else needs.maximum
    # Console.print never goes wider than its console: print through one of the width needed.
    wide = _console_class()(
        file=console.file,
        width=width,
        highlight=False,
        force_terminal=console.is_terminal,
        color_system=cast(Any, console.color_system),
    )
    wide.print(cell(title), soft_wrap=True)
    wide.print(table, crop=False)


_UNLIMITED = 1 << 20  # columns: measure a table's natural width, not the terminal's
