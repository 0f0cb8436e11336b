"""Inventory: find a root's runs and each run's checkpoints, with cached identification and hashes.

What is listed (README, "Configuration"; docs/architecture.md, "Manifest and index"):

* Runs are the directories exactly ``run_depth`` below a root (0 = the root itself). Symlinked
  directories, dot-directories and the state dir are never entered, so nothing outside a root is seen.
* Checkpoints are regular files below a run (any depth, same skips) whose *name* matches one of
  ``checkpoints.patterns`` and none of ``checkpoints.ignore``; never symlinks, ckptd temp files, the
  manifest or the root index, nor anything inside the state dir.
* Archived legacy originals (``<state>/legacy/X.pkl``) are listed separately and attached to the
  sb2-zip that converting them writes (``X.zip`` where ``X.pkl`` was: ``convert.default_output``),
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

import fnmatch
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ckptd.config.model import CheckpointsConfig
from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.sniff import identify_checked
from ckptd.frozen_build import build_frozen
from ckptd.fs.files import CHUNK_SIZE, FileIdentity, is_temp_name, open_regular_nofollow
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.model import ManifestEntry
from ckptd.manifest.root_index import INDEX_FILENAME
from ckptd.pickles.verdict import Verdict
from ckptd.runs.statedir import QUARANTINE_DIR, StateLayout

logger = logging.getLogger(__name__)


class Labelled(Protocol):
    """A file's format with the verdict on its pickles (``ckptd.formats.sniff.Identification``)."""

    @property
    def format(self) -> Format: ...

    @property
    def verdict(self) -> Verdict | None: ...


# Maps a complete file to its format by content (optionally with its pickles' verdict). The default
# is ckptd.formats.sniff.identify_checked; tests pass a counting fake to prove a warm pass reads
# nothing.
Identifier = Callable[[Path], Format | Labelled]

# Statuses a Candidate may carry (retention skips everything but "ok").
OK = "ok"
INCOMPLETE = "incomplete"
# Complete, but reading it failed (EACCES, EIO...): not a verdict on its content, so it is recorded
# ``pending`` with the error and the retry mark, exactly as the daemon's pipeline records it, and
# looked at again on every pass until it can be read.
UNREADABLE = "unreadable"

# The manifest entry key marking a verdict that is not final (the file could not be read, or its
# conversion could not finish): the daemon's reconciliation scan processes such an entry again.
RETRY_KEY = "retry"

# The entry key on an ``unknown`` file recording which identification rules judged it: files an
# older ckptd recorded ``unknown`` (before plain pickles, joblib and torch files had verdicts) are
# identified again once by the daemon.
SNIFF_KEY = "sniff"
SNIFF_GENERATION = 2


def cannot_read(err: OSError) -> str:
    """The error an unreadable file is recorded with (by the pipeline and the passes alike)."""
    return f"cannot read: {err.strerror or err}"


def is_final_verdict(entry: ManifestEntry) -> bool:
    """Whether ``entry`` judged the file's content, so an unchanged file need not be read again.

    ``pending`` never is. Neither is ``broken`` without a sha256: every verdict on content hashes
    the file, so such an entry only says that reading failed (older ckptd wrote a read error so).
    """
    return entry.state != "pending" and not (entry.state == "broken" and entry.sha256 is None)


@dataclass(frozen=True)
class RunRef:
    """A run directory and where it sits under its root."""

    root: Path
    run_dir: Path
    relpath: str  # posix, relative to the root; "." when run_depth is 0


@dataclass(frozen=True)
class RunScan:
    """The runs of one root, plus directories that could not be listed (relpath, error)."""

    runs: tuple[RunRef, ...]
    errors: tuple[tuple[str, str], ...] = ()


def find_runs(root: Path, run_depth: int, state_dir: str) -> RunScan:
    """Every run exactly ``run_depth`` directories below ``root``, sorted by relative path.

    Raises OSError when the root itself cannot be listed; an unreadable directory further down is
    reported in ``errors`` and the scan goes on.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: root is not a directory")
    runs: list[RunRef] = []
    errors: list[tuple[str, str]] = []
    level: list[tuple[Path, str]] = [(root, ".")]
    for _ in range(run_depth):
        next_level: list[tuple[Path, str]] = []
        for directory, relpath in level:
            try:
                names = _child_dirs(directory, state_dir)
            except OSError as err:
                errors.append((relpath, f"cannot list directory: {err.strerror}"))
                continue
            next_level.extend(
                (directory / name, name if relpath == "." else f"{relpath}/{name}")
                for name in names
            )
        level = next_level
    runs.extend(RunRef(root, directory, relpath) for directory, relpath in level)
    runs.sort(key=lambda run: run.relpath)
    return RunScan(tuple(runs), tuple(errors))


def _child_dirs(directory: Path, state_dir: str) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.is_dir(follow_symlinks=False) and not _skipped_dir(entry.name, state_dir)
        )


def _skipped_dir(name: str, state_dir: str) -> bool:
    return name.startswith(".") or name == state_dir


@dataclass(frozen=True)
class LegacyOriginal:
    """An archived legacy original that belongs to a converted zip."""

    path: str  # run-relative, e.g. ".ckptd/legacy/rl_model_5000_steps.pkl"
    identity: FileIdentity
    sha256: str | None
    cached: ManifestEntry | None = None  # the previous manifest's entry, when still valid


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run as found on disk (plus its archived legacy original)."""

    path: str  # run-relative, posix
    step: int | None
    identity: FileIdentity
    format: Format
    sha256: str | None  # None when incomplete or when hashing was not asked for
    complete: bool
    status: str  # "ok", "incomplete", "unreadable", "unknown", "refused", "broken"
    legacy: LegacyOriginal | None = None
    converted_from: str | None = None  # run-relative path of the original before archiving
    cached: ManifestEntry | None = None  # the previous manifest's entry, when still valid
    error: str | None = None  # why it could not be read, when it could not
    verdict: Verdict | None = None  # pickle-bearing files judged by this pass (not cached ones)

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def mtime(self) -> datetime:
        return utc_from_ns(self.identity.mtime_ns)

    @property
    def total_size(self) -> int:
        """Bytes on disk counting the archived original (what retention budgets and prune frees)."""
        return self.size + (self.legacy.identity.size if self.legacy else 0)


@dataclass(frozen=True)
class RunInventory:
    """A run's checkpoints (sorted by path) and every archived original found in its state dir."""

    run: RunRef
    checkpoints: tuple[Checkpoint, ...]
    archived: tuple[LegacyOriginal, ...]
    # Run-relative paths of the regular files in the quarantine dir: a refused entry stays in the
    # manifest while the file it names there exists.
    quarantined: frozenset[str] = frozenset()


class _Found(NamedTuple):
    """A listed file. A tuple, and ``abspath`` a str, not a Path: a cold pass lists 100,000 files,
    and building objects per file costs more than the stat calls themselves."""

    relpath: str
    name: str
    abspath: str
    identity: FileIdentity

    @property
    def path(self) -> Path:
        return Path(self.abspath)


class CheckpointMatcher:
    """Name filters compiled once per config: patterns, ignore, temp names, ckptd's own files."""

    def __init__(self, checkpoints: CheckpointsConfig, manifest_filename: str) -> None:
        self._include = _compile_globs(checkpoints.patterns)
        self._ignore = _compile_globs(checkpoints.ignore)
        self._own = frozenset({manifest_filename, INDEX_FILENAME})
        self._step = re.compile(checkpoints.step_pattern)

    def matches(self, name: str) -> bool:
        if name in self._own or is_temp_name(name):
            return False
        return bool(self._include.match(name)) and not self._ignore.match(name)

    def step_of(self, name: str) -> int | None:
        match = self._step.search(name)
        if match is None:
            return None
        try:
            return int(match.group(1))
        except (IndexError, TypeError, ValueError):
            return None


def _compile_globs(globs: tuple[str, ...]) -> re.Pattern[str]:
    if not globs:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def _walk_files(
    directory: str, relpath: str, skip_dir: Callable[[str], bool], wanted: Callable[[str], bool]
) -> Iterator[_Found]:
    """Regular files below ``directory`` whose name is ``wanted`` (never through symlinks)."""
    with os.scandir(directory) as entries:
        subdirs = []
        for entry in entries:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                if not skip_dir(name):
                    subdirs.append((entry.path, f"{relpath}/{name}" if relpath else name))
            elif wanted(name) and entry.is_file(follow_symlinks=False):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished between listing and stat
                child = f"{relpath}/{name}" if relpath else name
                yield _Found(child, name, entry.path, _identity_of(st))
    for subdir, child in subdirs:
        try:
            yield from _walk_files(subdir, child, skip_dir, wanted)
        except OSError as err:
            logger.warning(
                "%s: cannot list directory (%s); its files are not inventoried", subdir, err
            )


def _identity_of(st: os.stat_result) -> FileIdentity:
    """``FileIdentity.of(st)`` without the frozen dataclass's per-field __init__ (hot loop)."""
    return build_frozen(
        FileIdentity,
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev},
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_ns(nanoseconds: int) -> datetime:
    """``ckptd.timefmt.from_ns`` in one datetime operation instead of three (once per checkpoint)."""
    return _EPOCH + timedelta(microseconds=nanoseconds // 1000)


def default_identifier() -> Identifier:
    """ckptd.formats.sniff.identify_checked: identify's label, found with less work, and the
    verdict on plain pickles, joblib and torch files."""
    return identify_checked


def hash_if_unchanged(path: Path, identity: FileIdentity) -> str | None:
    """sha256 of ``path`` if it is still the file ``identity`` describes before and after reading.

    Returns None when it changed (it is being written: treat it as incomplete). Never follows a
    final symlink (open_regular_nofollow).
    """
    digest = hashlib.sha256()
    with open_regular_nofollow(path) as handle:
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            return None
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
        if FileIdentity.of(os.fstat(handle.fileno())) != identity:
            return None
    return digest.hexdigest()


@dataclass(frozen=True)
class InventoryOptions:
    """How a run is inventoried: names, completeness age, and whether to hash."""

    matcher: CheckpointMatcher
    state_dir: str
    stable_for_ns: int
    hash_files: bool
    identify: Identifier


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
    found = list(_walk_files(str(run.run_dir), "", skip, options.matcher.matches))
    archived = _archived_originals(layout, options, now_ns, previous)
    archived_by_path = {original.path: original for original in archived}
    checkpoints = []
    for item in found:
        cached = _valid_cache(previous.get(item.relpath), item.identity)
        checkpoint = _checkpoint(item, options, now_ns, cached)
        if checkpoint is not None:
            checkpoints.append(checkpoint)
    if archived_by_path or any(c.converted_from is not None for c in checkpoints):
        checkpoints = _link_originals(checkpoints, archived_by_path, layout, options)
    checkpoints.sort(key=_by_path)
    return RunInventory(run, tuple(checkpoints), tuple(archived), _quarantined_files(layout))


_by_path = attrgetter("path")


def _to_ns(moment: datetime) -> int:
    whole = int(moment.timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def _dir_skipper(state_dir: str) -> Callable[[str], bool]:
    def skip(name: str) -> bool:
        return _skipped_dir(name, state_dir)

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
        found = list(_walk_files(str(layout.legacy), prefix.rstrip("/"), _never, _not_temp))
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


def _hash_or_none(item: _Found) -> str | None:
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


def _hash_checkpoint(item: _Found) -> _Hashed:
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
    item: _Found, options: InventoryOptions, now_ns: int, cached: ManifestEntry | None
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
    item: _Found, step: int | None, cached: ManifestEntry | None, err: OSError
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


def _link_originals(
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


def zip_name_for(source: str) -> str:
    """The zip converting ``source`` writes (``convert.default_output``, on run-relative paths)."""
    directory, slash, name = source.rpartition("/")
    stem, dot, _ = name.rpartition(".")
    zip_name = f"{stem}.zip" if dot and stem else f"{name}.zip"
    return f"{directory}{slash}{zip_name}"


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
