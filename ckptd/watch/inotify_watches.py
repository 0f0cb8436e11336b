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
``_add_all_callbacks``, ``DirNode.wd``; to tidy up after, ``_nodes_by_wd``, ``_inotify_fd``,
``_id`` and ``InotifyFD._watch_for_wd``) and checks each: when a watchdog release changes them,
:func:`watch_state` answers None ("cannot tell") and the caller falls back to restarting the
root's observer, which re-walks the whole tree (tests/test_watch_unlistable.py fails loudly on
such a release rather than letting it degrade quietly). No watchdog import: duck typing keeps this
module off the library's edge (``watch/watcher.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

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


def _forget_failed_add(group: _Group) -> None:
    """Drop watchdog's record of a failed add once no directory of ``group`` waits on one.

    The failed add left a ``Watch`` for descriptor -1 holding the group's callback in the shared
    ``InotifyFD`` and pointed the group's ``_nodes_by_wd[-1]`` at the directory's node. Left
    there, the next directory that cannot be listed makes watchdog print a RuntimeWarning to
    stderr ("Callback with id ... already exists for watch ... wd=-1"), naming this one.
    """
    nodes = getattr(group, "_nodes_by_wd", None)
    inotify_fd = getattr(group, "_inotify_fd", None)
    callback_id = getattr(group, "_id", None)
    watches = getattr(inotify_fd, "_watch_for_wd", None)
    if not isinstance(nodes, dict) or not isinstance(watches, dict) or callback_id is None:
        return
    stale = nodes.get(INVALID_WD)
    if stale is not None and getattr(stale, "wd", INVALID_WD) != INVALID_WD:
        del nodes[INVALID_WD]  # points at a node that has its watch now
    failed = watches.get(INVALID_WD)
    callbacks = getattr(failed, "callbacks", None)
    if INVALID_WD in nodes or not isinstance(callbacks, dict) or callback_id not in callbacks:
        return
    remove = getattr(inotify_fd, "remove_callbacks", None)
    if callable(remove):
        remove([(INVALID_WD, callback_id)])  # inotify_rm_watch(-1) fails with EINVAL: ignored


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


def _locked(group: _Group, action: Callable[[], bool]) -> bool:
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
    tell, as for :func:`watch_state`). Call it only for a directory that can be listed: each add
    that fails again leaves watchdog warning about a second callback on descriptor -1."""
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
        if not _watched(group, path):
            return False
        _forget_failed_add(group)
        return True

    return _locked(group, add)
