"""``ckptd quarantine list | show | release``: what was refused as unsafe, why, and letting it out.

The daemon (``pipeline.quarantine``) moves a refused file to ``<run>/.ckptd/quarantine/<name>``
(mode 0400, never overwriting: ``<name>.1``...) after writing ``<name>.reason.json`` beside it::

    {"schema": "ckptd.quarantine/1", "original_path": "/abs/run/x.pkl", "run_path": "x.pkl",
     "quarantined_as": "x.pkl", "sha256": "...", "size": 123, "refusal": "refused: ...",
     "quarantined_at": "2026-...Z"}

``show`` describes the file with the static inspection (``ckptd.ops.inspection``): every global it
names and whether the allowlist accepts it, and where the refusal is. Nothing is unpickled.

``release`` needs the caller's explicit trust (``--i-trust-this-file``), is logged at WARNING and
recorded in the manifest entry (``"released": {...}``), and only moves the file back to where it
was: its manifest entry stays ``refused`` with the file's unchanged size and mtime, so the daemon
does not pick it up again, and conversion still never executes it.

While a file is in the quarantine, its ``refused`` entry (at the path it was refused at, with
``quarantine`` naming where it is now) survives manifest and prune passes (``ckptd.runs.rebuild``);
release drops ``quarantine`` from it, and a quarantined file deleted by hand drops the entry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ckptd.config.model import Config
from ckptd.errors import CkptdError, StateError
from ckptd.formats import Format
from ckptd.formats.sniff import identify
from ckptd.fs.files import FileIdentity, is_temp_name
from ckptd.fs.runfs import relpath_problem
from ckptd.manifest.model import QUARANTINE_KEY, Manifest, ManifestEntry
from ckptd.manifest.updates import set_entry
from ckptd.ops.inspect_report import InspectReport
from ckptd.ops.inspection import inspect_path
from ckptd.pipeline.quarantine import REASON_SCHEMA, REASON_SUFFIX
from ckptd.runs.access import (
    OPS_LOCK_TIMEOUT,
    RunHandle,
    load_manifest_or_none,
    locate,
    require_plain_relpath,
    save_manifest,
    sha256_in_run,
)
from ckptd.runs.listing import CheckpointMatcher
from ckptd.runs.statedir import QUARANTINE_DIR, run_lock
from ckptd.timefmt import format_utc, from_ns, parse_utc

logger = logging.getLogger(__name__)

RELEASED_KEY = "released"
RELEASED_MODE = 0o644
_MAX_REASON_BYTES = 1024 * 1024


@dataclass(frozen=True)
class QuarantinedFile:
    """One file in a run's quarantine and the reason it is there."""

    run_dir: Path
    name: str  # inside the quarantine dir
    path: str  # run-relative, e.g. ".ckptd/quarantine/x.pkl"
    size: int
    original: str | None  # run-relative path it was moved from
    refusal: str | None
    sha256: str | None
    quarantined_at: datetime | None
    problem: str | None = None  # the reason file is missing or unreadable

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": str(self.run_dir),
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "original": self.original,
            "refusal": self.refusal,
            "sha256": self.sha256,
            "quarantined_at": None
            if self.quarantined_at is None
            else format_utc(self.quarantined_at),
            "problem": self.problem,
        }


def list_quarantine(handle: RunHandle) -> list[QuarantinedFile]:
    """Every quarantined file of the run (sorted by name), with its reason file's contents."""
    fs = handle.layout.fs
    files = []
    for name in fs.listdir(handle.state_relpath(QUARANTINE_DIR)):
        if name.endswith(REASON_SUFFIX) or is_temp_name(name):
            continue
        try:
            st = fs.regular(handle.state_relpath(QUARANTINE_DIR, name))
        except (FileNotFoundError, CkptdError):
            continue  # released meanwhile, or not something ckptd put there
        files.append(_describe(handle, name, st.st_size))
    return files


def _describe(handle: RunHandle, name: str, size: int) -> QuarantinedFile:
    path = handle.state_relpath(QUARANTINE_DIR, name)
    try:
        reason = _read_reason(handle, handle.state_relpath(QUARANTINE_DIR, name + REASON_SUFFIX))
    except FileNotFoundError:
        return QuarantinedFile(
            handle.run_dir, name, path, size, None, None, None, None, "no reason file"
        )
    except StateError as err:
        return QuarantinedFile(
            handle.run_dir, name, path, size, None, None, None, None, err.message
        )
    quarantined_at = reason.get("quarantined_at")
    try:
        when = parse_utc(quarantined_at) if isinstance(quarantined_at, str) else None
    except ValueError:
        when = None
    return QuarantinedFile(
        handle.run_dir,
        name,
        path,
        size,
        _text(reason.get("run_path")),
        _text(reason.get("refusal")),
        _text(reason.get("sha256")),
        when,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _read_reason(handle: RunHandle, relpath: str) -> dict[str, Any]:
    path = handle.run_dir / relpath
    try:
        raw = handle.layout.fs.read_bytes(relpath, limit=_MAX_REASON_BYTES)
    except FileNotFoundError:
        raise
    except CkptdError as err:
        raise StateError(f"cannot read reason file: {err.message}", path=str(path)) from err
    except OSError as err:
        raise StateError(f"cannot read reason file: {err.strerror}", path=str(path)) from err
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise StateError(f"reason file is not valid JSON ({err})", path=str(path)) from err
    if not isinstance(document, dict) or document.get("schema") != REASON_SCHEMA:
        raise StateError(f"reason file is not a {REASON_SCHEMA} document", path=str(path))
    return document


def find(path: Path, config: Config | None = None) -> QuarantinedFile:
    """The quarantined file ``path`` names: the file in the quarantine, its reason file, or the
    path it was quarantined from. CkptdError (naming the path) when it is none of these."""
    handle, relpath = locate(path, config)
    require_plain_relpath(handle, relpath)
    prefix = handle.state_relpath(QUARANTINE_DIR) + "/"
    listed = list_quarantine(handle)
    if relpath.startswith(prefix):
        name = relpath[len(prefix) :].removesuffix(REASON_SUFFIX)
        for item in listed:
            if item.name == name:
                return item
        raise CkptdError("is not a quarantined file", path=str(path))
    matches = [item for item in listed if item.original == relpath]
    if not matches:
        raise CkptdError(
            "is not in the quarantine of its run (see `ckptd quarantine list`)", path=str(path)
        )
    return max(matches, key=lambda item: item.quarantined_at or datetime.min.replace(tzinfo=UTC))


# ---- show ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineShow:
    """A quarantined file, its recorded reason and what the static inspection finds in it."""

    item: QuarantinedFile
    sha256_now: str
    report: InspectReport

    @property
    def intact(self) -> bool:
        return self.item.sha256 is None or self.item.sha256 == self.sha256_now

    def to_json_obj(self) -> dict[str, object]:
        obj = self.item.to_json_obj()
        obj["sha256_now"] = self.sha256_now
        obj["intact"] = self.intact
        obj["inspect"] = self.report.as_json()
        return obj


def show(path: Path, config: Config | None = None) -> QuarantineShow:
    """Describe a quarantined file statically; never executes or imports anything from it."""

    item = find(path, config)
    handle, _ = locate(item.run_dir / item.path, config)
    file_path = item.run_dir / item.path
    digest = sha256_in_run(handle, item.path)
    return QuarantineShow(item, digest, inspect_path(file_path))


# ---- release ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseResult:
    run_dir: Path
    quarantined_as: str
    path: str  # where it is now (run-relative)
    sha256: str
    refusal: str | None
    manifest_updated: bool

    def to_json_obj(self) -> dict[str, object]:
        return {
            "run": str(self.run_dir),
            "from": self.quarantined_as,
            "to": self.path,
            "sha256": self.sha256,
            "refusal": self.refusal,
            "manifest_updated": self.manifest_updated,
        }


def release(
    path: Path,
    *,
    trusted: bool,
    now: datetime,
    config: Config | None = None,
    lock_timeout: float = OPS_LOCK_TIMEOUT,
) -> ReleaseResult:
    """Move a quarantined file back to where it was quarantined from (see the module docstring).

    Raises CkptdError without moving anything unless ``trusted``, when the file's sha256 is not
    the one recorded when it was refused, when its reason file does not say where it came from, or
    when a live file has that name now.
    """
    if not trusted:
        raise CkptdError(
            "releasing a refused file needs --i-trust-this-file (it stays refused: ckptd will "
            "still never convert or execute it)",
            path=str(path),
        )
    item = find(path, config)
    handle, _ = locate(item.run_dir / item.path, config)
    source = handle.run_dir / item.path
    if item.original is None:
        raise CkptdError(
            f"{item.problem or 'reason file does not name the original path'}; move it by hand",
            path=str(source),
        )
    original = item.original
    reason_file = str(handle.run_dir / (item.path + REASON_SUFFIX))
    if relpath_problem(original) is not None:
        raise CkptdError(
            f"reason file names {original!r} as the original path, which "
            f"{relpath_problem(original)}; not releasing it there (move it by hand)",
            path=reason_file,
        )
    if handle.in_state_dir(original):
        raise CkptdError("reason file names a path inside the state dir", path=reason_file)
    fs = handle.layout.fs
    with run_lock(handle.layout, timeout=lock_timeout):
        st = fs.regular(item.path)
        digest = sha256_in_run(handle, item.path)
        if item.sha256 is not None and digest != item.sha256:
            raise CkptdError(
                f"sha256 {digest} differs from {item.sha256} recorded when it was refused; "
                "not releasing a file that is not the one judged",
                path=str(source),
            )
        destination = handle.run_dir / original
        try:
            fs.move(item.path, original, create_parents=True)
        except FileExistsError:
            raise CkptdError(
                "a file of that name is already there; refusing to overwrite it",
                path=str(destination),
            ) from None
        fs.chmod(original, RELEASED_MODE)
        fs.unlink(item.path + REASON_SUFFIX, missing_ok=True)
        logger.warning(
            "released %s from quarantine to %s on the operator's explicit trust "
            "(sha256 %s; it was refused: %s); it stays recorded as refused and is never converted",
            source,
            destination,
            digest,
            item.refusal,
        )
        identity = FileIdentity.of(st)
        manifest = load_manifest_or_none(handle)
        base = manifest or Manifest(run=handle.relpath, generated_at=now, policy=handle.policy)
        new = _record_release(handle, base, item, original, identity, digest, now)
        updated = save_manifest(handle, new, manifest, now)
    return ReleaseResult(handle.run_dir, item.path, original, digest, item.refusal, updated)


def _record_release(
    handle: RunHandle,
    manifest: Manifest,
    item: QuarantinedFile,
    original: str,
    identity: FileIdentity,
    digest: str,
    now: datetime,
) -> Manifest:
    """The manifest with the released file recorded ``refused`` at its old path.

    The entry must match the file's (size, mtime) exactly: that is what tells the daemon the
    verdict is final, so it does not refuse and quarantine the file again.
    """
    refusal = item.refusal or "refused (reason file lost)"
    released = {
        "at": format_utc(now),
        "from": item.path,
        "sha256": digest,
        "refusal": refusal,
    }

    previous = manifest.by_path().get(original)
    matcher = CheckpointMatcher(handle.checkpoints, handle.manifest_filename)
    base = previous or ManifestEntry(
        path=original,
        step=matcher.step_of(original.rpartition("/")[2]),
        size=identity.size,
        mtime=from_ns(identity.mtime_ns),
        sha256=digest,
        format=Format(identify(handle.run_dir / original).format),
        state="refused",
        refusal=refusal,
    )
    extra = {key: value for key, value in base.extra.items() if key != QUARANTINE_KEY}
    extra[RELEASED_KEY] = released
    entry = dataclasses.replace(
        base,
        size=identity.size,
        mtime=from_ns(identity.mtime_ns),
        mtime_ns=identity.mtime_ns,
        sha256=digest,
        state="refused",
        refusal=base.refusal or refusal,
        error=None,
        extra=extra,
    )
    return set_entry(manifest, entry)
