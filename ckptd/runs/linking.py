"""Attach archived legacy originals to the zips converting them wrote, judged from the files.

An archived original (``<state>/legacy/X.pkl``) belongs to the sb2-zip converting it writes (``X.zip``
where ``X.pkl`` was: ``convert.naming.zip_name_for``) when exactly one archived file names that zip and
its content sniffs as a legacy pickle; the pair is one checkpoint. An original kept in place
(``original: keep``) is attached the same way when the manifest also says ``converted_from``. The
link is never taken from the manifest alone: a hand-edited ``converted_from`` can narrow it, never
make prune delete another file with a zip (docs/security.md, "Paths inside a run").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from ckptd.convert.naming import zip_name_for
from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.model import ManifestEntry
from ckptd.runs.checkpoints import Checkpoint, InventoryOptions, LegacyOriginal, is_final_verdict
from ckptd.runs.statedir import StateLayout


def link_originals(
    checkpoints: list[Checkpoint],
    archived: Mapping[str, LegacyOriginal],
    layout: StateLayout,
    options: InventoryOptions,
) -> list[Checkpoint]:
    """Attach archived originals to their zips, judged from the files (module docstring); an
    in-place original (``original: keep``) that a zip names as ``converted_from`` is attached too
    rather than listed as a checkpoint of its own, when it is that zip's source by name and
    content. A ``converted_from`` that is not confirmed by the files links nothing."""
    by_path = {c.path: c for c in checkpoints}
    result: dict[str, Checkpoint] = dict(by_path)
    prefix = layout.legacy_relpath("")
    sources_by_zip: dict[str, list[str]] = {}
    for relpath in archived:
        source = relpath[len(prefix) :]
        sources_by_zip.setdefault(zip_name_for(source), []).append(source)
    attached: set[str] = set()
    for checkpoint in checkpoints:
        if checkpoint.format is not Format.SB2_ZIP:
            if checkpoint.path not in attached:
                result[checkpoint.path] = _unlinked(checkpoint)
            continue
        sources = sources_by_zip.get(checkpoint.path, [])
        if len(sources) == 1:
            original = archived[layout.legacy_relpath(sources[0])]
            if _is_legacy_pickle(layout.run_dir / original.path, original.cached, options):
                result[checkpoint.path] = _with_legacy(checkpoint, sources[0], original)
                continue
        claimed = checkpoint.converted_from
        in_place = by_path.get(claimed) if claimed is not None else None
        if (
            not sources
            and in_place is not None
            and in_place is not checkpoint
            and zip_name_for(in_place.path) == checkpoint.path
            and in_place.format is Format.SB2_PICKLE  # identified like every checkpoint
        ):
            original = LegacyOriginal(
                in_place.path, in_place.identity, in_place.sha256, in_place.cached
            )
            result.pop(in_place.path, None)
            attached.add(in_place.path)
            result[checkpoint.path] = _with_legacy(checkpoint, in_place.path, original)
            continue
        result[checkpoint.path] = _unlinked(checkpoint)
    return list(result.values())


def _is_legacy_pickle(path: Path, cached: ManifestEntry | None, options: InventoryOptions) -> bool:
    # Identified like a checkpoint: by content, the verdict cached only for this exact (size,
    # mtime_ns), so a warm pass stays stat-only. A cache entry can at worst link a file inside
    # <state>/legacy/ named after this zip: nothing of the run's own files or outside it.
    if cached is not None and is_final_verdict(cached):
        return cached.format is Format.SB2_PICKLE
    try:
        found = options.identify(path)
    except (OSError, CkptdError):
        return False
    return (found if isinstance(found, Format) else found.format) is Format.SB2_PICKLE


def _unlinked(checkpoint: Checkpoint) -> Checkpoint:
    # With no original on disk, the manifest's converted_from is kept as a record only when it
    # names this zip's source (an original deleted after conversion); it links nothing.
    claimed = checkpoint.converted_from
    if claimed is not None and (
        checkpoint.format is not Format.SB2_ZIP
        or relpath_problem(claimed) is not None
        or zip_name_for(claimed) != checkpoint.path
    ):
        return replace(checkpoint, converted_from=None, legacy=None)
    return checkpoint


def _with_legacy(
    checkpoint: Checkpoint, source: str, original: LegacyOriginal | None
) -> Checkpoint:
    return replace(checkpoint, converted_from=source, legacy=original)
