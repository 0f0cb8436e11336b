"""safetensors files: recognized from their header, checked as the format's own reader checks them.

A safetensors file is an 8-byte little-endian header length N, N bytes of a UTF-8 JSON object,
then one byte buffer. Each key but ``__metadata__`` (a map of strings to strings) names a tensor
``{"dtype": ..., "shape": [...], "data_offsets": [begin, end]}``, offsets into the buffer. The
rules follow the reference reader, ``SafeTensors::read_metadata`` and ``Metadata::validate``
(huggingface/safetensors ``safetensors/src/tensor.rs``, commit 24b0b285, lines 10, 390-423 and
627-664): N at most 100,000,000; the tensors, sorted by offsets, cover the buffer from 0 without
gap or overlap, each exactly ``prod(shape) * bits(dtype) / 8`` bytes (whole bytes), and the last
ends exactly at the end of the file. Nothing else is read: there is no pickle and no code in the
format (docs/formats.md, "safetensors").
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ckptd.fs.files import open_regular_nofollow

MAX_HEADER = 100_000_000  # tensor.rs: MAX_HEADER_SIZE
LENGTH_BYTES = 8
METADATA_KEY = "__metadata__"
# tensor.rs: Dtype::bitsize.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the byte buffer (after the header)
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsReport:
    """What a safetensors file declares, and every way it breaks the format (empty when sound)."""

    header_length: int
    tensors: tuple[Tensor, ...]  # in offset order
    metadata: dict[str, str]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def tensor_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)


def header_length_of(head: bytes, size: int) -> int | None:
    """N when ``head`` (the file's first bytes) starts like a safetensors file of ``size`` bytes.

    The label needs more than 8 bytes of luck: N must fit the file and the limit, and the header
    must open with ``{`` (serde accepts leading whitespace; every writer starts with the brace).
    """
    if len(head) < LENGTH_BYTES + 2:
        return None
    (length,) = struct.unpack_from("<Q", head)
    if not 2 <= length <= min(MAX_HEADER, size - LENGTH_BYTES):
        return None
    return length if head[LENGTH_BYTES : LENGTH_BYTES + 1] == b"{" else None


def check_header(header: bytes, buffer_size: int) -> SafetensorsReport:
    """Parse and check a header against the size of the byte buffer after it (pure)."""
    length = len(header)
    try:
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        return SafetensorsReport(length, (), {}, (f"header is not JSON ({err})",))
    if not isinstance(parsed, dict):
        return SafetensorsReport(length, (), {}, ("header is not a JSON object",))
    problems: list[str] = []
    metadata: dict[str, str] = {}
    raw_metadata = parsed.pop(METADATA_KEY, None)
    if raw_metadata is not None:
        if isinstance(raw_metadata, dict) and all(
            isinstance(value, str) for value in raw_metadata.values()
        ):
            metadata = raw_metadata
        else:
            problems.append(f"{METADATA_KEY} is not a map of strings")
    tensors: list[Tensor] = []
    for name, info in parsed.items():
        tensor, problem = _tensor(name, info)
        if problem:
            problems.append(problem)
        elif tensor is not None:
            tensors.append(tensor)
    tensors.sort(key=lambda tensor: (tensor.begin, tensor.end))
    if not problems:
        problems.extend(_coverage(tensors, buffer_size))
    return SafetensorsReport(length, tuple(tensors), metadata, tuple(problems))


def _tensor(name: str, info: object) -> tuple[Tensor | None, str | None]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        return None, f"tensor {name!r}: not {{dtype, shape, data_offsets}}"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BITS:
        return None, f"tensor {name!r}: unknown dtype {dtype!r}"
    if not (isinstance(shape, list) and all(_is_count(dim) for dim in shape)):
        return None, f"tensor {name!r}: shape is not a list of non-negative integers"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        return None, f"tensor {name!r}: data_offsets is not [begin, end]"
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        return None, f"tensor {name!r}: {bits} bits is not a whole number of bytes"
    if end < begin or end - begin != bits // 8:
        held = f"[{begin}, {end}] hold {end - begin} bytes" if end >= begin else f"[{begin}, {end}]"
        return None, f"tensor {name!r}: offsets {held}, its dtype and shape need {bits // 8}"
    return Tensor(name, dtype, tuple(shape), begin, end), None


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _coverage(tensors: list[Tensor], buffer_size: int) -> list[str]:
    """The tensors, in offset order, must tile the buffer exactly (no gap, overlap or tail)."""
    position = 0
    for tensor in tensors:
        if tensor.begin != position:
            what = "overlaps the one before" if tensor.begin < position else "leaves a gap"
            return [
                f"tensor {tensor.name!r}: starts at {tensor.begin}, {what} (expected {position})"
            ]
        position = tensor.end
    if position != buffer_size:
        return [f"tensors cover {position} bytes of a {buffer_size}-byte buffer"]
    return []


def read_safetensors(path: Path) -> SafetensorsReport:
    """The header of ``path`` checked against its size. OSError/UnsafePathError if unopenable."""
    with open_regular_nofollow(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(LENGTH_BYTES)
        if len(prefix) < LENGTH_BYTES:
            return SafetensorsReport(0, (), {}, (f"{size} bytes: shorter than the header length",))
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER:
            return SafetensorsReport(length, (), {}, (f"header of {length} bytes over the limit",))
        if LENGTH_BYTES + length > size:
            problem = f"header of {length} bytes runs past the end of the {size}-byte file"
            return SafetensorsReport(length, (), {}, (problem,))
        header = handle.read(length)
    if len(header) != length:
        return SafetensorsReport(length, (), {}, ("file shrank while its header was read",))
    return check_header(header, size - LENGTH_BYTES - length)
