"""``ckptd pin`` / ``ckptd unpin``: keep one checkpoint whatever the policy says, or stop keeping it.

Pins live in the run's state dir (``<run>/.ckptd/pins.json``, see ``statedir``), so they survive
restarts and work with or without a daemon. Every prune keeps a pinned file with the reason
``pinned: <reason>``.

Why a pin never races a prune (two locks, always taken in the order run lock -> pins lock):

* ``pins.json`` is read-modify-written only under the **pins lock** (``<state>/pins.lock``), so
  two pin/unpin/restore commands never lose each other's pins.
* A pin does **not** wait for the run lock before it lands: a prune holds that lock for a whole
  pass over the run, and the pin must reach it before it deletes. The prune holds the pins lock
  from its last re-read of the pins through its deletions (``prune.prune_step``), and ``pin``
  checks its file still exists under the pins lock before writing the pin. So a pin that lands
  while a prune is judging the run is honoured (the re-read sees it and the prune plans again),
  and one that arrives while the prune deletes waits for the deletions and then either finds its
  file still there (pinned) or gone: the command fails without pinning and names the trash entry
  (``ckptd trash restore`` restores and pins it). Nothing is lost silently.
* Then the pin takes the **run lock** (waiting for that prune to finish), checks the file is still
  there and records the pin in the manifest entry (``"pinned": {"reason", "pinned_at"}``). A
  file missing at that point was removed by something outside ckptd's locks (a prune cannot get
  between the pin and its re-read any more): the command says so and keeps the pin.

Nothing here waits for the run lock while holding the pins lock (the order is run lock, then pins
lock, as prune and ``trash restore`` take them), so the two never deadlock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ckptd.config.model import Config
from ckptd.errors import CkptdError, RunLockedError, UnsafePathError
from ckptd.manifest.updates import set_entry
from ckptd.retention.deletion import trash_entries_for
from ckptd.runs.access import (
    OPS_LOCK_TIMEOUT,
    RunHandle,
    load_manifest_or_none,
    locate,
    require_plain_relpath,
    save_manifest,
)
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.statedir import (
    LEGACY_DIR,
    Pin,
    StateLayout,
    open_state_file,
    read_pins,
    run_lock,
    write_pins,
)
from ckptd.timefmt import format_utc

logger = logging.getLogger(__name__)

PINS_LOCK_FILE = "pins.lock"
PIN_KEY = "pinned"  # the manifest entry key that shows a pin
DEFAULT_REASON = "pinned by operator"
# The pins lock is held for one small file write, or by a prune for its deletions in one run.
PINS_LOCK_TIMEOUT = 10.0
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class PinResult:
    """What ``pin``/``unpin`` did (``path`` is relative to the run)."""

    run_dir: Path
    path: str
    pin: Pin | None  # the pin now in force (None after unpin)
    previous: Pin | None  # the pin replaced or removed
    manifest_updated: bool
    note: str | None = None  # why the manifest could not be updated, when it could not

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": str(self.run_dir),
            "path": self.path,
            "pinned": self.pin is not None,
            "reason": None if self.pin is None else self.pin.reason,
            "pinned_at": None
            if self.pin is None or self.pin.pinned_at is None
            else format_utc(self.pin.pinned_at),
            "previous_reason": None if self.previous is None else self.previous.reason,
            "manifest_updated": self.manifest_updated,
            "note": self.note,
        }


@contextlib.contextmanager
def pins_lock(layout: StateLayout, *, timeout: float = PINS_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold ``<state>/pins.lock`` (flock, exclusive) while pins.json is read, changed and written."""
    layout.ensure()
    path = layout.root / PINS_LOCK_FILE
    fd = open_state_file(layout, PINS_LOCK_FILE, create=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLockedError(
                        f"pins are locked by another ckptd process (waited {timeout:g}s)",
                        path=str(path),
                    ) from None
                time.sleep(_POLL_SECONDS)
        yield
    finally:
        os.close(fd)


def set_pin(
    layout: StateLayout,
    relpath: str,
    pin: Pin,
    *,
    require_file: bool = False,
    keep_existing: bool = False,
    timeout: float = PINS_LOCK_TIMEOUT,
) -> Pin | None:
    """Add or replace the pin on ``relpath`` (under the pins lock); returns the pin it replaced.

    With ``require_file``, FileNotFoundError (nothing written) when the file is gone by the time
    the lock is held: a prune that held the lock deleted it. With ``keep_existing``, a pin already
    there stays as it is (decided under the lock, so a concurrent pin's reason is not lost).
    """
    with pins_lock(layout, timeout=timeout):
        if require_file and not layout.fs.exists(relpath.rstrip("/")):
            raise FileNotFoundError(errno.ENOENT, "no such file", str(layout.run_dir / relpath))
        pins = read_pins(layout)
        previous = pins.get(relpath)
        if keep_existing and previous is not None:
            return previous
        pins[relpath] = pin
        write_pins(layout, pins)
    return previous


def clear_pin(layout: StateLayout, relpath: str) -> Pin | None:
    """Remove the pin on ``relpath`` (under the pins lock); returns it, or None if there was none."""
    with pins_lock(layout):
        pins = read_pins(layout)
        previous = pins.pop(relpath, None)
        if previous is not None:
            write_pins(layout, pins)
    return previous


def pin(
    path: Path,
    *,
    reason: str | None,
    now: datetime,
    config: Config | None = None,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
) -> PinResult:
    """Pin the checkpoint at ``path`` so every prune keeps it (see the module docstring).

    Raises UnsafePathError for a path in no run, a symlink or a non-file; CkptdError for a missing
    file (naming the trash entry when a prune moved it there) or one a racing prune deleted.
    """
    handle, relpath = locate(path, config)
    relpath = _check_pinnable(handle, relpath)
    layout = handle.layout
    given = (reason or "").strip()
    new_pin = Pin(reason=given or DEFAULT_REASON, pinned_at=now)
    try:
        # A prune deleting in this run holds the pins lock: wait for it as long as for a run lock.
        previous = set_pin(
            layout,
            relpath,
            new_pin,
            require_file=True,
            # Re-pinning without a reason must not replace "paper figure 3" with the default.
            keep_existing=not given,
            timeout=max(PINS_LOCK_TIMEOUT, lock_timeout),
        )
    except FileNotFoundError:
        hint = _trash_hint(handle, relpath) or "it is not in the trash"
        raise CkptdError(
            f"was deleted (by a prune, while the pin waited for it) and is not pinned; {hint}",
            path=str(handle.run_dir / relpath),
        ) from None
    if not given and previous is not None:
        new_pin = previous
        logger.info("%s was already pinned (%s)", handle.run_dir / relpath, new_pin.reason)
    else:
        logger.info("pinned %s (%s)", handle.run_dir / relpath, new_pin.reason)
    updated, note = _record_in_manifest(handle, relpath, new_pin, now, lock_timeout)
    return PinResult(handle.run_dir, relpath, new_pin, previous, updated, note)


def unpin(
    path: Path,
    *,
    now: datetime,
    config: Config | None = None,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
) -> PinResult:
    """Remove the pin on ``path`` (the file itself may be gone). CkptdError if it was not pinned."""
    handle, relpath = locate(path, config)
    require_plain_relpath(handle, relpath)
    previous = clear_pin(handle.layout, relpath)
    if previous is None and not relpath.endswith("/"):
        relpath += "/"  # a directory checkpoint's pin is on "checkpoint-500/"
        previous = clear_pin(handle.layout, relpath)
    if previous is None:
        raise CkptdError("is not pinned", path=str(handle.run_dir / relpath))
    logger.info("unpinned %s (was: %s)", handle.run_dir / relpath, previous.reason)
    updated, note = _record_in_manifest(handle, relpath, None, now, lock_timeout)
    return PinResult(handle.run_dir, relpath, None, previous, updated, note)


def _check_pinnable(handle: RunHandle, relpath: str) -> str:
    """The key the pin is stored under: ``relpath``, or ``relpath/`` for a directory checkpoint
    (its manifest path, docs/formats.md "Directory checkpoints")."""
    require_plain_relpath(handle, relpath)
    shown = str(handle.run_dir / relpath)
    legacy_prefix = handle.state_relpath(LEGACY_DIR) + "/"
    if handle.in_state_dir(relpath) and not relpath.startswith(legacy_prefix):
        raise UnsafePathError(
            "is inside ckptd's state directory; pin the checkpoint itself "
            "(use `ckptd trash restore` for a file in the trash)",
            path=shown,
        )
    st = handle.layout.fs.lstat(relpath)
    if st is None:
        raise CkptdError(_missing_text(handle, relpath), path=shown)
    if stat.S_ISDIR(st.st_mode):
        matcher = CheckpointMatcher(handle.checkpoints, handle.manifest_filename)
        if not matcher.matches_directory(relpath.rpartition("/")[2]):
            raise CkptdError(
                "is a directory that checkpoints.directories does not name a checkpoint",
                path=shown,
            )
        return relpath + "/"
    handle.layout.fs.regular(relpath)
    return relpath


def _missing_text(handle: RunHandle, relpath: str) -> str:
    hint = _trash_hint(handle, relpath)
    return f"no such file; {hint}" if hint else "no such file"


def _trash_hint(handle: RunHandle, relpath: str) -> str | None:
    entries = trash_entries_for(handle, relpath.rstrip("/"))
    if not entries:
        return None
    return (
        f"it is in the trash as {entries[-1]} "
        f"(restore it with `ckptd trash restore {handle.run_dir / entries[-1]}`)"
    )


def _record_in_manifest(
    handle: RunHandle, relpath: str, new_pin: Pin | None, now: datetime, timeout: float
) -> tuple[bool, str | None]:
    """Under the run lock: make sure a pinned file survived, then show the pin in the manifest."""
    try:
        with run_lock(handle.layout, timeout=timeout):
            if new_pin is not None and not handle.layout.fs.exists(relpath.rstrip("/")):
                hint = _trash_hint(handle, relpath) or "it is not in the trash"
                raise CkptdError(
                    "was deleted by a prune that was already deleting when the pin landed "
                    f"(the pin is kept); {hint}",
                    path=str(handle.run_dir / relpath),
                )
            manifest = load_manifest_or_none(handle)
            if manifest is None:
                return False, "no readable manifest yet; the next pass records the pin"
            entry = manifest.by_path().get(relpath)
            if entry is None:
                return False, "not in the manifest yet; the next pass records the pin"
            extra = {key: value for key, value in entry.extra.items() if key != PIN_KEY}
            if new_pin is not None:
                extra[PIN_KEY] = {
                    "reason": new_pin.reason,
                    "pinned_at": format_utc(new_pin.pinned_at or now),
                }
            updated = set_entry(manifest, dataclasses.replace(entry, extra=extra))
            save_manifest(handle, updated, manifest, now)
            return True, None
    except RunLockedError:
        # The pin itself is in force (the prune re-reads pins); only the manifest note waits.
        note = "run busy; the pin is in force and the next pass records it in the manifest"
        logger.warning("%s: %s", handle.run_dir / relpath, note)
        return False, note
