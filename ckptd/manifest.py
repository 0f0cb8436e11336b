"""The per-run manifest and the per-root index: reading and writing the files, and the public names.

The value types, their JSON and the pure helpers live in their own modules and are re-exported
here, so callers import everything manifest-related from ``ckptd.manifest``:
``ckptd.manifest_model`` (the manifest's value types), ``ckptd.manifest_parse`` (validating JSON
parsing), ``ckptd.manifest_updates`` (pure updates), ``ckptd.root_index`` (the per-root index) and
``ckptd.manifest_json`` (strict JSON shared by both files). This module is the I/O edge:
:func:`load_manifest`, :func:`write_manifest`, :func:`load_index` and :func:`write_index`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ckptd.errors import ManifestError
from ckptd.fsio import write_bytes_atomic
from ckptd.manifest_json import JsonDict
from ckptd.manifest_model import (
    MANIFEST_SCHEMA,
    MANIFEST_STATES,
    MAX_REMOVED,
    QUARANTINE_KEY,
    Manifest,
    ManifestEntry,
    ManifestState,
    ParamsSummary,
    PruneRecord,
    RemovedEntry,
    quarantined_as,
)
from ckptd.manifest_updates import add_removed, drop_entry, set_entry, with_conversion, with_state
from ckptd.root_index import INDEX_FILENAME, INDEX_SCHEMA, IndexRun, RootIndex, index_run

__all__ = [
    "INDEX_FILENAME",
    "INDEX_SCHEMA",
    "MANIFEST_SCHEMA",
    "MANIFEST_STATES",
    "MAX_MANIFEST_BYTES",
    "MAX_REMOVED",
    "QUARANTINE_KEY",
    "IndexRun",
    "JsonDict",
    "Manifest",
    "ManifestEntry",
    "ManifestState",
    "ParamsSummary",
    "PruneRecord",
    "RemovedEntry",
    "RootIndex",
    "add_removed",
    "drop_entry",
    "index_run",
    "load_index",
    "load_manifest",
    "quarantined_as",
    "set_entry",
    "with_conversion",
    "with_state",
    "write_index",
    "write_manifest",
]

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
    return Manifest.from_json(_read_capped(path), source=str(path))


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (temp file, fsync, rename, fsync dir)."""
    write_bytes_atomic(path, manifest.to_json_bytes())


def load_index(path: Path) -> RootIndex:
    """Read a root index. FileNotFoundError when absent; ManifestError when unreadable or invalid."""
    return RootIndex.from_json(_read_capped(path), source=str(path))


def write_index(path: Path, index: RootIndex) -> None:
    """Replace the root index atomically."""
    write_bytes_atomic(path, index.to_json_bytes())
