"""Builders of hostile-but-small checkpoints: shared-memo DAGs, opcode floods, deep nesting, huge ints.

Everything is raw opcodes (nothing here is ever unpickled by ckptd): a legacy stable-baselines
pickle ``(data, params)`` whose ``data['x']`` is the hostile value, or an SB2 zip whose ``data``
member holds that value's pickle as a ``:serialized:`` entry (what ``verify`` and the daemon's zip
path check). Sizes stay in kilobytes while the work a naive walker does is exponential.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

POLICY = b"cstable_baselines.common.policies\nMlpPolicy\n"


@dataclass
class Ops:
    """A protocol-2 opcode writer with its own memo counter (LONG_BINPUT / LONG_BINGET)."""

    out: bytearray = field(default_factory=lambda: bytearray(b"\x80\x02"))
    memo: int = 0

    def raw(self, data: bytes) -> Ops:
        self.out += data
        return self

    def put(self) -> int:
        index = self.memo
        self.memo += 1
        self.out += b"r" + struct.pack("<I", index)
        return index

    def get(self, index: int) -> Ops:
        return self.raw(b"j" + struct.pack("<I", index))

    def text(self, value: str) -> Ops:
        encoded = value.encode("utf-8", "surrogatepass")
        return self.raw(b"X" + struct.pack("<I", len(encoded)) + encoded)

    def int_(self, value: int) -> Ops:
        encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return self.raw(b"\x8b" + struct.pack("<i", len(encoded)) + encoded)

    def stop(self) -> bytes:
        return bytes(self.out + b".")


# --- hostile values (each leaves exactly one new item on the stack) ---------------------------


def shared_tuple(ops: Ops, depth: int) -> int:
    """t0 = ('a',); t(i+1) = (t(i), t(i)): 2**depth leaves through the memo. Returns its memo slot."""
    ops.text("a").raw(b"\x85")
    slot = ops.put()
    for _ in range(depth):
        ops.raw(b"0").get(slot).get(slot).raw(b"\x86")
        slot = ops.put()
    return slot


def shared_list(ops: Ops, depth: int) -> int:
    """l0 = ['a']; l(i+1) = [l(i), l(i)] (APPENDS), the list flavour of ``shared_tuple``."""
    ops.raw(b"]").text("a").raw(b"a")
    slot = ops.put()
    for _ in range(depth):
        ops.raw(b"0]")
        new = ops.put()
        ops.raw(b"(").get(slot).get(slot).raw(b"e")
        slot = new
    return slot


def value_dag_key(ops: Ops, depth: int) -> None:
    """{t: 1} with the shared tuple as the key."""
    ops.raw(b"}")
    shared_tuple(ops, depth)
    ops.raw(b"K\x01s")


def value_dag_frozenset(ops: Ops, depth: int) -> None:
    """frozenset({t}) via the FROZENSET opcode (protocol 4 writes it; the reader accepts it)."""
    ops.raw(b"(")
    shared_tuple(ops, depth)
    ops.raw(b"\x91")


def value_dag_list(ops: Ops, depth: int) -> None:
    shared_list(ops, depth)


def value_nested(ops: Ops, depth: int) -> None:
    """[[[...]]] ``depth`` deep (EMPTY_LIST + APPEND), no MARK needed."""
    ops.raw(b"]" * depth + b"a" * (depth - 1))


def value_nested_tuple(ops: Ops, depth: int) -> None:
    """((((...),),),) ``depth`` deep as a dict key (TUPLE1 chains)."""
    ops.raw(b"}").raw(b")" + b"\x85" * depth).raw(b"K\x01s")


def value_flood(ops: Ops, count: int) -> None:
    """``count`` opcodes that build and drop empty tuples, then one None (a 2-byte-per-op flood)."""
    ops.raw(b")0" * (count // 2)).raw(b"N")


def value_key_flood(ops: Ops, count: int) -> None:
    """frozenset of ``count`` references to one 1000-item tuple: each key check that re-walks the
    shared tuple costs 1000 steps, so a naive checker does ``count * 1000`` of them."""
    ops.raw(b"(" + b"K\x07" * 1000 + b"t")
    ops.raw(b"q\x000(" + b"h\x00" * count + b"\x91")


def value_int(ops: Ops, digits: int) -> None:
    ops.int_(10**digits)


def value_int_key(ops: Ops, digits: int) -> None:
    ops.raw(b"}").int_(10**digits).raw(b"K\x01s")


VALUES = {
    "dag-key": value_dag_key,
    "dag-frozenset": value_dag_frozenset,
    "dag-list": value_dag_list,
    "nested": value_nested,
    "nested-tuple-key": value_nested_tuple,
    "flood": value_flood,
    "key-flood": value_key_flood,
    "int": value_int,
    "int-key": value_int_key,
}


def value_pickle(kind: str, size: int) -> bytes:
    """A pickle whose whole content is the hostile value (a ``:serialized:`` entry)."""
    ops = Ops()
    VALUES[kind](ops, size)
    return ops.stop()


def legacy_pickle(kind: str, size: int) -> bytes:
    """``({'policy': MlpPolicy, 'gamma': 0.99, 'x': <hostile>}, OrderedDict())``: what ckptd
    identifies as a legacy SB2 checkpoint (the policy reference comes first, as SB2 writes it)."""
    ops = Ops()
    ops.raw(b"}").text("policy").raw(POLICY + b"s").text("gamma").raw(
        b"G" + struct.pack(">d", 0.99) + b"s"
    )
    ops.text("x")
    VALUES[kind](ops, size)
    ops.raw(b"s")
    ops.raw(b"ccollections\nOrderedDict\n)R")
    return ops.raw(b"\x86").stop()


def legacy_with_params(params: list[tuple[str, bytes]]) -> bytes:
    """A legacy checkpoint whose parameters are given as raw array pickles (already on stack)."""
    ops = Ops()
    ops.raw(b"}").text("policy").raw(POLICY + b"s").text("gamma").raw(
        b"G" + struct.pack(">d", 0.99) + b"s"
    )
    ops.raw(b"ccollections\nOrderedDict\n)R(")
    for name, array_ops in params:
        ops.text(name).raw(array_ops)
    ops.raw(b"u\x86")
    return ops.stop()


def array_ops(shape_ops: bytes, descr: str = "f4", payload: bytes = b"") -> bytes:
    """A protocol-2 ndarray: _reconstruct(ndarray, (0,), b'b') + BUILD((1, shape, dtype, False, raw))."""
    out = bytearray()
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += b"K\x00\x85" + b"c_codecs\nencode\nX\x01\x00\x00\x00bX\x06\x00\x00\x00latin1\x86R"
    out += b"\x87R"
    out += b"(K\x01" + shape_ops
    encoded = descr.encode("utf-8", "surrogatepass")
    out += b"cnumpy\ndtype\n" + b"X" + struct.pack("<I", len(encoded)) + encoded
    out += b"\x89\x88\x87R"
    out += b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89"
    text = payload.decode("latin-1").encode("utf-8")
    out += b"c_codecs\nencode\nX" + struct.pack("<I", len(text)) + text
    out += b"X\x06\x00\x00\x00latin1\x86R"
    out += b"tb"
    return bytes(out)


def shape_ops(dims: list[int]) -> bytes:
    ops = Ops(bytearray())
    ops.raw(b"(")
    for dim in dims:
        ops.int_(dim)
    ops.raw(b"t")
    return bytes(ops.out)


def sb2_zip_bytes(
    entries: dict[str, bytes], *, extra_data: dict[str, object] | None = None
) -> bytes:
    """An SB2 zip (stored) whose ``data`` holds each pickle as a ``:serialized:`` entry."""
    data: dict[str, object] = {"gamma": 0.99, **(extra_data or {})}
    for key, blob in entries.items():
        data[key] = {
            ":type:": "<class 'tuple'>",
            ":serialized:": base64.b64encode(blob).decode("ascii"),
        }
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED):
        pass
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("data", json.dumps(data, indent=4))
        archive.writestr("parameters", npz.getvalue())
        archive.writestr("parameter_list", json.dumps([]))
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
