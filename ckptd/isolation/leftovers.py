"""What a conversion killed in its child leaves behind: its temp file beside the target.

The supervisor (``ckptd.isolation.supervisor``) kills a child that is over its deadline or dies;
a conversion it was writing leaves ``fsio.atomic_write``'s temp file, removed here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ckptd.errors import UnsafePathError
from ckptd.fs.runfs import RunFS

logger = logging.getLogger(__name__)


def remove_temps_of(target: Path, run_dir: Path | None) -> None:
    """Remove the temp files a killed conversion left beside ``target`` (``fsio.atomic_write``'s
    names for it), walking from the run's directory without following links (``ckptd.fs.runfs``);
    the run lock the batch holds means no other ckptd writer owns them."""
    base = Path(run_dir) if run_dir is not None else target.parent
    try:
        reldir = target.parent.relative_to(base).as_posix()
        removed = RunFS(base).remove_stale_temps(
            "" if reldir == "." else reldir, older_than_s=0.0, now=time.time(), of=target.name
        )
    except (OSError, ValueError, UnsafePathError):
        return
    for name in removed:
        logger.info("removed %s left by a killed conversion", target.parent / name)
