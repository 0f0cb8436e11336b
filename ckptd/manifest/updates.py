"""Pure updates to a manifest for the daemon and prune: each returns a new value."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from ckptd.manifest.model import (
    MAX_REMOVED,
    Manifest,
    ManifestEntry,
    ManifestState,
    ParamsSummary,
    RemovedEntry,
    entry_key,
)


def set_entry(manifest: Manifest, entry: ManifestEntry) -> Manifest:
    """Add ``entry`` or replace the entry with the same path."""
    others = (existing for existing in manifest.checkpoints if existing.path != entry.path)
    return dataclasses.replace(manifest, checkpoints=tuple(sorted((*others, entry), key=entry_key)))


def drop_entry(manifest: Manifest, path: str) -> Manifest:
    """Remove the entry for ``path`` (no-op when absent)."""
    kept = tuple(entry for entry in manifest.checkpoints if entry.path != path)
    return dataclasses.replace(manifest, checkpoints=kept)


def with_state(
    entry: ManifestEntry,
    state: ManifestState,
    *,
    error: str | None = None,
    refusal: str | None = None,
    note: str | None = None,
) -> ManifestEntry:
    """``entry`` in ``state``; ``broken`` needs an ``error``, ``refused`` a ``refusal`` and
    ``held`` a ``note`` text.

    Other states clear a stale error/refusal/note. Raises ValueError on a missing text (a caller bug).
    """
    if state == "broken" and not error:
        raise ValueError("state 'broken' needs an error text")
    if state == "refused" and not refusal:
        raise ValueError("state 'refused' needs a refusal text")
    if state == "held" and not note:
        raise ValueError("state 'held' needs a note")
    return dataclasses.replace(
        entry,
        state=state,
        error=error if state == "broken" else None,
        refusal=refusal if state == "refused" else None,
        note=note if state == "held" else None,
    )


def with_conversion(
    entry: ManifestEntry,
    *,
    converted_from: str,
    algorithm: str | None,
    params: ParamsSummary,
    carries_code: Sequence[str],
) -> ManifestEntry:
    """A converted zip's entry: where it came from and what it holds (state ``kept``)."""
    return dataclasses.replace(
        with_state(entry, "kept"),
        converted_from=converted_from,
        algorithm=algorithm,
        params=params,
        carries_code=tuple(carries_code),
    )


def add_removed(manifest: Manifest, removed: Iterable[RemovedEntry]) -> Manifest:
    """Append removals (oldest first), keeping the newest :data:`MAX_REMOVED`."""
    combined = (*manifest.removed, *removed)
    return dataclasses.replace(manifest, removed=combined[-MAX_REMOVED:])
