"""npy headers: built exactly as numpy writes them, parsed without evaluating anything."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from ckptd.errors import FormatError
from ckptd.formats.npy import (
    npy_header_bytes,
    parse_npy_header,
    read_npy_header,
    write_npy_header,
)

SHAPES = [(), (0,), (1,), (4, 64), (64, 4), (3, 0), (2, 3, 4), (10**12,), (1,) * 32]
DESCRS = [
    "<f4",
    ">f4",
    "<f8",
    "<f2",
    "|i1",
    "<i8",
    ">i8",
    "|u1",
    "<u4",
    "|b1",
    "<c8",
    ">c16",
    "|S5",
    "<U3",
    "<M8[ns]",
]


def numpy_header(descr: str, fortran_order: bool, shape: tuple[int, ...]) -> bytes:
    handle = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(descr)),
        "fortran_order": fortran_order,
        "shape": shape,
    }
    np.lib.format.write_array_header_1_0(handle, header)
    return handle.getvalue()


@pytest.mark.parametrize("descr", DESCRS)
@pytest.mark.parametrize("fortran_order", [False, True])
def test_header_is_byte_identical_to_numpys(descr: str, fortran_order: bool) -> None:
    for shape in SHAPES:
        ours = npy_header_bytes(descr, fortran_order, shape)
        assert ours == numpy_header(descr, fortran_order, shape), shape
        assert len(ours) % 64 == 0


def test_header_matches_np_save_output_prefix() -> None:
    for array in (
        np.arange(256, dtype=np.float32).reshape(4, 64),
        np.asfortranarray(np.ones((3, 5))),
        np.array(3.5, dtype=">f8"),
        np.zeros((0, 7), dtype=np.int16),
    ):
        saved = io.BytesIO()
        np.save(saved, array, allow_pickle=False)
        fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
        header = npy_header_bytes(array.dtype.str, fortran, array.shape)
        assert saved.getvalue()[: len(header)] == header
        assert len(saved.getvalue()) == len(header) + array.nbytes


def test_numpy_ints_in_shape_render_like_python_ints() -> None:
    shape = tuple(np.int64(n) for n in (4, 64))
    assert npy_header_bytes("<f4", False, shape) == numpy_header("<f4", False, (4, 64))  # type: ignore[arg-type]


def test_native_and_unmarked_descrs_are_normalized_as_numpy_does() -> None:
    assert npy_header_bytes("=f4", False, (2,)) == npy_header_bytes("<f4", False, (2,))
    assert b"'descr': '<f4'" in npy_header_bytes("f4", False, (2,))


def test_header_too_long_for_v1_falls_back_to_v2_like_numpy() -> None:
    shape = (1,) * 30_000
    ours = npy_header_bytes("<f4", False, shape)
    expected = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        expected, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    assert ours[6:8] == b"\x02\x00"
    assert ours == expected.getvalue()


def test_write_npy_header_writes_the_same_bytes() -> None:
    handle = io.BytesIO()
    count = write_npy_header(handle, "<f4", False, (4, 64))
    assert handle.getvalue() == numpy_header("<f4", False, (4, 64))
    assert count == len(handle.getvalue())


@pytest.mark.parametrize("shape", SHAPES[:7])
@pytest.mark.parametrize("descr", ["<f4", ">i8", "|b1", "<c16"])
def test_parse_round_trip_and_data_size(shape: tuple[int, ...], descr: str) -> None:
    for fortran in (False, True):
        raw = npy_header_bytes(descr, fortran, shape)
        header = parse_npy_header(raw + b"trailing data")
        assert (header.descr, header.fortran_order, header.shape) == (descr, fortran, shape)
        assert header.header_size == len(raw)
        assert header.version == (1, 0)
        assert header.data_size == int(np.prod(shape)) * np.dtype(descr).itemsize


def test_read_npy_header_stops_at_the_first_data_byte(tmp_path: Path) -> None:
    array = np.arange(10, dtype=">u2")
    path = tmp_path / "a.npy"
    np.save(path, array)
    with path.open("rb") as handle:
        header = read_npy_header(handle)
        assert handle.tell() == header.header_size
        assert handle.read() == array.tobytes()
    assert header.data_size == array.nbytes


def test_v2_and_v3_headers_parse() -> None:
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + b" \n"
    for version in (b"\x02\x00", b"\x03\x00"):
        raw = b"\x93NUMPY" + version + struct.pack("<I", len(text)) + text
        header = read_npy_header(io.BytesIO(raw + b"data"))
        assert (header.version, header.shape, header.header_size) == (
            (version[0], 0),
            (2, 3),
            len(raw),
        )
        assert parse_npy_header(raw) == header


def header_with(text: str) -> bytes:
    body = text.encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", "object"),
        ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "descr"),
        ("{'descr': '(2,3)f4', 'fortran_order': False, 'shape': (2,), }", "descr"),
        ("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", "fortran_order"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", "shape"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }", "shape"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", "shape"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", "dict"),
        ("{'descr': '<f4', 'fortran_order': False}", "dict"),
        ("['descr', 'fortran_order', 'shape']", "dict"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", "dict literal"),
    ],
)
def test_bad_headers_are_refused_with_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=message) as caught:
        parse_npy_header(header_with(text), source="m.npy")
    assert str(caught.value).startswith("m.npy: ")


def test_code_in_a_header_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"{{'descr': __import__('os').system('touch {marker}'), 'fortran_order': False, 'shape': (1,), }}"
    with pytest.raises(FormatError):
        parse_npy_header(header_with(payload))
    call_in_shape = (
        f"{{'descr': '<f4', 'fortran_order': False, 'shape': (open('{marker}', 'w'),), }}"
    )
    with pytest.raises(FormatError):
        parse_npy_header(header_with(call_in_shape))
    assert not marker.exists()


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x93NUMP", b"PK\x03\x04abcdefgh", b"\x93NUMPY\x09\x00\x10\x00", header_with("{}")[:-5]],
)
def test_truncated_or_foreign_bytes_are_format_errors(raw: bytes) -> None:
    with pytest.raises(FormatError):
        parse_npy_header(raw)
    with pytest.raises(FormatError):
        read_npy_header(io.BytesIO(raw))


def test_oversized_header_is_refused_before_reading_it() -> None:
    huge = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31)
    with pytest.raises(FormatError, match="exceeds"):
        read_npy_header(io.BytesIO(huge))
