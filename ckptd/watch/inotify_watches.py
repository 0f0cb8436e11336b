"""Whether watchdog's inotify emitter really watches a directory, and adding the watch it dropped.

watchdog 7.1 adds a new directory's watch when it reads the directory's creation (or move-in)
event: ``InotifyWatchGroup.on_event`` calls ``_add_all_callbacks``, which calls
``inotify_add_watch``. That call needs read permission on the directory. When it fails with
EACCES, ``InotifyFD._raise_error`` returns without raising (EACCES is the one error it drops), and
the directory's node in the group's tree is left with the invalid descriptor -1: no event from
that directory ever arrives, and nothing in watchdog tries again (docs/architecture.md,
"Watching"). ``install -d -o USER DIR`` leaves DIR root's and 0700 for a moment, which is enough.

watchdog has no public way to ask whether a path is watched or to add one watch to a running
recursive emitter, so this module reads the group's tree and calls the same ``_add_all_callbacks``
watchdog calls on a creation event, under the group's own lock, exactly as ``on_event`` does. It
reaches only these private names (``emitter._inotify``, ``group._lock``, ``_find_node_by_path``,
``_add_all_callbacks``, ``DirNode.wd`` and ``DirNode.children``) and checks each: when a watchdog
release changes them, :func:`watch_state` answers None ("cannot tell") and the caller falls back
to restarting the root's observer, which re-walks the whole tree (tests/test_watch_unwatched.py
fails loudly on such a release rather than letting it degrade quietly). No watchdog import: duck typing keeps this
module off the library's edge (``watch/watcher.py``).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar, cast

T = TypeVar("T")

# watchdog.observers.inotify._INVALID_WD: the descriptor a node keeps when its add failed.
INVALID_WD = -1


class _Node(Protocol):
    wd: int


class _Group(Protocol):
    """The part of watchdog's ``InotifyWatchGroup`` used here."""

    _lock: threading.Lock
    is_active: bool

    def _find_node_by_path(self, path: bytes) -> _Node | None: ...

    def _add_all_callbacks(self, path: bytes) -> None: ...


# A failed add leaves a watch record for descriptor -1 holding the group's callback; the next
# failed add in the same tree finds it and warns (on stderr, naming the earlier directory). The
# records are harmless (-1 never receives an event; each directory's own node says it is
# unwatched), and ckptd finds those directories itself, so that one warning says nothing.
FAILED_ADD_WARNING = r"Callback with id '[^']*' already exists for watch <Watch: wd=-1,"


def ignore_failed_add_warnings() -> None:
    """Stop watchdog's warning about a second failed add (see ``FAILED_ADD_WARNING``)."""
    warnings.filterwarnings("ignore", message=FAILED_ADD_WARNING, category=RuntimeWarning)


def _group(observer: object, path: Path) -> _Group | None:
    """The inotify watch group of ``observer`` whose tree holds ``path``; None if there is none
    or watchdog's internals are not the ones this module knows."""
    emitters = getattr(observer, "emitters", None)
    if emitters is None:
        return None
    for emitter in list(emitters):
        group = getattr(emitter, "_inotify", None)
        watch = getattr(emitter, "watch", None)
        if group is None or watch is None:
            continue
        if not all(
            callable(getattr(group, name, None))
            for name in ("_find_node_by_path", "_add_all_callbacks")
        ) or not hasattr(group, "_lock"):
            continue
        root = Path(os.fsdecode(watch.path))
        if path == root or root in path.parents:
            return cast(_Group, group)
    return None


def _locked(group: _Group, action: Callable[[], T]) -> T:
    with group._lock:  # the lock on_event holds while it adds watches
        return action()


def _watched(group: _Group, path: Path) -> bool:
    node = group._find_node_by_path(os.fsencode(path))
    wd = getattr(node, "wd", None) if node is not None else None
    return isinstance(wd, int) and wd != INVALID_WD


def watch_state(observer: object, path: Path) -> bool | None:
    """True when ``observer`` watches the directory ``path``, False when its watch is missing,
    None when this cannot be told (not an inotify observer, or unknown watchdog internals)."""
    group = _group(observer, path)
    if group is None:
        return None
    return _locked(group, lambda: _watched(group, path))


def add_watch(observer: object, path: Path) -> bool | None:
    """Add the watches watchdog dropped for ``path`` and the directories below it, as watchdog
    does for a directory it sees created; True when ``path`` is watched afterwards (None: cannot
    tell, as for :func:`watch_state`). Call it only for a directory that can be listed: an add
    that fails again only repeats the failure."""
    group = _group(observer, path)
    if group is None:
        return None

    def add() -> bool:
        if not getattr(group, "is_active", False):
            return False  # the emitter is stopping; the health check restarts it
        try:
            group._add_all_callbacks(os.fsencode(path))
        except OSError:
            return False  # e.g. out of watches: reported as still unwatched
        return _watched(group, path)

    return _locked(group, add)


def unwatched_below(observer: object, path: Path) -> list[Path] | None:
    """The directories below ``path`` whose add failed (None: cannot tell), from watchdog's tree:
    the nodes left with descriptor -1. ``_add_all_callbacks`` walks a tree it watches, but a
    subdirectory that cannot be listed either (``tar x`` as root restores directory modes only at
    the end) fails the same silent way, and no event will come for it: it was made before its
    parent's watch. The same holds for every unlistable directory when an observer starts."""
    group = _group(observer, path)
    if group is None:
        return None

    def collect() -> list[Path]:
        top = group._find_node_by_path(os.fsencode(path))
        found: list[Path] = []
        stack: list[tuple[object, Path]] = [(top, path)] if top is not None else []
        while stack:
            node, where = stack.pop()
            children = getattr(node, "children", None)
            if not isinstance(children, dict):
                continue
            for name, child in children.items():
                below = where / os.fsdecode(name)
                if getattr(child, "wd", None) == INVALID_WD:
                    found.append(below)
                stack.append((child, below))
        return sorted(found)

    return _locked(group, collect)
