"""The per-run manifest and the per-root index: frozen models, deterministic JSON, validating loaders.

The JSON shape is the contract in design.md ("Manifest"). Extra informative keys are written
(``ckptd_version``, ``mtime_ns`` — the cache key that lets a warm pass skip re-reading files) and
unknown keys found in a loaded manifest are kept, so a newer ckptd's additions survive a rewrite.
Everything here is pure except :func:`load_manifest`, :func:`write_manifest`, :func:`load_index`
and :func:`write_index`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

from ckptd import __version__
from ckptd.errors import ManifestError
from ckptd.formats import Format
from ckptd.frozen_build import build_frozen
from ckptd.fsio import write_bytes_atomic
from ckptd.timefmt import format_utc, parse_utc

MANIFEST_SCHEMA = "ckptd.manifest/1"
INDEX_SCHEMA = "ckptd.index/1"
INDEX_FILENAME = "ckptd-index.json"
# A long run pruned every 15 minutes would grow the removed list without end; the newest entries
# are the ones anyone asks about (and the trash holds at most trash_ttl worth of them).
MAX_REMOVED = 1000
# A manifest of 100 checkpoints is ~40 KB; anything this big was not written by ckptd.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

# The entry key the pipeline sets, on a refused file it quarantined, to the file's run-relative path
# in the quarantine dir (the entry keeps the path the file was refused at).
QUARANTINE_KEY = "quarantine"

ManifestState = Literal["kept", "pending", "refused", "broken", "converted"]
MANIFEST_STATES: frozenset[str] = frozenset(get_args(ManifestState))
_FORMATS = {member.value: member for member in Format}

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class ParamsSummary:
    """How many parameter arrays a checkpoint holds and their total bytes."""

    count: int
    bytes: int


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
    extra: Mapping[str, Any] = field(default_factory=dict)

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
            "mtime_ns": self.mtime_ns,
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
        ordered = tuple(sorted(self.checkpoints, key=_entry_key))
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
            "checkpoints": [e.to_json_obj() for e in sorted(self.checkpoints, key=_entry_key)],
            "removed": [e.to_json_obj() for e in self.removed],
        }
        if self.last_prune is not None:
            obj["last_prune"] = self.last_prune.to_json_obj()
        obj.update(sorted(self.extra.items()))
        return _dump(obj)

    def same_content(self, other: Manifest | None) -> bool:
        """Equal apart from ``generated_at`` (a rewrite would change nothing but the timestamp)."""
        return (
            other is not None
            and dataclasses.replace(self, generated_at=other.generated_at) == other
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str) -> Manifest:
        """Parse and validate a manifest; raise ManifestError (one line naming ``source``)."""
        obj = _load_json(data, source)
        check = _Checker(source)
        check.equal(obj, "schema", MANIFEST_SCHEMA, "")
        return cls(
            run=check.text(obj, "run", ""),
            generated_at=check.time(obj, "generated_at", ""),
            policy=check.text(obj, "policy", ""),
            checkpoints=tuple(
                sorted(
                    (
                        _entry_from_json(item, f"checkpoints[{i}]", check)
                        for i, item in enumerate(check.array(obj, "checkpoints", ""))
                    ),
                    key=_entry_key,
                )
            ),
            removed=tuple(
                _removed_from_json(item, f"removed[{i}]", check)
                for i, item in enumerate(check.array(obj, "removed", "", required=False))
            ),
            ckptd_version=check.text(obj, "ckptd_version", "", required=False) or "unknown",
            extra=_extras(obj, _MANIFEST_KEYS),
            last_prune=_prune_record_from_json(obj, check),
        )


def _entry_key(entry: ManifestEntry) -> str:
    return entry.path


_MANIFEST_KEYS = frozenset(
    {"schema", "run", "generated_at", "policy", "ckptd_version", "checkpoints", "removed"}
    | {"last_prune"}
)
_ENTRY_KEYS = frozenset(
    {"path", "step", "size", "mtime", "sha256", "format", "state", "reasons", "converted_from"}
    | {"algorithm", "params", "carries_code", "error", "refusal", "mtime_ns"}
)
_REMOVED_KEYS = frozenset(
    {"path", "sha256", "removed_at", "reasons", "trash", "size"}
    | {"converted_from", "converted_from_sha256", "converted_from_trash", "converted_from_size"}
)


def _extras(obj: JsonDict, known: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in known}


def _dump(obj: JsonDict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


def _load_json(data: bytes | str, source: str) -> JsonDict:
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"not valid JSON ({err})", path=source) from err
    if not isinstance(obj, dict):
        raise ManifestError(
            f"expected a JSON object at the top, got {type(obj).__name__}", path=source
        )
    return obj


class _Checker:
    """Typed field access that raises ManifestError naming the JSON location."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"{where}: {message}" if where else message, path=self.source)

    def get(self, obj: object, key: str, where: str, required: bool) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(where, "expected an object")
        if key not in obj:
            if required:
                raise self.fail(_join(where, key), "missing")
            return None
        return obj[key]

    def equal(self, obj: object, key: str, expected: str, where: str) -> None:
        value = self.get(obj, key, where, True)
        if value != expected:
            raise self.fail(_join(where, key), f"expected {expected!r}, got {value!r}")

    def text(self, obj: object, key: str, where: str, *, required: bool = True) -> str:
        value = self.get(obj, key, where, required)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.fail(_join(where, key), f"expected a string, got {value!r}")
        return value

    def optional_text(self, obj: object, key: str, where: str) -> str | None:
        value = self.get(obj, key, where, False)
        if value is not None and not isinstance(value, str):
            raise self.fail(_join(where, key), f"expected a string or null, got {value!r}")
        return value

    def integer(self, obj: object, key: str, where: str, *, nullable: bool = False) -> int | None:
        value = self.get(obj, key, where, not nullable)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(_join(where, key), f"expected a non-negative integer, got {value!r}")
        return value

    def time(self, obj: object, key: str, where: str) -> datetime:
        text = self.text(obj, key, where)
        try:
            return parse_utc(text)
        except ValueError as err:
            raise self.fail(_join(where, key), f"bad timestamp {text!r}") from err

    def array(self, obj: object, key: str, where: str, *, required: bool = True) -> list[Any]:
        value = self.get(obj, key, where, required)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self.fail(_join(where, key), "expected a list")
        return value

    def strings(
        self, obj: object, key: str, where: str, *, nullable: bool = False
    ) -> tuple[str, ...] | None:
        value = self.get(obj, key, where, not nullable)
        if value is None and nullable:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(_join(where, key), "expected a list of strings")
        return tuple(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _entry_from_json(obj: object, where: str, check: _Checker) -> ManifestEntry:
    # A warm pass parses 100,000 entries: try the straight-line check first and only walk the
    # field-by-field checker (which names the problem) when something is off.
    fast = _entry_fast(obj)
    return fast if fast is not None else _entry_checked(obj, where, check)


_BASE_ENTRY_KEYS = frozenset(
    {"path", "step", "size", "mtime", "sha256", "format", "state", "reasons"}
)
_BASE_ENTRY_KEYS_NS = _BASE_ENTRY_KEYS | {"mtime_ns"}


def _entry_fast(obj: object) -> ManifestEntry | None:
    # Exactly the keys a checkpoint without conversion details has; anything else (conversion
    # details, errors, unknown keys) goes to the full checker. Type tests come before the `in`
    # tests: a list where a string belongs is unhashable and would raise TypeError there.
    if type(obj) is not dict:
        return None
    keys = obj.keys()
    if keys not in (_BASE_ENTRY_KEYS, _BASE_ENTRY_KEYS_NS):
        return None
    path, step, size, sha256 = obj["path"], obj["step"], obj["size"], obj["sha256"]
    fmt, state, reasons, mtime_ns = obj["format"], obj["state"], obj["reasons"], obj.get("mtime_ns")
    if (
        type(path) is not str
        or not (step is None or (type(step) is int and step >= 0))
        or type(size) is not int
        or size < 0
        or not (sha256 is None or type(sha256) is str)
        or type(fmt) is not str
        or fmt not in _FORMATS
        or type(state) is not str
        or state not in MANIFEST_STATES
        or type(reasons) is not list
        or (reasons and not all(type(reason) is str for reason in reasons))
        or not (mtime_ns is None or (type(mtime_ns) is int and mtime_ns >= 0))
    ):
        return None
    try:
        mtime = parse_utc(obj["mtime"])
    except (TypeError, ValueError):
        return None
    # Every field, in declaration order (tests check this against the constructor).
    return build_frozen(
        ManifestEntry,
        {
            "path": path,
            "step": step,
            "size": size,
            "mtime": mtime,
            "sha256": sha256,
            "format": _FORMATS[fmt],
            "state": state,
            "reasons": tuple(reasons),
            "converted_from": None,
            "algorithm": None,
            "params": None,
            "carries_code": None,
            "error": None,
            "refusal": None,
            "mtime_ns": mtime_ns,
            "extra": {},
        },
    )


def _entry_checked(obj: object, where: str, check: _Checker) -> ManifestEntry:
    path = check.text(obj, "path", where)
    where = f"{where} ({path})"
    format_text = check.text(obj, "format", where)
    if format_text not in _FORMATS:
        raise check.fail(f"{where}.format", f"unknown format {format_text!r}")
    state = check.text(obj, "state", where)
    if state not in MANIFEST_STATES:
        raise check.fail(f"{where}.state", f"unknown state {state!r}")
    params = None
    params_obj = check.get(obj, "params", where, False)
    if params_obj is not None:
        params = ParamsSummary(
            count=cast(int, check.integer(params_obj, "count", f"{where}.params")),
            bytes=cast(int, check.integer(params_obj, "bytes", f"{where}.params")),
        )
    return ManifestEntry(
        path=path,
        step=check.integer(obj, "step", where, nullable=True),
        size=cast(int, check.integer(obj, "size", where)),
        mtime=check.time(obj, "mtime", where),
        sha256=check.optional_text(obj, "sha256", where),
        format=_FORMATS[format_text],
        state=cast(ManifestState, state),
        reasons=check.strings(obj, "reasons", where) or (),
        converted_from=check.optional_text(obj, "converted_from", where),
        algorithm=check.optional_text(obj, "algorithm", where),
        params=params,
        carries_code=check.strings(obj, "carries_code", where, nullable=True),
        error=check.optional_text(obj, "error", where),
        refusal=check.optional_text(obj, "refusal", where),
        mtime_ns=check.integer(obj, "mtime_ns", where, nullable=True),
        extra=_extras(cast(JsonDict, obj), _ENTRY_KEYS),
    )


def _removed_from_json(obj: object, where: str, check: _Checker) -> RemovedEntry:
    return RemovedEntry(
        path=check.text(obj, "path", where),
        sha256=check.optional_text(obj, "sha256", where),
        removed_at=check.time(obj, "removed_at", where),
        reasons=check.strings(obj, "reasons", where) or (),
        trash=check.optional_text(obj, "trash", where),
        converted_from=check.optional_text(obj, "converted_from", where),
        converted_from_sha256=check.optional_text(obj, "converted_from_sha256", where),
        converted_from_trash=check.optional_text(obj, "converted_from_trash", where),
        extra=_extras(cast(JsonDict, obj), _REMOVED_KEYS),
        size=check.integer(obj, "size", where, nullable=True),
        converted_from_size=check.integer(obj, "converted_from_size", where, nullable=True),
    )


def _prune_record_from_json(obj: JsonDict, check: _Checker) -> PruneRecord | None:
    record = check.get(obj, "last_prune", "", False)
    if record is None:
        return None  # written before ckptd recorded prune passes, or never pruned
    return PruneRecord(
        at=check.time(record, "at", "last_prune"),
        deleted=cast(int, check.integer(record, "deleted", "last_prune")),
        bytes_freed=cast(int, check.integer(record, "bytes_freed", "last_prune")),
        guard=check.optional_text(record, "guard", "last_prune"),
    )


# ---- pure helpers for the daemon and prune: each returns a new value ------------------------------


def set_entry(manifest: Manifest, entry: ManifestEntry) -> Manifest:
    """Add ``entry`` or replace the entry with the same path."""
    others = (existing for existing in manifest.checkpoints if existing.path != entry.path)
    return dataclasses.replace(
        manifest, checkpoints=tuple(sorted((*others, entry), key=_entry_key))
    )


def drop_entry(manifest: Manifest, path: str) -> Manifest:
    """Remove the entry for ``path`` (no-op when absent)."""
    kept = tuple(entry for entry in manifest.checkpoints if entry.path != path)
    return dataclasses.replace(manifest, checkpoints=kept)


def with_state(
    entry: ManifestEntry,
    state: ManifestState,
    *,
    error: str | None = None,
    refusal: str | None = None,
) -> ManifestEntry:
    """``entry`` in ``state``; ``broken`` needs an ``error`` and ``refused`` a ``refusal`` text.

    Other states clear a stale error/refusal. Raises ValueError on a missing text (a caller bug).
    """
    if state == "broken" and not error:
        raise ValueError("state 'broken' needs an error text")
    if state == "refused" and not refusal:
        raise ValueError("state 'refused' needs a refusal text")
    return dataclasses.replace(
        entry,
        state=state,
        error=error if state == "broken" else None,
        refusal=refusal if state == "refused" else None,
    )


def with_conversion(
    entry: ManifestEntry,
    *,
    converted_from: str,
    algorithm: str | None,
    params: ParamsSummary,
    carries_code: Sequence[str],
) -> ManifestEntry:
    """A converted zip's entry: where it came from and what it holds (state ``kept``)."""
    return dataclasses.replace(
        with_state(entry, "kept"),
        converted_from=converted_from,
        algorithm=algorithm,
        params=params,
        carries_code=tuple(carries_code),
    )


def quarantined_as(entry: ManifestEntry) -> str | None:
    """The run-relative quarantine path of a refused entry whose file the pipeline quarantined."""
    if entry.state != "refused":
        return None
    where = entry.extra.get(QUARANTINE_KEY)
    return where if isinstance(where, str) and where else None


def add_removed(manifest: Manifest, removed: Iterable[RemovedEntry]) -> Manifest:
    """Append removals (oldest first), keeping the newest :data:`MAX_REMOVED`."""
    combined = (*manifest.removed, *removed)
    return dataclasses.replace(manifest, removed=combined[-MAX_REMOVED:])


# ---- the per-root index -------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexRun:
    """One run as the root index lists it."""

    run: str
    manifest: str  # relative to the root
    checkpoints: int
    bytes: int
    newest_step: int | None
    newest_mtime: datetime | None
    error: str | None = None

    def to_json_obj(self) -> JsonDict:
        obj: JsonDict = {
            "run": self.run,
            "manifest": self.manifest,
            "checkpoints": self.checkpoints,
            "bytes": self.bytes,
            "newest_step": self.newest_step,
            "newest_mtime": None if self.newest_mtime is None else format_utc(self.newest_mtime),
        }
        if self.error is not None:
            obj["error"] = self.error
        return obj


@dataclass(frozen=True)
class RootIndex:
    """``ckptd-index.json`` at a root: its runs sorted by relative path."""

    root: str
    generated_at: datetime
    runs: tuple[IndexRun, ...] = ()

    def to_json_bytes(self) -> bytes:
        obj: JsonDict = {
            "schema": INDEX_SCHEMA,
            "root": self.root,
            "generated_at": format_utc(self.generated_at),
            "ckptd_version": __version__,
            "runs": [run.to_json_obj() for run in sorted(self.runs, key=lambda run: run.run)],
        }
        return _dump(obj)

    def same_content(self, other: RootIndex | None) -> bool:
        return (
            other is not None
            and dataclasses.replace(self, generated_at=other.generated_at) == other
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str) -> RootIndex:
        obj = _load_json(data, source)
        check = _Checker(source)
        check.equal(obj, "schema", INDEX_SCHEMA, "")
        runs = []
        for i, item in enumerate(check.array(obj, "runs", "")):
            where = f"runs[{i}]"
            newest = check.optional_text(item, "newest_mtime", where)
            runs.append(
                IndexRun(
                    run=check.text(item, "run", where),
                    manifest=check.text(item, "manifest", where),
                    checkpoints=cast(int, check.integer(item, "checkpoints", where)),
                    bytes=cast(int, check.integer(item, "bytes", where)),
                    newest_step=check.integer(item, "newest_step", where, nullable=True),
                    newest_mtime=None
                    if newest is None
                    else check.time(item, "newest_mtime", where),
                    error=check.optional_text(item, "error", where),
                )
            )
        runs.sort(key=lambda run: run.run)
        return cls(check.text(obj, "root", ""), check.time(obj, "generated_at", ""), tuple(runs))


def index_run(manifest: Manifest, *, run: str, manifest_relpath: str) -> IndexRun:
    """Summarize a run's manifest: archived originals add bytes but are not separate checkpoints;
    quarantined files (kept in the manifest as ``refused``) are neither: they left the run."""
    present = [entry for entry in manifest.checkpoints if quarantined_as(entry) is None]
    checkpoints = [entry for entry in present if entry.state != "converted"]
    steps = [entry.step for entry in checkpoints if entry.step is not None]
    return IndexRun(
        run=run,
        manifest=manifest_relpath,
        checkpoints=len(checkpoints),
        bytes=sum(entry.size for entry in present),
        newest_step=max(steps) if steps else None,
        newest_mtime=max((entry.mtime for entry in checkpoints), default=None),
    )


# ---- I/O edges ----------------------------------------------------------------------------------


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
