"""``ckptd status``: the state of every run, read from its manifest and state dir (no daemon needed).

Per run: checkpoints kept and bytes (archived originals included), the newest checkpoint and its
age, the last prune pass and what it freed (the manifest's ``last_prune``; for a manifest written
before ckptd recorded it, the newest removals and their sizes), pending/refused/broken/corrupt
counts, trash and quarantine sizes, pins, and the last scrub. A run has *problems* when it has
refused, broken or corrupt files, when its newest checkpoint is older than ``monitor.stale_after``,
or when its manifest is behind the files on disk: checkpoint files that have been complete for
longer than the daemon's schedule allows (``stable_for`` + the ``schedule.manifest`` interval +
a minute) are not recorded. The manifest's own ``generated_at`` is not used for that: ckptd only
rewrites a manifest when something changed, so an idle, finished run legitimately has an old one.

:func:`summarize` is pure (manifest + what was found in the state dir + now -> RunStatus); the
functions after it do the reading.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ckptd.config.model import Config, RootConfig
from ckptd.errors import CkptdError, ManifestError, UnsafePathError
from ckptd.fs.files import is_temp_name
from ckptd.manifest.model import Manifest, RemovedEntry, quarantined_as
from ckptd.manifest.store import load_manifest
from ckptd.ops.quarantine import RELEASED_KEY
from ckptd.ops.scrub_results import CORRUPT_KEY, LAST_SCRUB_KEY
from ckptd.pipeline.discovery import find_work
from ckptd.pipeline.quarantine import REASON_SUFFIX
from ckptd.retention.deletion import TRASH_STATE_FILES
from ckptd.retention.dir_trash import tree_size_at
from ckptd.runs.access import runs_of_all_roots
from ckptd.runs.roots import RunRef
from ckptd.runs.series_dirs import merged_series_warning, series_directories
from ckptd.runs.statedir import Pin, StateLayout, read_pins
from ckptd.timefmt import format_utc
from ckptd.units import format_duration, plural

logger = logging.getLogger(__name__)

GRACE = timedelta(minutes=1)
DEFAULT_RECORD_LAG = timedelta(hours=1)  # when neither a manifest nor a rescan interval is set


@dataclass(frozen=True)
class Usage:
    files: int = 0
    bytes: int = 0

    def to_json_obj(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass(frozen=True)
class Newest:
    path: str
    step: int | None
    mtime: datetime
    age: timedelta


@dataclass(frozen=True)
class LastPrune:
    """The most recent real prune pass (the manifest's ``last_prune``), or for an older manifest
    the most recent one that removed something (its ``removed`` list)."""

    at: datetime
    removed: int
    bytes: int | None  # freed; None when an old manifest's removals can no longer be measured
    guard: str | None = None  # the max_fraction guard stopped that pass's deletions


@dataclass(frozen=True)
class RunFacts:
    """What was read from a run's state dir and tree (the I/O half of a status)."""

    pins: Mapping[str, Pin]
    trash: Usage
    quarantine: Usage
    unrecorded: int  # complete checkpoint files the manifest is behind on
    last_prune_bytes: int | None
    problems: tuple[str, ...] = ()  # unreadable pins file, unlistable run, ...


@dataclass(frozen=True)
class RunStatus:
    root: Path
    run: str
    run_dir: Path
    manifest: str  # "ok" | "missing" | "invalid"
    generated_at: datetime | None = None
    kept: int = 0
    pending: int = 0
    refused: int = 0
    broken: int = 0
    held: int = 0
    corrupt: int = 0
    bytes: int = 0
    newest: Newest | None = None
    last_prune: LastPrune | None = None
    last_scrub: Mapping[str, Any] | None = None
    trash: Usage = Usage()
    quarantine: Usage = Usage()
    pins: tuple[tuple[str, Pin], ...] = ()
    unrecorded: int = 0
    problems: tuple[str, ...] = ()

    def to_json_obj(self) -> dict[str, object]:
        newest = self.newest
        prune = self.last_prune
        return {
            "root": str(self.root),
            "run": self.run,
            "manifest": self.manifest,
            "generated_at": None if self.generated_at is None else format_utc(self.generated_at),
            "kept": self.kept,
            "bytes": self.bytes,
            "newest": None
            if newest is None
            else {
                "path": newest.path,
                "step": newest.step,
                "mtime": format_utc(newest.mtime),
                "age_seconds": int(newest.age.total_seconds()),
            },
            "last_prune": None
            if prune is None
            else {
                "at": format_utc(prune.at),
                "removed": prune.removed,
                "bytes": prune.bytes,
                "guard": prune.guard,
            },
            "counts": {
                "pending": self.pending,
                "refused": self.refused,
                "broken": self.broken,
                "held": self.held,
                "corrupt": self.corrupt,
            },
            "trash": self.trash.to_json_obj(),
            "quarantine": self.quarantine.to_json_obj(),
            "pins": [
                {
                    "path": path,
                    "reason": pin.reason,
                    "pinned_at": None if pin.pinned_at is None else format_utc(pin.pinned_at),
                }
                for path, pin in self.pins
            ],
            "last_scrub": None if self.last_scrub is None else dict(self.last_scrub),
            "unrecorded": self.unrecorded,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class StatusReport:
    runs: tuple[RunStatus, ...]
    errors: tuple[str, ...] = ()
    generated_at: datetime | None = None

    def to_json_obj(self) -> dict[str, object]:
        return {
            "generated_at": None if self.generated_at is None else format_utc(self.generated_at),
            "runs": [run.to_json_obj() for run in self.runs],
            "errors": list(self.errors),
        }


# ---- the pure part ------------------------------------------------------------------------------


def last_prune_of(removed: Sequence[RemovedEntry]) -> tuple[datetime, list[RemovedEntry]] | None:
    """The newest removal time and every entry removed then (one prune pass stamps one time)."""
    if not removed:
        return None
    newest = max(entry.removed_at for entry in removed)
    return newest, [entry for entry in removed if entry.removed_at == newest]


def recorded_bytes(entries: Sequence[RemovedEntry]) -> int | None:
    """What the removals freed by their recorded sizes; None if any entry predates sizes."""
    total = 0
    for entry in entries:
        freed = entry.bytes_freed
        if freed is None:
            return None
        total += freed
    return total


def prune_summary(manifest: Manifest, measured_bytes: int | None) -> LastPrune | None:
    """The last prune pass: the manifest's record, else (an older manifest) its newest removals,
    with their recorded sizes or else ``measured_bytes`` (what their trash files measure)."""
    record = manifest.last_prune
    if record is not None:
        return LastPrune(record.at, record.deleted, record.bytes_freed, record.guard)
    last = last_prune_of(manifest.removed)
    if last is None:
        return None
    recorded = recorded_bytes(last[1])
    return LastPrune(last[0], len(last[1]), measured_bytes if recorded is None else recorded)


def summarize(
    run: RunRef,
    manifest: Manifest | None,
    facts: RunFacts,
    config: Config,
    *,
    now: datetime,
    manifest_state: str = "ok",
) -> RunStatus:
    """A run's status from its manifest and the facts read beside it."""
    problems = list(facts.problems)
    pins = tuple(sorted(facts.pins.items()))
    base = RunStatus(
        run.root,
        run.relpath,
        run.run_dir,
        manifest_state,
        trash=facts.trash,
        quarantine=facts.quarantine,
        pins=pins,
        unrecorded=facts.unrecorded,
    )
    if manifest is None:
        if manifest_state == "invalid":
            problems.insert(0, "manifest is invalid (the next manifest pass rebuilds it)")
        elif facts.unrecorded:
            unrecorded = plural(facts.unrecorded, "checkpoint file")
            problems.insert(0, f"no manifest yet, {unrecorded} unrecorded")
        return dataclasses.replace(base, problems=tuple(problems))
    entries = manifest.checkpoints
    checkpoints = [entry for entry in entries if entry.state != "converted"]
    counts = {
        state: sum(1 for e in entries if e.state == state) for state in ("kept", "pending", "held")
    }
    # Quarantined files are counted from the quarantine dir (also those whose entry is gone, e.g.
    # with a manifest rebuilt from scratch), so their refused entries are not counted again; a file
    # released on the operator's explicit trust is no longer a problem to point at.
    left_refused = sum(
        1
        for e in entries
        if e.state == "refused" and quarantined_as(e) is None and RELEASED_KEY not in e.extra
    )
    corrupt = sum(1 for e in entries if CORRUPT_KEY in e.extra)
    scrub_broken = sum(1 for e in entries if e.state == "broken" and CORRUPT_KEY in e.extra)
    broken = sum(1 for e in entries if e.state == "broken") - scrub_broken
    refused = left_refused + facts.quarantine.files
    newest_entry = max(
        (e for e in checkpoints if e.state in ("kept", "pending", "held")),
        key=lambda e: e.mtime,
        default=None,
    )
    newest = (
        None
        if newest_entry is None
        else Newest(
            newest_entry.path, newest_entry.step, newest_entry.mtime, now - newest_entry.mtime
        )
    )
    if refused:
        problems.append(f"{refused} refused (unsafe) file{'s' if refused != 1 else ''}")
    if broken:
        problems.append(f"{broken} broken file{'s' if broken != 1 else ''}")
    if counts["held"]:
        held = counts["held"]
        problems.append(
            f"{held} held file{'s' if held != 1 else ''} (not converted: see its manifest note)"
        )
    if corrupt:
        problems.append(f"{corrupt} corrupt (scrub found a mismatch)")
    # Recorded by the daemon and by every pass with the same text (checkpoints.cannot_read).
    unreadable = sum(1 for e in entries if (e.error or "").startswith("cannot read:"))
    if unreadable:
        problems.append(
            f"{unreadable} unreadable file{'s' if unreadable != 1 else ''} (permissions?)"
        )
    stale_after = config.monitor.stale_after
    if stale_after is not None and newest is not None and newest.age > stale_after:
        problems.append(
            f"no new checkpoint for {format_duration(newest.age)} "
            f"(monitor.stale_after {format_duration(stale_after)})"
        )
    if facts.unrecorded:
        problems.append(
            f"manifest is behind: {plural(facts.unrecorded, 'complete checkpoint file')} not recorded "
            f"for over {format_duration(record_lag(config))} (is the daemon running?)"
        )
    last_scrub = manifest.extra.get(LAST_SCRUB_KEY)
    return dataclasses.replace(
        base,
        generated_at=manifest.generated_at,
        kept=counts["kept"] + counts["held"],  # a held checkpoint is kept, just not converted
        pending=counts["pending"],
        refused=refused,
        broken=broken,
        held=counts["held"],
        corrupt=corrupt,
        # A quarantined file's entry is kept for the record; its bytes are the quarantine's.
        bytes=sum(entry.size for entry in entries if quarantined_as(entry) is None),
        newest=newest,
        last_prune=prune_summary(manifest, facts.last_prune_bytes),
        last_scrub=last_scrub if isinstance(last_scrub, dict) else None,
        problems=tuple(problems),
    )


def record_lag(config: Config) -> timedelta:
    """How long a complete file may go unrecorded before status calls the manifest behind."""
    schedule = config.schedule
    interval = next(
        (
            spec.interval
            for spec in (schedule.manifest, schedule.rescan)
            if spec is not None and spec.interval is not None
        ),
        DEFAULT_RECORD_LAG,
    )
    return config.checkpoints.stable_for + interval + GRACE


# ---- reading ------------------------------------------------------------------------------------


def _usage(directory: Path, skip: frozenset[str], skip_suffix: str | None = None) -> Usage:
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return Usage()
    files = size = 0
    for entry in entries:
        name = entry.name
        if name in skip or is_temp_name(name) or (skip_suffix and name.endswith(skip_suffix)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            files += 1
            size += st.st_size
        elif stat.S_ISDIR(st.st_mode):  # a directory checkpoint in the trash: one, its files' bytes
            files += 1
            size += _tree_size(directory, name)
    return Usage(files, size)


def _tree_size(directory: Path, name: str) -> int:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return tree_size_at(fd, name)
    finally:
        os.close(fd)


def _removed_bytes(run_dir: Path, entries: Sequence[RemovedEntry]) -> int | None:
    total = 0
    for entry in entries:
        for trash in (entry.trash, entry.converted_from_trash):
            if trash is None:
                continue
            try:
                total += os.lstat(run_dir / trash).st_size
            except OSError:
                return None  # purged already (or unlinked): the size is no longer knowable
        if entry.trash is None:
            return None
    return total


def _unrecorded(config: Config, run: RunRef, now: datetime) -> int:

    cutoff_ns = int((now - record_lag(config)).timestamp() * 1_000_000_000)
    return sum(1 for found in find_work(config, run) if found.identity.mtime_ns <= cutoff_ns)


def run_status(config: Config, root: RootConfig, run: RunRef, *, now: datetime) -> RunStatus:
    """Read one run's manifest and state dir; problems are reported in the status, never raised."""
    layout = StateLayout(run.run_dir, config.state_dir)
    problems: list[str] = []
    manifest_state = "ok"
    manifest: Manifest | None
    try:
        manifest = load_manifest(run.run_dir / config.manifest.filename)
    except FileNotFoundError:
        manifest, manifest_state = None, "missing"
    except ManifestError as err:
        manifest, manifest_state = None, "invalid"
        problems.append(str(err))
    try:
        pins: Mapping[str, Pin] = read_pins(layout)
    except CkptdError as err:
        pins = {}
        problems.append(str(err))
    try:
        unrecorded = _unrecorded(config, run, now)
    except OSError as err:
        unrecorded = 0
        problems.append(f"cannot list the run: {err.strerror or err}")
    # Only an old manifest (no last_prune, removals without sizes) needs the trash measured.
    last = last_prune_of(manifest.removed) if manifest and manifest.last_prune is None else None
    if last is not None and recorded_bytes(last[1]) is not None:
        last = None
    if manifest is not None:
        live = [(e.path, e.step) for e in manifest.checkpoints if e.state != "converted"]
        directories = series_directories(live)
        if directories:
            problems.append(merged_series_warning(directories, root.run_depth))
    if _read_only(run.run_dir):
        problems.append("read-only file system: ckptd can convert, record and prune nothing here")
    try:
        state_ok = layout.check()  # never measure (list) through a planted link
    except UnsafePathError as err:
        problems.append(str(err))
        state_ok = False
    facts = RunFacts(
        pins=pins,
        trash=_usage(layout.trash, TRASH_STATE_FILES) if state_ok else Usage(),
        quarantine=_usage(layout.quarantine, frozenset(), REASON_SUFFIX) if state_ok else Usage(),
        unrecorded=unrecorded,
        last_prune_bytes=None if last is None else _removed_bytes(run.run_dir, last[1]),
        problems=tuple(problems),
    )
    return summarize(run, manifest, facts, config, now=now, manifest_state=manifest_state)


def _read_only(run_dir: Path) -> bool:
    """Mounted read-only (for every user: unlike permissions, not a matter of who asks)."""
    try:
        return bool(os.statvfs(run_dir).f_flag & os.ST_RDONLY)
    except OSError:
        return False  # an unlistable run says so on its own


def status_all(config: Config, *, now: datetime) -> StatusReport:
    """The status of every run of every root."""
    runs, errors = runs_of_all_roots(config)
    statuses = tuple(run_status(config, root, run, now=now) for root, run in runs)
    return StatusReport(statuses, tuple(errors), now)
