"""Scrubbing a directory checkpoint: every file re-hashed against the manifest's per-file hashes.

The directory is listed no-follow (``ckptd.runs.dir_listing``) and each recorded file opened from
the run's descriptor (``ckptd.fs.runfs``), read at the scrub's pace. Each problem names the file:
``optimizer.pt: sha256 mismatch ...``, ``scheduler.pt: missing``, ``extra.bin: not recorded``
(a file added behind ckptd's back). The files' structure is not re-verified one by one: the
per-file hashes recorded when the directory was complete are the check.
"""

from __future__ import annotations

from pathlib import Path

from ckptd.errors import CkptdError, UnsafePathError
from ckptd.fs.runfs import RunFS
from ckptd.manifest.model import ManifestEntry, directory_digest
from ckptd.ops.ratelimit import RateLimiter
from ckptd.ops.scrub_check import Check, ScrubProgress, StopCheck, hash_open_paced
from ckptd.runs.dir_listing import list_directory


def check_directory(
    run_dir: Path,
    entry: ManifestEntry,
    limiter: RateLimiter,
    *,
    progress: ScrubProgress | None = None,
    stop: StopCheck | None = None,
) -> Check:
    """Re-hash every file of a directory entry; never raises for bad content."""
    fs = RunFS(run_dir)
    reldir = entry.path.rstrip("/")
    try:
        listing = list_directory(fs, reldir).listing
    except FileNotFoundError:
        return Check(entry, ("missing: recorded in the manifest but not on disk",), None, 0)
    except UnsafePathError as err:
        return Check(entry, (f"replaced: {err.message}",), None, 0)
    except OSError as err:
        return Check(entry, (f"unreadable: {err.strerror or err}",), None, 0)
    on_disk = {item.path for item in listing.files}
    problems: list[str] = []
    hashes: dict[str, str] = {}
    total = 0
    for record in entry.files or ():
        if record.path not in on_disk:
            problems.append(f"{record.path}: missing")
            continue
        try:
            with fs.open_read(f"{reldir}/{record.path}") as handle:
                actual, size, _ = hash_open_paced(handle, limiter, progress, stop)
        except CkptdError as err:
            problems.append(f"{record.path}: replaced: {err.message}")
            continue
        except OSError as err:
            problems.append(f"{record.path}: unreadable: {err.strerror or err}")
            continue
        total += size
        hashes[record.path] = actual
        if actual != record.sha256:
            problems.append(
                f"{record.path}: sha256 mismatch: recorded {record.sha256}, now {actual}"
            )
            if size != record.size:
                problems.append(
                    f"{record.path}: size changed: recorded {record.size} bytes, now {size}"
                )
    recorded = {record.path for record in entry.files or ()}
    problems.extend(
        f"{path}: not recorded (added behind ckptd's back)" for path in sorted(on_disk - recorded)
    )
    digest = directory_digest(hashes.items()) if len(hashes) == len(recorded) else None
    return Check(entry, tuple(problems), digest, total)
