"""Test environments built once into the cache (``~/.cache/ckptd-tests`` or ``$CKPTD_TEST_CACHE``).

A build happens in a temporary directory beside its target and is renamed into place only when it
finished, with a marker listing what it holds; a killed build leaves nothing that looks complete,
and of two concurrent builds the first to finish is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

COMPLETE = ".ckptd-complete"


def cache_root() -> Path:
    configured = os.environ.get("CKPTD_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "ckptd-tests"


def build_once(name: str, populate: Callable[[Path], list[str]]) -> Path:
    """``cache_root() / name``, made by ``populate(build_dir)`` (returning the marker's lines)
    on first use."""
    root = cache_root()
    target = root / name
    if (target / COMPLETE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{name.partition('-')[0]}-build-", dir=root))
    try:
        record = populate(build)
        (build / COMPLETE).write_text("\n".join(record) + "\n")
        if (target / COMPLETE).exists():  # another run finished first: keep the one in use
            shutil.rmtree(build, ignore_errors=True)
            return target
        shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover without the marker
        os.rename(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return target
