"""Reading and writing the per-run manifest and the per-root index files (the package's I/O edge).

The value types live in ``ckptd.manifest.model`` and ``ckptd.manifest.root_index``, validating
parsing in ``ckptd.manifest.parse``, pure updates in ``ckptd.manifest.updates`` and the strict
JSON both files share in ``ckptd.manifest.jsonio``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ckptd.errors import ManifestError
from ckptd.fs.files import write_bytes_atomic
from ckptd.manifest.model import (
    Manifest,
)
from ckptd.manifest.parse import manifest_from_json
from ckptd.manifest.root_index import RootIndex

# A manifest of 100 checkpoints is ~40 KB; anything this big was not written by ckptd.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _read_capped(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            # read(n) allocates n bytes up front: ask for what the file holds (plus one byte, to
            # notice growth), not for the cap: a 64 MiB allocation per manifest dominated a warm
            # pass's system time.
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(min(size, MAX_MANIFEST_BYTES) + 1)
            if len(data) > size:  # it grew since fstat: fall back to reading up to the cap
                data += handle.read(MAX_MANIFEST_BYTES + 1 - len(data))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ManifestError(f"cannot read: {err.strerror}", path=str(path)) from err
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"larger than {MAX_MANIFEST_BYTES} bytes; not a ckptd file", path=str(path)
        )
    return data


def load_manifest(path: Path) -> Manifest:
    """Read a manifest. FileNotFoundError when absent; ManifestError when unreadable or invalid."""
    return manifest_from_json(_read_capped(path), source=str(path))


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (temp file, fsync, rename, fsync dir)."""
    write_bytes_atomic(path, manifest.to_json_bytes())


def try_load_manifest(
    path: Path, log: logging.Logger, instead: str, level: int = logging.ERROR
) -> Manifest | None:
    """The manifest at ``path``; None when there is none, or when it is broken.

    A broken one is logged on the caller's ``log`` as "<the error>; <instead>", ``instead`` saying
    what the caller does without it (a hand-edited, broken manifest is rebuilt, never a reason to
    stop serving the run).
    """
    try:
        return load_manifest(path)
    except FileNotFoundError:
        return None
    except ManifestError as err:
        log.log(level, "%s; %s", err, instead)
        return None


def write_manifest_if_changed(
    path: Path, manifest: Manifest, previous: Manifest | None, generated_at: datetime | None = None
) -> bool:
    """Write ``manifest`` unless its content equals ``previous``'s; True when it was written.

    Rewriting an unchanged manifest every minute would only churn the disk and the watchers. With
    ``generated_at``, the manifest written carries that time.
    """
    if manifest.same_content(previous):
        return False
    if generated_at is not None:
        manifest = dataclasses.replace(manifest, generated_at=generated_at)
    write_manifest(path, manifest)
    return True


def load_index(path: Path) -> RootIndex:
    """Read a root index. FileNotFoundError when absent; ManifestError when unreadable or invalid."""
    return RootIndex.from_json(_read_capped(path), source=str(path))


def write_index(path: Path, index: RootIndex) -> None:
    """Replace the root index atomically."""
    write_bytes_atomic(path, index.to_json_bytes())


def write_index_if_changed(
    path: Path, index: RootIndex, *, before_write: Callable[[], None] | None = None
) -> bool:
    """Write ``index`` unless the one at ``path`` has the same content; True when it was written.

    A missing or invalid index is replaced. ``before_write`` runs right before the write (a
    cluster node's fence: it raises when this node may no longer write here).
    """
    try:
        previous: RootIndex | None = load_index(path)
    except (FileNotFoundError, ManifestError):
        previous = None
    if index.same_content(previous):
        return False
    if before_write is not None:
        before_write()
    write_index(path, index)
    return True
