"""The per-run manifest's frozen value types and their deterministic JSON form.

The JSON shape is the contract in docs/architecture.md ("Manifest and index"). Extra informative
keys are written (``ckptd_version``, ``mtime_ns`` — the cache key that lets a warm pass skip
re-reading files) and unknown keys found in a loaded manifest are kept, so a newer ckptd's additions
survive a rewrite. Validating parsing lives in ``ckptd.manifest.parse``; pure.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, Literal, get_args

from ckptd import __version__
from ckptd.formats import Format
from ckptd.manifest.jsonio import JsonDict, dump_json
from ckptd.pickles.verdict import Verdict
from ckptd.timefmt import format_utc

MANIFEST_SCHEMA = "ckptd.manifest/1"
# A long run pruned every 15 minutes would grow the removed list without end; the newest entries
# are the ones anyone asks about (and the trash holds at most trash_ttl worth of them).
MAX_REMOVED = 1000

# The entry key the pipeline sets, on a refused file it quarantined, to the file's run-relative path
# in the quarantine dir (the entry keeps the path the file was refused at).
QUARANTINE_KEY = "quarantine"

# held: recorded and kept, not converted until given what its ``note`` says (docs/param-names.md).
ManifestState = Literal["kept", "pending", "refused", "broken", "converted", "held"]
MANIFEST_STATES: frozenset[str] = frozenset(get_args(ManifestState))


@dataclass(frozen=True)
class ParamsSummary:
    """How many parameter arrays a checkpoint holds and their total bytes."""

    count: int
    bytes: int


@dataclass(frozen=True)
class FileRecord:
    """One file of a directory checkpoint (docs/architecture.md, "Manifest and index")."""

    path: str  # relative to the checkpoint directory, posix separators
    size: int
    sha256: str | None
    verdict: Verdict | None = None  # pickle-bearing files only
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys a newer ckptd wrote

    def to_json_obj(self) -> JsonDict:
        obj: JsonDict = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.verdict is not None:
            obj["verdict"] = self.verdict.to_json_obj()
        obj.update(sorted(self.extra.items()))
        return obj


def directory_digest(files: Iterable[tuple[str, str]]) -> str:
    """A directory checkpoint's ``sha256``: over its files' (path, sha256) pairs, sorted by path.

    The digest of the text ``sha256sum`` prints for the files, one ``<hex>  <path>\n`` line each
    in byte order of the paths (docs/architecture.md, "Manifest and index").
    """
    digest = hashlib.sha256()
    for path, sha256 in sorted(files, key=lambda pair: _path_bytes(pair[0])):
        digest.update(f"{sha256}  ".encode() + _path_bytes(path) + b"\n")
    return digest.hexdigest()


def _path_bytes(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class ManifestEntry:
    """One checkpoint file of a run (paths relative to the run dir, posix separators)."""

    path: str
    step: int | None
    size: int
    mtime: datetime
    sha256: str | None  # None while pending: an incomplete file is never read
    format: Format
    state: ManifestState
    reasons: tuple[str, ...] = ()
    converted_from: str | None = None
    algorithm: str | None = None
    params: ParamsSummary | None = None
    carries_code: tuple[str, ...] | None = None
    error: str | None = None
    refusal: str | None = None
    mtime_ns: int | None = None
    note: str | None = None  # what a held checkpoint needs
    # Pickle-bearing files (docs/security.md, "Verdicts"): may loading it run code, and why.
    verdict: Verdict | None = None
    # A directory checkpoint (``path`` ends in ``/``): its files, and the signature of the listing
    # they were hashed from (every file's path, size and mtime), the warm pass's cache key.
    files: tuple[FileRecord, ...] | None = None
    signature: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_directory(self) -> bool:
        return self.path.endswith("/")

    def to_json_obj(self) -> JsonDict:
        obj: JsonDict = {
            "path": self.path,
            "step": self.step,
            "size": self.size,
            "mtime": format_utc(self.mtime),
            "sha256": self.sha256,
            "format": self.format.value,
            "state": self.state,
            "reasons": list(self.reasons),
        }
        optional: JsonDict = {
            "converted_from": self.converted_from,
            "algorithm": self.algorithm,
            "params": None if self.params is None else dataclasses.asdict(self.params),
            "carries_code": None if self.carries_code is None else list(self.carries_code),
            "error": self.error,
            "refusal": self.refusal,
            "note": self.note,
            "mtime_ns": self.mtime_ns,
            "verdict": None if self.verdict is None else self.verdict.to_json_obj(),
            "signature": self.signature,
            "files": None if self.files is None else [item.to_json_obj() for item in self.files],
        }
        obj.update((key, value) for key, value in optional.items() if value is not None)
        obj.update(sorted(self.extra.items()))
        return obj


@dataclass(frozen=True)
class RemovedEntry:
    """A checkpoint a prune removed (with its archived legacy original, when it had one)."""

    path: str
    sha256: str | None
    removed_at: datetime
    reasons: tuple[str, ...]
    trash: str | None  # run-relative trash path; None when unlinked
    converted_from: str | None = None  # run-relative path of the archived original removed with it
    converted_from_sha256: str | None = None
    converted_from_trash: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Bytes freed (None in manifests written before ckptd recorded them).
    size: int | None = None
    converted_from_size: int | None = None

    @property
    def bytes_freed(self) -> int | None:
        """The checkpoint's bytes with its archived original's; None when not recorded."""
        if self.size is None or (
            self.converted_from is not None and self.converted_from_size is None
        ):
            return None
        return self.size + (self.converted_from_size or 0)

    def to_json_obj(self) -> JsonDict:
        obj: JsonDict = {
            "path": self.path,
            "sha256": self.sha256,
            "removed_at": format_utc(self.removed_at),
            "reasons": list(self.reasons),
            "trash": self.trash,
        }
        optional = {
            "size": self.size,
            "converted_from": self.converted_from,
            "converted_from_sha256": self.converted_from_sha256,
            "converted_from_trash": self.converted_from_trash,
            "converted_from_size": self.converted_from_size,
        }
        obj.update((key, value) for key, value in optional.items() if value is not None)
        obj.update(sorted(self.extra.items()))
        return obj


@dataclass(frozen=True)
class PruneRecord:
    """What the last real prune pass over a run did (written even when it deleted nothing)."""

    at: datetime
    deleted: int
    bytes_freed: int
    guard: str | None = None  # the max_fraction guard's text when it stopped the deletions

    def to_json_obj(self) -> JsonDict:
        return {
            "at": format_utc(self.at),
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "guard": self.guard,
        }


@dataclass(frozen=True)
class Manifest:
    """A run's manifest. ``checkpoints`` is kept sorted by path by every helper here."""

    run: str
    generated_at: datetime
    policy: str
    checkpoints: tuple[ManifestEntry, ...] = ()
    removed: tuple[RemovedEntry, ...] = ()
    ckptd_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)
    last_prune: PruneRecord | None = None  # None until a real prune pass ran (or an old manifest)

    def __post_init__(self) -> None:
        # One canonical order, so equal content compares equal however it was assembled.
        ordered = tuple(sorted(self.checkpoints, key=_by_path))
        if ordered != self.checkpoints:
            object.__setattr__(self, "checkpoints", ordered)

    def by_path(self) -> dict[str, ManifestEntry]:
        return {entry.path: entry for entry in self.checkpoints}

    def to_json_bytes(self) -> bytes:
        """Deterministic bytes: checkpoints sorted by path, fixed key order, trailing newline.

        ``ensure_ascii`` keeps undecodable file names (surrogate escapes) representable.
        """
        obj: JsonDict = {
            "schema": MANIFEST_SCHEMA,
            "run": self.run,
            "generated_at": format_utc(self.generated_at),
            "policy": self.policy,
            "ckptd_version": self.ckptd_version,
            "checkpoints": [e.to_json_obj() for e in sorted(self.checkpoints, key=entry_key)],
            "removed": [e.to_json_obj() for e in self.removed],
        }
        if self.last_prune is not None:
            obj["last_prune"] = self.last_prune.to_json_obj()
        obj.update(sorted(self.extra.items()))
        return dump_json(obj)

    def same_content(self, other: Manifest | None) -> bool:
        """Equal apart from ``generated_at`` (a rewrite would change nothing but the timestamp)."""
        return (
            other is not None
            and dataclasses.replace(self, generated_at=other.generated_at) == other
        )


def entry_key(entry: ManifestEntry) -> str:
    return entry.path


_by_path = attrgetter("path")  # entry_key in C: every manifest loaded is put in this order


def quarantined_as(entry: ManifestEntry) -> str | None:
    """The run-relative quarantine path of a refused entry whose file the pipeline quarantined."""
    if entry.state != "refused":
        return None
    where = entry.extra.get(QUARANTINE_KEY)
    return where if isinstance(where, str) and where else None
