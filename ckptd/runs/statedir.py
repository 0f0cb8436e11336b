"""The per-run state directory ``<run>/<state_dir>/`` and the per-run advisory lock.

Layout (docs/architecture.md, "State on disk")::

    <run>/.ckptd/legacy/<original relpath>   archived legacy originals of converted zips
    <run>/.ckptd/trash/<name>[.N]            deleted checkpoints until trash_ttl expires
    <run>/.ckptd/trash/.index.json           when and from where each trash entry came (deletion.py)
    <run>/.ckptd/quarantine/                 refused (unsafe) files
    <run>/.ckptd/pins.json                   {"pins": {"<relpath>": {"reason": ..., "pinned_at": ...}}}
    <run>/.ckptd/lock                        flock(2) target shared by daemon, prune, pin and restore

Everything ckptd keeps about a run lives next to the run, so it moves, is backed up and is locked
together with the checkpoints themselves (docs/architecture.md, "State on disk": the lock belongs
next to the data).

The state dir is inside a directory other people write, so every access to it goes through
``ckptd.fs.runfs`` (no symlink followed anywhere below the run): a planted ``.ckptd`` (or ``legacy/``,
``trash/``, ``quarantine/``) that is a symlink, a FIFO or a file is refused with one line naming it,
and nothing is moved through it (docs/security.md, "Paths inside a run").
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ckptd.config.model import DEFAULT_STATE_DIR
from ckptd.errors import RunLockedError, StateError, UnsafePathError
from ckptd.fs.runfs import RunFS, join, kind_of, relpath_problem
from ckptd.timefmt import format_utc, parse_utc

logger = logging.getLogger(__name__)

LEGACY_DIR = "legacy"
TRASH_DIR = "trash"
QUARANTINE_DIR = "quarantine"
PINS_FILE = "pins.json"
LOCK_FILE = "lock"
STATE_SUBDIRS = (LEGACY_DIR, TRASH_DIR, QUARANTINE_DIR)
# A pins file, trash index or reason file is a few KiB; a planted huge one is refused, not read.
MAX_STATE_FILE_BYTES = 64 * 1024 * 1024
_LOCK_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class StateLayout:
    """Where a run's state lives; pure path arithmetic until :meth:`ensure` is called."""

    run_dir: Path
    state_dir_name: str = DEFAULT_STATE_DIR

    @property
    def root(self) -> Path:
        return self.run_dir / self.state_dir_name

    @property
    def legacy(self) -> Path:
        return self.root / LEGACY_DIR

    @property
    def trash(self) -> Path:
        return self.root / TRASH_DIR

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE_DIR

    @property
    def pins_file(self) -> Path:
        return self.root / PINS_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def fs(self) -> RunFS:
        """No-follow operations below the run (every state path is run-relative)."""
        return RunFS(self.run_dir)

    def rel(self, *parts: str) -> str:
        """Run-relative path of ``parts`` inside the state dir (``.ckptd/trash/x.zip``)."""
        return join(self.state_dir_name, *parts)

    def legacy_relpath(self, original: str) -> str:
        """Run-relative path where the legacy original ``original`` (run-relative) is archived."""
        return f"{self.state_dir_name}/{LEGACY_DIR}/{original}"

    def legacy_path(self, original: str) -> Path:
        """Absolute path where the legacy original ``original`` (run-relative) is archived."""
        return self.run_dir / self.legacy_relpath(original)

    def ensure(self) -> None:
        """Create the state dir and its subdirectories; UnsafePathError (naming it) if any of
        them is a symlink, a FIFO, a file...: a trash move or an archive would leave the run."""
        with _named_state_dir():
            for sub in ("", *STATE_SUBDIRS):
                with self.fs.directory(self.rel(sub), create=True):
                    pass

    def check(self) -> bool:
        """Whether the state dir exists; UnsafePathError (naming it) when it or one of its
        subdirectories is anything but a real directory. Creates and opens nothing (dry runs and
        warm passes call it: stat only); every later move walks no-follow anyway."""
        for sub in ("", *STATE_SUBDIRS):
            path = self.root / sub if sub else self.root
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not sub:
                    return False
                continue
            if not stat.S_ISDIR(mode):
                raise UnsafePathError(
                    f"ckptd state directory is {kind_of(mode)}; refusing to go through it",
                    path=str(path),
                )
        return True


@contextlib.contextmanager
def _named_state_dir() -> Iterator[None]:
    """Say that it is ckptd's state directory that is refused (the error names the path)."""
    try:
        yield
    except UnsafePathError as err:
        raise UnsafePathError(f"ckptd state directory {err.message}", path=err.path) from err


@dataclass(frozen=True)
class Pin:
    """A user's request to keep one checkpoint whatever the policy says."""

    reason: str
    pinned_at: datetime | None = None


def read_pins(layout: StateLayout) -> dict[str, Pin]:
    """The run's pins by run-relative path; empty when there is no pins file.

    Raises StateError (naming the file) when the file exists but is not valid: a caller must not
    delete anything in that run, since it cannot know what the user pinned.
    """
    path = layout.pins_file
    try:
        raw = layout.fs.read_bytes(layout.rel(PINS_FILE), limit=MAX_STATE_FILE_BYTES)
    except FileNotFoundError:
        return {}
    except UnsafePathError as err:
        raise StateError(f"cannot read pins: {err.message}", path=err.path) from err
    except OSError as err:
        raise StateError(f"cannot read pins: {err.strerror}", path=str(path)) from err
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StateError(f"pins file is not valid JSON ({err})", path=str(path)) from err
    return _pins_from_document(document, path)


def _pins_from_document(document: object, path: Path) -> dict[str, Pin]:
    if not isinstance(document, dict) or not isinstance(document.get("pins"), dict):
        raise StateError('pins file must be {"pins": {"<path>": {"reason": ...}}}', path=str(path))
    pins: dict[str, Pin] = {}
    for relpath, body in document["pins"].items():
        # A directory checkpoint's pin is on its manifest path, "checkpoint-500/".
        bare = relpath[:-1] if isinstance(relpath, str) and relpath.endswith("/") else relpath
        problem = relpath_problem(bare)
        if problem is not None:
            raise StateError(
                f"pin {relpath!r} {problem}; not a path inside the run", path=str(path)
            )
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
            raise StateError(
                f"pin {relpath!r} must be an object with a text reason", path=str(path)
            )
        pinned_at_text = body.get("pinned_at")
        try:
            pinned_at = parse_utc(pinned_at_text) if isinstance(pinned_at_text, str) else None
        except ValueError as err:
            raise StateError(f"pin {relpath!r}: bad pinned_at ({err})", path=str(path)) from err
        pins[relpath] = Pin(reason=body.get("reason", "") or "pinned", pinned_at=pinned_at)
    return pins


def pins_to_json_bytes(pins: Mapping[str, Pin]) -> bytes:
    """The pins file's bytes: sorted by path, stable key order, trailing newline."""
    body: dict[str, dict[str, str]] = {}
    for relpath in sorted(pins):
        pin = pins[relpath]
        entry = {"reason": pin.reason}
        if pin.pinned_at is not None:
            entry["pinned_at"] = format_utc(pin.pinned_at)
        body[relpath] = entry
    return (json.dumps({"pins": body}, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def write_pins(layout: StateLayout, pins: Mapping[str, Pin]) -> None:
    """Replace the pins file atomically (for the pin/unpin commands; hold the run lock)."""
    layout.ensure()
    layout.fs.write_atomic(layout.rel(PINS_FILE), pins_to_json_bytes(pins))


@contextlib.contextmanager
def run_lock(
    layout: StateLayout, *, timeout: float, shared: bool = False, create: bool = True
) -> Iterator[bool]:
    """Hold the run's advisory lock (``flock`` on ``<state>/lock``) for the ``with`` block.

    Yields True when the lock is held. With ``create=False`` (dry runs, which must not change the
    run) a missing lock file means no other ckptd process has ever worked on this run: nothing is
    created and the block runs unlocked (yields False). Raises RunLockedError after ``timeout``
    seconds of waiting. flock locks belong to the open file, so two ``run_lock`` blocks in one
    process exclude each other too.
    """
    if create:
        layout.ensure()
    try:
        fd = open_state_file(layout, LOCK_FILE, create=create)
    except FileNotFoundError:
        if create:
            raise
        fd = -1
    if fd < 0:
        yield False
        return
    try:
        _acquire(fd, layout.lock_file, timeout=timeout, shared=shared)
        yield True
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def open_state_file(layout: StateLayout, name: str, *, create: bool) -> int:
    """A descriptor of ``<state>/<name>`` (a lock file) opened with no symlink followed anywhere
    below the run; created (0644) when ``create``. UnsafePathError when it is a symlink."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY)
    with layout.fs.directory(layout.state_dir_name) as dir_fd:
        try:
            return os.open(name, flags, 0o644, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise UnsafePathError(
                    "lock file is a symlink", path=str(layout.root / name)
                ) from err
            raise


def _acquire(fd: int, path: Path, *, timeout: float, shared: bool) -> None:
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise RunLockedError(
                    f"run is locked by another ckptd process (waited {timeout:g}s)", path=str(path)
                ) from None
            logger.debug("waiting for run lock %s", path)
            time.sleep(_LOCK_POLL_SECONDS)
