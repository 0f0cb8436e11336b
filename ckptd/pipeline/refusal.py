"""Refusing a checkpoint whose pickles may run code (or that is over a limit): quarantined or left in
place per ``convert.on_unsafe``, recorded ``refused`` with its verdict (docs/security.md, "Verdicts").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ckptd.errors import (
    UnsafeCheckpoint,
)
from ckptd.formats import Format
from ckptd.fs.files import FileIdentity
from ckptd.manifest.model import (
    QUARANTINE_KEY,
)
from ckptd.pickles.verdict import Verdict
from ckptd.pipeline.entries import RunEntries
from ckptd.pipeline.quarantine import quarantine
from ckptd.pipeline.record import BatchContext, hash_unchanged
from ckptd.pipeline.types import PathOutcome
from ckptd.textsafe import shown

logger = logging.getLogger(__name__)


def refuse_unsafe(
    work: BatchContext,
    path: Path,
    relpath: str,
    identity: FileIdentity,
    manifest: RunEntries,
    err: UnsafeCheckpoint,
    fmt: Format,
) -> tuple[RunEntries, PathOutcome]:
    """Refuse ``path`` for ``err`` (unsafe content or over a limit), its verdict from the error."""
    names = (shown(err.global_name),) if err.global_name else ()
    verdict = Verdict(False, names, err.reason)
    return refuse(work, path, relpath, identity, manifest, err.message, fmt, verdict)


def refuse(
    work: BatchContext,
    path: Path,
    relpath: str,
    identity: FileIdentity,
    manifest: RunEntries,
    refusal: str,
    fmt: Format,
    verdict: Verdict,
) -> tuple[RunEntries, PathOutcome]:
    sha256 = hash_unchanged(path, identity)
    extra: dict[str, Any] = {}
    if work.config.convert.on_unsafe == "quarantine":
        work.deps.fence(work.run)
        destination = quarantine(path, work.layout, identity, sha256, refusal, work.deps.clock())
        extra[QUARANTINE_KEY] = work.relpath(destination)
        message = f"{refusal}; quarantined as {extra[QUARANTINE_KEY]}"
        event = "quarantined"
    else:
        message = f"{refusal}; left in place"
        event = "refused"
    work.log(logger, logging.WARNING, relpath, "%s", message, event=event)
    entry = work.entry(
        relpath, identity, fmt, "refused", sha256, refusal=refusal, verdict=verdict, extra=extra
    )
    return work.record(manifest, entry), PathOutcome(path, "refused", message)
