"""Quarantine a refused file: move it durably under ``<state>/quarantine/`` beside its reason.

The reason file (``<name>.reason.json``, schema ``ckptd.quarantine/1``) is what ``ckptd quarantine``
lists and shows (``ckptd.quarantine``).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from ckptd.errors import FileChangedError
from ckptd.fsio import (
    FileIdentity,
    durable_move,
    fsync_dir,
    unique_destination,
    write_bytes_atomic,
)
from ckptd.statedir import StateLayout
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
    destination = unique_destination(layout.quarantine, path.name)
    reason = {
        "schema": REASON_SCHEMA,
        "original_path": str(path),
        "run_path": path.relative_to(layout.run_dir).as_posix(),
        "quarantined_as": destination.name,
        "sha256": sha256,
        "size": identity.size,
        "refusal": refusal,
        "quarantined_at": format_utc(now),
    }
    reason_path = destination.with_name(destination.name + REASON_SUFFIX)
    write_bytes_atomic(reason_path, (json.dumps(reason, indent=2) + "\n").encode())
    if FileIdentity.of(os.stat(path, follow_symlinks=False)) != identity:
        reason_path.unlink(missing_ok=True)
        raise FileChangedError("changed before it could be quarantined", path=str(path))
    durable_move(path, destination)
    os.chmod(destination, QUARANTINE_MODE, follow_symlinks=False)
    fsync_dir(destination.parent)
    return destination
