"""Structure-aware generators for the fuzzing suite: pickle opcode streams and SB2 zips.

A random byte string is almost never a pickle, so byte-level fuzzing alone spends its time in the
first check. These strategies build opcode programs that leave one value on the stack (so most
inputs reach the graph builder, the allowlist, materialization and the emitter), with the
constructs the hostile-run-directory issue found dangerous mixed in: memo sharing that makes a
DAG exponentially large when expanded, deep nesting, huge integers, odd shapes and dtypes,
names that start like allowlisted ones, lone surrogates, opcode floods. A final optional mutation
flips, inserts or truncates bytes so malformed streams are covered too.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from base64 import b64encode
from dataclasses import dataclass, field

from hypothesis import strategies as st

# Names a checkpoint legitimately uses (the allowlist's own vocabulary) and names an attacker wants.
ALLOWED_GLOBALS = (
    ("collections", "OrderedDict"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("builtins", "frozenset"),
    ("builtins", "getattr"),
    ("functools", "partial"),
    ("copyreg", "_reconstructor"),
    ("stable_baselines.common.policies", "MlpPolicy"),
    ("gym.spaces.box", "Box"),
    ("gym.spaces.discrete", "Discrete"),
    ("numpy.random", "__RandomState_ctor"),
    ("cloudpickle.cloudpickle", "_builtin_type"),
    ("cloudpickle.cloudpickle", "_fill_function"),
    ("cloudpickle.cloudpickle", "_make_skel_func"),
    ("tensorflow.python.ops.gen_nn_ops", "relu"),
)
HOSTILE_GLOBALS = (
    ("posix", "system"),
    ("os", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "__import__"),
    ("subprocess", "Popen"),
    ("torch.serialization", "load"),
)
# What an attacker appends to an allowed name to smuggle a second instruction past a prefix match.
NAME_TAILS = ("", "\n", "\nposix\nsystem", "\x00", " ", ".", "..x", "\u0130", "\udcff", "x" * 300)

_SCALAR_DTYPES = ("<f4", "<f8", "<i8", "|b1", ">f4", "<f2", "<c8", "|u1")
_ODD_DTYPES = ("f4\n", "O", "V8", "<U4", "S3", "f4$", "(2,)f4", "")


@dataclass
class Program:
    """An opcode stream under construction; ``memo`` counts the memo slots already assigned."""

    out: bytearray = field(default_factory=bytearray)
    memo: int = 0

    def op(self, data: bytes) -> None:
        self.out += data

    def text(self, value: str) -> None:
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) < 256:
            self.op(b"\x8c" + bytes([len(encoded)]) + encoded)
        else:
            self.op(b"X" + struct.pack("<I", len(encoded)) + encoded)

    def memoize(self) -> int:
        self.op(b"\x94")  # MEMOIZE
        self.memo += 1
        return self.memo - 1

    def get(self, index: int) -> None:
        self.op(b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index))

    def global_(self, module: str, name: str, *, stacked: bool) -> None:
        if stacked:
            self.text(module)
            self.text(name)
            self.op(b"\x93")  # STACK_GLOBAL
        else:
            line = f"{module}\n{name}\n".encode("utf-8", "surrogatepass")
            self.op(b"c" + line)


@st.composite
def _global_name(draw: st.DrawFn) -> tuple[str, str]:
    module, name = draw(st.sampled_from(ALLOWED_GLOBALS + HOSTILE_GLOBALS))
    if draw(st.integers(0, 3)) == 0:
        tail = draw(st.sampled_from(NAME_TAILS))
        if draw(st.booleans()):
            module += tail
        else:
            name += tail
    return module, name


def _emit_int(program: Program, draw: st.DrawFn) -> None:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        program.op(b"K" + bytes([draw(st.integers(0, 255))]))
    elif kind == 1:
        program.op(b"J" + struct.pack("<i", draw(st.integers(-(2**31), 2**31 - 1))))
    elif kind == 2:
        # LONG1 up to 255 bytes, LONG4 far past Python's 4300-digit str() limit.
        size = draw(st.integers(0, 255))
        program.op(b"\x8a" + bytes([size]) + draw(st.binary(min_size=size, max_size=size)))
    else:
        size = draw(st.sampled_from((300, 2000, 20000)))
        program.op(b"\x8b" + struct.pack("<I", size) + b"\x7f" * size)


def _emit_array(program: Program, draw: st.DrawFn, *, hostile: bool = True) -> None:
    """numpy's own pickle of an ndarray, with a shape and dtype the strategy chooses."""
    program.global_("numpy.core.multiarray", "_reconstruct", stacked=draw(st.booleans()))
    program.global_("numpy", "ndarray", stacked=True)
    program.op(b"K\x00\x85C\x01b\x87R")  # (ndarray, (0,), b"b") REDUCE
    small = st.lists(st.integers(0, 4), max_size=3)
    dims = draw(
        small
        if not hostile
        else st.one_of(
            small,
            st.lists(st.sampled_from((0, 1, 2**31, 2**62)), min_size=1, max_size=4),
            st.lists(st.just(1), min_size=33, max_size=40),
        )
    )
    dtype = draw(st.sampled_from(_SCALAR_DTYPES + (_ODD_DTYPES if hostile else ())))
    count = 1
    for dim in dims:
        count *= dim
    itemsize = {"2": 2, "4": 4, "8": 8, "1": 1}.get(dtype[-1:], 4)
    size = count * itemsize if count * itemsize < 256 else draw(st.integers(0, 64))
    program.op(b"(K\x01(" + b"".join(b"\x8a\x08" + struct.pack("<q", d) for d in dims) + b"t")
    program.global_("numpy", "dtype", stacked=True)
    program.text(dtype.lstrip("<>|") or "f4")
    program.op(b"\x89\x88\x87R(K\x03")  # dtype(name, False, True), then its state
    program.text(dtype[:1] if dtype[:1] in "<>|" else "<")
    program.op(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    program.op(b"\x89C" + bytes([size]) + draw(st.binary(min_size=size, max_size=size)))
    program.op(b"tb")  # state (1, shape, dtype, False, data), BUILD


def _emit_value(program: Program, draw: st.DrawFn, depth: int, hostile: bool) -> None:
    """Emit opcodes that push exactly one value (when no mutation breaks them later).

    Benign programs (``hostile`` false) stay inside what a genuine checkpoint holds, so they reach
    the emitter and the written zip; hostile ones add calls, BUILDs, names and shapes of attacks.
    """
    leaf = depth <= 0 or draw(st.integers(0, 4)) == 0
    if leaf:
        kind = draw(st.integers(0, 7 if hostile else 5))
        if kind == 0:
            _emit_int(program, draw)
        elif kind == 1:
            program.op(b"G" + struct.pack(">d", draw(st.floats(allow_nan=True))))
        elif kind == 2:
            program.text(draw(st.text(max_size=20) if hostile else st.text("abc_/:0", max_size=9)))
        elif kind == 3:
            size = draw(st.integers(0, 40))
            program.op(b"C" + bytes([size]) + draw(st.binary(min_size=size, max_size=size)))
        elif kind == 4:
            program.op(draw(st.sampled_from((b"N", b"\x88", b"\x89"))))
        elif kind == 5 and program.memo:
            program.get(draw(st.integers(0, program.memo - 1)))
        elif kind == 6:
            module, name = draw(_global_name())
            program.global_(module, name, stacked=draw(st.booleans()))
        else:
            program.op(b")")
        return
    kind = draw(st.sampled_from((0, 1, 2, 3, 4, 5, 6, 7, 8) if hostile else (0, 1, 2, 3, 6, 7)))
    if kind == 0:  # tuple of 1-3, sometimes via MARK
        count = draw(st.integers(1, 3))
        for _ in range(count):
            _emit_value(program, draw, depth - 1, hostile)
        program.op(b"\x85\x86\x87"[count - 1 : count])
    elif kind == 1:  # list
        program.op(b"](")
        for _ in range(draw(st.integers(0, 3))):
            _emit_value(program, draw, depth - 1, hostile)
        program.op(b"e")
    elif kind == 2:  # dict
        program.op(b"}(")
        for _ in range(draw(st.integers(0, 3))):
            if hostile:
                _emit_value(program, draw, depth - 1, hostile)
            else:  # keys a genuine checkpoint has, including ones Python treats as equal
                program.op(draw(st.sampled_from((b"K\x01", b"\x88", b"\x89", b"K\x00", b"N"))))
            _emit_value(program, draw, depth - 1, hostile)
        program.op(b"u")
    elif kind == 3:  # frozenset
        program.op(b"(")
        for _ in range(draw(st.integers(0, 3))):
            _emit_value(program, draw, depth - 1, hostile)
        program.op(b"\x91")
    elif kind == 4:  # a call: global + args tuple + REDUCE
        module, name = draw(_global_name())
        program.global_(module, name, stacked=draw(st.booleans()))
        _emit_value(program, draw, depth - 1, hostile)
        program.op(b"\x85R")
    elif kind == 5:  # BUILD on something
        _emit_value(program, draw, depth - 1, hostile)
        _emit_value(program, draw, depth - 1, hostile)
        program.op(b"b")
    elif kind == 6:  # memo sharing: a value used twice, the classic exponential DAG
        _emit_value(program, draw, depth - 1, hostile)
        index = program.memoize()
        program.get(index)
        program.op(b"\x86")
    elif kind == 7:
        _emit_array(program, draw, hostile=hostile)
    else:  # a nest of shared tuples, 2**levels nodes when expanded
        program.op(b"N")
        for _ in range(draw(st.integers(1, 64))):
            index = program.memoize()
            program.get(index)
            program.op(b"\x86")
    if draw(st.integers(0, 3)) == 0:
        program.memoize()


@st.composite
def legacy_pickles(draw: st.DrawFn) -> bytes:
    """A protocol-2..5 stream shaped like an SB2 legacy checkpoint ``(data, params)``."""
    hostile = draw(st.booleans())
    protocol = draw(st.sampled_from((2, 3, 4, 5)))
    program = Program()
    program.op(b"\x80" + bytes([protocol]))
    program.op(b"}(")
    program.text("policy")
    program.global_("stable_baselines.common.policies", "MlpPolicy", stacked=protocol >= 4)
    for _ in range(draw(st.integers(0, 4))):
        program.text(draw(st.sampled_from(("gamma", "learning_rate", "n_steps", "policy_kwargs"))))
        _emit_value(program, draw, draw(st.integers(0, 5)), hostile)
    program.op(b"u")
    if not hostile or draw(st.booleans()):
        program.global_("collections", "OrderedDict", stacked=protocol >= 4)
        program.op(b")R(")
        for index in range(draw(st.integers(0, 3))):
            program.text(f"model/w{index}:0")
            if hostile and draw(st.integers(0, 2)) == 0:
                _emit_value(program, draw, 1, hostile)
            else:
                _emit_array(program, draw, hostile=hostile)
        program.op(b"u")
    else:
        program.op(b"](")
        for _ in range(draw(st.integers(0, 3))):
            _emit_array(program, draw, hostile=hostile)
        program.op(b"e")
    program.op(b"\x86.")
    return mutate(bytes(program.out), draw) if hostile else bytes(program.out)


@st.composite
def opcode_floods(draw: st.DrawFn) -> bytes:
    """Long runs of cheap opcodes: work and memory bounded by budgets, not by the file's size."""
    unit = draw(st.sampled_from((b"N0", b"K\x01\x94", b"]\x94", b"(N\x85\x94", b"h\x00")))
    repeat = draw(st.integers(1000, 60000))
    return (
        b"\x80\x04}(\x8c\x06policyc"
        + b"stable_baselines.common.policies\nMlpPolicy\n"
        + (b"N" + unit * repeat)[: 2 * 1024 * 1024]
        + b"u}\x86."
    )


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """Sometimes flip, insert, delete or truncate a few bytes of a well-formed stream."""
    kind = draw(st.integers(0, 5))
    if kind >= 3 or not data:
        return data
    position = draw(st.integers(0, len(data) - 1))
    if kind == 0:
        return data[:position] + bytes([draw(st.integers(0, 255))]) + data[position + 1 :]
    if kind == 1:
        return data[:position] + draw(st.binary(min_size=1, max_size=8)) + data[position:]
    return data[:position]


def pickle_entry(data: bytes) -> dict[str, str]:
    """A ``:serialized:`` entry of an SB2 ``data`` JSON carrying ``data``."""
    return {":type:": "<class 'function'>", ":serialized:": b64encode(data).decode()}


@st.composite
def sb2_zips(draw: st.DrawFn) -> bytes:
    """An SB2 zip with generated ``data`` (including generated pickles) and npy members."""
    entries: dict[str, object] = {"gamma": 0.99}
    for index in range(draw(st.integers(0, 3))):
        entries[f"entry{index}"] = pickle_entry(draw(legacy_pickles()))
    names = [f"model/w{index}:0" for index in range(draw(st.integers(0, 3)))]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as npz:
        for name in names:
            descr = draw(st.sampled_from(_SCALAR_DTYPES + _ODD_DTYPES))
            shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
            header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
            header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
            body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
            body += draw(st.binary(max_size=32))
            npz.writestr(name + ".npy", body)
    listed = names if draw(st.integers(0, 4)) else [*names, "missing:0"]
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("data", json.dumps(entries, indent=4))
        archive.writestr("parameters", inner.getvalue())
        archive.writestr("parameter_list", json.dumps(listed, indent=4))
    return mutate(outer.getvalue(), draw)
