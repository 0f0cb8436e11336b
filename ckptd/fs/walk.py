"""The one recursive walk below a directory: never through a symlink, each directory listed once.

Used for the reconciliation scan (``ckptd.pipeline.discovery``) and the CLI's directory arguments
(``ckptd verify``, ``ckptd convert``); what each skips and does with a file is the caller's. A
run's checkpoints are listed by ``ckptd.runs.listing.walk_files``, the same walk on directory
handles (once per file of every pass: it stats each file relative to its directory).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

# Called with a directory that could not be listed and the error; the walk goes on without it.
OnError = Callable[[str, OSError], None]


def walk_entries(
    top: str,
    skip_dir: Callable[[str], bool],
    on_error: OnError,
    *,
    report_top: bool = False,
    visit_dir: Callable[[str], None] | None = None,
    sort: bool = False,
) -> Iterator[os.DirEntry[str]]:
    """Every entry below ``top`` that is not a directory (symlinks included: the caller decides).

    Never enters a symlinked directory nor one whose name ``skip_dir`` accepts. A directory's own
    entries come before its subdirectories' (in listing order, or by name with ``sort``);
    ``visit_dir`` is called with each directory before it is listed. A subdirectory that cannot be
    listed goes to ``on_error``; so does ``top`` with ``report_top``, else its OSError is raised.
    An entry's path relative to ``top`` is ``entry.path[len(top) + 1:]``.
    """
    subdirs: list[str] = []
    try:
        if visit_dir is not None:
            visit_dir(top)
        with os.scandir(top) as listing:
            for entry in sorted(listing, key=_name) if sort else listing:
                if entry.is_dir(follow_symlinks=False):
                    if not skip_dir(entry.name):
                        subdirs.append(entry.path)
                else:
                    yield entry
    except OSError as err:
        if not report_top:
            raise
        on_error(top, err)
        return
    for subdir in subdirs:
        yield from walk_entries(
            subdir, skip_dir, on_error, report_top=True, visit_dir=visit_dir, sort=sort
        )


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name
