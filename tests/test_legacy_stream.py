"""The low-memory legacy read: a streamed first pass that leaves large array payloads in the file.

Every expectation is the resident reader's (``read_legacy_file``) on the same bytes, or is derived
from ``pickletools`` (Python's own opcode walker), never from the code under test.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickletools
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ckptd.convert import legacy_stream
from ckptd.convert.conversion import convert_file
from ckptd.convert.legacy import open_legacy_file, read_legacy_file
from ckptd.convert.legacy_stream import SourceFile, scan_source
from ckptd.errors import (
    CkptdError,
    FileChangedError,
    FormatError,
    UnsafeCheckpoint,
    VerifyError,
)
from ckptd.formats.datajson import encode_data_json
from ckptd.formats.model import FileParamArray, LegacyCheckpoint, ParamArray
from ckptd.formats.sb2zip import write_checked_sb2_zip, write_sb2_zip, zip_date_time
from tests.sb2_fixtures import dqn_data, dumps, ppo2_data, stand_ins, write_checkpoint
from tests.test_hostile_pickles import HOSTILE

REPO = Path(__file__).resolve().parent.parent
STAMP = (2026, 11, 23, 20, 0, 0)
BIG = 1 << 40  # max_bytes for scans in these tests
# Over dqn_data's own arrays (its Box's low/high, 2496 bytes each, must stay in memory: a data value
# that uses a payload makes the reader fall back to a whole read), under three of plain_params'.
THRESHOLD = 4000


def plain_params(seed: int = 3, *, big: int = 6000) -> OrderedDict[str, np.ndarray]:
    """Little-endian arrays of assorted sizes, dtypes and layouts (no byte-swapped ones)."""
    rng = np.random.default_rng(seed)
    params: OrderedDict[str, np.ndarray] = OrderedDict()
    params["model/big/w:0"] = rng.standard_normal((big // 4 // 8, 8)).astype(np.float32)
    params["model/small/b:0"] = rng.standard_normal(7).astype(np.float32)
    params["model/fortran/w:0"] = np.asfortranarray(rng.standard_normal((40, 30)))
    params["model/steps:0"] = np.arange(1500, dtype=np.int64)
    params["model/scalar:0"] = np.array(1.5, dtype=np.float32)
    params["model/empty:0"] = np.zeros((0, 3), dtype=np.float32)
    params["model/u8:0"] = np.arange(3000, dtype=np.uint8).reshape(30, 100) % 251
    return params


def write_plain(path: Path, protocol: int = 4, *, data: dict[str, Any] | None = None) -> Path:
    with stand_ins():
        return write_checkpoint(path, data or dqn_data(), plain_params(), protocol=protocol)


def expected_regions(blob: bytes, min_deferred: int) -> list[tuple[int, int, int]]:
    """(offset, length, crc) of every large byte payload, found by pickletools."""
    found = []
    for opcode, arg, pos in pickletools.genops(blob):
        if opcode.name in ("BINBYTES", "BINBYTES8", "BYTEARRAY8") and len(arg) >= min_deferred:
            prefix = 4 if opcode.name == "BINBYTES" else 8
            offset = pos + 1 + prefix
            assert blob[offset : offset + len(arg)] == bytes(arg)
            found.append((offset, len(arg), zlib.crc32(arg)))
    return found


def raw_bytes(param: ParamArray | FileParamArray) -> bytes:
    if isinstance(param, FileParamArray):
        return param.as_array().tobytes(order="A")
    return bytes(param.raw)


def assert_same_checkpoint(streamed: LegacyCheckpoint, resident: LegacyCheckpoint) -> None:
    assert streamed.protocol == resident.protocol
    assert streamed.globals == resident.globals
    assert streamed.params_were_list == resident.params_were_list
    assert encode_data_json(streamed.data) == encode_data_json(resident.data)  # nan != nan
    assert list(streamed.data) == list(resident.data)
    assert [(p.name, p.descr, p.shape, p.fortran_order) for p in streamed.params] == [
        (p.name, p.descr, p.shape, p.fortran_order) for p in resident.params
    ]
    for ours, theirs in zip(streamed.params, resident.params, strict=True):
        assert raw_bytes(ours) == raw_bytes(theirs), ours.name


def zip_bytes(checkpoint: LegacyCheckpoint) -> bytes:
    buffer = io.BytesIO()
    write_sb2_zip(buffer, checkpoint.data, checkpoint.params, date_time=STAMP)
    return buffer.getvalue()


# --- the first pass -------------------------------------------------------------------------


@pytest.mark.parametrize("read_chunk", [7, 1000, 4096, 1 << 20])
@pytest.mark.parametrize("protocol", [4, 5])
def test_first_pass_classifies_every_payload_and_keeps_every_other_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_chunk: int, protocol: int
) -> None:
    """Payloads split across reads, headers split across reads: the same regions, same CRC-32."""
    monkeypatch.setattr(legacy_stream, "READ_CHUNK", read_chunk)
    path = write_plain(tmp_path / "m.pkl", protocol)
    blob = path.read_bytes()
    min_deferred = 2000
    expected = expected_regions(blob, min_deferred)
    assert len(expected) >= 3  # the test means something: big, fortran, steps, u8
    with SourceFile(path) as source:
        sparse = scan_source(source, max_bytes=BIG, min_deferred=min_deferred)
    assert [(r.offset, r.length, r.crc) for r in sparse.regions] == expected
    assert sparse.crc == zlib.crc32(blob)
    assert sparse.size == len(blob)
    kept = bytearray(blob)
    for offset, length, _ in expected:
        kept[offset : offset + length] = sparse.buffer[offset : offset + length]
    assert bytes(sparse.buffer[:]) == bytes(kept)  # every byte outside the payloads is the file's


def test_small_payloads_and_text_payloads_are_kept(tmp_path: Path) -> None:
    """Below the threshold, and protocol 2's latin-1 text, nothing is left in the file."""
    for protocol, min_deferred in ((4, 1 << 20), (2, 1)):
        path = write_plain(tmp_path / f"p{protocol}.pkl", protocol)
        with SourceFile(path) as source:
            sparse = scan_source(source, max_bytes=BIG, min_deferred=min_deferred)
        assert sparse.regions == ()
        assert bytes(sparse.buffer[:]) == path.read_bytes()


def test_first_pass_refuses_empty_and_oversized_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"), open_legacy_file(empty):
        pass
    path = write_plain(tmp_path / "m.pkl")
    with pytest.raises(FormatError, match="limit"), open_legacy_file(path, max_bytes=100):
        pass


# --- the checkpoint: same as the resident reader's ---------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("min_deferred", [1, THRESHOLD, 1 << 20])
def test_streamed_checkpoint_equals_the_resident_one(
    tmp_path: Path, protocol: int, min_deferred: int
) -> None:
    path = write_plain(tmp_path / "m.pkl", protocol)
    resident, digest = read_legacy_file(path)
    with open_legacy_file(path, min_deferred=min_deferred) as (streamed, streamed_digest):
        assert streamed_digest.sha256() == digest
        assert_same_checkpoint(streamed, resident)
        deferred = [p.nbytes for p in streamed.params if isinstance(p, FileParamArray)]
        regions = [length for _, length, _ in expected_regions(path.read_bytes(), min_deferred)]
        if min_deferred == THRESHOLD and protocol != 2:
            assert len(deferred) >= 3  # the big, fortran, steps and u8 arrays stayed in the file
        # Either every large payload is a file-backed parameter, or (a payload is used by data:
        # the Box's arrays at min_deferred=1) the file was read whole.
        assert sorted(deferred) == sorted(regions) or deferred == []
        assert zip_bytes(streamed) == zip_bytes(resident)  # the zip is bit-identical


@pytest.mark.parametrize("case", ["big-endian param", "array shared with data", "bytes in data"])
def test_payloads_used_beyond_a_param_view_fall_back_to_a_whole_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """A big-endian array is converted, not viewed; data must see real bytes, never zeros."""
    rng = np.random.default_rng(5)
    weights = rng.standard_normal(2000).astype(np.float32)
    params = OrderedDict([("model/w:0", weights), ("model/b:0", np.ones(3, np.float32))])
    data = dqn_data()
    if case == "big-endian param":
        params["model/be:0"] = np.arange(3000, dtype=">f4")
    elif case == "array shared with data":
        data["shared"] = weights  # the same object as a parameter: one memoized payload
    else:
        data["blob"] = rng.bytes(5000)
    with stand_ins():
        path = write_checkpoint(tmp_path / "m.pkl", data, params, protocol=4)
    resident, digest = read_legacy_file(path)
    with (
        caplog.at_level("INFO", logger="ckptd.convert.legacy"),
        open_legacy_file(path, min_deferred=THRESHOLD) as (streamed, streamed_digest),
    ):
        assert streamed_digest.sha256() == digest
        assert all(isinstance(p, ParamArray) for p in streamed.params)
        assert_same_checkpoint(streamed, resident)
    assert "reading it whole" in caplog.text


def test_ppo2_shaped_checkpoint_with_every_data_shape(tmp_path: Path) -> None:
    with stand_ins():
        params = plain_params(big=3 << 20)
        path = write_checkpoint(tmp_path / "m.pkl", ppo2_data(), params, protocol=4)
    resident, _ = read_legacy_file(path)
    with open_legacy_file(path) as (streamed, _):
        assert isinstance(streamed.params[0], FileParamArray)  # 3 MiB: over the default threshold
        assert_same_checkpoint(streamed, resident)
        assert zip_bytes(streamed) == zip_bytes(resident)


def test_file_backed_arrays_are_unreadable_after_the_block(tmp_path: Path) -> None:
    path = write_plain(tmp_path / "m.pkl")
    with open_legacy_file(path, min_deferred=THRESHOLD) as (streamed, _):
        param = next(p for p in streamed.params if isinstance(p, FileParamArray))
        array = param.as_array()
        assert not array.flags.writeable
    with pytest.raises(ValueError, match="closed"):
        param.as_array()


# --- hostile and broken files are refused exactly as before -----------------------------------


@pytest.mark.parametrize("min_deferred", [1, 1 << 20])
@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_pickles_are_still_refused(tmp_path: Path, hostile: Any, min_deferred: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    blob = hostile.build(marker)
    path.write_bytes(blob)
    with (
        pytest.raises((UnsafeCheckpoint, FormatError), match=hostile.reason) as info,
        open_legacy_file(path, min_deferred=min_deferred),
    ):
        pass
    assert str(info.value).startswith(f"{path}: ")
    assert not marker.exists()
    assert path.read_bytes() == blob


def _big_payload_op(length: int) -> bytes:
    return b"\x8e" + struct.pack("<Q", length) + bytes(range(256)) * (length // 256)


def _framed(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # A FRAME that ends inside a large payload: a file-reading VM would resynchronize there.
        (
            b"\x95" + struct.pack("<Q", 100) + _big_payload_op(4096) + b".",
            "BINBYTES8 straddles the end of its FRAME",
        ),
        # A FRAME inside the frame that holds the payload.
        (_framed(_framed(_big_payload_op(4096) + b".")), "FRAME opened inside another frame"),
        # A payload length that runs past the end: never left in the file, refused.
        (b"\x8e" + struct.pack("<Q", 1 << 40) + bytes(5000) + b".", "runs past the end"),
        # Opcodes hidden in what a payload claims: the framer must skip them like the parser.
        (
            _big_payload_op(4096)[:-64] + b"cposix\nsystem\n" + bytes(50) + b".",
            "top level is a BytesNode",
        ),
    ],
)
def test_frame_tricks_around_large_payloads_are_refused(
    tmp_path: Path, body: bytes, reason: str
) -> None:
    path = tmp_path / "frame.pkl"
    path.write_bytes(b"\x80\x04" + body)
    with pytest.raises(FormatError, match=reason), open_legacy_file(path, min_deferred=1000):
        pass
    with pytest.raises(FormatError, match=reason):
        read_legacy_file(path)


def test_truncated_files_are_broken_wherever_they_are_cut(tmp_path: Path) -> None:
    blob = write_plain(tmp_path / "m.pkl").read_bytes()
    regions = expected_regions(blob, 2000)
    cuts = {len(blob) - 1, 20}
    for offset, length, _ in regions:
        cuts |= {offset - 3, offset, offset + 1, offset + length // 2, offset + length - 1}
    for cut in sorted(cuts):
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(blob[:cut])
        with (
            pytest.raises(FormatError, match="truncated pickle"),
            open_legacy_file(path, min_deferred=2000),
        ):
            pass


def test_mutations_give_the_same_outcome_as_the_resident_reader(tmp_path: Path) -> None:
    """Single-byte corruptions anywhere: the same error, or an identical checkpoint."""
    blob = write_plain(tmp_path / "m.pkl").read_bytes()
    rng = np.random.default_rng(17)
    path = tmp_path / "mutated.pkl"
    for index in range(150):
        mutated = bytearray(blob)
        mutated[int(rng.integers(2, len(blob)))] = int(rng.integers(0, 256))
        path.write_bytes(mutated)
        min_deferred = THRESHOLD if index % 2 else 500  # file-backed params / whole-read fallback
        try:
            resident, _ = read_legacy_file(path)
        except CkptdError as err:
            with (
                pytest.raises(type(err)) as info,
                open_legacy_file(path, min_deferred=min_deferred),
            ):
                pass
            assert str(info.value) == str(err)
            continue
        with open_legacy_file(path, min_deferred=min_deferred) as (streamed, _):
            assert_same_checkpoint(streamed, resident)


# --- the file changes between the first read and the re-reads ----------------------------------


@contextlib.contextmanager
def opened(path: Path) -> Iterator[LegacyCheckpoint]:
    with open_legacy_file(path, min_deferred=THRESHOLD) as (checkpoint, _):
        assert any(isinstance(p, FileParamArray) for p in checkpoint.params)
        yield checkpoint


def _rewrite_payload_keeping_identity(path: Path) -> None:
    """Flip payload bytes in place and put size and mtime back: only the content differs."""
    before = os.stat(path)
    offset, length, _ = expected_regions(path.read_bytes(), THRESHOLD)[0]
    with open(path, "r+b") as handle:
        handle.seek(offset + length // 2)
        handle.write(b"\xde\xad\xbe\xef")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size


def test_payload_changed_behind_an_unchanged_identity_is_caught(tmp_path: Path) -> None:
    path = write_plain(tmp_path / "m.pkl")
    dest = tmp_path / "m.zip"
    with opened(path) as checkpoint:
        _rewrite_payload_keeping_identity(path)
        # The inode's ctime moved (no writer can set it back), so the identity check says so.
        with pytest.raises(FileChangedError, match="changed since it was first read"):
            write_checked_sb2_zip(dest, checkpoint.data, checkpoint.params)
        with pytest.raises(FileChangedError):
            next(p for p in checkpoint.params if isinstance(p, FileParamArray)).as_array()
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]  # no temp file left


def test_payload_changed_where_the_identity_cannot_tell_fails_the_crc_of_the_re_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write pass copies without a checksum; the verify pass checks that the copied bytes
    have the CRC-32 of the source's first read, so changed payload bytes stop the rename even if
    the identity check saw nothing (here it is switched off), and since the source's own bytes
    fail that CRC too, the error says the source changed."""
    monkeypatch.setattr(SourceFile, "check_unchanged", lambda self: None)
    path = write_plain(tmp_path / "m.pkl")
    dest = tmp_path / "m.zip"
    with opened(path) as checkpoint:
        _rewrite_payload_keeping_identity(path)
        with pytest.raises(FileChangedError, match="changed since the file was first read"):
            write_checked_sb2_zip(dest, checkpoint.data, checkpoint.params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]  # no zip, no temp file


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_byte_damaged_in_a_copied_payload_of_the_temp_file_stops_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The re-read before the rename checks every payload the kernel copied against the CRC-32
    of the source's first read: one byte that differs on disk keeps the zip from its name."""
    import ckptd.formats.sb2zip as sb2zip

    with stand_ins():
        params = plain_params(big=3 << 20)
        path = write_checkpoint(tmp_path / "m.pkl", dqn_data(), params, protocol=4)
    payload = params["model/big/w:0"].tobytes()
    real_copy = sb2zip.copy_pieces

    def copy_then_damage(handle: Any, pieces: Any) -> int:
        size = real_copy(handle, pieces)
        handle.flush()
        (temp,) = tmp_path.glob(".ckptd-tmp-*")  # the handle is write-only
        written = temp.read_bytes()
        start = written.find(payload)
        assert start > 0 and written.count(payload[:4096]) == 1
        offset = {"first": start, "middle": start + len(payload) // 2}.get(
            where, start + len(payload) - 1
        )
        os.pwrite(handle.fileno(), bytes([written[offset] ^ 0x01]), offset)
        return size

    monkeypatch.setattr(sb2zip, "copy_pieces", copy_then_damage)
    with pytest.raises(VerifyError, match=r"differ from the source's as first read \(CRC-32\)"):
        convert_file(path, original="delete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]  # no zip, no temp file


def test_a_byte_damaged_in_a_header_of_the_temp_file_stops_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers (and every piece held in memory) are compared byte for byte with the layout."""
    import ckptd.formats.sb2zip as sb2zip

    path = write_plain(tmp_path / "m.pkl")
    real_copy = sb2zip.copy_pieces

    def copy_then_damage(handle: Any, pieces: Any) -> int:
        size = real_copy(handle, pieces)
        os.pwrite(handle.fileno(), b"\x07", 10)  # inside the first local header's date
        return size

    monkeypatch.setattr(sb2zip, "copy_pieces", copy_then_damage)
    with pytest.raises(VerifyError, match="differ from the layout near byte 0"):
        convert_file(path, original="delete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]


@pytest.mark.parametrize("change", ["append", "truncate", "touch", "replace", "chmod"])
def test_file_changed_between_passes_raises_file_changed(tmp_path: Path, change: str) -> None:
    path = write_plain(tmp_path / "m.pkl")
    dest = tmp_path / "m.zip"
    with opened(path) as checkpoint:
        if change == "append":
            with open(path, "ab") as handle:
                handle.write(b"more")
        elif change == "truncate":
            os.truncate(path, 100)
        elif change == "chmod":  # no byte changed, but the inode did: judged again later
            os.chmod(path, 0o600)
        elif change == "touch":
            stamp = os.stat(path).st_mtime_ns + 5_000_000_000
            os.utime(path, ns=(stamp, stamp))
        else:  # same inode, same bytes, but the payload rewritten through a new write
            path.write_bytes(path.read_bytes())
            stamp = os.stat(path).st_mtime_ns + 5_000_000_000
            os.utime(path, ns=(stamp, stamp))
        with pytest.raises(FileChangedError) as info:
            write_checked_sb2_zip(dest, checkpoint.data, checkpoint.params)
        assert str(info.value).startswith(f"{path}: ")
    assert not dest.exists()


def test_convert_file_writes_the_same_zip_and_reports_the_first_read_hash(tmp_path: Path) -> None:
    with stand_ins():
        path = write_checkpoint(
            tmp_path / "m.pkl", dqn_data(), plain_params(big=3 << 20), protocol=4
        )
    blob = path.read_bytes()
    outcome = convert_file(path, output=tmp_path / "m.zip")
    assert outcome.source_sha256 == hashlib.sha256(blob).hexdigest()
    assert path.read_bytes() == blob
    resident, _ = read_legacy_file(path)
    with zipfile.ZipFile(outcome.output) as archive:
        assert archive.testzip() is None
        npz = np.load(io.BytesIO(archive.read("parameters")))
        for param in resident.params:
            assert npz[param.name].tobytes(order="A") == bytes(param.raw), param.name
    # A rerun recognizes the zip by streaming the file-backed arrays against it.
    assert convert_file(path, output=tmp_path / "m.zip").status == "already-converted"


@pytest.mark.parametrize("big", [3 << 20, 9 << 20])  # hashed inline / in a helper thread
@pytest.mark.parametrize("kernel_copy", [True, False])
def test_the_written_zip_and_its_sha256_do_not_depend_on_how_bytes_are_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: int, kernel_copy: bool
) -> None:
    """Payloads go from the source to the zip by copy_file_range, or by reading and writing where
    the kernel refuses (EXDEV across file systems on older kernels): the same bytes either way,
    and the reported sha256 is that of the file on disk."""
    with stand_ins():
        path = write_checkpoint(tmp_path / "m.pkl", dqn_data(), plain_params(big=big), protocol=4)
    if not kernel_copy:

        def refuse(self: SourceFile, offset: int, length: int, out_fd: int) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(SourceFile, "copy_into", refuse)
    outcome = convert_file(path, output=tmp_path / "m.zip")
    written = outcome.output.read_bytes()
    assert outcome.output_sha256 == hashlib.sha256(written).hexdigest()
    assert outcome.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    resident, _ = read_legacy_file(path)
    buffer = io.BytesIO()
    write_sb2_zip(
        buffer, resident.data, resident.params, date_time=zip_date_time(os.stat(path).st_mtime_ns)
    )
    assert written == buffer.getvalue()


# --- memory -------------------------------------------------------------------------------------

_MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from ckptd.convert.conversion import convert_file
    from ckptd.convert.legacy import read_legacy_file

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise SystemExit("no VmHWM")

    # Warm everything a conversion imports or allocates once, on a tiny file, before measuring.
    convert_file(Path(sys.argv[3]), output=Path(sys.argv[3] + ".zip"))
    before = hwm_kib()
    if sys.argv[4] == "convert":
        convert_file(Path(sys.argv[2]), output=Path(sys.argv[2] + ".zip"))
    else:
        checkpoint, _ = read_legacy_file(Path(sys.argv[2]))
    print(json.dumps({"growth_kib": hwm_kib() - before}))
    """
)


def _peak_growth_mib(source: Path, warmup: Path, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(REPO), str(source), str(warmup), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"]) / 1024


def test_converting_64_mib_grows_peak_memory_by_far_less_than_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    params = OrderedDict(
        (f"model/layer{i}/w:0", rng.standard_normal((256, 8192), dtype=np.float32))
        for i in range(8)
    )
    with stand_ins():
        source = write_checkpoint(tmp_path / "big.pkl", dqn_data(), params, protocol=4)
        warmup = write_checkpoint(tmp_path / "tiny.pkl", dqn_data(), plain_params(), protocol=4)
    del params
    size_mib = source.stat().st_size / (1 << 20)
    assert size_mib > 60
    growth = _peak_growth_mib(source, warmup, "convert")
    assert growth < size_mib / 4, f"peak RSS grew {growth:.1f} MiB converting {size_mib:.0f} MiB"
    # Control: reading it whole does cost the file's size, so this measurement can fail.
    assert _peak_growth_mib(source, warmup, "read") > size_mib * 0.75


def test_dumps_helper_still_writes_what_the_scanner_expects() -> None:
    """The fixtures write protocol-4 arrays as BINBYTES8 payloads (else the tests above are moot)."""
    with stand_ins():
        blob = dumps((dqn_data(), plain_params()), 4)
    assert expected_regions(blob, 2000)


def test_convert_file_refuses_a_source_changed_after_its_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source is rewritten between the first pass and the writer's re-read: no zip appears."""
    import ckptd.convert.conversion as convert

    with stand_ins():  # a 3 MiB array: left in the file at the default threshold
        path = write_checkpoint(tmp_path / "m.pkl", dqn_data(), plain_params(big=3 << 20))
    real_write = convert.write_checked_sb2_zip

    def rewrite_then_write(dest: Path, data: Any, params: Any, **options: Any) -> Any:
        _rewrite_payload_keeping_identity(path)
        return real_write(dest, data, params, **options)

    monkeypatch.setattr(convert, "write_checked_sb2_zip", rewrite_then_write)
    # Caught by the source's identity (its ctime moved) or, failing that, the CRC of the re-read.
    with pytest.raises(FileChangedError, match=r"changed since (it|the file) was first read"):
        convert_file(path, original="delete")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]
