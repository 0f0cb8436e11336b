"""Files seen by watch events or scans, tracked until they have been quiet for ``stable_for``.

Each tracked path keeps its root and the size and mtime last accepted by the stabilizer; a path
whose quiet period is up is re-stat'ed (:meth:`SettlingFiles.restat`), and a ready one is taken
out (:meth:`SettlingFiles.take`) to be queued for its run. Only stats, never reads content.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ckptd.fs.files import FoundFile, open_for_writing
from ckptd.watch.stabilize import Stabilizer

logger = logging.getLogger(__name__)


class SettlingFiles:
    """The stabilizer and, for each path it tracks, ``(root, size, mtime_ns)``."""

    def __init__(self, stable_for_seconds: float) -> None:
        self._stabilizer: Stabilizer[Path] = Stabilizer(stable_for_seconds)
        self._observed: dict[Path, tuple[Path, int, int]] = {}  # path -> (root, size, mtime_ns)

    def observe(
        self, root: Path, path: Path, now: float, *, closed: bool, expect_close: bool
    ) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.forget(path)
            return
        except OSError as err:
            logger.warning("cannot stat %s: %s", path, err)
            return
        self._observe_values(root, path, st.st_size, st.st_mtime_ns, now, closed, expect_close)

    def observe_stat(
        self, root: Path, item: FoundFile, now: float, *, closed: bool, expect_close: bool
    ) -> None:
        identity = item.identity
        self._observe_values(
            root, item.path, identity.size, identity.mtime_ns, now, closed, expect_close
        )

    def _observe_values(
        self,
        root: Path,
        path: Path,
        size: int,
        mtime_ns: int,
        now: float,
        closed: bool,
        expect_close: bool,
    ) -> None:
        accepted = self._stabilizer.observe(
            path, size, mtime_ns, now, closed=closed, expect_close=expect_close
        )
        if accepted:
            self._observed[path] = (root, size, mtime_ns)

    def observe_in_new_directory(
        self, root: Path, item: FoundFile, now: float, *, closed: bool, expect_close: bool
    ) -> None:
        """A file found in a directory just created (or moved in) below an inotify root.

        The watch on the new directory was added before its event reached us, so from now on every
        write to the file comes with events. If nobody has it open for writing now
        (``fs.files.open_for_writing``), no close event is still to come: it counts as closed, and
        ``stable_for`` of quiet is enough (docs/architecture.md, "Watching"). Otherwise, or where
        the kernel cannot tell, its close event is awaited (or ``unclosed_after`` of quiet).
        """
        if expect_close and not closed:
            closed = open_for_writing(item.path) is False
        self.observe_stat(root, item, now, closed=closed, expect_close=expect_close)

    def observe_found(self, found: Iterable[tuple[Path, FoundFile]], now: float) -> None:
        # Found by a scan: no close event will come for these, so none is expected.
        for root, item in found:
            if item.path in self._observed:
                continue  # already tracked: its own events and re-stats decide
            self.observe_stat(root, item, now, closed=False, expect_close=False)

    def restat(self, path: Path, now: float) -> None:
        known = self._observed.get(path)
        if known is None:
            self._stabilizer.forget(path)
            return
        self.observe(known[0], path, now, closed=False, expect_close=False)

    def forget(self, path: Path) -> None:
        self._stabilizer.forget(path)
        self._observed.pop(path, None)

    def forget_below(self, prefix: Path) -> None:
        """Stop tracking every path below the directory ``prefix`` (it was deleted)."""
        for path in [p for p in self._observed if p.is_relative_to(prefix)]:
            self.forget(path)

    def take(self, path: Path) -> tuple[Path, int, int] | None:
        """Stop tracking ready ``path``; its ``(root, size, mtime_ns)``, None if not tracked."""
        return self._observed.pop(path, None)

    def due(self, now: float) -> list[Path]:
        """Tracked paths whose quiet period ran out without a new sighting: :meth:`restat` each."""
        return self._stabilizer.due(now)

    def ready(self, now: float) -> list[Path]:
        """Paths unchanged for ``stable_for`` as of ``now`` (each once): :meth:`take` each."""
        return self._stabilizer.ready(now)

    def pending(self) -> int:
        """How many paths are settling."""
        return self._stabilizer.pending()
