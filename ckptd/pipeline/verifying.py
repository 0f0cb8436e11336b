"""Verifying a zip checkpoint (SB2 or SB3) and recording it ``kept`` or ``broken``; a zip whose data
the allowlist refuses is refused like an unsafe pickle."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from ckptd.convert.naming import legacy_name_for
from ckptd.errors import (
    UnsafeCheckpoint,
    UnsafePathError,
)
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity
from ckptd.manifest.model import (
    ParamsSummary,
)
from ckptd.pickles.verdict import Verdict
from ckptd.pipeline.entries import RunEntries
from ckptd.pipeline.record import BatchContext, hash_unchanged
from ckptd.pipeline.refusal import refuse, refuse_unsafe
from ckptd.pipeline.types import PathOutcome

logger = logging.getLogger(__name__)


def verify_checkpoint(
    work: BatchContext,
    path: Path,
    relpath: str,
    identity: FileIdentity,
    fmt: Format,
    manifest: RunEntries,
    verdict: Verdict | None = None,
) -> tuple[RunEntries, PathOutcome]:
    try:
        report = work.deps.verify(path, limits=work.config.limits)
    except UnsafeCheckpoint as err:  # over a limit while verified (ckptd.isolation.supervisor)
        return refuse_unsafe(work, path, relpath, identity, manifest, err, fmt)
    if report.refused:
        # An SB2 zip whose :serialized: entries the allowlist refuses: as unsafe as a pickle.
        fallback = f"data keys {', '.join(report.refused)} refused"
        text = next((p for p in report.problems if "refused" in p), fallback)
        unsafe = Verdict(False, (), text)
        return refuse(work, path, relpath, identity, manifest, text, fmt, unsafe)
    sha256 = hash_unchanged(path, identity)
    if not report.ok:
        text = "; ".join(report.problems) or "does not verify"
        work.log(logger, logging.WARNING, relpath, "broken %s: %s", fmt, text, event="broken")
        entry = work.entry(relpath, identity, fmt, "broken", sha256, error=text)
        return work.record(manifest, entry), PathOutcome(path, "broken", text)
    previous = manifest.get(relpath)
    converted_from = previous.converted_from if previous else None
    if converted_from is None and fmt is Format.SB2_ZIP:
        converted_from = archived_sibling(work, relpath)
    entry = work.entry(
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
    work.log(logger, logging.INFO, relpath, "verified %s", fmt)
    return work.record(manifest, entry), PathOutcome(path, "kept", f"verified {fmt}")


def archived_sibling(work: BatchContext, zip_relpath: str) -> str | None:
    # A zip whose conversion finished but whose manifest record was lost (killed in between):
    # its archived original says where it came from.
    original = legacy_name_for(zip_relpath)
    try:
        st = work.layout.fs.lstat(work.layout.legacy_relpath(original))
    except UnsafePathError:
        return None  # a planted link in legacy/: nothing there is this zip's original
    return original if st is not None and stat.S_ISREG(st.st_mode) else None
