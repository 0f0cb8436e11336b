"""New directories whose inotify watch watchdog dropped, until they have one (docs/architecture.md,
"Watching").

watchdog adds a new directory's watch when it reads the directory's creation event and silently
drops the EACCES of a directory the daemon cannot read yet (``watch/inotify_watches.py``). The
daemon checks each new directory before it scans it (:meth:`DroppedWatches.check_new_directory`):
watched, it is scanned; listable but unwatched (``install -d`` chmods within microseconds), its
watch is added and it is scanned; unlistable, it is followed (``watch/unwatched.py`` says when it
is looked at again) and, as soon as it can be listed, watched and then reported as created, so
its scan comes after its watch. Driven from the daemon's main loop only, like the watch set.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Literal, Protocol

from ckptd.watch.events import NameFilter
from ckptd.watch.inotify_watches import add_watch, unwatched_below, watch_state
from ckptd.watch.unwatched import UnwatchedDirs

logger = logging.getLogger(__name__)

# "unknown": listable, but watchdog's internals cannot tell whether it is watched.
Outcome = Literal["watched", "added", "gone", "unknown", "unwatched"]


class WatchHost(Protocol):
    """What this needs of the watch set (``watch/watcher.py``)."""

    def inotify_observer(self, root: Path) -> object | None: ...

    def is_root(self, root: Path) -> bool: ...

    def name_filter(self) -> NameFilter: ...

    def restart(self, root: Path) -> bool: ...

    def directory_appeared(self, root: Path, path: Path) -> None: ...


def listing_problem(path: Path) -> str | None:
    """None when the directory ``path`` can be listed, "gone" when it is no longer one, else why."""
    try:
        with os.scandir(path):
            pass
    except (FileNotFoundError, NotADirectoryError):
        return "gone"
    except OSError as err:
        name = errno.errorcode.get(err.errno or 0, "")
        text = err.strerror or str(err)
        return f"{text} ({name})" if name else text
    return None


def look(observer: object, path: Path) -> tuple[Outcome, str]:
    """Whether ``path`` is watched, adding the watch watchdog dropped when it can be listed now;
    with why not, when it is still unwatched."""
    state = watch_state(observer, path)
    if state:
        return "watched", ""
    problem = listing_problem(path)
    if problem == "gone":
        return "gone", ""
    if problem is not None:
        return "unwatched", problem
    if state is None:
        return "unknown", ""
    if add_watch(observer, path):
        return "added", ""
    return "unwatched", "its inotify watch could not be added"


class DroppedWatches:
    """The directories followed until watched, and what the daemon is told about them."""

    def __init__(self, host: WatchHost) -> None:
        self._host = host
        self.unwatched = UnwatchedDirs()

    def check_new_directory(self, root: Path, path: Path, now: float) -> bool:
        """A directory just created or moved in below ``root``, whose event is being handled:
        True when it can be scanned now, with its watch in place (added here when watchdog could
        not add it); False when it cannot be listed yet. It is then looked at again (``tick``)
        and, once watched, reported as created (``WatchHost.directory_appeared``)."""
        if path in self.unwatched:
            return False
        observer = self._host.inotify_observer(root)
        if observer is None:
            return True
        outcome, reason = look(observer, path)
        if outcome == "added":
            logger.info("%s was not listable when it appeared; watching it now", path)
            self._follow_below(observer, root, path, now)
        elif outcome == "unwatched":
            self._follow(root, path, reason, now)
            return False
        return True

    def _follow(self, root: Path, path: Path, reason: str, now: float) -> None:
        if not self.unwatched.add(root, path, reason, now):
            logger.warning("%s cannot be listed (%s); left to the rescan", path, reason)
        else:
            logger.info("%s cannot be listed yet (%s); watching it once it can be", path, reason)

    def _follow_below(self, observer: object, root: Path, path: Path, now: float) -> None:
        """After ``path``'s watches were added: follow its subdirectories still unwatched (they
        are scanned with ``path`` where they can be listed, and on their own once they can)."""
        accepts = self._host.name_filter().accepts_dir
        for sub in unwatched_below(observer, path) or ():
            if sub not in self.unwatched and accepts(sub, root):
                outcome, reason = look(observer, sub)
                if outcome == "unwatched":
                    self._follow(root, sub, reason, now)

    def follow_existing(self, root: Path) -> None:
        """After a root's observer started: follow, quietly and slowly, the directories it could
        not watch (unlistable then: a ``lost+found``, a colleague's private run); the scan that
        follows every start covers the files of those that can be listed."""
        observer = self._host.inotify_observer(root)
        if observer is None:
            return
        now = time.monotonic()  # the daemon's clock (its tick passes time.monotonic())
        accepts = self._host.name_filter().accepts_dir
        for path in unwatched_below(observer, root) or ():
            if path in self.unwatched or not accepts(path, root):
                continue
            outcome, reason = look(observer, path)
            if outcome == "unwatched" and self.unwatched.add(root, path, reason, now, quiet=True):
                logger.debug("%s cannot be listed (%s); looked at every 30 s", path, reason)

    def tick(self, now: float) -> None:
        """Look again at the directories that are due."""
        for item in self.unwatched.due(now):
            if not self._host.is_root(item.root):
                self.unwatched.done(item.path)
                continue
            observer = self._host.inotify_observer(item.root)
            outcome, reason = ("unknown", "") if observer is None else look(observer, item.path)
            if outcome == "unwatched":
                if self.unwatched.failed(item.path, reason, now):
                    logger.warning(
                        "%s still cannot be listed after %.0f s (%s): not watched, looked at "
                        "every %.0f s",
                        item.path,
                        now - item.since,
                        reason,
                        self.unwatched.policy.slow_every,
                    )
                continue
            self.unwatched.done(item.path)
            if outcome == "gone":
                continue
            if outcome == "unknown" and observer is not None:
                # Listable now, but which watches watchdog holds cannot be told: start over
                # (the restart walks the whole tree and asks for a rescan of the root).
                self._host.restart(item.root)
                continue
            level = logging.INFO if item.lasting or item.quiet else logging.DEBUG
            logger.log(level, "%s can be listed now; watching and scanning it", item.path)
            if observer is not None:
                self._follow_below(observer, item.root, item.path, now)
            self._host.directory_appeared(item.root, item.path)

    def forget_root(self, root: Path) -> None:
        self.unwatched.forget_root(root)

    def notes(self) -> list[str]:
        """One per directory that stayed unlistable past its fast retries, for the status."""
        return [
            f"{item.path}: cannot be listed ({item.reason}), not watched"
            for item in self.unwatched.lasting()
        ]
