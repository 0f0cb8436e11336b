"""Shared pieces of the hostile-run tests: a sentinel directory beside the root that must stay
untouched byte for byte, planting helpers, and the real ``ckptd`` CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = ".ckptd"


def snapshot(directory: Path) -> dict[str, object]:
    """Every entry below ``directory``: bytes and mode of files, link targets, directories."""
    found: dict[str, object] = {}
    for current, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(current) / name
            rel = path.relative_to(directory).as_posix()
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode)
            elif path.is_file():
                found[rel] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
            else:
                found[rel] = ("other", st.st_mode)
    return found


def make_sentinel(tmp_path: Path) -> Path:
    """``tmp_path/outside``: bait named like what an attack would reach for, at two depths."""
    outside = tmp_path / "outside"
    for directory in (outside, outside / "sub", outside / "legacy", outside / "trash"):
        directory.mkdir(parents=True, exist_ok=True)
    for name in ("precious.zip", "rl_model_1000_steps.pkl", "sub/rl_model_1000_steps.pkl"):
        (outside / name).write_bytes(b"sentinel " + name.encode())
    return outside


def plant(path: Path, kind: str, target: Path) -> None:
    """Replace ``path`` (if present) by a symlink to ``target``, a FIFO or a plain file."""
    if path.is_dir() and not path.is_symlink():
        os.rename(path, path.with_name(path.name + ".moved-away"))
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "file":
        path.write_bytes(b"not a directory")
    else:
        raise ValueError(kind)


def ckptd(*args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The real CLI; asserts it never prints a traceback and every stderr line is one message."""
    env = dict(os.environ, COLUMNS="300", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [sys.executable, "-m", "ckptd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done
