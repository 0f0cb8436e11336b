"""Recording a path's outcome: the batch's context, and the manifest entries every stage writes.

:class:`BatchContext` holds one locked batch's context (config, run, state layout, pipeline pieces)
and builds, sets and drops the run's manifest entries for the stages (``ckptd.pipeline.work``
identifies, ``converting``, ``verifying`` and ``refusal`` handle what it found); ``changed`` says
whether the batch has anything to write (``ckptd.pipeline.batch``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptd.config.model import Config, RootConfig
from ckptd.errors import (
    FileChangedError,
    UnsafePathError,
)
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity, hash_if_unchanged
from ckptd.manifest.model import (
    ManifestEntry,
    ManifestState,
)
from ckptd.pipeline.backoff import ATTEMPTS_KEY, RETRY_AFTER_KEY, next_try
from ckptd.pipeline.discovery import matcher_for
from ckptd.pipeline.entries import RunEntries
from ckptd.pipeline.types import PathOutcome, PipelineDeps
from ckptd.runs.checkpoints import RETRY_KEY
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import StateLayout
from ckptd.timefmt import from_ns


class BatchContext:
    """One locked batch's context, and the manifest entries its stages record."""

    def __init__(
        self,
        config: Config,
        root: RootConfig,
        run: RunRef,
        layout: StateLayout,
        deps: PipelineDeps,
        expected: Mapping[Path, tuple[int, int]],
    ) -> None:
        self.expected = expected
        self.config = config
        self.root = root
        self.run = run
        self.layout = layout
        self.deps = deps
        self.matcher = matcher_for(config)
        self.changed = False
        self.vanished: list[ManifestEntry] = []  # entries dropped, not yet looked up in the trash

    def log(
        self,
        log: logging.Logger,
        level: int,
        relpath: str,
        message: str,
        *args: object,
        event: str | None = None,
    ) -> None:
        """Log under ``log`` (the calling stage's logger) with the run and file as fields, and
        ``event`` naming what happened to the file (JSON logs; README, "Several daemons on one
        root": operators and tests count conversions per node from it)."""
        extra = {"run": self.run.relpath, "file": relpath, "event": event}
        log.log(level, message, *args, extra=extra)

    def record(self, manifest: RunEntries, entry: ManifestEntry) -> RunEntries:
        """Set ``entry`` in ``manifest`` (in place; returned for the stages' return values)."""
        self.changed = True
        manifest.set(entry)
        return manifest

    def forget(self, manifest: RunEntries, relpath: str) -> RunEntries:
        dropped = manifest.drop(relpath)
        if dropped is not None:
            self.changed = True
            self.vanished.append(dropped)
        return manifest

    def record_vanished(self, manifest: RunEntries) -> None:
        """Record in the manifest's history those of the entries dropped so far that a pass moved
        to the trash without recording them (``PipelineDeps.record_vanished``): dropped only, they
        would leave no trace (docs/architecture.md, "Reliability rules")."""
        if not self.vanished:
            return
        vanished, self.vanished = self.vanished, []
        removed = self.deps.record_vanished(self.layout, manifest.manifest(), vanished)
        if removed:
            manifest.add_removed(removed)
            self.changed = True

    def entry(
        self,
        relpath: str,
        identity: FileIdentity,
        fmt: Format,
        state: ManifestState,
        sha256: str | None,
        **fields: Any,
    ) -> ManifestEntry:
        name = relpath.rpartition("/")[2]
        return ManifestEntry(
            path=relpath,
            step=self.matcher.step_of(name),
            size=identity.size,
            mtime=from_ns(identity.mtime_ns),
            mtime_ns=identity.mtime_ns,
            sha256=sha256,
            format=fmt,
            state=state,
            **fields,
        )

    def retry_later(
        self,
        log: logging.Logger,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: RunEntries,
        fmt: Format,
        state: ManifestState,
        text: str,
        *,
        backoff: bool = False,
    ) -> tuple[RunEntries, PathOutcome]:
        """Record ``path`` with the error ``text`` and the retry mark: its verdict is not final,
        so the reconciliation scan processes it again (``ckptd.runs.checkpoints.RETRY_KEY``);
        with ``backoff``, not before the time ``ckptd.pipeline.backoff`` gives it."""
        extra: dict[str, Any] = {RETRY_KEY: True}
        when = ""
        if backoff:
            previous = manifest.get(relpath)
            extra.update(next_try(previous, identity.size, identity.mtime_ns, self.deps.clock()))
            when = f" after {extra[RETRY_AFTER_KEY]} (attempt {extra[ATTEMPTS_KEY]})"
        self.log(log, logging.WARNING, relpath, "%s; will retry%s", text, when)
        entry = self.entry(relpath, identity, fmt, state, None, error=text, extra=extra)
        return self.record(manifest, entry), PathOutcome(path, "failed", text)

    def relpath(self, path: Path) -> str:
        return path.relative_to(self.run.run_dir).as_posix()

    def exists(self, relpath: str) -> bool:
        try:
            return self.layout.fs.exists(relpath)  # no symlink followed below the run
        except UnsafePathError:
            return False


def hash_unchanged(path: Path, identity: FileIdentity) -> str:
    """sha256 of ``path``; FileChangedError when it changed while being read."""
    digest = hash_if_unchanged(path, identity)
    if digest is None:
        raise FileChangedError("changed while it was being hashed", path=str(path))
    return digest
