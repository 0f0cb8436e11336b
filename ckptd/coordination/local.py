"""``coordination.backend: local``: one daemon per root, enforced by a lock the daemon holds for life.

The lock is ``flock(2)`` on ``<root>/<state_dir>/daemon.lock`` (README, "Several daemons on one
root"). The file also says who holds it (pid, node, since) for the message a second daemon prints.

Why flock on a file in the root, not a pid file or a lock in /run:

* The kernel drops a flock when its holder dies, ``kill -9`` included: there is no stale lock to
  detect and no pid to check (a pid means nothing on another machine, and gets reused).
* The lock lives with the data, so two daemons on two machines that mount the same NFS export
  exclude each other: Linux's NFS client turns flock into an NFS byte-range lock held by the
  server. A dead machine's lock is released when the server's lease for it lapses (NFSv4: about
  90 s), so a replacement on another node may have to wait that long. A mount with ``nolock``
  keeps locks on the client: it cannot see the other machine's daemon, and nothing in a file can
  fix that (use ``backend: postgres`` there). A filesystem that refuses locks (``ENOLCK``,
  ``EOPNOTSUPP``) gets one warning and the daemon serves anyway: the lock guards against a
  mistake; refusing to run would turn a missing lock manager into an outage.

Daemons on ``backend: postgres`` hold the same lock *shared*: any number of them serve a root
together (their leases divide the runs), while a ``local`` daemon, which takes it exclusively,
cannot start beside them, nor they beside it (the message names the other side). A daemon that
coordinates through leases and one that coordinates with nobody would both convert and prune.

The root's state directory is in a tree other people write: the directory and the lock file are
opened relative to the root without following links, and a lock file that is not a regular file
is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ckptd.errors import RootBusyError, UnsafePathError
from ckptd.timefmt import format_utc, parse_utc

logger = logging.getLogger(__name__)

LOCK_NAME = "daemon.lock"
_MAX_HOLDER_BYTES = 4096
_NOLOCK_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})
_BUSY_TRIES = 5
_BUSY_PAUSE_SECONDS = 0.05


def node_name(configured: str | None) -> str:
    """``coordination.node``, or the host name when it is not set."""
    return configured or os.uname().nodename or "localhost"


@dataclass(frozen=True)
class Holder:
    """Who holds a root: written into the lock file by its holder."""

    pid: int
    node: str
    since: datetime

    def describe(self) -> str:
        return f"pid {self.pid} on {self.node}, since {format_utc(self.since)}"

    def to_json(self) -> bytes:
        return json.dumps(
            {"pid": self.pid, "node": self.node, "since": format_utc(self.since)}
        ).encode()

    @staticmethod
    def from_json(data: bytes) -> Holder | None:
        """The holder a lock file names; None for an empty, half-written or foreign file."""
        try:
            obj = json.loads(data)
            pid, node, since = obj["pid"], obj["node"], parse_utc(obj["since"])
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(node, str):
            return None
        return Holder(pid=pid, node=node, since=since)


def _open_nofollow(name: str, flags: int, dir_fd: int, mode: int = 0o644) -> int:
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def _open_state_dir(root: Path, state_dir: str, *, create: bool) -> int:
    """A descriptor of ``<root>/<state_dir>``, created when asked; never through a link."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(state_dir, 0o755, dir_fd=root_fd)
        try:
            return _open_nofollow(state_dir, os.O_RDONLY | os.O_DIRECTORY, root_fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    "is not a directory (a link or a file): refusing to keep the daemon lock there",
                    path=str(root / state_dir),
                ) from err
            raise
    finally:
        os.close(root_fd)


class RootLock:
    """The lock on one root; :meth:`acquire` raises :class:`RootBusyError` naming the holder.

    ``shared``: held by a daemon of a cluster (``backend: postgres``), beside the others of it."""

    def __init__(self, root: Path, state_dir: str, *, shared: bool = False) -> None:
        self.root = root
        self.state_dir = state_dir
        self.shared = shared
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.root / self.state_dir / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, holder: Holder) -> None:
        """Take the lock for this process's life (released by :meth:`release` or by its death)."""
        if self._fd is not None:
            return
        dir_fd = _open_state_dir(self.root, self.state_dir, create=True)
        try:
            fd = _open_nofollow(LOCK_NAME, os.O_RDWR | os.O_CREAT, dir_fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UnsafePathError("is a symbolic link", path=str(self.path)) from err
            raise
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError("is not a regular file", path=str(self.path))
            self._lock(fd)
            if not self.shared:  # the cluster's nodes are named in its database, not here
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder.to_json(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _lock(self, fd: int) -> None:
        # ``ckptd status`` takes the lock for an instant to see whether anyone holds the root
        # (``who_serves``): a few tries tell that instant from a daemon, which holds it for good.
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        for attempt in range(_BUSY_TRIES):
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    if attempt + 1 < _BUSY_TRIES:
                        time.sleep(_BUSY_PAUSE_SECONDS)
                        continue
                    raise RootBusyError(self._busy_message(fd), path=str(self.root)) from err
                if err.errno not in _NOLOCK_ERRNOS:
                    raise
                logger.warning(
                    "%s: the filesystem refuses locks (%s): another daemon on this root would"
                    " not be noticed",
                    self.path,
                    os.strerror(err.errno),
                )
                return

    def release(self) -> None:
        """Let go (closing the descriptor drops the flock); the file stays for the next holder."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if not self.shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # a reader between now and the next holder sees "nobody"
        os.close(fd)

    def _busy_message(self, fd: int) -> str:
        if not self.shared and _held_shared(fd):
            return (
                f"served by ckptd daemons with coordination.backend: postgres (lock {self.path};"
                " ckptd status with their config lists them); a daemon with backend local"
                " cannot share a root with them: give it the same coordination section"
            )
        holder = Holder.from_json(os.pread(fd, _MAX_HOLDER_BYTES, 0))
        who = holder.describe() if holder is not None else "a process that has not said who it is"
        if self.shared:
            return (
                f"served by a ckptd daemon with coordination.backend: local ({who}; lock"
                f" {self.path}); stop it, or give it this daemon's coordination section"
            )
        return (
            f"served by another ckptd daemon ({who}; lock {self.path}); coordination.backend:"
            " local allows one daemon per root"
        )


def _held_shared(fd: int) -> bool:
    """Whether the lock ``fd`` could not take exclusively is held shared (by a cluster's daemons):
    a shared lock is then granted (and given up at once)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


@dataclass(frozen=True)
class RootServers:
    """Who serves a root now, from its lock: a ``local`` daemon (``holder``, holding it
    exclusively), the daemons of a cluster (``cluster``: held shared; the cluster's database names
    them), or nobody."""

    holder: Holder | None = None
    cluster: bool = False


def read_holder(root: Path, state_dir: str) -> Holder | None:
    """The ``local`` daemon that holds ``root`` now: None when none does. A shared lock taken
    tells it; whether a cluster's daemons hold the lock shared is not asked (``who_serves``)."""
    return _servers(root, state_dir, ask_cluster=False).holder


def who_serves(root: Path, state_dir: str) -> RootServers:
    """Who holds ``root``'s lock now, for ``ckptd status`` with a ``local`` config: a shared lock
    it can take means no ``local`` daemon; an exclusive one it then cannot take means others hold
    it shared, a cluster's daemons. Another ``status`` holds it for an instant only, so a few
    tries tell that instant from daemons, which hold it for life; so does a shared lock refused
    while the file names nobody, or a process of this node that is gone (``_could_hold``)."""
    return _servers(root, state_dir, ask_cluster=True)


def _servers(root: Path, state_dir: str, *, ask_cluster: bool) -> RootServers:
    try:
        dir_fd = _open_state_dir(root, state_dir, create=False)
    except (OSError, UnsafePathError):
        return RootServers()
    try:
        fd = _open_nofollow(LOCK_NAME, os.O_RDONLY, dir_fd)
    except OSError:
        return RootServers()
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return RootServers()
        for attempt in range(_BUSY_TRIES):
            if not _try_flock(fd, fcntl.LOCK_SH):
                holder = Holder.from_json(os.pread(fd, _MAX_HOLDER_BYTES, 0))
                if _could_hold(holder) or attempt + 1 == _BUSY_TRIES:
                    return RootServers(holder=holder)
                # Held exclusively, but not by the daemon the file names: another status's probe
                # for an instant (below), or a daemon that has not yet written its name over the
                # one a killed daemon left. Asked again after a pause.
                time.sleep(_BUSY_PAUSE_SECONDS)
                continue
            # Converting to exclusive drops the shared lock first: tried afresh after a pause.
            if not ask_cluster or _try_flock(fd, fcntl.LOCK_EX):
                return RootServers()
            if attempt + 1 < _BUSY_TRIES:
                time.sleep(_BUSY_PAUSE_SECONDS)
        return RootServers(cluster=True)
    except OSError:  # a filesystem that refuses locks: nobody can be seen holding it
        return RootServers()
    finally:
        os.close(fd)


def _could_hold(holder: Holder | None) -> bool:
    """Whether ``holder`` may be the process holding the lock: named, and not a process of this
    node that is gone (a daemon killed with ``kill -9`` leaves its name in the file)."""
    if holder is None:
        return False
    if holder.node != node_name(None):
        return True  # another node's, or a configured node name: cannot be asked here
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # alive, another user's
    return True


def _try_flock(fd: int, mode: int) -> bool:
    """Take the flock ``mode`` without waiting: False when another holder is in the way."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


class RootLocks:
    """The locks of every root a daemon serves; roots that do not exist yet are taken when they appear."""

    def __init__(self, state_dir: str, holder: Holder, *, shared: bool = False) -> None:
        self.state_dir = state_dir
        self.holder = holder
        self.shared = shared
        self._locks: dict[Path, RootLock] = {}
        self._unlockable: set[Path] = set()

    def acquire(self, roots: Iterable[Path]) -> None:
        """Lock every existing root in ``roots``; on a busy one, release what this call took and raise."""
        taken: list[RootLock] = []
        try:
            for root in roots:
                if root in self._locks or root in self._unlockable or not root.is_dir():
                    continue
                lock = RootLock(root, self.state_dir, shared=self.shared)
                try:
                    lock.acquire(self.holder)
                except (OSError, UnsafePathError) as err:
                    # A root the daemon cannot write (read-only, a planted link): it is still
                    # served, unguarded; said once, not at every retry.
                    self._unlockable.add(root)
                    logger.warning(
                        "%s: cannot take the daemon lock, so another daemon on this root would"
                        " not be noticed: %s",
                        root,
                        err.strerror if isinstance(err, OSError) else err,
                    )
                    continue
                self._locks[root] = lock
                taken.append(lock)
        except BaseException:
            for lock in taken:
                lock.release()
                del self._locks[lock.root]
            raise

    def keep_only(self, roots: Iterable[Path]) -> None:
        """Release the roots no longer served (after a reload)."""
        wanted = set(roots)
        for root in [root for root in self._locks if root not in wanted]:
            self._locks.pop(root).release()

    def missing(self, roots: Iterable[Path]) -> list[Path]:
        """Roots of ``roots`` not locked yet (they did not exist when last tried)."""
        return [root for root in roots if root not in self._locks]

    def release_all(self) -> None:
        for lock in self._locks.values():
            lock.release()
        self._locks.clear()


def new_holder(configured_node: str | None) -> Holder:
    """This process, as a lock file names it."""
    return Holder(
        pid=os.getpid(),
        node=node_name(configured_node),
        since=datetime.now(UTC).replace(microsecond=0),
    )
