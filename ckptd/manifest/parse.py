"""Validating JSON -> manifest values: checkpoint entries, removals and the last prune record.

A warm pass parses every run's manifest, so checkpoint entries take a fast straight-line path when
they hold exactly the common keys, and the field-by-field checker (which names the problem) otherwise.
Pure: :func:`manifest_from_json` reads a whole manifest; the store reads the file.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, cast

from ckptd.formats import DIRECTORY_FORMATS, Format
from ckptd.frozen_build import build_frozen
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.jsonio import JsonChecker, JsonDict, json_extras, load_json_object
from ckptd.manifest.model import (
    MANIFEST_SCHEMA,
    MANIFEST_STATES,
    FileRecord,
    Manifest,
    ManifestEntry,
    ManifestState,
    ParamsSummary,
    PruneRecord,
    RemovedEntry,
)
from ckptd.pickles.verdict import Verdict
from ckptd.timefmt import parse_utc

_FORMATS = {member.value: member for member in Format}

MANIFEST_KEYS = frozenset(
    {"schema", "run", "generated_at", "policy", "ckptd_version", "checkpoints", "removed"}
    | {"last_prune"}
)
_ENTRY_KEYS = frozenset(
    {"path", "step", "size", "mtime", "sha256", "format", "state", "reasons", "converted_from"}
    | {"algorithm", "params", "carries_code", "error", "refusal", "mtime_ns", "note", "verdict"}
    | {"files", "signature"}
)
_FILE_KEYS = frozenset({"path", "size", "sha256", "verdict"})
_REMOVED_KEYS = frozenset(
    {"path", "sha256", "removed_at", "reasons", "trash", "size"}
    | {"converted_from", "converted_from_sha256", "converted_from_trash", "converted_from_size"}
)


def entry_from_json(obj: object, where: str, check: JsonChecker) -> ManifestEntry:
    # A warm pass parses 100,000 entries: try the straight-line check first and only walk the
    # field-by-field checker (which names the problem) when something is off.
    fast = _entry_fast(obj)
    return fast if fast is not None else _entry_checked(obj, where, check)


_BASE_ENTRY_KEYS = frozenset(
    {"path", "step", "size", "mtime", "sha256", "format", "state", "reasons"}
)
_BASE_ENTRY_KEYS_NS = _BASE_ENTRY_KEYS | {"mtime_ns"}
_KEY_SETS = (_BASE_ENTRY_KEYS, _BASE_ENTRY_KEYS_NS)
_WRITTEN_ORDER = ("path", "step", "size", "mtime", "sha256", "format", "state", "reasons")
_WRITTEN_ORDERS = ((*_WRITTEN_ORDER, "mtime_ns"), _WRITTEN_ORDER)


def _entry_fast(obj: object) -> ManifestEntry | None:
    # Exactly the keys a checkpoint without conversion details has; anything else (conversion
    # details, errors, unknown keys) goes to the full checker. Type tests come before the `in`
    # tests: a list where a string belongs is unhashable and would raise TypeError there.
    if type(obj) is not dict:
        return None
    # The order ckptd writes the keys in, compared as a tuple first (half the cost of comparing
    # key sets); another order of the same keys is as good.
    if tuple(obj) not in _WRITTEN_ORDERS and obj.keys() not in _KEY_SETS:
        return None
    path, step, size, sha256 = obj["path"], obj["step"], obj["size"], obj["sha256"]
    fmt, state, reasons, mtime_ns = obj["format"], obj["state"], obj["reasons"], obj.get("mtime_ns")
    if (
        type(path) is not str
        or _maybe_unplain(path)
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
        mtime = datetime.fromisoformat(obj["mtime"])
    except (TypeError, ValueError):
        return None
    if mtime.tzinfo is not UTC:
        # Not ckptd's own "...Z" (which parses to UTC itself): parse_utc's checks and conversion.
        try:
            mtime = parse_utc(obj["mtime"])
        except (TypeError, ValueError):
            return None
    # Every field, in declaration order (tests check this against the constructor): a copy of
    # the all-None template with the fields this entry has set (half the cost of a 20-key literal).
    fields = _ENTRY_TEMPLATE.copy()
    fields["path"] = path
    fields["step"] = step
    fields["size"] = size
    fields["mtime"] = mtime
    fields["sha256"] = sha256
    fields["format"] = _FORMATS[fmt]
    fields["state"] = state
    fields["reasons"] = tuple(reasons)
    fields["mtime_ns"] = mtime_ns
    fields["extra"] = {}
    return build_frozen(ManifestEntry, fields)


_ENTRY_TEMPLATE: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(ManifestEntry))


def _maybe_unplain(path: str) -> bool:
    """A quick over-approximation of ``runfs.relpath_problem`` (C-speed substring tests) for the
    fast path; anything it flags goes to the checker, which names the exact problem."""
    return (
        not path
        or path[0] == "/"
        or path[-1] == "/"
        or "\0" in path
        or "//" in path
        or ".." in path
        or path == "."
        or path.startswith("./")
        or "/./" in path
        or path.endswith("/.")
        or len(path) > 255
    )


def _relpath(check: JsonChecker, value: str | None, where: str, key: str) -> str | None:
    # Paths in a manifest are read from a directory others can write: only a plain path inside
    # the run is accepted (docs/security.md, "Paths inside a run").
    problem = None if value is None else relpath_problem(value)
    if problem is not None:
        raise check.fail(f"{where}.{key}", f"{value!r} {problem}; not a path inside the run")
    return value


def _entry_checked(obj: object, where: str, check: JsonChecker) -> ManifestEntry:
    path = check.text(obj, "path", where)
    # A directory checkpoint's path ends in one "/" (docs/formats.md, "Directory checkpoints").
    _relpath(check, path[:-1] if path.endswith("/") else path, where, "path")
    where = f"{where} ({path})"
    format_text = check.text(obj, "format", where)
    if format_text not in _FORMATS:
        raise check.fail(f"{where}.format", f"unknown format {format_text!r}")
    if path.endswith("/") != (_FORMATS[format_text] in DIRECTORY_FORMATS):
        raise check.fail(
            f"{where}.path",
            f"a path ending in '/' goes with a directory format, not {format_text!r}",
        )
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
        converted_from=_relpath(
            check, check.optional_text(obj, "converted_from", where), where, "converted_from"
        ),
        algorithm=check.optional_text(obj, "algorithm", where),
        params=params,
        carries_code=check.strings(obj, "carries_code", where, nullable=True),
        error=check.optional_text(obj, "error", where),
        refusal=check.optional_text(obj, "refusal", where),
        mtime_ns=check.integer(obj, "mtime_ns", where, nullable=True),
        note=check.optional_text(obj, "note", where),
        verdict=_verdict(obj, where, check),
        files=_files(obj, where, check),
        signature=check.optional_text(obj, "signature", where),
        extra=json_extras(cast(JsonDict, obj), _ENTRY_KEYS),
    )


def _files(obj: object, where: str, check: JsonChecker) -> tuple[FileRecord, ...] | None:
    items = check.get(obj, "files", where, False)
    if items is None:
        return None
    if not isinstance(items, list):
        raise check.fail(f"{where}.files", "must be a list")
    records = []
    for i, item in enumerate(items):
        at = f"{where}.files[{i}]"
        path = check.text(item, "path", at)
        _relpath(check, path, at, "path")
        records.append(
            FileRecord(
                path=path,
                size=cast(int, check.integer(item, "size", at)),
                sha256=check.optional_text(item, "sha256", at),
                verdict=_verdict(item, at, check),
                extra=json_extras(cast(JsonDict, item), _FILE_KEYS),
            )
        )
    return tuple(records)


def _verdict(obj: object, where: str, check: JsonChecker) -> Verdict | None:
    verdict = check.get(obj, "verdict", where, False)
    if verdict is None:
        return None
    where = f"{where}.verdict"
    safe = check.get(verdict, "safe", where, True)
    if type(safe) is not bool:
        raise check.fail(f"{where}.safe", "must be true or false")
    return Verdict(
        safe=safe,
        globals=check.strings(verdict, "globals", where) or (),
        reason=check.text(verdict, "reason", where),
    )


def removed_from_json(obj: object, where: str, check: JsonChecker) -> RemovedEntry:
    def path_of(key: str, *, required: bool = False) -> str | None:
        value = check.text(obj, key, where) if required else check.optional_text(obj, key, where)
        if key == "path" and value is not None and value.endswith("/"):
            _relpath(check, value[:-1], where, key)  # a directory checkpoint
            return value
        return _relpath(check, value, where, key)

    return RemovedEntry(
        path=cast(str, path_of("path", required=True)),
        sha256=check.optional_text(obj, "sha256", where),
        removed_at=check.time(obj, "removed_at", where),
        reasons=check.strings(obj, "reasons", where) or (),
        trash=path_of("trash"),
        converted_from=path_of("converted_from"),
        converted_from_sha256=check.optional_text(obj, "converted_from_sha256", where),
        converted_from_trash=path_of("converted_from_trash"),
        extra=json_extras(cast(JsonDict, obj), _REMOVED_KEYS),
        size=check.integer(obj, "size", where, nullable=True),
        converted_from_size=check.integer(obj, "converted_from_size", where, nullable=True),
    )


def prune_record_from_json(obj: JsonDict, check: JsonChecker) -> PruneRecord | None:
    record = check.get(obj, "last_prune", "", False)
    if record is None:
        return None  # written before ckptd recorded prune passes, or never pruned
    return PruneRecord(
        at=check.time(record, "at", "last_prune"),
        deleted=cast(int, check.integer(record, "deleted", "last_prune")),
        bytes_freed=cast(int, check.integer(record, "bytes_freed", "last_prune")),
        guard=check.optional_text(record, "guard", "last_prune"),
    )


def _entries(items: list[Any], check: JsonChecker) -> tuple[ManifestEntry, ...]:
    """``entry_from_json`` of each item; the text naming an item (``checkpoints[7]``) is made
    only for one that leaves the fast path (a warm pass parses 100,000 entries)."""
    entries: list[ManifestEntry] = []
    fast = _entry_fast
    for item in items:
        entry = fast(item)
        if entry is None:
            entry = _entry_checked(item, f"checkpoints[{len(entries)}]", check)
        entries.append(entry)
    return tuple(entries)


def manifest_from_json(data: bytes | str, *, source: str) -> Manifest:
    """Parse and validate a manifest; raise ManifestError (one line naming ``source``)."""
    obj = load_json_object(data, source)
    check = JsonChecker(source)
    check.equal(obj, "schema", MANIFEST_SCHEMA, "")
    return Manifest(
        run=check.text(obj, "run", ""),
        generated_at=check.time(obj, "generated_at", ""),
        policy=check.text(obj, "policy", ""),
        # Manifest puts them in path order (once: a warm pass parses 100,000 entries).
        checkpoints=_entries(check.array(obj, "checkpoints", ""), check),
        removed=tuple(
            removed_from_json(item, f"removed[{i}]", check)
            for i, item in enumerate(check.array(obj, "removed", "", required=False))
        ),
        ckptd_version=check.text(obj, "ckptd_version", "", required=False) or "unknown",
        extra=json_extras(obj, MANIFEST_KEYS),
        last_prune=prune_record_from_json(obj, check),
    )
