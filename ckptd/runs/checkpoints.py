"""What an inventory finds: checkpoints, archived originals, and the marks their entries carry.

The value types of ``ckptd.runs.inventory`` (which builds them) and ``ckptd.runs.linking`` (which
attaches archived originals to their zips), and the statuses and entry keys the pipeline and the
passes share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from ckptd.formats import Format
from ckptd.fs.files import FileIdentity
from ckptd.manifest.model import ManifestEntry, ManifestState
from ckptd.pickles.verdict import Verdict
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.roots import RunRef


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_ns(nanoseconds: int) -> datetime:
    """``ckptd.timefmt.from_ns`` in one datetime operation instead of three (once per checkpoint;
    the timedelta's arguments positional: a keyword costs more than the addition)."""
    return _EPOCH + timedelta(0, 0, nanoseconds // 1000)


@dataclass(frozen=True)
class InventoryOptions:
    """How a run is inventoried: names, completeness age, and whether to hash."""

    matcher: CheckpointMatcher
    state_dir: str
    stable_for_ns: int
    hash_files: bool
    identify: Identifier


def first_entry(checkpoint: Checkpoint, state: ManifestState) -> ManifestEntry:
    """The entry a checkpoint with no previous one starts from (no hash yet: the caller adds
    what its pass learned)."""
    return ManifestEntry(
        path=checkpoint.path,
        step=checkpoint.step,
        size=checkpoint.size,
        mtime=checkpoint.mtime,
        sha256=None,
        format=checkpoint.format,
        state=state,
    )
