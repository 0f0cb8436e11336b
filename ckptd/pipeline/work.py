"""One path within one locked batch: identify, then convert, verify, quarantine or record it.

:class:`BatchWork` holds the batch's context (config, run, state layout, pipeline pieces) and turns
a path and the run's manifest into the updated manifest and the path's outcome; a file's problem
is always that file's outcome, never an exception out of the batch (see ``ckptd.pipeline.batch``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptd.config.model import Config, RootConfig
from ckptd.convert.conversion import ConversionOutcome
from ckptd.errors import (
    CkptdError,
    ConversionError,
    FileChangedError,
    FormatError,
    HeldCheckpoint,
    UnsafeCheckpoint,
    UnsafePathError,
    VerifyError,
    unexpected_text,
)
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity, is_temp_name
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.model import (
    QUARANTINE_KEY,
    Manifest,
    ManifestEntry,
    ManifestState,
    ParamsSummary,
    quarantined_as,
)
from ckptd.manifest.updates import drop_entry, set_entry
from ckptd.pickles.verdict import Verdict
from ckptd.pipeline.discovery import matcher_for, needs_processing, run_of
from ckptd.pipeline.quarantine import quarantine
from ckptd.pipeline.types import PathOutcome, PipelineDeps, error_text
from ckptd.runs.checkpoints import RETRY_KEY, SNIFF_GENERATION, SNIFF_KEY, cannot_read
from ckptd.runs.listing import hash_if_unchanged
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import StateLayout
from ckptd.textsafe import shown
from ckptd.timefmt import from_ns

# Logs under the name these lines had before ckptd.pipeline.batch was split into modules: the log
# format shows it, and operators (and tests) match on it.
logger = logging.getLogger(__name__)


class BatchWork:
    """Processing of single paths within one locked batch (holds the batch's context)."""

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

    def _log(self, level: int, relpath: str, message: str, *args: object) -> None:
        logger.log(level, message, *args, extra={"run": self.run.relpath, "file": relpath})

    def _set(self, manifest: Manifest, entry: ManifestEntry) -> Manifest:
        self.changed = True
        return set_entry(manifest, entry)

    def _drop(self, manifest: Manifest, relpath: str) -> Manifest:
        if relpath not in manifest.by_path():
            return manifest
        self.changed = True
        return drop_entry(manifest, relpath)

    def _entry(
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

    def forget_if_absent(self, path: Path, manifest: Manifest) -> Manifest:
        located = run_of(self.root, path, self.config.state_dir)
        if located is None or located[0].run_dir != self.run.run_dir or os.path.lexists(path):
            return manifest
        entry = manifest.by_path().get(located[1])
        jailed = None if entry is None else quarantined_as(entry)
        if jailed is not None and relpath_problem(jailed) is None and self._exists(jailed):
            # Our own quarantine move reported this path gone: the refused entry stays while the
            # quarantined file exists (as a manifest or prune pass keeps it, ckptd.runs.rebuild).
            return manifest
        return self._drop(manifest, located[1])

    def process(self, path: Path, manifest: Manifest) -> tuple[Manifest, PathOutcome]:
        located = run_of(self.root, path, self.config.state_dir)
        if located is None or located[0].run_dir != self.run.run_dir:
            return manifest, PathOutcome(path, "ignored", "not inside this run")
        relpath = located[1]
        if not self.matcher.matches(path.name) or is_temp_name(path.name):
            return manifest, PathOutcome(path, "ignored", "name matches no checkpoint pattern")
        try:
            return self._process(path, relpath, manifest)
        except FileNotFoundError:
            self._log(logging.INFO, relpath, "vanished while being processed")
            return self._drop(manifest, relpath), PathOutcome(path, "vanished")
        except FileChangedError as err:
            self._log(logging.INFO, relpath, "changed while being processed; will look again")
            return manifest, PathOutcome(path, "changed", err.message)
        except (OSError, CkptdError) as err:
            # Whatever else goes wrong with one file is that file's problem, never the batch's.
            text = error_text(err)
            self._log(logging.WARNING, relpath, "cannot process: %s", text)
            return manifest, PathOutcome(path, "failed", text)
        except Exception as err:  # the last resort: a bug or an unforeseen input, still one line
            return self._unexpected(path, relpath, manifest, err)

    def _unexpected(
        self, path: Path, relpath: str, manifest: Manifest, err: Exception
    ) -> tuple[Manifest, PathOutcome]:
        """Record the file ``broken`` with the exception's type; the traceback only at debug."""
        text = unexpected_text(err)
        logger.debug("unexpected error processing %s", path, exc_info=True)
        self._log(logging.WARNING, relpath, "broken: %s", text)
        try:
            identity = FileIdentity.of(os.lstat(path))
        except OSError:
            return manifest, PathOutcome(path, "failed", text)
        entry = self._entry(relpath, identity, Format.UNKNOWN, "broken", None, error=text)
        return self._set(manifest, entry), PathOutcome(path, "broken", text)

    def _process(
        self, path: Path, relpath: str, manifest: Manifest
    ) -> tuple[Manifest, PathOutcome]:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return manifest, PathOutcome(
                path, "ignored", "not a regular file (symlinks are never followed)"
            )
        identity = FileIdentity.of(st)
        settled = self.expected.get(path)
        if settled is not None and settled != (identity.size, identity.mtime_ns):
            return manifest, PathOutcome(path, "changed", "changed since it settled")
        entry = manifest.by_path().get(relpath)
        if not needs_processing(entry, identity, self.config):
            return manifest, PathOutcome(path, "unchanged")
        try:
            identification = self.deps.identify(path)
        except UnsafePathError as err:
            return manifest, PathOutcome(path, "ignored", err.message)
        except UnsafeCheckpoint as err:
            # Over a limit while being identified (ckptd.isolation.supervisor): refused like unsafe content.
            return self._refuse_unsafe(path, relpath, identity, manifest, err, Format.UNKNOWN)
        except FileNotFoundError:
            raise
        except OSError as err:
            return self._unreadable(path, relpath, identity, manifest, err)
        fmt = identification.format
        verdict = identification.verdict
        if verdict is not None and verdict.broken:
            sha256 = _hash(path, identity)
            self._log(logging.WARNING, relpath, "broken %s: %s", fmt, verdict.reason)
            entry = self._entry(
                relpath, identity, fmt, "broken", sha256, error=verdict.reason, verdict=verdict
            )
            return self._set(manifest, entry), PathOutcome(path, "broken", verdict.reason)
        if verdict is not None and not verdict.safe:
            # A pickle-bearing file that may run code when loaded, whatever its format
            # (docs/security.md, "Verdicts"): refused and handled per convert.on_unsafe.
            return self._refuse(path, relpath, identity, manifest, verdict.reason, fmt, verdict)
        if fmt is Format.SB2_PICKLE and self.config.convert.enabled:
            return self._convert(path, relpath, identity, manifest)
        if fmt in (Format.SB2_ZIP, Format.SB3_ZIP):
            return self._verify(path, relpath, identity, fmt, manifest, verdict)
        sha256 = _hash(path, identity)
        self._log(logging.INFO, relpath, "recorded as %s (%s)", fmt, identification.note)
        extra = {SNIFF_KEY: SNIFF_GENERATION} if fmt is Format.UNKNOWN else {}
        entry = self._entry(relpath, identity, fmt, "kept", sha256, verdict=verdict, extra=extra)
        return self._set(manifest, entry), PathOutcome(path, "kept", identification.note)

    def _unreadable(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        err: OSError,
    ) -> tuple[Manifest, PathOutcome]:
        text = cannot_read(
            err
        )  # the same entry a manifest or prune pass writes (ckptd.runs.rebuild)
        self._log(logging.WARNING, relpath, "%s; will retry", text)
        entry = self._entry(
            relpath,
            identity,
            Format.UNKNOWN,
            "pending",
            None,
            error=text,
            extra={RETRY_KEY: True},
        )
        return self._set(manifest, entry), PathOutcome(path, "failed", text)

    def _verify(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        fmt: Format,
        manifest: Manifest,
        verdict: Verdict | None = None,
    ) -> tuple[Manifest, PathOutcome]:
        try:
            report = self.deps.verify(path, limits=self.config.limits)
        except (
            UnsafeCheckpoint
        ) as err:  # over a limit while being verified (ckptd.isolation.supervisor)
            return self._refuse_unsafe(path, relpath, identity, manifest, err, fmt)
        if report.refused:
            # An SB2 zip whose :serialized: entries the allowlist refuses: as unsafe as a pickle.
            fallback = f"data keys {', '.join(report.refused)} refused"
            text = next((p for p in report.problems if "refused" in p), fallback)
            unsafe = Verdict(False, (), text)
            return self._refuse(path, relpath, identity, manifest, text, fmt, unsafe)
        sha256 = _hash(path, identity)
        if not report.ok:
            text = "; ".join(report.problems) or "does not verify"
            self._log(logging.WARNING, relpath, "broken %s: %s", fmt, text)
            entry = self._entry(relpath, identity, fmt, "broken", sha256, error=text)
            return self._set(manifest, entry), PathOutcome(path, "broken", text)
        previous = manifest.by_path().get(relpath)
        converted_from = previous.converted_from if previous else None
        if converted_from is None and fmt is Format.SB2_ZIP:
            converted_from = self._archived_sibling(relpath)
        entry = self._entry(
            relpath,
            identity,
            fmt,
            "kept",
            sha256,
            converted_from=converted_from,
            algorithm=previous.algorithm if previous else None,
            params=ParamsSummary(report.params_count, report.params_bytes)
            if fmt is Format.SB2_ZIP
            else None,
            carries_code=report.carries_code if fmt is Format.SB2_ZIP else None,
            verdict=verdict,
        )
        self._log(logging.INFO, relpath, "verified %s", fmt)
        return self._set(manifest, entry), PathOutcome(path, "kept", f"verified {fmt}")

    def _exists(self, relpath: str) -> bool:
        try:
            return self.layout.fs.exists(relpath)  # no symlink followed below the run
        except UnsafePathError:
            return False

    def _archived_sibling(self, zip_relpath: str) -> str | None:
        # A zip whose conversion finished but whose manifest record was lost (killed in between):
        # its archived original says where it came from.
        stem, dot, _ = zip_relpath.rpartition(".")
        original = f"{stem}.pkl" if dot else f"{zip_relpath}.pkl"
        try:
            st = self.layout.fs.lstat(self.layout.legacy_relpath(original))
        except UnsafePathError:
            return None  # a planted link in legacy/: nothing there is this zip's original
        return original if st is not None and stat.S_ISREG(st.st_mode) else None

    def _convert(
        self, path: Path, relpath: str, identity: FileIdentity, manifest: Manifest
    ) -> tuple[Manifest, PathOutcome]:
        convert = self.config.convert
        try:
            outcome = self.deps.convert(
                path,
                original=convert.original,
                state_dir=self.config.state_dir,
                allow_code=convert.allow_code,
                # Where inventory looks for it: <run>/<state_dir>/legacy/<path relative to the run>.
                archive_path=self.layout.legacy_path(relpath),
                archive_base=self.run.run_dir,  # walked with no symlink followed below the run
                limits=self.config.limits,
            )
        except UnsafeCheckpoint as err:
            return self._refuse_unsafe(path, relpath, identity, manifest, err, Format.SB2_PICKLE)
        except (FileChangedError, FileNotFoundError):
            raise
        except HeldCheckpoint as err:
            return self._hold(path, relpath, identity, manifest, err.note)
        except UnsafePathError as err:
            # A planted symlink in the way of the archive move: the zip stands, the original stays.
            return self._not_converted(path, relpath, identity, manifest, str(err))
        except VerifyError as err:
            # Our own output failed re-verification: the source is fine, the conversion is not.
            return self._not_converted(path, relpath, identity, manifest, err.message)
        except FormatError as err:
            sha256 = _hash(path, identity)
            self._log(logging.WARNING, relpath, "broken legacy pickle: %s", err.message)
            entry = self._entry(
                relpath, identity, Format.SB2_PICKLE, "broken", sha256, error=err.message
            )
            return self._set(manifest, entry), PathOutcome(path, "broken", err.message)
        except ConversionError as err:
            return self._not_converted(path, relpath, identity, manifest, err.message)
        except OSError as err:
            return self._not_converted(path, relpath, identity, manifest, error_text(err))
        return self._record_conversion(path, relpath, identity, manifest, outcome)

    def _hold(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        note: str,
    ) -> tuple[Manifest, PathOutcome]:
        # Safe and readable, kept as it is and never converted until the operator supplies what
        # the note asks for (docs/param-names.md); retention treats it as any kept checkpoint.
        sha256 = _hash(path, identity)
        self._log(logging.WARNING, relpath, "held, not converted: %s", note)
        entry = self._entry(relpath, identity, Format.SB2_PICKLE, "held", sha256, note=note)
        return self._set(manifest, entry), PathOutcome(path, "held", note)

    def _not_converted(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        text: str,
    ) -> tuple[Manifest, PathOutcome]:
        message = f"conversion failed, original left in place: {text}"
        self._log(logging.WARNING, relpath, "%s; will retry", message)
        entry = self._entry(
            relpath,
            identity,
            Format.SB2_PICKLE,
            "kept",
            None,
            error=message,
            extra={RETRY_KEY: True},
        )
        return self._set(manifest, entry), PathOutcome(path, "failed", message)

    def _record_conversion(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        outcome: ConversionOutcome,
    ) -> tuple[Manifest, PathOutcome]:
        zip_relpath = self._relpath(outcome.output)
        zip_identity = FileIdentity.of(os.stat(outcome.output, follow_symlinks=False))
        zip_entry = self._entry(
            zip_relpath,
            zip_identity,
            Format.SB2_ZIP,
            "kept",
            outcome.output_sha256,
            converted_from=relpath,
            algorithm=outcome.algorithm,
            params=ParamsSummary(outcome.params_count, outcome.params_bytes),
            carries_code=outcome.carries_code,
            # What the conversion did that a reader should know (docs/conversion.md).
            extra={"notes": list(outcome.notes)} if outcome.notes else {},
        )
        manifest = self._set(manifest, zip_entry)
        if outcome.original == "kept":
            manifest = self._set(
                manifest,
                self._entry(
                    relpath,
                    identity,
                    Format.SB2_PICKLE,
                    "converted",
                    outcome.source_sha256,
                    verdict=_converted_verdict(outcome),
                ),
            )
        else:
            manifest = self._drop(manifest, relpath)
            if outcome.archived_to is not None:
                archived_identity = FileIdentity.of(
                    os.stat(outcome.archived_to, follow_symlinks=False)
                )
                archived_relpath = self._relpath(outcome.archived_to)
                manifest = self._set(
                    manifest,
                    dataclasses.replace(
                        self._entry(
                            archived_relpath,
                            archived_identity,
                            Format.SB2_PICKLE,
                            "converted",
                            outcome.source_sha256,
                            verdict=_converted_verdict(outcome),
                        ),
                        step=None,
                    ),
                )
        message = (
            f"converted to {zip_relpath} ({outcome.algorithm or 'unknown algorithm'}, "
            f"{outcome.params_count} params, original {outcome.original})"
            + "".join(f"; note: {note}" for note in outcome.notes)
        )
        self._log(logging.INFO, relpath, "%s", message)
        return manifest, PathOutcome(path, "converted", message)

    def _relpath(self, path: Path) -> str:
        return path.relative_to(self.run.run_dir).as_posix()

    def _refuse_unsafe(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        err: UnsafeCheckpoint,
        fmt: Format,
    ) -> tuple[Manifest, PathOutcome]:
        """Refuse ``path`` for ``err`` (unsafe content or over a limit), its verdict from the error."""
        names = (shown(err.global_name),) if err.global_name else ()
        verdict = Verdict(False, names, err.reason)
        return self._refuse(path, relpath, identity, manifest, err.message, fmt, verdict)

    def _refuse(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        refusal: str,
        fmt: Format,
        verdict: Verdict,
    ) -> tuple[Manifest, PathOutcome]:
        sha256 = _hash(path, identity)
        extra: dict[str, Any] = {}
        if self.config.convert.on_unsafe == "quarantine":
            destination = quarantine(
                path, self.layout, identity, sha256, refusal, self.deps.clock()
            )
            extra[QUARANTINE_KEY] = self._relpath(destination)
            message = f"{refusal}; quarantined as {extra[QUARANTINE_KEY]}"
        else:
            message = f"{refusal}; left in place"
        self._log(logging.WARNING, relpath, "%s", message)
        entry = self._entry(
            relpath, identity, fmt, "refused", sha256, refusal=refusal, verdict=verdict, extra=extra
        )
        return self._set(manifest, entry), PathOutcome(path, "refused", message)


def _converted_verdict(outcome: ConversionOutcome) -> Verdict:
    """A converted legacy pickle passed the SB2 allowlist (what its code-bearing keys are, the
    zip's ``carries_code`` says)."""
    names = tuple(shown(name) for name in outcome.globals)
    return Verdict(True, names, "every reference on the stable-baselines allowlist")


def _hash(path: Path, identity: FileIdentity) -> str:
    digest = hash_if_unchanged(path, identity)
    if digest is None:
        raise FileChangedError("changed while it was being hashed", path=str(path))
    return digest
