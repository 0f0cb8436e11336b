"""The pipeline's vocabulary: what one batch depends on and what it reports.

:class:`PipelineDeps` holds the pieces that read, convert and verify files (fault tests swap them);
:class:`PathOutcome` and :class:`BatchResult` are what the daemon gets back; :func:`error_text` is
how a per-file error becomes an outcome's one-line message.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from ckptd.config.model import DEFAULT_STATE_DIR
from ckptd.convert.conversion import ConversionOutcome, convert_file
from ckptd.errors import CkptdError
from ckptd.formats.sniff import Identification, identify
from ckptd.formats.verify import VerifyReport, verify_zip
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.manifest.model import Manifest, ManifestEntry, RemovedEntry
from ckptd.runs.roots import RunRef
from ckptd.runs.statedir import StateLayout

Action = Literal[
    "converted",  # legacy pickle converted; the zip is recorded
    "kept",  # verified (or unknown content) and recorded as it is
    "broken",  # unreadable content, recorded with its error
    "refused",  # unsafe; quarantined or left, recorded with the refusal
    "held",  # safe, kept as it is, not converted: recorded with a note saying what it needs
    "failed",  # could not be processed now (I/O error, disk full); recorded, retried later
    "changed",  # changed while being processed: observe it again
    "vanished",  # gone; its entry (if any) dropped
    "unchanged",  # already processed and not changed since
    "ignored",  # not a checkpoint of this run (name, symlink, state dir)
]


class Converter(Protocol):
    """The shape of :func:`ckptd.convert.conversion.convert_file` (tests pass fakes that fail like it can)."""

    def __call__(
        self,
        source: Path,
        *,
        output: Path | None = None,
        original: Literal["keep", "archive", "delete"] = "keep",
        state_dir: str = DEFAULT_STATE_DIR,
        allow_code: bool = True,
        param_names: Sequence[str] | None = None,
        archive_path: Path | None = None,
        archive_base: Path | None = None,
        limits: Limits = DEFAULT_LIMITS,
        fence: Callable[[], None] | None = None,
    ) -> ConversionOutcome: ...


class Verifier(Protocol):
    """The shape of :func:`ckptd.formats.verify.verify_zip`."""

    def __call__(self, path: Path, *, limits: Limits = DEFAULT_LIMITS) -> VerifyReport: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _unfenced(run: RunRef) -> None:
    """One daemon per root (coordination.backend local): nothing to check."""


def _none_recorded(
    layout: StateLayout, manifest: Manifest, vanished: Sequence[ManifestEntry]
) -> Sequence[RemovedEntry]:
    return ()


def _nothing_ahead(paths: Sequence[Path]) -> None:
    """In process: each file is identified when the batch reaches it."""


@dataclass(frozen=True)
class PipelineDeps:
    """The pieces that read, convert and verify files, and the clock (fault tests swap them)."""

    identify: Callable[[Path], Identification] = identify
    convert: Converter = convert_file
    verify: Verifier = verify_zip
    clock: Callable[[], datetime] = _utc_now
    # Raises (ckptd.errors.CoordinationError) unless this daemon may still act on the run: called
    # before every move and manifest write (coordination.backend postgres; local: never raises).
    fence: Callable[[RunRef], None] = _unfenced
    # Told, once a batch has its run's manifest, which of its paths it will identify (those whose
    # entry is not current), so they can be examined ahead in bulk (ckptd.isolation.supervisor).
    examine_ahead: Callable[[Sequence[Path]], None] = _nothing_ahead
    # Given the entries a batch dropped because their files are gone, the ``removed`` entries
    # for those a pass moved to the trash and never recorded (a prune killed before its manifest
    # write): the daemon wires ckptd.retention.unrecorded.recorded_in_trash; none by default.
    record_vanished: Callable[
        [StateLayout, Manifest, Sequence[ManifestEntry]], Sequence[RemovedEntry]
    ] = _none_recorded


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


def error_text(err: BaseException) -> str:
    if isinstance(err, CkptdError):
        return err.message
    if isinstance(err, OSError) and err.strerror:
        name = errno.errorcode.get(err.errno or 0, "")
        return f"{err.strerror} ({name})" if name else err.strerror
    return f"{type(err).__name__}: {err}"
