"""Atomic writes, temp-file hygiene and safe reads."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from ckptd.errors import UnsafePathError
from ckptd.fs import files as fsio
from ckptd.fs.runfs import RunFS


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    dest = tmp_path / "manifest.json"
    dest.write_bytes(b"old")
    with fsio.atomic_write(dest) as handle:
        handle.write(b"new contents")
        # Until the block exits, readers still see the old file.
        assert dest.read_bytes() == b"old"
    assert dest.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert (dest.stat().st_mode & 0o777) == 0o644


def test_atomic_write_error_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "x.zip"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), fsio.atomic_write(dest) as handle:
        handle.write(b"partial")
        raise RuntimeError("disk full")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.zip"]


def test_before_replace_failure_keeps_dest_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "x.zip"
    seen: list[bytes] = []

    def verify(temp: Path) -> None:
        seen.append(temp.read_bytes())
        assert fsio.is_temp_name(temp.name)
        raise ValueError("verification failed")

    with pytest.raises(ValueError), fsio.atomic_write(dest, before_replace=verify) as handle:
        handle.write(b"data")
    assert seen == [b"data"]
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_temp_names_match_no_checkpoint_pattern(tmp_path: Path) -> None:
    temp = fsio.temp_path_for(tmp_path / "rl_model_5000_steps.zip")
    assert fsio.is_temp_name(temp.name)
    assert not temp.name.endswith((".zip", ".pkl"))


def test_remove_stale_temps_only_removes_old_ckptd_temps(tmp_path: Path) -> None:
    old = fsio.temp_path_for(tmp_path / "a.zip")
    fresh = fsio.temp_path_for(tmp_path / "b.zip")
    other = tmp_path / "user.tmp"
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    removed = RunFS(tmp_path).remove_stale_temps("", older_than_s=600, now=time.time())
    assert removed == [old.name]
    assert fresh.exists() and other.exists()


def test_open_regular_nofollow_refuses_symlink_and_dirs(tmp_path: Path) -> None:
    target = tmp_path / "real.pkl"
    target.write_bytes(b"\x80\x04")
    link = tmp_path / "link.pkl"
    link.symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        fsio.open_regular_nofollow(link)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        fsio.open_regular_nofollow(tmp_path)
    with fsio.open_regular_nofollow(target) as handle:
        assert handle.read() == b"\x80\x04"


def test_sha256_file_streams(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * (fsio.CHUNK_SIZE + 5))
    digest, size = fsio.sha256_file(path)
    assert digest == hashlib.sha256(b"a" * (fsio.CHUNK_SIZE + 5)).hexdigest()
    assert size == fsio.CHUNK_SIZE + 5


@pytest.mark.timeout(10)
def test_open_regular_nofollow_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """Regression: a FIFO named like a checkpoint made inspect/verify wait forever for a writer."""
    fifo = tmp_path / "rl_model_100_steps.pkl"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        fsio.open_regular_nofollow(fifo)


@pytest.mark.parametrize("size", [3, 9 << 20])  # fsync before the check / beside it
def test_a_failed_fsync_keeps_dest_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """A large file is fsynced beside ``before_replace``; a failed fsync (EIO) still stops the
    rename, whichever way it ran."""
    dest = tmp_path / "f.zip"
    dest.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsio.os, "fsync", failing_fsync)
    with (
        pytest.raises(OSError, match="Input/output error"),
        fsio.atomic_write(dest, before_replace=lambda temp: None) as handle,
    ):
        handle.write(b"n" * size)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zip"]
