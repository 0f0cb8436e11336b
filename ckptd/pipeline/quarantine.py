"""Quarantine a refused file: move it durably under ``<state>/quarantine/`` beside its reason.

The reason file (``<name>.reason.json``, schema ``ckptd.quarantine/1``) is what ``ckptd quarantine``
lists and shows (``ckptd.ops.quarantine``). Every step walks from the run's directory with no symlink
followed (``ckptd.fs.runfs``), so a planted link in the state dir is refused, never moved through.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ckptd.errors import FileChangedError
from ckptd.fs.files import FileIdentity
from ckptd.runs.statedir import QUARANTINE_DIR, StateLayout
from ckptd.timefmt import format_utc

QUARANTINE_MODE = 0o400
REASON_SUFFIX = ".reason.json"
REASON_SCHEMA = "ckptd.quarantine/1"


def quarantine(
    path: Path,
    layout: StateLayout,
    identity: FileIdentity,
    sha256: str,
    refusal: str,
    now: datetime,
) -> Path:
    """Move a refused file to ``<state>/quarantine/<name>`` (never overwriting), mode 0400.

    The reason file (``<name>.reason.json``) is written first, so a crash in between leaves the
    file in place with a reason ready for the retry, never a quarantined file without a reason.
    The file must still be what was judged (FileChangedError otherwise). Returns the new path.
    """
    layout.ensure()
    fs = layout.fs
    relpath = path.relative_to(layout.run_dir).as_posix()
    quarantine_dir = layout.rel(QUARANTINE_DIR)
    name = fs.unique_name(quarantine_dir, path.name)
    reason = {
        "schema": REASON_SCHEMA,
        "original_path": str(path),
        "run_path": relpath,
        "quarantined_as": name,
        "sha256": sha256,
        "size": identity.size,
        "refusal": refusal,
        "quarantined_at": format_utc(now),
    }
    reason_rel = layout.rel(QUARANTINE_DIR, name + REASON_SUFFIX)
    fs.write_atomic(reason_rel, (json.dumps(reason, indent=2) + "\n").encode())
    current = fs.lstat(relpath)
    if current is None or FileIdentity.of(current) != identity:
        fs.unlink(reason_rel, missing_ok=True)
        raise FileChangedError("changed before it could be quarantined", path=str(path))
    try:
        fs.move(relpath, layout.rel(QUARANTINE_DIR, name))
    except BaseException:
        fs.unlink(reason_rel, missing_ok=True)
        raise
    fs.chmod(layout.rel(QUARANTINE_DIR, name), QUARANTINE_MODE)
    return layout.run_dir / layout.rel(QUARANTINE_DIR, name)
