"""Checking one file for a scrub: re-hash it at the paced rate and re-verify its structure.

Per file: it is still a regular file, its sha256 (and size) equal the manifest's, and its structure
verifies (``verify_zip`` for zips, the static legacy parse for pickles; nothing is executed). Only
the hashing is metered: the verification that follows re-reads a file that was just read, normally
from the page cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.verify import verify_zip
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.manifest.model import ManifestEntry
from ckptd.ops.ratelimit import SCRUB_CHUNK, RateLimiter
from ckptd.ops.verification import verify_file

StopCheck = Callable[[], bool]
# Re-verifies a file's structure: its problems, one line each. The daemon passes one that parses
# in a child process with the file's limits (ckptd.isolation.supervisor); the CLI uses verify_structure.
StructureCheck = Callable[[Path, Format], tuple[str, ...]]


class ScrubProgress(Protocol):
    """Where a scrub reports how far it got (the CLI's progress bar; None in the daemon)."""

    def start(self, total_bytes: int, files: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def current(self, label: str) -> None: ...


class Stopped(Exception):
    """The caller asked the scrub to stop (daemon shutdown)."""


@dataclass(frozen=True)
class Check:
    """One file's check: its entry as it was when checked, and what was found."""

    entry: ManifestEntry  # as it was when checked
    problems: tuple[str, ...]
    actual_sha256: str | None
    bytes_read: int


def hash_paced(
    path: Path, limiter: RateLimiter, progress: ScrubProgress | None, stop: StopCheck | None
) -> tuple[str, int, os.stat_result]:
    with open_regular_nofollow(path) as handle:
        return hash_open_paced(handle, limiter, progress, stop)


def hash_open_paced(
    handle: BinaryIO, limiter: RateLimiter, progress: ScrubProgress | None, stop: StopCheck | None
) -> tuple[str, int, os.stat_result]:
    """sha256 and bytes of an open file, read at the limiter's pace; its fstat from the start."""
    digest = hashlib.sha256()
    buffer = bytearray(SCRUB_CHUNK)
    view = memoryview(buffer)
    total = 0
    st = os.fstat(handle.fileno())
    while True:
        if stop is not None and stop():
            raise Stopped
        count = os.readv(handle.fileno(), [view])
        if not count:
            break
        digest.update(view[:count])
        total += count
        if progress is not None:
            progress.advance(count)
        limiter.acquire(count)
    return digest.hexdigest(), total, st


def check_entry(
    run_dir: Path,
    entry: ManifestEntry,
    limiter: RateLimiter,
    *,
    progress: ScrubProgress | None = None,
    stop: StopCheck | None = None,
    structure: StructureCheck | None = None,
) -> Check:
    """Re-hash and re-verify one file against its manifest entry; never raises for bad content."""
    path = run_dir / entry.path
    try:
        actual, size, st = hash_paced(path, limiter, progress, stop)
    except FileNotFoundError:
        return Check(entry, ("missing: recorded in the manifest but not on disk",), None, 0)
    except CkptdError as err:  # a symlink or a non-file where the checkpoint was
        return Check(entry, (f"replaced: {err.message}",), None, 0)
    except OSError as err:
        return Check(entry, (f"unreadable: {err.strerror or err}",), None, 0)
    problems: list[str] = []
    if actual != entry.sha256:
        problems.append(f"sha256 mismatch: recorded {entry.sha256}, now {actual}")
        if size != entry.size:
            hint = " (truncated?)" if size < entry.size else ""
            problems.append(f"size changed: recorded {entry.size} bytes, now {size}{hint}")
        if entry.mtime_ns is not None and st.st_mtime_ns != entry.mtime_ns:
            problems.append("mtime changed: rewritten or replaced behind ckptd's back")
    check = structure or verify_structure
    problems.extend(f"structure: {line}" for line in check(path, entry.format))
    return Check(entry, tuple(problems), actual, size)


def verify_structure(path: Path, fmt: Format, limits: Limits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """The problems of ``path``'s structure as a ``fmt`` file, in this process (none: it verifies)."""
    if fmt in (Format.SB2_ZIP, Format.SB3_ZIP):
        report = verify_zip(path, limits=limits)
        return () if report.ok else report.problems or ("does not verify",)
    if fmt in (Format.SB2_PICKLE, Format.TORCH_ZIP, Format.SAFETENSORS):
        # torch zips: CRCs and storages against data.pkl; safetensors: header and offsets.
        verdict = verify_file(path, limits=limits)
        return () if verdict.ok else verdict.problems or (verdict.status,)
    return ()  # unknown content: ckptd never claimed to understand it, the hash is the check
