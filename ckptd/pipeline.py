"""Process complete checkpoint files of one run: identify, convert or verify, quarantine, record.

The daemon hands this module paths its stabilizer found complete; no threads or scheduling here.
One call (:func:`process_batch`) takes the run's lock once, loads the run's manifest once, works
through as many paths as fit in its time budget and writes the manifest (atomically, only if it
changed) once at the end, so a burst of thousands of new files costs a handful of manifest writes.
The exception is an outcome that moved files (a conversion archived its original, a refused file
was quarantined): the manifest is written right after it, so ``kill -9`` cannot leave a move
unrecorded and a crash loop still makes progress.

Per path (design.md "What ckptd is" 3-5, "Manifest"):

* ``sb2-pickle`` with ``convert.enabled``: ``convert_file`` (never executes the file); the zip is
  recorded ``kept`` with ``converted_from``/``algorithm``/``params``/``carries_code``, the archived
  original ``converted``. Refused (``UnsafeCheckpoint``): quarantined (``on_unsafe: quarantine``:
  moved durably under ``<state>/quarantine/``, mode 0400, plus ``<name>.reason.json``) or left, and
  recorded ``refused``. Broken (``FormatError``): recorded ``broken``. A conversion that could not
  finish (disk full, an existing foreign zip, a failed re-verification) leaves the original
  untouched and records it ``kept`` with ``error``; it is retried by the next reconciliation.
* ``sb2-zip`` / ``sb3-zip``: verified, recorded ``kept`` or ``broken``.
* anything else (unknown content): recorded ``kept`` with its format, never touched.
* vanished: its entry is dropped; unreadable: recorded ``pending`` with ``error`` and retried.

A finished verdict (kept, broken, refused, converted) is not redone until the file's size or mtime
differ from what was recorded (:func:`needs_processing`); that is also what the reconciliation scan
(:func:`find_work`) uses to pick the files the daemon must look at again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from ckptd.config import Config, RootConfig
from ckptd.convert import ConversionOutcome, convert_file
from ckptd.errors import (
    CkptdError,
    ConversionError,
    FileChangedError,
    FormatError,
    ManifestError,
    RunLockedError,
    UnsafeCheckpoint,
    UnsafePathError,
    VerifyError,
)
from ckptd.formats import Format
from ckptd.formats.sniff import Identification, identify
from ckptd.formats.verify import VerifyReport, verify_zip
from ckptd.fsio import (
    FileIdentity,
    durable_move,
    fsync_dir,
    is_temp_name,
    remove_stale_temps,
    unique_destination,
    write_bytes_atomic,
)
from ckptd.inventory import RETRY_KEY, CheckpointMatcher, RunRef, cannot_read, hash_if_unchanged
from ckptd.manifest import (
    QUARANTINE_KEY,
    Manifest,
    ManifestEntry,
    ManifestState,
    ParamsSummary,
    drop_entry,
    load_manifest,
    quarantined_as,
    set_entry,
    write_manifest,
)
from ckptd.statedir import StateLayout, run_lock
from ckptd.timefmt import format_utc, from_ns

logger = logging.getLogger(__name__)

QUARANTINE_MODE = 0o400
REASON_SUFFIX = ".reason.json"
REASON_SCHEMA = "ckptd.quarantine/1"
DEFAULT_LOCK_TIMEOUT = 30.0
# One batch holds the run lock for about this long at most (a single large conversion may take
# longer); the rest of the paths are handed back, so prune and the CLI are not starved.
DEFAULT_BATCH_SECONDS = 1.0
# Outcomes that moved files (conversion, quarantine): the manifest is written right after each.
MOVING_ACTIONS = frozenset({"converted", "refused"})

Action = Literal[
    "converted",  # legacy pickle converted; the zip is recorded
    "kept",  # verified (or unknown content) and recorded as it is
    "broken",  # unreadable content, recorded with its error
    "refused",  # unsafe; quarantined or left, recorded with the refusal
    "failed",  # could not be processed now (I/O error, disk full); recorded, retried later
    "changed",  # changed while being processed: observe it again
    "vanished",  # gone; its entry (if any) dropped
    "unchanged",  # already processed and not changed since
    "ignored",  # not a checkpoint of this run (name, symlink, state dir)
]


class Converter(Protocol):
    """The shape of :func:`ckptd.convert.convert_file` (tests pass fakes that fail like it can)."""

    def __call__(
        self,
        source: Path,
        *,
        output: Path | None = None,
        original: Literal["keep", "archive", "delete"] = "keep",
        state_dir: str = ".ckptd",
        allow_code: bool = True,
        param_names: Sequence[str] | None = None,
        archive_path: Path | None = None,
    ) -> ConversionOutcome: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PipelineDeps:
    """The pieces that read, convert and verify files, and the clock (fault tests swap them)."""

    identify: Callable[[Path], Identification] = identify
    convert: Converter = convert_file
    verify: Callable[[Path], VerifyReport] = verify_zip
    clock: Callable[[], datetime] = _utc_now


@dataclass(frozen=True)
class PathOutcome:
    """What happened to one path; ``message`` is the one-line detail that was logged."""

    path: Path
    action: Action
    message: str = ""


@dataclass(frozen=True)
class BatchResult:
    """One batch over one run: per-path outcomes, paths not reached, and a run-level error."""

    run: RunRef
    outcomes: tuple[PathOutcome, ...] = ()
    deferred: tuple[Path, ...] = ()  # not started within the time budget: hand them in again
    manifest_written: bool = False
    error: str | None = None  # the batch could not run at all (lock, unwritable state dir)
    # The run was locked by another ckptd process: hand the whole batch in again after a pause.
    # Any other run-level error lasts (an unwritable run): the reconciliation scan retries it.
    busy: bool = False


# ---- which run a path belongs to, and whether it needs work (pure) -------------------------------


def run_of(root: RootConfig, path: Path, state_dir: str) -> tuple[RunRef, str] | None:
    """The run ``path`` belongs to and its run-relative posix path; None when it is in no run.

    A file shallower than ``run_depth``, inside a dot-directory or the state dir, or outside the
    root belongs to no run (the same directories the inventory never enters).
    """
    try:
        parts = path.relative_to(root.path).parts
    except ValueError:
        return None
    if len(parts) <= root.run_depth:
        return None
    directories = parts[:-1]
    if any(part.startswith(".") or part == state_dir for part in directories):
        return None
    run_parts = parts[: root.run_depth]
    run_dir = root.path.joinpath(*run_parts)
    relpath = "/".join(run_parts) if run_parts else "."
    return RunRef(root.path, run_dir, relpath), "/".join(parts[root.run_depth :])


def needs_processing(entry: ManifestEntry | None, identity: FileIdentity, config: Config) -> bool:
    """True unless ``entry`` is a final verdict on exactly this (size, mtime) of the file.

    Not final: no entry, ``pending``, an entry marked for retry, or a legacy pickle still recorded
    ``kept`` while conversion is enabled (a manifest pass saw it before the daemon converted it).
    """
    if entry is None or entry.state == "pending" or entry.extra.get(RETRY_KEY):
        return True
    if entry.size != identity.size or entry.mtime_ns != identity.mtime_ns:
        return True
    return entry.state == "kept" and entry.format is Format.SB2_PICKLE and config.convert.enabled


def matcher_for(config: Config) -> CheckpointMatcher:
    return CheckpointMatcher(config.checkpoints, config.manifest.filename)


# ---- one batch (the I/O edge: lock, manifest, files) ---------------------------------------------


def process_batch(
    config: Config,
    root: RootConfig,
    run: RunRef,
    paths: Sequence[Path],
    *,
    deps: PipelineDeps = PipelineDeps(),
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    budget_seconds: float | None = DEFAULT_BATCH_SECONDS,
    expected: Mapping[Path, tuple[int, int]] | None = None,
    gone: Sequence[Path] = (),
) -> BatchResult:
    """Process ``paths`` (all in ``run``) under the run lock; never raises for a file's problem.

    At least one path is processed; further ones only while ``budget_seconds`` lasts (None: all).
    ``expected`` maps a path to the (size, mtime_ns) the caller saw settle: a file that differs
    now is reported ``changed`` untouched (it is being written again). ``gone`` lists paths reported
    deleted: their entries are dropped if the file is really absent (a file of that name that is
    back again is left to the caller's stabilizer, never read here).
    """
    layout = StateLayout(run.run_dir, config.state_dir)
    manifest_path = run.run_dir / config.manifest.filename
    started = time.monotonic()
    outcomes: list[PathOutcome] = []
    deferred: list[Path] = []
    written = False
    try:
        with run_lock(layout, timeout=lock_timeout):
            previous = _load_manifest(manifest_path)
            manifest = previous or Manifest(
                run=run.relpath, generated_at=deps.clock(), policy=root.policy
            )
            work = _Work(config, root, run, layout, deps, expected or {})
            for path in gone:
                manifest = work.forget_if_absent(path, manifest)
            for index, path in enumerate(paths):
                if (
                    index > 0
                    and budget_seconds is not None
                    and time.monotonic() - started >= budget_seconds
                ):
                    deferred.extend(paths[index:])
                    break
                manifest, outcome = work.process(path, manifest)
                outcomes.append(outcome)
                # Files moved: record it now, so a crash cannot leave the move unrecorded.
                moved = outcome.action in MOVING_ACTIONS
                if moved and _write_if_changed(
                    manifest_path, manifest, previous, deps.clock(), True
                ):
                    written, previous = True, manifest
            if _write_if_changed(manifest_path, manifest, previous, deps.clock(), work.changed):
                written = True
    except (CkptdError, OSError) as err:
        message = f"cannot process run: {err}"
        logger.error("%s", message, extra={"run": run.relpath})
        # A run locked by another ckptd process is free again soon: hand the paths back. Any other
        # failure (an unwritable run or state dir) lasts: retrying every few seconds would only
        # repeat this line, so the next reconciliation scan finds the files again instead.
        busy = isinstance(err, RunLockedError)
        unfinished = tuple(paths[len(outcomes) :]) if busy else ()
        return BatchResult(run, tuple(outcomes), unfinished, False, message, busy)
    return BatchResult(run, tuple(outcomes), tuple(deferred), written)


def process_path(
    config: Config, root: RootConfig, path: Path, *, deps: PipelineDeps = PipelineDeps()
) -> PathOutcome:
    """Process one complete file (its own batch); for the CLI and tests."""
    located = run_of(root, path, config.state_dir)
    if located is None:
        return PathOutcome(path, "ignored", "not inside a run of this root")
    result = process_batch(config, root, located[0], [path], deps=deps, budget_seconds=None)
    if result.error is not None:
        return PathOutcome(path, "failed", result.error)
    return result.outcomes[0]


def _load_manifest(path: Path) -> Manifest | None:
    try:
        return load_manifest(path)
    except FileNotFoundError:
        return None
    except ManifestError as err:
        # A hand-edited, broken manifest is rebuilt: the daemon keeps serving the run.
        logger.error("%s; starting a new one", err)
        return None


def _write_if_changed(
    path: Path, manifest: Manifest, previous: Manifest | None, now: datetime, changed: bool
) -> bool:
    if not changed or manifest.same_content(previous):
        return False
    write_manifest(path, dataclasses.replace(manifest, generated_at=now))
    return True


class _Work:
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
        if jailed is not None and os.path.lexists(self.run.run_dir / jailed):
            # Our own quarantine move reported this path gone: the refused entry stays while the
            # quarantined file exists (as a manifest or prune pass keeps it, ckptd.rebuild).
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
            text = _error_text(err)
            self._log(logging.WARNING, relpath, "cannot process: %s", text)
            return manifest, PathOutcome(path, "failed", text)

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
        except FileNotFoundError:
            raise
        except OSError as err:
            return self._unreadable(path, relpath, identity, manifest, err)
        fmt = identification.format
        if fmt is Format.SB2_PICKLE and self.config.convert.enabled:
            return self._convert(path, relpath, identity, manifest)
        if fmt in (Format.SB2_ZIP, Format.SB3_ZIP):
            return self._verify(path, relpath, identity, fmt, manifest)
        sha256 = _hash(path, identity)
        self._log(logging.INFO, relpath, "recorded as %s (%s)", fmt, identification.note)
        entry = self._entry(relpath, identity, fmt, "kept", sha256)
        return self._set(manifest, entry), PathOutcome(path, "kept", identification.note)

    def _unreadable(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        err: OSError,
    ) -> tuple[Manifest, PathOutcome]:
        text = cannot_read(err)  # the same entry a manifest or prune pass writes (ckptd.rebuild)
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
    ) -> tuple[Manifest, PathOutcome]:
        report = self.deps.verify(path)
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
        )
        self._log(logging.INFO, relpath, "verified %s", fmt)
        return self._set(manifest, entry), PathOutcome(path, "kept", f"verified {fmt}")

    def _archived_sibling(self, zip_relpath: str) -> str | None:
        # A zip whose conversion finished but whose manifest record was lost (killed in between):
        # its archived original says where it came from.
        stem, dot, _ = zip_relpath.rpartition(".")
        original = f"{stem}.pkl" if dot else f"{zip_relpath}.pkl"
        return original if self.layout.legacy_path(original).is_file() else None

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
            )
        except UnsafeCheckpoint as err:
            return self._refuse(path, relpath, identity, manifest, err.message)
        except (FileChangedError, FileNotFoundError):
            raise
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
            return self._not_converted(path, relpath, identity, manifest, _error_text(err))
        return self._record_conversion(path, relpath, identity, manifest, outcome)

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
        )
        manifest = self._set(manifest, zip_entry)
        if outcome.original == "kept":
            manifest = self._set(
                manifest,
                self._entry(
                    relpath, identity, Format.SB2_PICKLE, "converted", outcome.source_sha256
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
                        ),
                        step=None,
                    ),
                )
        message = (
            f"converted to {zip_relpath} ({outcome.algorithm or 'unknown algorithm'}, "
            f"{outcome.params_count} params, original {outcome.original})"
        )
        self._log(logging.INFO, relpath, "%s", message)
        return manifest, PathOutcome(path, "converted", message)

    def _relpath(self, path: Path) -> str:
        return path.relative_to(self.run.run_dir).as_posix()

    def _refuse(
        self,
        path: Path,
        relpath: str,
        identity: FileIdentity,
        manifest: Manifest,
        refusal: str,
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
            relpath,
            identity,
            Format.SB2_PICKLE,
            "refused",
            sha256,
            refusal=refusal,
            extra=extra,
        )
        return self._set(manifest, entry), PathOutcome(path, "refused", message)


def _hash(path: Path, identity: FileIdentity) -> str:
    digest = hash_if_unchanged(path, identity)
    if digest is None:
        raise FileChangedError("changed while it was being hashed", path=str(path))
    return digest


def _error_text(err: BaseException) -> str:
    if isinstance(err, CkptdError):
        return err.message
    if isinstance(err, OSError) and err.strerror:
        name = errno.errorcode.get(err.errno or 0, "")
        return f"{err.strerror} ({name})" if name else err.strerror
    return f"{type(err).__name__}: {err}"


# ---- quarantine ----------------------------------------------------------------------------------


def quarantine(
    path: Path,
    layout: StateLayout,
    identity: FileIdentity,
    sha256: str,
    refusal: str,
    now: datetime,
) -> Path:
    """Move a refused file to ``<state>/quarantine/<name>`` (never overwriting), mode 0400.

    The reason file (``<name>.reason.json``) is written first, so a crash in between leaves the
    file in place with a reason ready for the retry, never a quarantined file without a reason.
    The file must still be what was judged (FileChangedError otherwise). Returns the new path.
    """
    layout.ensure()
    destination = unique_destination(layout.quarantine, path.name)
    reason = {
        "schema": REASON_SCHEMA,
        "original_path": str(path),
        "run_path": path.relative_to(layout.run_dir).as_posix(),
        "quarantined_as": destination.name,
        "sha256": sha256,
        "size": identity.size,
        "refusal": refusal,
        "quarantined_at": format_utc(now),
    }
    reason_path = destination.with_name(destination.name + REASON_SUFFIX)
    write_bytes_atomic(reason_path, (json.dumps(reason, indent=2) + "\n").encode())
    if FileIdentity.of(os.stat(path, follow_symlinks=False)) != identity:
        reason_path.unlink(missing_ok=True)
        raise FileChangedError("changed before it could be quarantined", path=str(path))
    durable_move(path, destination)
    os.chmod(destination, QUARANTINE_MODE, follow_symlinks=False)
    fsync_dir(destination.parent)
    return destination


# ---- reconciliation: which files of a run need a look -------------------------------------------


@dataclass(frozen=True)
class FoundFile:
    """A checkpoint file found by a scan, as it was when stat'ed."""

    path: Path
    identity: FileIdentity


def _walk(directory: Path, state_dir: str, visit_dir: Callable[[Path], None]) -> Iterator[Path]:
    """Regular files below ``directory``, never through symlinks, dot-dirs or the state dir."""
    visit_dir(directory)
    subdirs: list[Path] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and entry.name != state_dir:
                    subdirs.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)
    for subdir in subdirs:
        try:
            yield from _walk(subdir, state_dir, visit_dir)
        except OSError as err:
            logger.warning("%s: cannot list directory (%s)", subdir, _error_text(err))


def find_work(
    config: Config,
    run: RunRef,
    *,
    stale_temp_age: float | None = None,
    now: float | None = None,
) -> list[FoundFile]:
    """Every checkpoint of ``run`` whose manifest entry is missing, not final, or out of date.

    With ``stale_temp_age``, ckptd temp files older than that (left by a killed conversion or
    manifest write) are removed from every directory visited, and from the state dir's own
    subdirectories. Raises OSError when the run directory cannot be listed.
    """
    matcher = matcher_for(config)
    manifest = _load_manifest(run.run_dir / config.manifest.filename)
    recorded = manifest.by_path() if manifest else {}
    wall = time.time() if now is None else now

    def clean(directory: Path) -> None:
        if stale_temp_age is not None:
            for removed in remove_stale_temps(directory, older_than_s=stale_temp_age, now=wall):
                logger.info("removed stale temp file %s", removed, extra={"run": run.relpath})

    if stale_temp_age is not None:
        layout = StateLayout(run.run_dir, config.state_dir)
        for directory in (layout.root, layout.quarantine, layout.legacy, layout.trash):
            with contextlib.suppress(OSError):
                clean(directory)
    found: list[FoundFile] = []
    for path in _walk(run.run_dir, config.state_dir, clean):
        if not matcher.matches(path.name):
            continue
        try:
            identity = FileIdentity.of(os.lstat(path))
        except FileNotFoundError:
            continue
        relpath = path.relative_to(run.run_dir).as_posix()
        if needs_processing(recorded.get(relpath), identity, config):
            found.append(FoundFile(path, identity))
    return found


def files_below(config: Config, directory: Path) -> Iterable[FoundFile]:
    """Checkpoint-named regular files below ``directory`` (a directory just created or moved in)."""
    matcher = matcher_for(config)
    try:
        for path in _walk(directory, config.state_dir, lambda _: None):
            if matcher.matches(path.name):
                with contextlib.suppress(FileNotFoundError):
                    yield FoundFile(path, FileIdentity.of(os.lstat(path)))
    except OSError as err:
        logger.warning("%s: cannot list directory (%s)", directory, _error_text(err))
