"""Where a conversion puts its zip, and which legacy file a zip came from: one naming rule.

``x.pkl`` becomes ``x.zip`` beside it; a name without a suffix gets ``.zip`` appended (SB2's own
loader appends ``.zip`` to extension-less names). The rule is :meth:`PurePath.with_suffix`'s, so
the daemon, the CLI and the inventory that links archived originals to their zips agree on every
name, odd ones included (``x.`` becomes ``x..zip``). Pure: names in, names out.
"""

from __future__ import annotations

from pathlib import PurePath, PurePosixPath
from typing import TypeVar

P = TypeVar("P", bound=PurePath)


def zip_path_for(source: P) -> P:
    """The zip converting ``source`` writes: ``x.pkl`` -> ``x.zip``, ``x`` -> ``x.zip``."""
    return source.with_suffix(".zip") if source.suffix else source.with_name(source.name + ".zip")


def zip_name_for(source: str) -> str:
    """:func:`zip_path_for` on a run-relative path written with ``/``."""
    return zip_path_for(PurePosixPath(source)).as_posix()


def legacy_name_for(zip_relpath: str) -> str:
    """The ``.pkl`` a zip was most likely converted from (SB2 saved legacy checkpoints as .pkl)."""
    path = PurePosixPath(zip_relpath)
    legacy = path.with_suffix(".pkl") if path.suffix else path.with_name(path.name + ".pkl")
    return legacy.as_posix()
