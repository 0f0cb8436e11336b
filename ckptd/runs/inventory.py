"""Inventory: find a root's runs and each run's checkpoints, with cached identification and hashes.

What is listed (README, "Configuration"; docs/architecture.md, "Manifest and index"):

* Runs are the directories exactly ``run_depth`` below a root (0 = the root itself). Symlinked
  directories, dot-directories and the state dir are never entered, so nothing outside a root is seen.
* Checkpoints are regular files below a run (any depth, same skips) whose *name* matches one of
  ``checkpoints.patterns`` and none of ``checkpoints.ignore``; never symlinks, ckptd temp files, the
  manifest or the root index, nor anything inside the state dir.
* Archived legacy originals (``<state>/legacy/X.pkl``) are listed separately and attached to the
  sb2-zip that converting them writes (``X.zip`` where ``X.pkl`` was: ``convert.naming.zip_name_for``),
  when exactly one archived file names that zip and its content sniffs as a legacy pickle; the
  pair is one checkpoint. An original kept in place (``original: keep``) is attached the same way
  when the manifest also says ``converted_from``. The link is judged from the files on disk, never
  from the manifest alone: a hand-edited ``converted_from`` can narrow it, never make prune delete
  another file with a zip (docs/security.md, "Paths inside a run"). The state dir itself must be a
  real directory (``StateLayout.check``), else the run is refused with one line naming it.

Reading is minimal: a file younger than ``stable_for`` is never opened (it is ``incomplete``), and
format and sha256 come from the previous manifest when its entry has the same (size, mtime_ns), so a
warm pass is stat-only. The daemon adds its own stabilizer on top of the mtime age test.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.sniff import identify_checked
from ckptd.frozen_build import build_frozen
from ckptd.fs.files import FileIdentity, hash_if_unchanged, is_temp_name
from ckptd.manifest.model import ManifestEntry
from ckptd.pickles.verdict import Verdict
from ckptd.runs.checkpoints import (
    INCOMPLETE,
    OK,
    UNREADABLE,
    Checkpoint,
    Identifier,
    InventoryOptions,
    LegacyOriginal,
    RunInventory,
    cannot_read,
    is_final_verdict,
)
from ckptd.runs.dir_checkpoints import DirectoryFinder, directory_checkpoints
from ckptd.runs.linking import link_originals
from ckptd.runs.listing import Found, walk_files
from ckptd.runs.roots import RunRef, skipped_dir
from ckptd.runs.statedir import QUARANTINE_DIR, StateLayout

logger = logging.getLogger(__name__)


def default_identifier() -> Identifier:
    """ckptd.formats.sniff.identify_checked: identify's label, found with less work, and the
    verdict on plain pickles, joblib and torch files."""
    return identify_checked


def inventory_run(
    run: RunRef,
    options: InventoryOptions,
    *,
    now: datetime,
    previous: Mapping[str, ManifestEntry],
) -> RunInventory:
    """List ``run``'s checkpoints and archived originals.

    ``previous`` maps run-relative paths to the last manifest's entries: an entry whose (size,
    mtime_ns) still match supplies format and sha256 without reading the file. Raises OSError when
    the run directory itself cannot be listed.
    """
    layout = StateLayout(run.run_dir, options.state_dir)
    layout.check()  # a planted symlink/FIFO/file state dir: refuse the run, list nothing through it
    now_ns = _to_ns(now)
    skip = _dir_skipper(options.state_dir)
    # Directory checkpoints (checkpoints.directories) are found by the same walk, never entered.
    finder = DirectoryFinder.for_run(run.run_dir, options.matcher)
    visit = None if finder is None else finder.visit
    if finder is not None:
        skip = finder.skipper(skip)
    found = list(walk_files(str(run.run_dir), "", skip, options.matcher.matches, visit_dir=visit))
    archived = _archived_originals(layout, options, now_ns, previous)
    archived_by_path = {original.path: original for original in archived}
    checkpoints = []
    cache_of, step_of = previous.get, options.matcher.step_of
    settled_ns = now_ns - options.stable_for_ns  # a file last written before this is complete
    hash_files = options.hash_files
    for item in found:
        relpath, name, _, identity = item
        cached = cache_of(relpath)
        # The warm case, inlined (once per file of every pass): the cached entry still matches
        # (size, mtime_ns), the file is settled, the entry judged its content
        # (is_final_verdict) and holds what this pass needs. Nothing to read, hash or decide:
        # the Checkpoint _checkpoint builds for it (tests compare the two for every state).
        if (
            cached is not None
            and cached.size == identity.size
            and cached.mtime_ns == identity.mtime_ns
            and identity.mtime_ns <= settled_ns
        ):
            state = cached.state
            sha256 = cached.sha256
            if state != "pending" and (
                sha256 is not None or (state != "broken" and not hash_files)
            ):
                fmt = cached.format
                # _status for a cached final verdict and no fresh judgement
                status: str = state
                if state != "refused" and state != "broken":
                    status = "unknown" if fmt is Format.UNKNOWN else OK
                checkpoints.append(
                    _complete_checkpoint(
                        relpath,
                        step_of(name),
                        identity,
                        fmt,
                        sha256,
                        status,
                        cached.converted_from,
                        cached,
                        None,
                        None,
                    )
                )
                continue
        else:
            cached = None
        checkpoint = _checkpoint(item, options, now_ns, cached)
        if checkpoint is not None:
            checkpoints.append(checkpoint)
    if archived_by_path or any(c.converted_from is not None for c in checkpoints):
        checkpoints = link_originals(checkpoints, archived_by_path, layout, options)
    if finder is not None:
        checkpoints.extend(
            directory_checkpoints(run.run_dir, finder.found, options, now_ns, previous)
        )
    checkpoints.sort(key=_by_path)
    return RunInventory(run, tuple(checkpoints), tuple(archived), _quarantined_files(layout))


_by_path = attrgetter("path")


def _to_ns(moment: datetime) -> int:
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def _dir_skipper(state_dir: str) -> Callable[[str], bool]:
    def skip(name: str) -> bool:
        return skipped_dir(name, state_dir)

    return skip


def _valid_cache(entry: ManifestEntry | None, identity: FileIdentity) -> ManifestEntry | None:
    if entry is None or entry.size != identity.size or entry.mtime_ns != identity.mtime_ns:
        return None
    return entry


def _archived_originals(
    layout: StateLayout,
    options: InventoryOptions,
    now_ns: int,
    previous: Mapping[str, ManifestEntry],
) -> list[LegacyOriginal]:
    prefix = layout.legacy_relpath("")
    try:
        found = list(walk_files(str(layout.legacy), prefix.rstrip("/"), _never, _not_temp))
    except FileNotFoundError:
        return []
    originals = []
    for item in sorted(found, key=lambda f: f.relpath):
        cached = _valid_cache(previous.get(item.relpath), item.identity)
        sha256 = cached.sha256 if cached else None
        if sha256 is None and options.hash_files:
            sha256 = _hash_or_none(item)
        originals.append(LegacyOriginal(item.relpath, item.identity, sha256, cached))
    return originals


def _quarantined_files(layout: StateLayout) -> frozenset[str]:
    """Regular files in the quarantine dir (reason files too: they never match an entry's path).

    One failing scandir per run without a quarantine; never through a symlinked directory."""
    prefix = f"{layout.state_dir_name}/{QUARANTINE_DIR}/"
    try:
        if not stat.S_ISDIR(os.lstat(layout.quarantine).st_mode):
            return frozenset()
        with os.scandir(layout.quarantine) as entries:
            return frozenset(
                prefix + entry.name
                for entry in entries
                if entry.is_file(follow_symlinks=False) and not is_temp_name(entry.name)
            )
    except FileNotFoundError:
        return frozenset()
    except OSError as err:
        logger.warning("%s: cannot list the quarantine (%s)", layout.quarantine, err)
        return frozenset()


def _never(name: str) -> bool:
    return False


def _not_temp(name: str) -> bool:
    return not is_temp_name(name)


def _hash_or_none(item: Found) -> str | None:
    try:
        return hash_if_unchanged(item.path, item.identity)
    except (OSError, CkptdError) as err:
        logger.warning("%s: cannot hash (%s)", item.path, err)
        return None


class _Hashed(NamedTuple):
    """A checkpoint's hash attempt: the digest, or why there is none."""

    sha256: str | None  # None: changed while read, unreadable, or vanished
    unreadable: OSError | None = None
    vanished: bool = False


def _hash_checkpoint(item: Found) -> _Hashed:
    try:
        digest = hash_if_unchanged(item.path, item.identity)
    except FileNotFoundError:
        return _Hashed(None, vanished=True)
    except OSError as err:
        return _Hashed(None, unreadable=err)  # logged and recorded by _unreadable
    except CkptdError as err:
        # Replaced by something that is not a regular file since the listing: look again later.
        logger.warning("%s: cannot hash (%s)", item.path, err)
        return _Hashed(None)
    return _Hashed(digest)


def _checkpoint(
    item: Found, options: InventoryOptions, now_ns: int, cached: ManifestEntry | None
) -> Checkpoint | None:
    step = options.matcher.step_of(item.name)
    complete = now_ns - item.identity.mtime_ns >= options.stable_for_ns
    if not complete:
        # Never read a file that may still be written; remember what we knew about it.
        fmt = cached.format if cached else Format.UNKNOWN
        return Checkpoint(
            item.relpath, step, item.identity, fmt, None, False, INCOMPLETE, cached=cached
        )
    error = None
    verdict: Verdict | None = None
    if cached is not None and is_final_verdict(cached):
        fmt = cached.format
    else:
        try:
            found = options.identify(item.path)
            fmt = found if isinstance(found, Format) else found.format
            verdict = None if isinstance(found, Format) else found.verdict
        except FileNotFoundError:
            return None  # vanished since the listing: it is simply not there any more
        except OSError as err:
            return _unreadable(item, step, cached, err)
        except CkptdError as err:
            fmt, error = Format.UNKNOWN, str(err)
    sha256 = cached.sha256 if cached else None
    if sha256 is None and options.hash_files and error is None:
        hashed = _hash_checkpoint(item)
        if hashed.vanished:
            return None
        if hashed.unreadable is not None:
            return _unreadable(item, step, cached, hashed.unreadable)
        sha256 = hashed.sha256
        if sha256 is None:  # changed while it was read: it is being written again
            return Checkpoint(
                item.relpath, step, item.identity, fmt, None, False, INCOMPLETE, cached=cached
            )
    return _complete_checkpoint(
        item.relpath,
        step,
        item.identity,
        fmt,
        sha256,
        _status(fmt, cached, error, verdict),
        cached.converted_from if cached else None,
        cached,
        error,
        verdict,
    )


def _unreadable(
    item: Found, step: int | None, cached: ManifestEntry | None, err: OSError
) -> Checkpoint:
    # INFO: the daemon's pipeline warns once; a pass runs every minute and records the error.
    logger.info("%s: cannot read (%s); will retry", item.path, err)
    return Checkpoint(
        item.relpath,
        step,
        item.identity,
        Format.UNKNOWN,
        None,
        True,
        UNREADABLE,
        cached=cached,
        error=cannot_read(err),
    )


def _complete_checkpoint(
    path: str,
    step: int | None,
    identity: FileIdentity,
    fmt: Format,
    sha256: str | None,
    status: str,
    converted_from: str | None,
    cached: ManifestEntry | None,
    error: str | None,
    verdict: Verdict | None,
) -> Checkpoint:
    """``Checkpoint(..., complete=True, ...)``, built once per checkpoint of every pass."""
    fields: dict[str, Any] = {
        "path": path,
        "step": step,
        "identity": identity,
        "format": fmt,
        "sha256": sha256,
        "complete": True,
        "status": status,
        "legacy": None,
        "converted_from": converted_from,
        "cached": cached,
        "error": error,
        "verdict": verdict,
    }
    return build_frozen(Checkpoint, fields)


def _status(
    fmt: Format, cached: ManifestEntry | None, error: str | None, verdict: Verdict | None
) -> str:
    if error is not None:
        return "broken"
    if cached is not None and is_final_verdict(cached) and cached.state in ("refused", "broken"):
        return cached.state
    if verdict is not None and not verdict.safe:
        # Never in the series, so never the newest (docs/security.md, "Verdicts").
        return "broken" if verdict.broken else "refused"
    if fmt is Format.UNKNOWN:
        return "unknown"
    return OK
