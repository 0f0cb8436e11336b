"""identify_and_verify (the daemon's one pass over a new file) answers exactly what identify and
then verify_zip answer: the same label, verdict and report, problem for problem, or the same
error; on every fixture file in tests/ and on broken, truncated, hostile variants of the zips."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptd.formats import Format
from ckptd.formats.onepass import identify_and_verify
from ckptd.formats.sniff import SNIFF_BYTES, identify
from ckptd.formats.verify import verify_zip
from ckptd.formats.zipmembers import FileImage, MemberImage
from ckptd.limits import DEFAULT_LIMITS, Limits
from tests.sb2zip_helpers import (
    make_sb3_zip,
    params_of,
    sample_arrays,
    with_version_zipfile_cannot_read,
    write_zip,
)

TESTS = Path(__file__).parent
FIXTURE_DIRS = (TESTS / "data", TESTS / "fuzz" / "corpus")


def separately(path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, ...]:
    """What the child answered before: identify, then verify_zip for an SB2/SB3 zip."""
    try:
        found = identify(path)
        report = None
        if found.format in (Format.SB2_ZIP, Format.SB3_ZIP):
            report = verify_zip(path, limits=limits)
    except Exception as err:
        return ("raised", type(err).__name__, str(err))
    return (found, report)


def together(path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, ...]:
    try:
        return identify_and_verify(path, limits=limits)
    except Exception as err:
        return ("raised", type(err).__name__, str(err))


def assert_same(path: Path, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, ...]:
    expected = separately(path, limits)
    assert together(path, limits) == expected, path
    return expected


def fixture_files() -> list[Path]:
    return sorted(path for root in FIXTURE_DIRS for path in root.rglob("*") if path.is_file())


def test_every_fixture_file_gets_the_same_answer() -> None:
    files = fixture_files()
    assert len(files) > 150  # the trainers', verdicts', SB2 eras' and the fuzz corpus's files
    formats = set()
    for path in files:
        answer = assert_same(path)
        if answer[0] != "raised":
            formats.add(answer[0].format)
    # The comparison covered the zips that get verified and judged, not only unknown files.
    assert {Format.SB2_ZIP, Format.SB3_ZIP, Format.TORCH_ZIP, Format.PICKLE} <= formats


def sb3_bytes(tmp_path: Path, **kwargs: Any) -> bytes:
    path = tmp_path / "sb3-template.zip"
    make_sb3_zip(path, **kwargs)
    return path.read_bytes()


def sb2_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "sb2-template.zip"
    data = {"gamma": 0.99, "n_steps": 128}
    write_zip(path, data, params_of(sample_arrays()))
    return path.read_bytes()


def sb2_deflated_bytes() -> bytes:
    """SB2 as zipfile writes it with compression: the CRCs are checked while inflating."""
    buffer = io.BytesIO()
    npz = io.BytesIO()
    np.savez(npz, w=np.arange(6, dtype=np.float32))
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", json.dumps({"gamma": 0.99}))
        archive.writestr("parameters", npz.getvalue())
        archive.writestr("parameter_list", json.dumps(["w"]))
    return buffer.getvalue()


def variants(data: bytes, step: int) -> Iterator[tuple[str, bytes]]:
    """Every ``step``-th truncation and byte flip of ``data`` (the flips hit CRCs, sizes,
    offsets, names, magic numbers, the JSON and the torch zips inside)."""
    yield "whole", data
    for cut in range(0, len(data), step):
        yield f"cut {cut}", data[:cut]
    for at in range(0, len(data), step):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        yield f"flip {at}", bytes(flipped)


def check_variants(tmp_path: Path, data: bytes, step: int) -> set[str]:
    """Compare every variant; the labels and outcomes seen (so a test knows what it covered)."""
    seen: set[str] = set()
    path = tmp_path / "variant.zip"
    for label, content in variants(data, step):
        path.write_bytes(content)
        answer = assert_same(path)
        if answer[0] == "raised":
            seen.add("raised")
            continue
        found, report = answer
        seen.add(found.format.value)
        if found.verdict is not None:
            seen.add("verdict ok" if found.verdict.safe else "verdict refused")
        if report is not None:
            seen.add("verified" if report.ok else "broken")
        assert label  # each variant compared above, named in the assertion's path
    return seen


def test_broken_and_truncated_sb3_zips(tmp_path: Path) -> None:
    seen = check_variants(tmp_path, sb3_bytes(tmp_path), step=3)
    assert {"sb3-zip", "unknown", "verified", "broken", "verdict ok", "verdict refused"} <= seen


def test_broken_and_truncated_sb2_zips(tmp_path: Path) -> None:
    seen = check_variants(tmp_path, sb2_bytes(tmp_path), step=7)
    assert {"sb2-zip", "unknown", "verified", "broken"} <= seen
    seen = check_variants(tmp_path, sb2_deflated_bytes(), step=5)
    assert {"sb2-zip", "verified", "broken"} <= seen


def test_torch_zips_inside_out(tmp_path: Path) -> None:
    for name in (
        "clean/pytorch_model.bin",
        "malicious/os_system.pt",
        "malicious/sb3_pth_payload.zip",
    ):
        data = (TESTS / "data" / "verdicts" / name).read_bytes()
        check_variants(tmp_path, data, step=max(1, len(data) // 400))


def test_hostile_zips(tmp_path: Path) -> None:
    template = sb3_bytes(tmp_path)
    path = tmp_path / "hostile.zip"
    cases: list[bytes] = [
        b"PK\x03\x04",
        b"PK\x03\x04" + bytes(30),
        with_version_zipfile_cannot_read(template),
        template + b"trailing bytes",
        b"prefix" + template,
        template.replace(b"policy.pth", b"policy.ptX", 1),  # local and central names differ
        template.replace(b"_stable_baselines3_version", b"_stable_baselines3_versioN"),
    ]
    # Two members of the same name (zipfile reads the last).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("data", b"{}")
        archive.writestr("policy.pth", b"not a zip")
        archive.writestr("policy.pth", template)
        archive.writestr("_stable_baselines3_version", b"2.3.2")
    cases.append(buffer.getvalue())
    # .pth members that are no torch zip, or a damaged one (parsed from the bytes in place).
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as torch_like:
        torch_like.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        torch_like.writestr("archive/version", b"3\n")
        torch_like.comment = b"c" * 40
    torch_zip = inner.getvalue()
    end_record = torch_zip.rindex(b"PK\x05\x06")
    for pth in (
        b"",
        b"PK",
        b"PK\x05\x06" + bytes(18),
        torch_zip,
        torch_zip[:-45],
        torch_zip[: end_record + 10],
        torch_zip[40:],
        torch_zip + bytes(70_000),
    ):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("data", b"{}")
            archive.writestr("policy.pth", pth)
            archive.writestr("_stable_baselines3_version", b"2.3.2")
        cases.append(buffer.getvalue())
    # A central directory that claims members start before the file (negative offsets).
    raw = bytearray(template)
    end = raw.rindex(b"PK\x05\x06")
    _size_cd, offset_cd = struct.unpack_from("<LL", raw, end + 12)
    struct.pack_into("<L", raw, end + 16, offset_cd + 8)
    cases.append(bytes(raw))
    # The same SB3 zip with its members deflated (no bytes to take CRCs from in place).
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(template)) as source,
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        for info in source.infolist():
            archive.writestr(info.filename, source.read(info.filename))
    cases.append(buffer.getvalue())
    for content in cases:
        path.write_bytes(content)
        assert_same(path)


def test_a_zip_larger_than_what_is_read_whole(tmp_path: Path) -> None:
    # Past SNIFF_BYTES the zip is parsed from the file, not from memory: same answers.
    big = sb3_bytes(tmp_path, data=json.dumps({"pad": "x" * (SNIFF_BYTES + 10)}).encode())
    assert len(big) > SNIFF_BYTES
    path = tmp_path / "big.zip"
    for cut in (len(big), len(big) - 30, len(big) // 2):
        path.write_bytes(big[:cut])
        assert_same(path)
    flipped = bytearray(big)
    flipped[len(big) // 3] ^= 0x01
    path.write_bytes(bytes(flipped))
    assert not assert_same(path)[1].ok


def test_limits_are_held_the_same(tmp_path: Path) -> None:
    path = tmp_path / "limited.zip"
    path.write_bytes(sb3_bytes(tmp_path))
    tight = Limits(max_memory=1024)
    _found, report = assert_same(path, tight)
    assert report is not None and not report.ok  # data is over max_memory / 32 bytes


def test_files_that_cannot_be_opened_raise_the_same(tmp_path: Path) -> None:
    assert_same(tmp_path / "missing.zip")
    (tmp_path / "link.zip").symlink_to(tmp_path / "elsewhere.zip")
    assert_same(tmp_path / "link.zip")
    assert_same(tmp_path)  # a directory


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_random_damage_to_an_sb3_zip(tmp_path: Path, data: st.DataObject) -> None:
    template = sb3_bytes(tmp_path)
    damaged = bytearray(template)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(damaged) - 1))
        damaged[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(damaged) // 2, len(damaged)))
    path = tmp_path / "random.zip"
    path.write_bytes(bytes(damaged[:cut]))
    assert_same(path)


def test_images_seek_like_what_they_stand_for(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    image = FileImage(b"0123456789")
    with path.open("rb") as real:
        for offset, whence in ((3, 0), (-2, 1), (-4, 2), (20, 0), (-1, 0), (-11, 2), (-30, 1)):
            try:
                expected: object = real.seek(offset, whence), real.read(2)
            except OSError as err:
                expected = str(err)
            try:
                got: object = image.seek(offset, whence), image.read(2)
            except OSError as err:
                got = str(err)
            assert got == expected, (offset, whence)
    member = MemberImage(b"0123456789", "m")
    assert member.seek(-4, 2) == 6 and member.read() == b"6789"
    assert member.seek(30) == 10 and member.read(5) == b""
    assert member.seek(-30, 1) == 0 and member.read(3) == b"012"
    with pytest.raises(ValueError, match="whence"):
        member.seek(0, 3)
