"""A scrub's results, and recording them in a manifest (pure).

A result is only recorded if the entry still has the sha256, size and mtime that were checked;
otherwise the file was legitimately changed or removed meanwhile and the result is dropped
(``superseded``). Recorded per entry: ``last_verified`` (when it last matched) or ``corrupt``
(``{"detected_at", "checked_at", "problems", "sha256", "state_before"}``); a corrupt checkpoint is
also set to state ``broken`` (with ``error``), which retention never touches. The manifest gets a
``last_scrub`` summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ckptd.manifest.model import Manifest, ManifestEntry
from ckptd.manifest.updates import set_entry, with_state
from ckptd.ops.scrub_check import Check
from ckptd.timefmt import format_utc

LAST_VERIFIED_KEY = "last_verified"
CORRUPT_KEY = "corrupt"
LAST_SCRUB_KEY = "last_scrub"
_SCRUBBED_STATES = frozenset({"kept", "converted"})


@dataclass(frozen=True)
class Finding:
    """A file that does not match its manifest entry."""

    path: str  # run-relative
    role: str  # "checkpoint" | "archived original"
    problems: tuple[str, ...]
    expected_sha256: str | None
    actual_sha256: str | None  # None when the file could not be read

    def to_json_obj(self) -> dict[str, object]:
        return {
            "path": self.path,
            "role": self.role,
            "problems": list(self.problems),
            "expected_sha256": self.expected_sha256,
            "actual_sha256": self.actual_sha256,
        }


@dataclass(frozen=True)
class RunScrub:
    """One run's scrub."""

    root: Path
    run: str
    run_dir: Path
    checked: int = 0
    bytes: int = 0
    corrupt: tuple[Finding, ...] = ()
    healed: tuple[str, ...] = ()  # found corrupt before, good now
    superseded: tuple[str, ...] = ()  # changed or removed by ckptd while being checked: dropped
    error: str | None = None
    manifest_written: bool = False
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.corrupt

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": self.run,
            "root": str(self.root),
            "checked": self.checked,
            "bytes": self.bytes,
            "corrupt": [finding.to_json_obj() for finding in self.corrupt],
            "healed": list(self.healed),
            "superseded": list(self.superseded),
            "error": self.error,
            "manifest_written": self.manifest_written,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class ScrubReport:
    """Every run one scrub looked at."""

    runs: tuple[RunScrub, ...]
    errors: tuple[str, ...] = ()  # roots that could not be listed
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and all(run.ok for run in self.runs)

    @property
    def corrupt_count(self) -> int:
        return sum(len(run.corrupt) for run in self.runs)

    @property
    def bytes(self) -> int:
        return sum(run.bytes for run in self.runs)

    def to_json_obj(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checked": sum(run.checked for run in self.runs),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "corrupt": self.corrupt_count,
            "interrupted": self.interrupted,
            "runs": [run.to_json_obj() for run in self.runs],
            "errors": list(self.errors),
        }


def scrub_targets(manifest: Manifest) -> list[ManifestEntry]:
    """The entries a scrub checks, in manifest (path) order."""
    return [
        entry
        for entry in manifest.checkpoints
        if entry.sha256 is not None
        and (entry.state in _SCRUBBED_STATES or CORRUPT_KEY in entry.extra)
    ]


def role(entry: ManifestEntry) -> str:
    return "archived original" if entry.state == "converted" else "checkpoint"


@dataclass(frozen=True)
class Applied:
    """A manifest with a scrub's results recorded, and what they were."""

    manifest: Manifest
    corrupt: tuple[Finding, ...]
    healed: tuple[str, ...]
    superseded: tuple[str, ...]


def apply_results(
    manifest: Manifest, checks: Sequence[Check], now: datetime, *, total_bytes: int
) -> Applied:
    """``manifest`` with the scrub's results recorded (see the module docstring)."""
    current = manifest.by_path()
    corrupt: list[Finding] = []
    healed: list[str] = []
    superseded: list[str] = []
    stamp = format_utc(now)
    for check in checks:
        checked = check.entry
        entry = current.get(checked.path)
        if entry is None or (entry.sha256, entry.size, entry.mtime_ns) != (
            checked.sha256,
            checked.size,
            checked.mtime_ns,
        ):
            superseded.append(checked.path)
            continue
        if check.problems:
            corrupt.append(
                Finding(entry.path, role(entry), check.problems, entry.sha256, check.actual_sha256)
            )
            manifest = set_entry(manifest, _mark_corrupt(entry, check, stamp))
        else:
            if CORRUPT_KEY in entry.extra:
                healed.append(entry.path)
            manifest = set_entry(manifest, _mark_verified(entry, stamp))
    summary = {
        "at": stamp,
        "checked": len(checks) - len(superseded),
        "bytes": total_bytes,
        "corrupt": len(corrupt),
    }
    manifest = dataclasses.replace(manifest, extra={**manifest.extra, LAST_SCRUB_KEY: summary})
    return Applied(manifest, tuple(corrupt), tuple(healed), tuple(superseded))


def _mark_corrupt(entry: ManifestEntry, check: Check, stamp: str) -> ManifestEntry:
    before = entry.extra.get(CORRUPT_KEY)
    previous: dict[str, Any] = before if isinstance(before, dict) else {}
    state_before = previous.get("state_before", entry.state)
    record = {
        "detected_at": previous.get("detected_at", stamp),
        "checked_at": stamp,
        "problems": list(check.problems),
        "sha256": check.actual_sha256,
        "state_before": state_before,
    }
    marked = dataclasses.replace(entry, extra={**entry.extra, CORRUPT_KEY: record})
    if entry.state == "converted":
        return marked  # the archived original keeps its role; ``corrupt`` says what is wrong
    # ``broken`` keeps retention's hands off it: scrub's evidence must not be pruned away.
    return with_state(marked, "broken", error=f"scrub: {check.problems[0]}")


def _mark_verified(entry: ManifestEntry, stamp: str) -> ManifestEntry:
    extra = {key: value for key, value in entry.extra.items() if key != CORRUPT_KEY}
    extra[LAST_VERIFIED_KEY] = stamp
    before = entry.extra.get(CORRUPT_KEY)
    verified = dataclasses.replace(entry, extra=extra)
    if isinstance(before, dict) and entry.state == "broken":
        state = before.get("state_before", "kept")
        return with_state(verified, state if state in _SCRUBBED_STATES else "kept")
    return verified
