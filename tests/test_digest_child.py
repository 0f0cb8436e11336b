"""``ckptd convert`` hashes its first input in a child process begun before the converter loads.

``ckptd.fs.digest_child.ChildRead`` reads the file through the descriptor the CLI opened, in a
``python -I -S`` child running fixed code, and reports what ``SecondRead`` reports; the conversion
ties it to its own read exactly as it ties a helper thread's (``SourceDigest``: CRC-32 over the
whole file, stat on the descriptor unchanged). These tests run the real child.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
from pathlib import Path

import pytest

from ckptd.cli import convert_args
from ckptd.cli.main import main
from ckptd.convert.conversion import convert_file
from ckptd.errors import FileChangedError, UnsafePathError
from ckptd.fs.digest import THREADED_MIN_BYTES
from ckptd.fs.digest_child import ChildRead
from ckptd.fs.second_read import SecondRead
from tests.test_convert_source_digest import checkpoint_of, sha256sum

BIG = 3 << 20  # four arrays of 3 MiB: a ~12 MiB checkpoint, over THREADED_MIN_BYTES


def test_the_child_reports_what_a_helper_thread_does(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 << 20) + b"tail")
    with ChildRead(path) as child, SecondRead(path) as thread:
        by_child, by_thread = child.result(), thread.result()
    assert (by_child.sha256, by_child.crc, by_child.size) == (
        by_thread.sha256,
        by_thread.crc,
        by_thread.size,
    )
    assert by_child.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert by_child.opened.st_ino == by_child.finished.st_ino == path.stat().st_ino


def test_the_cli_uses_the_child_it_started_for_the_first_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest the conversion records is the child's (a read stopped unused has none)."""
    source = checkpoint_of(tmp_path / "m.pkl", BIG)
    assert source.stat().st_size >= THREADED_MIN_BYTES
    started: list[ChildRead] = []

    class Recorded(ChildRead):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            started.append(self)

    monkeypatch.setattr(convert_args, "ChildRead", Recorded)
    assert main(["convert", str(source), "-o", str(tmp_path / "m.zip")]) == 0
    (child,) = started
    assert child.pid is None  # reaped
    assert child.result().sha256 == sha256sum(source)


def test_a_file_rewritten_after_the_child_started_is_not_converted(tmp_path: Path) -> None:
    source = checkpoint_of(tmp_path / "m.pkl", BIG)
    early = ChildRead(source)
    blob = bytearray(source.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    with source.open("r+b") as handle:  # same inode, same size: only ctime and the bytes move
        handle.write(blob)
    with pytest.raises(FileChangedError, match=r"m\.pkl.*changed while it was being converted"):
        convert_file(source, output=tmp_path / "m.zip", source_read=early)
    assert not (tmp_path / "m.zip").exists()
    assert source.read_bytes() == blob
    assert early.pid is None


def test_a_child_that_dies_fails_the_conversion_with_one_line(tmp_path: Path) -> None:
    source = checkpoint_of(tmp_path / "m.pkl", BIG)
    before = source.read_bytes()
    early = ChildRead(source)
    assert early.pid is not None
    os.kill(early.pid, signal.SIGKILL)
    with pytest.raises(OSError, match=r"the process hashing .*m\.pkl failed \(exit status -9\)"):
        convert_file(source, output=tmp_path / "m.zip", source_read=early)
    assert not (tmp_path / "m.zip").exists()
    assert source.read_bytes() == before


def test_close_kills_and_reaps_a_running_child(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    with path.open("wb") as handle:
        handle.truncate(256 << 20)  # a sparse 256 MiB: the child is still reading it
    read = ChildRead(path)
    pid = read.pid
    assert pid is not None
    read.close()
    read.close()
    assert read.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    with pytest.raises(RuntimeError, match="stopped"):
        read.result()


def test_links_and_what_is_not_a_regular_file_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        ChildRead(tmp_path / "link")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        ChildRead(tmp_path)


@pytest.mark.parametrize("kind", ["big", "small", "link", "directory", "missing"])
def test_the_cli_starts_a_child_only_for_a_big_regular_first_input(
    tmp_path: Path, kind: str
) -> None:
    big = checkpoint_of(tmp_path / "big.pkl", BIG)
    small = checkpoint_of(tmp_path / "small.pkl", 1 << 10)
    (tmp_path / "link.pkl").symlink_to(big)
    first = {
        "big": big,
        "small": small,
        "link": tmp_path / "link.pkl",
        "directory": tmp_path,
        "missing": tmp_path / "gone.pkl",
    }[kind]
    args = argparse.Namespace(paths=[first, big])
    convert_args.start_source_reads(args)
    try:
        assert list(args.source_reads) == ([big] if kind == "big" else [])
    finally:
        for read in args.source_reads.values():
            read.close()
