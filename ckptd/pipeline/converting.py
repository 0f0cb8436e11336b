"""Converting a legacy SB2 pickle to an SB2 zip and recording the zip, the original (kept or
archived) and the conversion's notes; a conversion that cannot finish leaves the original in place
and is retried, one that needs the operator is held (docs/conversion.md)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path

from ckptd.convert.conversion import ConversionOutcome
from ckptd.errors import (
    ConversionError,
    FileChangedError,
    FormatError,
    HeldCheckpoint,
    UnsafeCheckpoint,
    UnsafePathError,
    VerifyError,
)
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity
from ckptd.manifest.model import (
    ParamsSummary,
)
from ckptd.pickles.verdict import Verdict
from ckptd.pipeline.entries import RunEntries
from ckptd.pipeline.record import BatchContext, hash_unchanged
from ckptd.pipeline.refusal import refuse_unsafe
from ckptd.pipeline.types import PathOutcome, error_text
from ckptd.textsafe import shown

logger = logging.getLogger(__name__)


def convert_legacy(
    work: BatchContext, path: Path, relpath: str, identity: FileIdentity, manifest: RunEntries
) -> tuple[RunEntries, PathOutcome]:
    convert = work.config.convert
    work.deps.fence(work.run)  # another daemon's run now (coordination.backend postgres): stop
    try:
        outcome = work.deps.convert(
            path,
            original=convert.original,
            state_dir=work.config.state_dir,
            allow_code=convert.allow_code,
            # Where inventory looks for it: <run>/<state_dir>/legacy/<path relative to the run>.
            archive_path=work.layout.legacy_path(relpath),
            archive_base=work.run.run_dir,  # walked with no symlink followed below the run
            limits=work.config.limits,
            # Checked again right before the zip's rename and the original's move (in the
            # parser's child process: ckptd.isolation.supervisor asks this process).
            fence=functools.partial(work.deps.fence, work.run),
        )
    except UnsafeCheckpoint as err:
        return refuse_unsafe(work, path, relpath, identity, manifest, err, Format.SB2_PICKLE)
    except (FileChangedError, FileNotFoundError):
        raise
    except HeldCheckpoint as err:
        return hold(work, path, relpath, identity, manifest, err.note)
    except UnsafePathError as err:
        # A planted symlink in the way of the archive move: the zip stands, the original stays.
        return not_converted(work, path, relpath, identity, manifest, str(err))
    except VerifyError as err:
        # Our own output failed re-verification: the source is fine, the conversion is not, and
        # would fail alike on the same bytes: tried again later, not on every pass.
        return not_converted(work, path, relpath, identity, manifest, err.message, backoff=True)
    except FormatError as err:
        sha256 = hash_unchanged(path, identity)
        work.log(
            logger,
            logging.WARNING,
            relpath,
            "broken legacy pickle: %s",
            err.message,
            event="broken",
        )
        entry = work.entry(
            relpath, identity, Format.SB2_PICKLE, "broken", sha256, error=err.message
        )
        return work.record(manifest, entry), PathOutcome(path, "broken", err.message)
    except ConversionError as err:
        return not_converted(work, path, relpath, identity, manifest, err.message)
    except OSError as err:
        return not_converted(work, path, relpath, identity, manifest, error_text(err))
    return record_conversion(work, path, relpath, identity, manifest, outcome)


def hold(
    work: BatchContext,
    path: Path,
    relpath: str,
    identity: FileIdentity,
    manifest: RunEntries,
    note: str,
) -> tuple[RunEntries, PathOutcome]:
    # Safe and readable, kept as it is and never converted until the operator supplies what
    # the note asks for (docs/param-names.md); retention treats it as any kept checkpoint.
    sha256 = hash_unchanged(path, identity)
    work.log(logger, logging.WARNING, relpath, "held, not converted: %s", note)
    entry = work.entry(relpath, identity, Format.SB2_PICKLE, "held", sha256, note=note)
    return work.record(manifest, entry), PathOutcome(path, "held", note)


def not_converted(
    work: BatchContext,
    path: Path,
    relpath: str,
    identity: FileIdentity,
    manifest: RunEntries,
    text: str,
    *,
    backoff: bool = False,
) -> tuple[RunEntries, PathOutcome]:
    message = f"conversion failed, original left in place: {text}"
    return work.retry_later(
        logger,
        path,
        relpath,
        identity,
        manifest,
        Format.SB2_PICKLE,
        "kept",
        message,
        backoff=backoff,
    )


def record_conversion(
    work: BatchContext,
    path: Path,
    relpath: str,
    identity: FileIdentity,
    manifest: RunEntries,
    outcome: ConversionOutcome,
) -> tuple[RunEntries, PathOutcome]:
    zip_relpath = work.relpath(outcome.output)
    zip_identity = FileIdentity.of(os.stat(outcome.output, follow_symlinks=False))
    zip_entry = work.entry(
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
    manifest = work.record(manifest, zip_entry)
    if outcome.original == "kept":
        manifest = work.record(
            manifest,
            work.entry(
                relpath,
                identity,
                Format.SB2_PICKLE,
                "converted",
                outcome.source_sha256,
                verdict=converted_verdict(outcome),
            ),
        )
    else:
        manifest = work.forget(manifest, relpath)
        if outcome.archived_to is not None:
            archived_identity = FileIdentity.of(os.stat(outcome.archived_to, follow_symlinks=False))
            archived_relpath = work.relpath(outcome.archived_to)
            manifest = work.record(
                manifest,
                dataclasses.replace(
                    work.entry(
                        archived_relpath,
                        archived_identity,
                        Format.SB2_PICKLE,
                        "converted",
                        outcome.source_sha256,
                        verdict=converted_verdict(outcome),
                    ),
                    step=None,
                ),
            )
    message = (
        f"converted to {zip_relpath} ({outcome.algorithm or 'unknown algorithm'}, "
        f"{outcome.params_count} params, original {outcome.original})"
        + "".join(f"; note: {note}" for note in outcome.notes)
    )
    # A zip found already written (a rerun after a crash) is recorded, not converted again.
    event = "converted" if outcome.status == "converted" else None
    work.log(logger, logging.INFO, relpath, "%s", message, event=event)
    return manifest, PathOutcome(path, "converted", message)


def converted_verdict(outcome: ConversionOutcome) -> Verdict:
    """A converted legacy pickle passed the SB2 allowlist (what its code-bearing keys are, the
    zip's ``carries_code`` says)."""
    names = tuple(shown(name) for name in outcome.globals)
    return Verdict(True, names, "every reference on the stable-baselines allowlist")
