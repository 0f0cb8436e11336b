"""Which filesystem holds a path, from /proc/self/mountinfo, and can inotify see changes there?

inotify(7) only reports changes made through the local kernel: on NFS, Lustre, GPFS, CephFS, SMB
and FUSE mounts, writes from other nodes (or from the FUSE daemon's backing store) are invisible,
so those roots must be polled (docs/architecture.md, "Watching"; watchdog's README, section
"About using watchdog with CIFS"). Parsing is pure; only ``read_mountinfo`` touches the system.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

ObserverChoice = Literal["inotify", "polling"]
MOUNTINFO_PATH = Path("/proc/self/mountinfo")

# Filesystems where other machines (or a user-space daemon) change files behind the kernel's back.
REMOTE_FSTYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "ceph",
        "glusterfs",
        "beegfs",
        "9p",
        "afs",
        "ocfs2",
        "gfs2",
        "pvfs2",
        "orangefs",
        "virtiofs",
        "davfs",
        "fuse",  # plain "fuse" and every "fuse.<name>" (sshfs, s3fs, gcsfuse, ...); fuseblk is local
    }
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_point: str
    fstype: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mount points as \ooo.
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The (mount point, fstype) of every well-formed line, in file order (later mounts on top)."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        # id parent major:minor root mount-point options [optional...] - fstype source super-options
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if separator + 1 >= len(fields):
            continue
        entries.append(MountEntry(_unescape(fields[4]), fields[separator + 1]))
    return entries


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_type(path: str, entries: list[MountEntry]) -> str | None:
    """fstype of the mount holding the absolute ``path`` (longest mount point wins; ties: the last)."""
    best: MountEntry | None = None
    for entry in entries:
        if _contains(entry.mount_point, path) and (
            best is None or len(entry.mount_point) >= len(best.mount_point)
        ):
            best = entry
    return best.fstype if best is not None else None


def is_remote_fstype(fstype: str) -> bool:
    """True when inotify cannot be trusted to see every change on this filesystem type."""
    return fstype in REMOTE_FSTYPES or fstype.startswith("fuse.")


def read_mountinfo() -> str | None:
    """This process's mount table, or None when it cannot be read (logged)."""
    try:
        return MOUNTINFO_PATH.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        logger.warning("cannot read %s (%s); assuming network filesystems", MOUNTINFO_PATH, err)
        return None


def choose_observer_kind(
    path: str | os.PathLike[str],
    configured: Literal["auto", "inotify", "polling"],
    *,
    mountinfo: str | None = None,
) -> ObserverChoice:
    """The observer for a root: ``configured`` unless "auto", then polling on remote/FUSE mounts.

    ``mountinfo`` replaces /proc/self/mountinfo (tests). When the table cannot be read or names
    no mount for the path, polling is chosen: it is slower but sees changes everywhere.
    """
    if configured != "auto":
        return configured
    text = mountinfo if mountinfo is not None else read_mountinfo()
    if text is None:
        return "polling"
    resolved = os.path.realpath(os.fspath(path))
    fstype = filesystem_type(resolved, parse_mountinfo(text))
    if fstype is None:
        logger.warning("no mount found for %s in the mount table; polling it", resolved)
        return "polling"
    kind: ObserverChoice = "polling" if is_remote_fstype(fstype) else "inotify"
    logger.debug("%s is on %s: using %s", resolved, fstype, kind)
    return kind
