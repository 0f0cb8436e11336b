"""The per-root index (``ckptd-index.json``): its frozen value types, deterministic JSON and a run summary.

Pure: ``ckptd.manifest.store`` reads and writes the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from ckptd import __version__
from ckptd.manifest.jsonio import JsonChecker, JsonDict, dump_json, load_json_object
from ckptd.manifest.model import Manifest, quarantined_as
from ckptd.timefmt import format_utc

INDEX_SCHEMA = "ckptd.index/1"
INDEX_FILENAME = "ckptd-index.json"


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
        return dump_json(obj)

    def same_content(self, other: RootIndex | None) -> bool:
        return (
            other is not None
            and dataclasses.replace(self, generated_at=other.generated_at) == other
        )

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str) -> RootIndex:
        obj = load_json_object(data, source)
        check = JsonChecker(source)
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
