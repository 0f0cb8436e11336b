"""Directory checkpoints in the trash: moved whole, measured, verified and removed, never followed.

A directory checkpoint (``ckptd.runs.dir_checkpoints``) goes to the run's trash in one
``rename`` of the directory (``fs.runfs.move_unique_at``: never overwriting, from no-follow
descriptors), right after its listing is taken again and compared with the one it was judged
on: a directory that changed since (a trainer still writing, a file touched) is not moved
(``FileChangedError``, one line). Unlinking moves it into the trash first and removes it there,
so a crash half-way leaves it in the trash, where the next purge finishes the job. Removal walks
descriptors and never follows a link (``shutil.rmtree`` with ``dir_fd``: its symlink-attack-safe
variant); a symlink planted inside is removed as a link.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time

from ckptd.errors import FileChangedError, UnsafePathError
from ckptd.formats.sniff import identify_checked
from ckptd.fs.runfs import RunFS, kind_of, move_unique_at
from ckptd.manifest.model import ManifestEntry, directory_digest
from ckptd.runs.checkpoints import InventoryOptions
from ckptd.runs.dir_checkpoints import DirCheckpoint, directory_checkpoint, directory_entry
from ckptd.runs.dir_listing import hash_files, list_directory
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.statedir import TRASH_DIR, StateLayout

logger = logging.getLogger(__name__)


def check_unchanged(fs: RunFS, checkpoint: DirCheckpoint) -> None:
    """Raise FileChangedError unless the directory's listing is still the one it was judged on;
    UnsafePathError when it is no longer a real directory."""
    reldir = checkpoint.reldir
    shown = fs.show(reldir)
    st = fs.lstat(reldir)
    if st is None:
        raise FileNotFoundError(2, "no such directory", shown)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"is {kind_of(st.st_mode)}, not the directory judged", path=shown)
    if (st.st_ino, st.st_dev) != (checkpoint.identity.inode, checkpoint.identity.device):
        raise FileChangedError("was replaced since it was judged; not moved", path=shown)
    if not checkpoint.complete:
        raise FileChangedError("is still being written (incomplete); not moved", path=shown)
    listing = list_directory(fs, reldir).listing
    if listing.signature() != checkpoint.signature:
        raise FileChangedError(
            "changed since it was judged (files written, removed or touched); not moved",
            path=shown,
        )


def move_directory(layout: StateLayout, checkpoint: DirCheckpoint, *, unlink: bool) -> str | None:
    """Move the directory checkpoint whole into the trash (its trash name), or remove it (None).

    Checked right before the move (``check_unchanged``); nothing is moved when it fails.
    """
    fs = layout.fs
    check_unchanged(fs, checkpoint)
    layout.ensure()
    with (
        fs.parent(checkpoint.reldir) as (dir_fd, name),
        fs.directory(layout.rel(TRASH_DIR)) as trash,
    ):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_ino != checkpoint.identity.inode:
            raise FileChangedError(
                "was replaced since it was judged; not moved", path=fs.show(name)
            )
        trash_name = move_unique_at(dir_fd, name, trash, name, shown=str(layout.trash))
        os.fsync(trash)
        os.fsync(dir_fd)
        if unlink:
            remove_tree_at(trash, trash_name)
            os.fsync(trash)
            return None
    return trash_name


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove the directory ``name`` of ``dir_fd`` and everything in it, following no link."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"is {kind_of(st.st_mode)}, not a directory", path=name)
    shutil.rmtree(name, dir_fd=dir_fd)


def tree_size_at(dir_fd: int, name: str) -> int:
    """Bytes of the regular files below the directory ``name`` of ``dir_fd`` (no link followed)."""
    total = 0
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return 0
    try:
        for entry in os.listdir(fd):
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            elif stat.S_ISDIR(st.st_mode):
                total += tree_size_at(fd, entry)
    finally:
        os.close(fd)
    return total


def digest_of(fs: RunFS, reldir: str) -> str:
    """The directory's ``sha256`` as the manifest defines it (``directory_digest``), hashed now."""
    listing = list_directory(fs, reldir).listing
    hashes = hash_files(fs, reldir, listing)
    return directory_digest(hashes.items())


def restored_entry(
    fs: RunFS, reldir: str, matcher: CheckpointMatcher, state_dir: str, reasons: tuple[str, ...]
) -> ManifestEntry | None:
    """The manifest entry of a directory checkpoint just put back from the trash (listed, judged
    and hashed again as a cold pass would); None when it cannot be listed safely."""
    options = InventoryOptions(
        matcher=matcher,
        state_dir=state_dir,
        stable_for_ns=0,  # its files keep the mtimes they had: it was complete when trashed
        hash_files=True,
        identify=identify_checked,
    )
    now_ns = time.time_ns()
    checkpoint = directory_checkpoint(fs, reldir, options, now_ns, None)
    return None if checkpoint is None else directory_entry(checkpoint, reasons)
