"""The source's sha256 comes from a second read beside the conversion, tied to the first read.

``ckptd.fs.second_read.SecondRead`` hashes the source by a descriptor of its own (in a helper
thread for a large file) while the first pass parses it and the kernel copies its payloads;
``ckptd.convert.legacy_stream.SourceDigest`` accepts that sha256 only if the second read's CRC-32
over the whole file equals the first pass's and the file's stat (size, mtime, ctime, inode,
device) never moved (docs/architecture.md, "The conversion"). A second read that sees other bytes
fails the conversion before the rename, naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ckptd.convert.conversion import convert_file
from ckptd.convert.legacy_stream import SourceDigest, SourceFile, scan_source
from ckptd.errors import FileChangedError
from ckptd.fs import second_read
from ckptd.fs.digest import THREADED_MIN_BYTES
from ckptd.fs.second_read import SecondRead
from tests.sb2_fixtures import dqn_data, stand_ins, write_checkpoint

GENUINE = Path(__file__).parent / "data" / "sb2-genuine"
REPO = Path(__file__).parent.parent


def checkpoint_of(path: Path, array_bytes: int) -> Path:
    """A DQN-shaped checkpoint with four float32 arrays of ``array_bytes`` each."""
    rng = np.random.default_rng(11)
    params: OrderedDict[str, np.ndarray] = OrderedDict()
    for index in range(4):
        params[f"model/layer{index}/w:0"] = rng.standard_normal(array_bytes // 4).astype(np.float32)
    params["model/small/b:0"] = rng.standard_normal(7).astype(np.float32)
    with stand_ins():
        return write_checkpoint(path, dqn_data(), params, protocol=4)


SIZES = {"inline": 1 << 20, "threaded": 5 << 20}  # files of ~4 MiB and ~20 MiB


def sha256sum(path: Path) -> str:
    return subprocess.run(
        ["sha256sum", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()[0]


def helper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ckptd-")]


@pytest.mark.parametrize("size", SIZES)
def test_the_recorded_digests_are_sha256sum_of_source_and_output(tmp_path: Path, size: str) -> None:
    """``ckptd convert --json`` as a user runs it; then a rerun (already converted) in process."""
    source = checkpoint_of(tmp_path / "m.pkl", SIZES[size])
    assert (source.stat().st_size >= THREADED_MIN_BYTES) == (size == "threaded")
    out = tmp_path / "m.zip"
    result = subprocess.run(
        [sys.executable, "-m", "ckptd", "convert", str(source), "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    (reported,) = json.loads(result.stdout)["results"]
    assert reported["source_sha256"] == sha256sum(source)
    assert reported["sha256"] == sha256sum(out)
    again = convert_file(source, output=out)
    assert again.status == "already-converted"
    assert (again.source_sha256, again.output_sha256) == (sha256sum(source), sha256sum(out))


def test_genuine_checkpoints_record_the_sha256sum_of_each_file(tmp_path: Path) -> None:
    for fixture in sorted(GENUINE.glob("*.pkl")):
        source = tmp_path / fixture.name
        shutil.copyfile(fixture, source)
        outcome = convert_file(source, output=tmp_path / f"{fixture.stem}.zip")
        assert outcome.source_sha256 == sha256sum(fixture), fixture.name
        assert outcome.output_sha256 == sha256sum(outcome.output), fixture.name


def _lying_reader(flip_at: int) -> Callable[[int, memoryview], int]:
    """A second read that returns the file's bytes, but for one, as a writer that put the file's
    stat back exactly (or a file system that does not move ctime) would leave them."""
    real = second_read._read_into

    def read(fd: int, buffer: memoryview) -> int:
        start = os.lseek(fd, 0, os.SEEK_CUR)
        count = real(fd, buffer)
        if start <= flip_at < start + count:
            buffer[flip_at - start] ^= 0x01
        return count

    return read


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("where", ["payload", "kept"])
def test_a_second_read_that_sees_other_bytes_fails_the_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str, where: str
) -> None:
    """Without the CRC-32 tie this conversion succeeds and records a sha256 of bytes that were
    never converted; with it, one line naming the file, nothing renamed, no thread left."""
    source = checkpoint_of(tmp_path / "m.pkl", SIZES[size])
    blob = source.read_bytes()
    flip_at = len(blob) // 2 if where == "payload" else len(blob) - 3
    monkeypatch.setattr(second_read, "_read_into", _lying_reader(flip_at))
    with pytest.raises(
        FileChangedError, match="a second read to hash it found other bytes"
    ) as info:
        convert_file(source, output=tmp_path / "m.zip", original="delete")
    assert str(info.value).startswith(f"{source}: changed while it was being converted")
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]  # no zip, no temp file
    assert source.read_bytes() == blob
    assert helper_threads() == []


@pytest.mark.parametrize("content", ["same", "other"])
def test_the_file_rewritten_between_the_two_reads_fails_the_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    """A real rewrite, same size and mtime put back, just before the second read's first chunk:
    its ctime moved, so the conversion fails whichever check sees it first."""
    source = checkpoint_of(tmp_path / "m.pkl", SIZES["threaded"])
    blob = source.read_bytes()
    rewritten = bytearray(blob)
    if content == "other":
        rewritten[len(blob) // 2] ^= 0x01
    real = second_read._read_into
    done: list[bool] = []

    def rewrite_then_read(fd: int, buffer: memoryview) -> int:
        if not done:
            done.append(True)
            before = source.stat()
            with open(source, "r+b") as handle:
                handle.write(rewritten)
            os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        return real(fd, buffer)

    monkeypatch.setattr(second_read, "_read_into", rewrite_then_read)
    with pytest.raises(FileChangedError) as info:
        convert_file(source, output=tmp_path / "m.zip")
    assert done and str(info.value).startswith(f"{source}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
    assert helper_threads() == []


def test_a_second_read_of_another_file_with_the_same_bytes_is_refused(tmp_path: Path) -> None:
    """The stat tie: same bytes (the CRC-32s agree) but another inode, as a rename over the path
    between the two opens would give."""
    source = checkpoint_of(tmp_path / "m.pkl", SIZES["inline"])
    twin = tmp_path / "twin.pkl"
    shutil.copyfile(source, twin)
    with SourceFile(source) as reader, SecondRead(twin, threaded=False) as second:
        sparse = scan_source(reader, max_bytes=1 << 40)
        with pytest.raises(FileChangedError, match=r"inode or device\)$"):
            SourceDigest(second, sparse, reader).sha256()
    with SourceFile(source) as reader, SecondRead(source) as second:
        sparse = scan_source(reader, max_bytes=1 << 40)
        assert SourceDigest(second, sparse, reader).sha256() == sha256sum(source)


def test_closing_a_second_read_stops_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that fails early (a refused file) does not wait for the whole file's hash."""
    source = checkpoint_of(tmp_path / "m.pkl", SIZES["threaded"])
    reads: list[int] = []
    gate = threading.Event()
    real = second_read._read_into

    def slow(fd: int, buffer: memoryview) -> int:
        reads.append(1)
        gate.wait(5)
        return real(fd, buffer)

    monkeypatch.setattr(second_read, "_read_into", slow)
    second = SecondRead(source)
    with second:
        gate.set()
    assert helper_threads() == []
    assert len(reads) < source.stat().st_size // second_read.CHUNK
    with pytest.raises(RuntimeError, match="stopped"):
        second.result()
