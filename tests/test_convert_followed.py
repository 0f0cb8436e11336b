"""A large zip's re-read follows its kernel copy (``ckptd.formats.sb2zip.write_checked_sb2_zip``).

The copy runs in a helper thread and the re-read takes each chunk once the copy is past it, so
the two overlap on two cores (README, "Benchmarks"). What must hold as before: the same bytes as
when the re-read waited for the whole copy, every damaged byte caught before the rename, the
copy's own error raised as the conversion's, no helper thread and no temp file left behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.convert.conversion import convert_file
from ckptd.errors import VerifyError
from ckptd.formats import sb2zip
from ckptd.formats.storedzip import compare_file_with_pieces
from ckptd.fs.digest import THREADED_MIN_BYTES
from tests.sb2_fixtures import dqn_data, stand_ins, write_checkpoint

ARRAY_BYTES = 5 << 20  # four of these: a zip well over the size from which the copy is followed


def large_checkpoint(path: Path) -> tuple[Path, list[bytes]]:
    rng = np.random.default_rng(7)
    params: OrderedDict[str, np.ndarray] = OrderedDict()
    for index in range(4):
        params[f"model/layer{index}/w:0"] = rng.standard_normal(
            (ARRAY_BYTES // 4 // 64, 64)
        ).astype(np.float32)
    params["model/small/b:0"] = rng.standard_normal(7).astype(np.float32)
    with stand_ins():
        write_checkpoint(path, dqn_data(), params, protocol=4)
    return path, [array.tobytes() for array in params.values()]


def copy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "ckptd-copy"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_followed_copy_writes_the_bytes_the_waiting_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = large_checkpoint(tmp_path / "m.pkl")
    seen: list[tuple[str, bool]] = []
    real_copy = sb2zip.copy_pieces

    def spy(handle: Any, pieces: Any, written: Any = None) -> int:
        seen.append((threading.current_thread().name, written is not None))
        return real_copy(handle, pieces, written)

    monkeypatch.setattr(sb2zip, "copy_pieces", spy)
    followed = convert_file(source, output=tmp_path / "followed.zip")
    assert seen == [("ckptd-copy", True)]  # this path really ran
    assert followed.output_size > THREADED_MIN_BYTES

    monkeypatch.setattr(sb2zip, "THREADED_MIN_BYTES", 1 << 62)  # the copy first, then the re-read
    waited = convert_file(source, output=tmp_path / "waited.zip")
    assert seen[1] == ("MainThread", False)

    assert (tmp_path / "followed.zip").read_bytes() == (tmp_path / "waited.zip").read_bytes()
    assert followed.output_sha256 == waited.output_sha256 == sha256(tmp_path / "followed.zip")
    assert followed.source_sha256 == sha256(source)
    assert copy_threads() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["followed.zip", "m.pkl", "waited.zip"]


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_byte_damaged_behind_the_followed_copy_stops_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    source, payloads = large_checkpoint(tmp_path / "m.pkl")
    real_copy = sb2zip.copy_pieces
    damaged = payloads[0] if where == "first" else payloads[-2]

    def copy_then_damage(handle: Any, pieces: Any, written: Any = None) -> int:
        size = real_copy(handle, pieces)  # not followed: the re-read waits for the end
        (temp,) = tmp_path.glob(".ckptd-tmp-*")
        start = temp.read_bytes().find(damaged)
        assert start > 0
        os.pwrite(handle.fileno(), b"\x00\x01\x02\x03", start + len(damaged) // 2)
        return size

    monkeypatch.setattr(sb2zip, "copy_pieces", copy_then_damage)
    with pytest.raises(VerifyError, match=r"differ from the source's as first read \(CRC-32\)"):
        convert_file(source, output=tmp_path / "m.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
    assert copy_threads() == []


def test_the_copys_own_error_is_the_conversions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = large_checkpoint(tmp_path / "m.pkl")
    before = source.read_bytes()

    def full_disk(handle: Any, pieces: Any, written: Any = None) -> int:
        handle.write(b"PK\x03\x04 partial")
        handle.flush()
        written(len(b"PK\x03\x04 partial"))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sb2zip, "copy_pieces", full_disk)
    with pytest.raises(OSError, match="No space left"):
        convert_file(source, output=tmp_path / "m.zip", original="delete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
    assert source.read_bytes() == before
    assert copy_threads() == []


def test_a_reread_that_fails_stops_the_copy_before_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header damaged at once fails the re-read's first chunk; the copy is told to stop and
    ends at its next step instead of copying the rest for nothing."""
    source, _ = large_checkpoint(tmp_path / "m.pkl")
    real_copy = sb2zip.copy_pieces
    failed = threading.Event()
    reported: list[int] = []

    def compare_noting_failure(*args: Any) -> Any:
        try:
            return compare_file_with_pieces(*args)
        except VerifyError:
            failed.set()
            raise

    def copy_damaging_a_header(handle: Any, pieces: Any, written: Any = None) -> int:
        def hook(count: int) -> None:
            if not reported:
                os.pwrite(handle.fileno(), b"\x07", 10)  # inside the first local header's date
            else:
                failed.wait(30)  # hold the copy until the re-read has failed
            reported.append(count)
            written(count)

        return real_copy(handle, pieces, hook)

    monkeypatch.setattr(sb2zip, "compare_file_with_pieces", compare_noting_failure)
    monkeypatch.setattr(sb2zip, "copy_pieces", copy_damaging_a_header)
    with pytest.raises(VerifyError, match="differ from the layout near byte 0"):
        convert_file(source, output=tmp_path / "m.zip")
    assert failed.is_set()
    total = source.stat().st_size  # the zip is a little larger than its source
    assert max(reported) < total // 2, reported  # stopped within a step or two of the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
    assert copy_threads() == []


def test_a_write_back_error_during_the_copy_fails_the_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reports a write-back error once per open file: what the write-back thread is
    told, the final fsync may never hear, so that error must fail the conversion itself."""
    source, _ = large_checkpoint(tmp_path / "m.pkl")
    real_copy = sb2zip.copy_pieces
    told = threading.Event()

    def failing_fdatasync(fd: int) -> None:
        told.set()
        raise OSError(errno.EIO, "Input/output error")

    def copy_until_told(handle: Any, pieces: Any, written: Any = None) -> int:
        size = real_copy(handle, pieces, written)
        assert told.wait(30)  # the write-back thread ran while the copy was still open
        return size

    monkeypatch.setattr(sb2zip, "_WRITE_BACK_EVERY", 0.001)
    monkeypatch.setattr(sb2zip.os, "fdatasync", failing_fdatasync)
    monkeypatch.setattr(sb2zip, "copy_pieces", copy_until_told)
    with pytest.raises(OSError, match="Input/output error"):
        convert_file(source, output=tmp_path / "m.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
    assert [t for t in threading.enumerate() if t.name.startswith("ckptd-")] == []


@pytest.mark.parametrize("thread", ["ckptd-copy", "ckptd-writeback", "ckptd-second-read"])
def test_a_helper_thread_that_cannot_start_fails_the_conversion_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, thread: str
) -> None:
    """No thread to be had (the parser process's address-space cap): one error, no hang, no
    temp file, no descriptor left open."""
    source, _ = large_checkpoint(tmp_path / "m.pkl")
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if self.name == thread:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError, match="can't start new thread"):
        convert_file(source, output=tmp_path / "m.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
    assert [t for t in threading.enumerate() if t.name.startswith("ckptd-")] == []
    assert len(os.listdir("/proc/self/fd")) == fds
