"""Removals a killed pass never recorded: found in the trash, written into the manifest's history.

A prune moves its doomed checkpoints into the run's trash, records each in the trash index, and
then writes the manifest with them in ``removed``. Killed between the moves and the manifest write
(``kill -9``, a cluster node losing its lease mid-prune), it leaves checkpoints that are gone from
the run and absent from the manifest's history. Whichever pass next notices them gone records them
as that prune would have, at the time they were moved, rather than dropping their entries without
a trace (docs/architecture.md, "Reliability rules"): the next prune, a manifest pass, or the
daemon handling their deletion events (``ckptd.pipeline``'s ``PipelineDeps.record_vanished``).

The trash index is written into a directory others can write: a record counts only for an entry
the manifest itself listed, with the same sha256, and never twice (``read_trash_index`` has
already refused any name that is not a plain path inside the run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ckptd.errors import StateError
from ckptd.manifest.model import Manifest, ManifestEntry, RemovedEntry
from ckptd.retention.deletion import TrashRecord, read_trash_index
from ckptd.runs.statedir import StateLayout

logger = logging.getLogger(__name__)

UNRECORDED_REASON = "moved to the trash by a pass that stopped before recording it here"


def unrecorded_removals(
    layout: StateLayout, previous: Manifest | None, on_disk: Mapping[str, object]
) -> list[RemovedEntry]:
    """The entries of ``previous`` whose checkpoints are not ``on_disk`` (by manifest path) and
    that the trash index says a pass moved there, as ``removed`` entries; the trash index is
    read only when something is gone (a rare case: the warm pass does not pay for it)."""
    if previous is None:
        return []
    vanished = [entry for entry in previous.checkpoints if entry.path not in on_disk]
    return recorded_in_trash(layout, previous, vanished)


def recorded_in_trash(
    layout: StateLayout, previous: Manifest, vanished: Sequence[ManifestEntry]
) -> list[RemovedEntry]:
    """Those of ``vanished`` (entries of ``previous`` whose files are gone) that the trash index
    records as moved there and ``previous.removed`` does not list yet, as ``removed`` entries in
    the order they were moved. An unreadable index is logged and records nothing."""
    by_original = {entry.path.rstrip("/"): entry for entry in vanished}
    if not by_original:
        return []
    try:
        index = read_trash_index(layout)
    except StateError as err:
        logger.warning(
            "%s; checkpoints gone since the last manifest are not recorded as removed", err
        )
        return []
    already = {(e.trash, e.removed_at) for e in previous.removed}
    companions = {r.companion_of: r for r in index.values() if r.companion_of is not None}
    entries = []
    for record in index.values():
        entry = by_original.get(record.original)
        trash = trash_path(layout, record)
        if (
            entry is None
            or record.companion_of is not None
            or record.sha256 != entry.sha256
            or (trash, record.trashed_at) in already
        ):
            continue
        original = companions.get(record.name)
        entries.append(
            RemovedEntry(
                path=entry.path,
                sha256=entry.sha256,
                removed_at=record.trashed_at,
                reasons=(UNRECORDED_REASON,),
                trash=trash,
                converted_from=original.original if original else None,
                converted_from_sha256=original.sha256 if original else None,
                converted_from_trash=trash_path(layout, original) if original else None,
                size=entry.size,
            )
        )
    return sorted(entries, key=lambda removal: (removal.removed_at, removal.path))


def trash_path(layout: StateLayout, record: TrashRecord) -> str:
    """A trash entry's run-relative path, as a deletion reports it."""
    return f"{layout.state_dir_name}/trash/{record.name}"
