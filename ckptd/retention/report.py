"""What a prune or manifest pass did: per-run decisions, deletions and errors, and their JSON form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from ckptd.manifest.model import Manifest
from ckptd.retention.deletion import Deleted
from ckptd.timefmt import format_utc_ns


@dataclass(frozen=True)
class PathDecision:
    """What happened (or, in a dry run, would happen) to one checkpoint."""

    path: str
    action: str  # keep | delete | skip
    reasons: tuple[str, ...]
    # The legacy original that goes (or stays) with this zip: a dry run names every file moved.
    original: str | None = None
    # What the decision was made on (the manifest's fields of the same names).
    step: int | None = None
    size: int | None = None  # bytes of the checkpoint itself (its original not counted)
    mtime_ns: int | None = None
    format: str | None = None

    @property
    def guarded(self) -> bool:
        """Kept only because the run's guard held back its deletions (retention, "Guard")."""
        return self.action == "keep" and bool(self.reasons) and self.reasons[0].startswith("guard:")

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "path": self.path,
            "action": self.action,
            "reasons": list(self.reasons),
        }
        if self.mtime_ns is not None:
            obj["step"] = self.step
            obj["size"] = self.size
            obj["mtime"] = format_utc_ns(self.mtime_ns)
            obj["format"] = self.format
        if self.original is not None:
            obj["original"] = self.original
        return obj


@dataclass(frozen=True)
class RunReport:
    """One run's outcome. ``manifest`` is the manifest now on disk (None in a dry run or on error)."""

    root: Path
    run: str
    decisions: tuple[PathDecision, ...] = ()
    guard: str | None = None
    notes: tuple[str, ...] = ()
    deleted: tuple[Deleted, ...] = ()
    bytes_freed: int = 0
    purged: tuple[str, ...] = ()
    bytes_purged: int = 0
    manifest_written: bool = False
    error: str | None = None
    manifest: Manifest | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_json_text(self) -> str:
        """``json.dumps(self.to_json_obj())``, byte for byte, without the intermediate dicts and
        lists (``prune --json``: 100,000 decisions rendered in about half the time; tests compare
        the two on every kind of value)."""
        decisions = ", ".join(map(_decision_json, self.decisions))
        text = (
            f'{{"run": {_str(self.run)}, "root": {_str(str(self.root))}, "decisions": [{decisions}], '
            f'"guard": {_opt_str(self.guard)}, "notes": {_strings(self.notes)}, '
            f'"bytes_freed": {int.__repr__(self.bytes_freed)}, '
            f'"trash": {_strings(tuple(d.trash for d in self.deleted if d.trash is not None))}, '
            f'"purged": {_strings(self.purged)}, "bytes_purged": {int.__repr__(self.bytes_purged)}'
        )
        if self.error is not None:
            text += f', "error": {_str(self.error)}'
        return text + "}"

    def count(self, action: str) -> int:
        return sum(1 for decision in self.decisions if decision.action == action)

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "run": self.run,
            "root": str(self.root),
            "decisions": [decision.to_json_obj() for decision in self.decisions],
            "guard": self.guard,
            "notes": list(self.notes),
            "bytes_freed": self.bytes_freed,
            "trash": [d.trash for d in self.deleted if d.trash is not None],
            "purged": list(self.purged),
            "bytes_purged": self.bytes_purged,
        }
        if self.error is not None:
            obj["error"] = self.error
        return obj


@dataclass(frozen=True)
class RootProblem:
    """A root (or a directory in it) that could not be processed."""

    root: Path
    message: str


@dataclass(frozen=True)
class PruneReport:
    """Every run of every root processed by one pass."""

    runs: tuple[RunReport, ...]
    problems: tuple[RootProblem, ...] = ()
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems and all(run.error is None for run in self.runs)

    def to_json_obj(self) -> dict[str, Any]:
        """The contract shape (``{"runs": [{"run", "decisions": [...]}]}``) plus extra keys."""
        return {
            "dry_run": self.dry_run,
            "runs": [run.to_json_obj() for run in self.runs],
            "errors": [{"root": str(p.root), "error": p.message} for p in self.problems],
        }


# ---- JSON text without json.dumps (RunReport.to_json_text) -------------------------------------
# The encoder json.dumps uses for a str (the C one; ensure_ascii, as json.dumps' default).
_str = encode_basestring_ascii
_REASONS_TEXT: dict[tuple[str, ...], str] = {}  # few distinct reason lists, many decisions


def _opt_str(value: str | None) -> str:
    return "null" if value is None else _str(value)


def _opt_int(value: int | None) -> str:
    return "null" if value is None else int.__repr__(value)


def _strings(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(map(_str, values)) + "]"


def _reasons(reasons: tuple[str, ...]) -> str:
    text = _REASONS_TEXT.get(reasons)
    if text is None:
        if len(_REASONS_TEXT) >= 4096:
            _REASONS_TEXT.clear()
        text = _REASONS_TEXT[reasons] = _strings(reasons)
    return text


def _decision_json(decision: PathDecision) -> str:
    """``json.dumps(decision.to_json_obj())`` (once per checkpoint of ``prune --json``)."""
    text = (
        f'{{"path": {_str(decision.path)}, "action": {_str(decision.action)}, '
        f'"reasons": {_reasons(decision.reasons)}'
    )
    mtime_ns = decision.mtime_ns
    if mtime_ns is not None:
        text += (
            f', "step": {_opt_int(decision.step)}, "size": {_opt_int(decision.size)}, '
            f'"mtime": {_str(format_utc_ns(mtime_ns))}, "format": {_opt_str(decision.format)}'
        )
    if decision.original is not None:
        text += f', "original": {_str(decision.original)}'
    return text + "}"
