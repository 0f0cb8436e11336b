"""The strict opcode parser: agrees with pickletools on genuine streams, rejects odd ones."""

from __future__ import annotations

import pickle
import pickletools
import struct
from collections import OrderedDict

import numpy as np
import pytest

from ckptd.errors import BudgetExceeded, FormatError
from ckptd.pickles.ops import opcode_names, parse_ops

SAMPLES = [
    None,
    (True, False, 0, 1, 255, 256, 65535, 65536, -1, 2**31, -(2**31) - 1, 2**200, -(2**200)),
    (0.5, float("inf"), -0.0),
    ("", "ascii", "ünïcödé", "\U0001f600", "x" * 300),
    (b"", b"short", b"\x00" * 70_000, bytearray(b"mutable")),
    [1, [2, [3, [4]]]],
    {"a": {"b": {"c": [1, 2, 3]}}},
    OrderedDict([("w", np.arange(6, dtype=np.float32).reshape(2, 3))]),
    {1, 2, 3},
    frozenset({"a"}),
    np.float32(1.5),
]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("sample", SAMPLES, ids=range(len(SAMPLES)))
def test_agrees_with_pickletools(protocol: int, sample: object) -> None:
    blob = pickle.dumps(sample, protocol=protocol)
    parsed = parse_ops(blob)
    reference = list(pickletools.genops(blob))
    assert parsed.protocol == protocol
    assert opcode_names(parsed.ops) == [op.name for op, _, _ in reference]
    assert [op.pos for op in parsed.ops] == [pos for _, _, pos in reference]
    for op, (_, arg, _) in zip(parsed.ops, reference, strict=True):
        if isinstance(op.arg, memoryview):
            assert bytes(op.arg) == bytes(arg)
        elif op.name in ("GLOBAL", "INST"):
            assert " ".join(op.arg) == arg  # type: ignore[arg-type]
        elif op.name not in ("PROTO",):
            assert op.arg == arg or (op.arg != op.arg and arg != arg)
    assert parsed.ops[-1].name == "STOP" and parsed.ops[-1].end == len(blob)


def test_large_payloads_are_views_not_copies() -> None:
    array = np.arange(1_000_000, dtype=np.float64)
    for protocol in (4, 5):
        blob = pickle.dumps(array, protocol=protocol)
        parsed = parse_ops(blob)
        payloads = [
            op.arg for op in parsed.ops if isinstance(op.arg, memoryview) and len(op.arg) > 1000
        ]
        assert len(payloads) == 1
        assert payloads[0].obj is blob  # a slice of the caller's buffer
        assert len(parsed.ops) < 100


def test_protocol_4_large_payloads_live_outside_frames() -> None:
    """The pickler closes the frame before a big payload; that must parse (and the payload is whole)."""
    blob = pickle.dumps([b"a" * 10, b"b" * 200_000, b"c" * 10], protocol=4)
    names = opcode_names(parse_ops(blob).ops)
    assert names.count("FRAME") >= 2


def test_max_ops() -> None:
    blob = pickle.dumps(list(range(100)), protocol=4)
    with pytest.raises(BudgetExceeded, match=r"exceeds limits.max_opcodes .*more than 50 opcodes"):
        parse_ops(blob, max_ops=50)


@pytest.mark.parametrize(
    ("blob", "message", "offset"),
    [
        (b"\x80\x02K", "BININT1 argument runs past the end", 2),
        (b"\x80\x02c os\nsys", "GLOBAL argument has no end of line", 2),
        (b"\x80\x04\x95" + struct.pack("<Q", 2) + b"N.N", "FRAME is longer|trailing", None),
        (b"\x80\x04N.\x00", "1 trailing bytes after STOP", 4),
        (b"\x80\x02I12x\n.", "malformed INT argument", 2),
        (b"\x80\x04\x8c\x02\xff\xfe.", "SHORT_BINUNICODE is not valid UTF-8", 2),
        (
            b"\x80\x04\x95" + struct.pack("<Q", 1) + b"\x8c\x01a.",
            "straddles the end of its FRAME",
            11,
        ),
    ],
)
def test_malformed_streams(blob: bytes, message: str, offset: int | None) -> None:
    with pytest.raises(FormatError, match=message) as info:
        parse_ops(blob, source="s.pkl")
    if offset is not None:
        assert info.value.offset == offset
    assert str(info.value).startswith("s.pkl: ")


def test_frame_may_end_exactly_at_an_opcode_boundary() -> None:
    body = b"\x8c\x01a."
    blob = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body
    assert opcode_names(parse_ops(blob).ops) == ["PROTO", "FRAME", "SHORT_BINUNICODE", "STOP"]
