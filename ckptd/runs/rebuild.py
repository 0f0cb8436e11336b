"""Rebuild a run's manifest from its inventory, carrying over what the previous manifest knew (pure).

Used by prune (with the pass's decisions as reasons and the removals it made) and by
``ckptd manifest``. An entry whose file is unchanged keeps the state and conversion details the
daemon recorded; a new complete file is ``kept``, an incomplete one ``pending``; archived
originals are listed as ``converted``. A file that cannot be read is ``pending`` with
``error: "cannot read: ..."`` and the retry mark, the shape the daemon's pipeline gives it, so
every pass writes the same entry and the daemon looks at the file again once it is readable. A
``refused`` entry whose file the daemon quarantined is not on disk at its path any more; it is
carried over as long as the quarantined file it names exists (``quarantine release`` moves the
file back and records it at its path; deleting the quarantined file drops the entry at the next
pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime

from ckptd.formats import Format
from ckptd.manifest.model import (
    Manifest,
    ManifestEntry,
    ManifestState,
    PruneRecord,
    RemovedEntry,
    quarantined_as,
)
from ckptd.manifest.updates import add_removed
from ckptd.runs.checkpoints import (
    RETRY_KEY,
    UNREADABLE,
    Checkpoint,
    LegacyOriginal,
    RunInventory,
    first_entry,
    is_final_verdict,
)
from ckptd.runs.dir_checkpoints import DirCheckpoint, directory_entry
from ckptd.timefmt import from_ns


def build_manifest(
    inventory: RunInventory,
    *,
    run: str,
    policy: str,
    now: datetime,
    previous: Manifest | None,
    reasons: Mapping[str, tuple[str, ...]] | None = None,
    gone: frozenset[str] | set[str] = frozenset(),
    removed: Sequence[RemovedEntry] = (),
    last_prune: PruneRecord | None = None,
) -> Manifest:
    """The run's manifest from what is on disk, carrying over what the previous one knew.

    An entry whose file is unchanged keeps its state and conversion details (set by the daemon);
    ``reasons`` (a prune's decisions) replace the stored reasons; paths in ``gone`` were just
    deleted and are left out; ``removed`` is appended to the previous removed list; refused
    entries of files still in the quarantine are kept; ``last_prune`` (a real prune pass's
    record) replaces the previous one, which is kept otherwise.
    """
    entries = [
        _entry(checkpoint, reasons.get(checkpoint.path) if reasons is not None else None)
        for checkpoint in inventory.checkpoints
        if checkpoint.path not in gone
    ]
    originals: dict[str, LegacyOriginal] = {
        original.path: original for original in inventory.archived
    }
    for checkpoint in inventory.checkpoints:
        if checkpoint.legacy is not None:
            originals.setdefault(checkpoint.legacy.path, checkpoint.legacy)
    entries.extend(
        _original_entry(original) for path, original in originals.items() if path not in gone
    )
    if previous is not None and inventory.quarantined:
        on_disk = {entry.path for entry in entries} | gone
        entries.extend(
            entry
            for entry in previous.checkpoints
            if entry.path not in on_disk and quarantined_as(entry) in inventory.quarantined
        )
    base = previous or Manifest(run=run, generated_at=now, policy=policy)
    manifest = dataclasses.replace(
        base,
        run=run,
        generated_at=now,
        policy=policy,
        checkpoints=tuple(sorted(entries, key=lambda e: e.path)),
        last_prune=last_prune or base.last_prune,
    )
    return add_removed(manifest, removed) if removed else manifest


def _entry(checkpoint: Checkpoint, reasons: tuple[str, ...] | None) -> ManifestEntry:
    if isinstance(checkpoint, DirCheckpoint):
        return directory_entry(checkpoint, reasons)
    return _checkpoint_entry(checkpoint, reasons)


def _checkpoint_entry(checkpoint: Checkpoint, reasons: tuple[str, ...] | None) -> ManifestEntry:
    cached = checkpoint.cached
    judged = cached is not None and is_final_verdict(cached)
    state: ManifestState
    if checkpoint.status == UNREADABLE or not checkpoint.complete:
        state = "pending"
    elif cached is not None and judged:
        state = cached.state
    elif checkpoint.error is not None:
        state = "broken"
    elif checkpoint.verdict is not None and not checkpoint.verdict.safe:
        # A pass records it; the daemon quarantines a refused one per convert.on_unsafe.
        state = "broken" if checkpoint.verdict.broken else "refused"
    else:
        state = "kept"
    base = cached or first_entry(checkpoint, state)
    error, extra = base.error, base.extra
    if checkpoint.status == UNREADABLE:
        error, extra = checkpoint.error, {**base.extra, RETRY_KEY: True}
    elif checkpoint.complete and not judged:
        error = checkpoint.error
        if state == "broken" and checkpoint.verdict is not None:
            error = checkpoint.verdict.reason
        if cached is not None and cached.error is not None:
            # Readable again. A pass only identifies, so the retry mark stays (or is set, over an
            # older ckptd's read-error ``broken``) until the daemon verifies or converts the file.
            extra = {**base.extra, RETRY_KEY: True}
    return dataclasses.replace(
        base,
        path=checkpoint.path,
        step=checkpoint.step,
        size=checkpoint.size,
        mtime=checkpoint.mtime,
        mtime_ns=checkpoint.identity.mtime_ns,
        sha256=checkpoint.sha256,
        format=checkpoint.format,
        state=state,
        reasons=reasons if reasons is not None else base.reasons,
        converted_from=checkpoint.converted_from,
        error=error,
        refusal=checkpoint.verdict.reason
        if state == "refused" and checkpoint.verdict
        else base.refusal,
        verdict=checkpoint.verdict or base.verdict,
        extra=extra,
    )


def _original_entry(original: LegacyOriginal) -> ManifestEntry:
    cached = original.cached
    base = cached or ManifestEntry(
        path=original.path,
        step=None,
        size=original.identity.size,
        mtime=_mtime(original),
        sha256=None,
        format=Format.SB2_PICKLE,  # only sb2 pickles are converted and archived
        state="converted",
    )
    return dataclasses.replace(
        base,
        size=original.identity.size,
        mtime=_mtime(original),
        mtime_ns=original.identity.mtime_ns,
        sha256=original.sha256,
        state="converted",
    )


def _mtime(original: LegacyOriginal) -> datetime:
    return from_ns(original.identity.mtime_ns)
