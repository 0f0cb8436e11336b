"""One path within one locked batch: identify it, then hand it to the stage that handles what it is.

:class:`BatchWork` turns a path and the run's manifest into the updated manifest and the path's
outcome: unsafe content goes to ``ckptd.pipeline.refusal``, a legacy pickle to
``ckptd.pipeline.converting``, a zip to ``ckptd.pipeline.verifying``, anything else is recorded as
identified (``ckptd.pipeline.record``). A file's problem is always that file's outcome, never an
exception out of the batch (see ``ckptd.pipeline.batch``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ckptd.errors import (
    CkptdError,
    CoordinationError,
    FileChangedError,
    UnsafeCheckpoint,
    UnsafePathError,
    unexpected_text,
)
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity, is_temp_name
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.model import (
    quarantined_as,
)
from ckptd.pipeline.converting import convert_legacy
from ckptd.pipeline.discovery import needs_processing, run_of
from ckptd.pipeline.entries import RunEntries
from ckptd.pipeline.record import BatchContext, hash_unchanged
from ckptd.pipeline.refusal import refuse, refuse_unsafe
from ckptd.pipeline.types import PathOutcome, error_text
from ckptd.pipeline.verifying import verify_checkpoint
from ckptd.runs.checkpoints import SNIFF_GENERATION, SNIFF_KEY, cannot_read

logger = logging.getLogger(__name__)


class BatchWork(BatchContext):
    """Processing of single paths within one locked batch: identification and the dispatch."""

    def forget_if_absent(self, path: Path, manifest: RunEntries) -> RunEntries:
        located = run_of(self.root, path, self.config.state_dir)
        if located is None or located[0].run_dir != self.run.run_dir or os.path.lexists(path):
            return manifest
        entry = manifest.get(located[1])
        jailed = None if entry is None else quarantined_as(entry)
        if jailed is not None and relpath_problem(jailed) is None and self.exists(jailed):
            # Our own quarantine move reported this path gone: the refused entry stays while the
            # quarantined file exists (as a manifest or prune pass keeps it, ckptd.runs.rebuild).
            return manifest
        return self.forget(manifest, located[1])

    def to_identify(self, paths: Sequence[Path], manifest: RunEntries) -> list[Path]:
        """Which of ``paths`` :meth:`process` would identify as they are now: checkpoint names of
        this run whose entry is missing or not current (a rescan's or a repeated event's file
        that is recorded already is not examined again)."""
        now = self.deps.clock()
        wanted: list[Path] = []
        for path in paths:
            located = run_of(self.root, path, self.config.state_dir)
            if located is None or located[0].run_dir != self.run.run_dir:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue  # process says what is wrong with it
            if not stat.S_ISREG(st.st_mode):
                continue
            entry = manifest.get(located[1])
            if needs_processing(entry, FileIdentity.of(st), self.config, now=now):
                wanted.append(path)
        return wanted

    def process(self, path: Path, manifest: RunEntries) -> tuple[RunEntries, PathOutcome]:
        located = run_of(self.root, path, self.config.state_dir)
        if located is None or located[0].run_dir != self.run.run_dir:
            return manifest, PathOutcome(path, "ignored", "not inside this run")
        relpath = located[1]
        if not self.matcher.matches(path.name) or is_temp_name(path.name):
            return manifest, PathOutcome(path, "ignored", "name matches no checkpoint pattern")
        if not os.path.lexists(path):
            # Gone before its turn came: handled already (a repeated event, or a cluster node's
            # hint for a file converted and archived since) or removed. Nothing was started, so
            # there is nothing to report; its entry goes, as for a file that vanishes midway.
            logger.debug("%s: gone before it was processed", path)
            return self.forget(manifest, relpath), PathOutcome(path, "vanished")
        try:
            return self._process(path, relpath, manifest)
        except FileNotFoundError:
            self.log(logger, logging.INFO, relpath, "vanished while being processed")
            return self.forget(manifest, relpath), PathOutcome(path, "vanished")
        except FileChangedError as err:
            self.log(
                logger, logging.INFO, relpath, "changed while being processed; will look again"
            )
            return manifest, PathOutcome(path, "changed", err.message)
        except CoordinationError:
            raise  # the run's lease, not this file: the batch stops (ckptd.pipeline.batch)
        except (OSError, CkptdError) as err:
            # Whatever else goes wrong with one file is that file's problem, never the batch's.
            text = error_text(err)
            self.log(logger, logging.WARNING, relpath, "cannot process: %s", text)
            return manifest, PathOutcome(path, "failed", text)
        except Exception as err:  # the last resort: a bug or an unforeseen input, still one line
            return self._unexpected(path, relpath, manifest, err)

    def _unexpected(
        self, path: Path, relpath: str, manifest: RunEntries, err: Exception
    ) -> tuple[RunEntries, PathOutcome]:
        """Record the file ``broken`` with the exception's type; the traceback only at debug."""
        text = unexpected_text(err)
        logger.debug("unexpected error processing %s", path, exc_info=True)
        self.log(logger, logging.WARNING, relpath, "broken: %s", text, event="broken")
        try:
            identity = FileIdentity.of(os.lstat(path))
        except OSError:
            return manifest, PathOutcome(path, "failed", text)
        entry = self.entry(relpath, identity, Format.UNKNOWN, "broken", None, error=text)
        return self.record(manifest, entry), PathOutcome(path, "broken", text)

    def _process(
        self, path: Path, relpath: str, manifest: RunEntries
    ) -> tuple[RunEntries, PathOutcome]:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return manifest, PathOutcome(
                path, "ignored", "not a regular file (symlinks are never followed)"
            )
        identity = FileIdentity.of(st)
        settled = self.expected.get(path)
        if settled is not None and settled != (identity.size, identity.mtime_ns):
            return manifest, PathOutcome(path, "changed", "changed since it settled")
        entry = manifest.get(relpath)
        if not needs_processing(entry, identity, self.config, now=self.deps.clock()):
            return manifest, PathOutcome(path, "unchanged")
        try:
            identification = self.deps.identify(path)
        except UnsafePathError as err:
            return manifest, PathOutcome(path, "ignored", err.message)
        except UnsafeCheckpoint as err:
            # Over a limit while being identified (ckptd.isolation.supervisor): refused like unsafe content.
            return refuse_unsafe(self, path, relpath, identity, manifest, err, Format.UNKNOWN)
        except FileNotFoundError:
            raise
        except OSError as err:
            return self._unreadable(path, relpath, identity, manifest, err)
        fmt = identification.format
        verdict = identification.verdict
        if verdict is not None and verdict.broken:
            sha256 = hash_unchanged(path, identity)
            self.log(
                logger,
                logging.WARNING,
                relpath,
                "broken %s: %s",
                fmt,
                verdict.reason,
                event="broken",
            )
            entry = self.entry(
                relpath, identity, fmt, "broken", sha256, error=verdict.reason, verdict=verdict
            )
            return self.record(manifest, entry), PathOutcome(path, "broken", verdict.reason)
        if verdict is not None and not verdict.safe:
            # A pickle-bearing file that may run code when loaded, whatever its format
            # (docs/security.md, "Verdicts"): refused and handled per convert.on_unsafe.
            return refuse(self, path, relpath, identity, manifest, verdict.reason, fmt, verdict)
        if fmt is Format.SB2_PICKLE and self.config.convert.enabled:
            return convert_legacy(self, path, relpath, identity, manifest)
        if fmt in (Format.SB2_ZIP, Format.SB3_ZIP):
            return verify_checkpoint(self, path, relpath, identity, fmt, manifest, verdict)
        sha256 = hash_unchanged(path, identity)
        self.log(logger, logging.INFO, relpath, "recorded as %s (%s)", fmt, identification.note)
        extra = {SNIFF_KEY: SNIFF_GENERATION} if fmt is Format.UNKNOWN else {}
        entry = self.entry(relpath, identity, fmt, "kept", sha256, verdict=verdict, extra=extra)
        return self.record(manifest, entry), PathOutcome(path, "kept", identification.note)

    def _unreadable(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: RunEntries,
        err: OSError,
    ) -> tuple[RunEntries, PathOutcome]:
        # The same entry a manifest or prune pass writes (ckptd.runs.rebuild).
        text = cannot_read(err)
        return self.retry_later(
            logger, path, relpath, identity, manifest, Format.UNKNOWN, "pending", text
        )
