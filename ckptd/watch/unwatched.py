"""Directories left unwatched because they could not be listed, and when to look at them again.

Pure bookkeeping (no I/O, no clock): the watch set (``watch/watcher.py``) probes each due
directory and reports back. A directory is looked at again after 0.05 s, doubling to one look per
daemon tick (0.25 s), for ``fast_for`` (10 s): ``install -d`` or a provisioning script that
chowns a moment later is caught within a tick, so the first checkpoint still reaches the manifest
within ``stable_for`` + 1 s (docs/architecture.md, "Watching"). A directory still unlistable after
that is a permission that was not granted: it is shown in the daemon's status and looked at every
``slow_every`` (30 s) from then on, so a permission granted hours later is still noticed, at the
cost of one failed ``opendir`` per directory per 30 s. At most ``max_dirs`` are followed; past
that, the hourly rescan is what finds their files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RetryPolicy:
    first: float = 0.05
    cap: float = 0.25
    fast_for: float = 10.0
    slow_every: float = 30.0
    max_dirs: int = 1000


@dataclass(frozen=True)
class Unwatched:
    """One directory waiting for its watch: under which root, since when, why, and what next."""

    root: Path
    path: Path
    since: float
    reason: str
    next_try: float
    delay: float
    lasting: bool = False  # past the fast retries: shown in the status
    quiet: bool = False  # there when watching started: looked at slowly, never shown


class UnwatchedDirs:
    """The directories waiting for their watch, keyed by path."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self._dirs: dict[Path, Unwatched] = {}

    def __contains__(self, path: Path) -> bool:
        return path in self._dirs

    def __len__(self) -> int:
        return len(self._dirs)

    def add(self, root: Path, path: Path, reason: str, now: float, *, quiet: bool = False) -> bool:
        """Follow ``path`` from ``now``; False when already followed or too many are.

        ``quiet``: a directory already unlistable when its root's watching started (a
        ``lost+found``, a colleague's private run): no news, so looked at every ``slow_every``
        only and never shown; these take at most half of ``max_dirs``, keeping room for new ones.
        """
        limit = self.policy.max_dirs // 2 if quiet else self.policy.max_dirs
        if path in self._dirs or len(self._dirs) >= limit:
            return False
        delay = self.policy.slow_every if quiet else self.policy.first
        self._dirs[path] = Unwatched(root, path, now, reason, now + delay, delay, quiet=quiet)
        return True

    def due(self, now: float) -> list[Unwatched]:
        """The directories to look at now, oldest first."""
        due = [item for item in self._dirs.values() if item.next_try <= now]
        return sorted(due, key=lambda item: item.since)

    def failed(self, path: Path, reason: str, now: float) -> bool:
        """Still unwatched at ``now``; True when this look ended the fast retries (say so once)."""
        item = self._dirs.get(path)
        if item is None:
            return False
        policy = self.policy
        lasting = not item.quiet and now - item.since >= policy.fast_for
        slow = item.quiet or lasting
        delay = policy.slow_every if slow else min(item.delay * 2, policy.cap)
        self._dirs[path] = Unwatched(
            item.root, path, item.since, reason, now + delay, delay, lasting, item.quiet
        )
        return lasting and not item.lasting

    def done(self, path: Path) -> Unwatched | None:
        """Watched now, or gone: forget it (and return what was known)."""
        return self._dirs.pop(path, None)

    def forget_root(self, root: Path) -> None:
        for path in [path for path, item in self._dirs.items() if item.root == root]:
            del self._dirs[path]

    def lasting(self) -> list[Unwatched]:
        """Those past their fast retries, for the status line, by path."""
        return sorted(
            (item for item in self._dirs.values() if item.lasting), key=lambda item: item.path
        )
