"""Malicious and broken pickles: every one is refused, nothing runs, errors say why.

Each payload, if really unpickled, would create a marker file in ``tmp_path``. The reader must
refuse it (UnsafeCheckpoint or FormatError with a specific reason) and the marker must never
appear. For the payloads marked *live*, a separate subprocess really unpickles them and the marker
does appear, which proves the test payloads are genuine attacks rather than inert bytes.

Payloads are built at test time from ``__reduce__`` classes and raw opcodes.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from ckptd.convert.legacy import read_legacy, read_legacy_file
from ckptd.errors import CkptdError, FormatError, UnsafeCheckpoint
from ckptd.pickles.graph_check import check_pickle_bytes
from tests.sb2_fixtures import dqn_data, dqn_params, dumps, stand_ins

# --- a tiny opcode assembler -------------------------------------------------------------------


class Asm:
    """Writes raw pickle opcodes; ``bytes(asm)`` is the stream."""

    def __init__(self, protocol: int = 4) -> None:
        self.out = bytearray(b"\x80" + bytes([protocol]))

    def __bytes__(self) -> bytes:
        return bytes(self.out)

    def raw(self, data: bytes) -> Asm:
        self.out += data
        return self

    def str(self, text: str) -> Asm:
        encoded = text.encode()
        if len(encoded) < 256:
            return self.raw(b"\x8c" + bytes([len(encoded)]) + encoded)
        return self.raw(b"X" + struct.pack("<I", len(encoded)) + encoded)

    def global_(self, module: str, name: str) -> Asm:
        return self.raw(b"c" + f"{module}\n{name}\n".encode())

    def stack_global(self, module: str, name: str) -> Asm:
        return self.str(module).str(name).raw(b"\x93")

    def call(self, *arg_strings: str) -> Asm:
        """Push a tuple of string args and REDUCE (the callable must already be on the stack)."""
        self.raw(b"(")
        for text in arg_strings:
            self.str(text)
        return self.raw(b"tR")

    def stop(self) -> bytes:
        return bytes(self.raw(b"."))


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def _py_touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


class _Reduce:
    """An object whose pickle calls ``func(*args)`` on load."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _genuine_checkpoint(extra_data: dict[str, Any] | None = None, protocol: int = 4) -> bytes:
    with stand_ins():
        data = dqn_data()
        data.update(extra_data or {})
        return dumps((data, dqn_params()), protocol)


def _code_args(marker: Path) -> tuple[Any, ...]:
    namespace: dict[str, Any] = {}
    exec(f"def f():\n    {_py_touch(marker)}\n", namespace)  # builds a code object, runs nothing
    _, args = cloudpickle.cloudpickle._code_reduce(namespace["f"].__code__)
    return tuple(args)


# --- the payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[Path], bytes]
    reason: str  # a regex the error message must match
    live: bool = False  # pickle.loads really creates the marker


def _p_os_system(m: Path) -> bytes:
    return pickle.dumps(_Reduce(os.system, _touch(m)), protocol=2)


def _p_posix_system_p4(m: Path) -> bytes:
    return bytes(Asm(4).stack_global("posix", "system").call(_touch(m)).raw(b"."))


def _p_subprocess(m: Path) -> bytes:
    return pickle.dumps(_Reduce(subprocess.check_call, ["touch", str(m)]), protocol=4)


def _p_exec(m: Path) -> bytes:
    return pickle.dumps(_Reduce(exec, _py_touch(m)), protocol=5)


def _p_eval(m: Path) -> bytes:
    return bytes(Asm(2).global_("builtins", "eval").call(_py_touch(m)).raw(b"."))


def _p_getattr_import_chain(m: Path) -> bytes:
    # getattr(__import__('os'), 'system')('touch ...')
    asm = (
        Asm(2).global_("builtins", "getattr").raw(b"(").global_("builtins", "__import__").call("os")
    )
    return asm.str("system").raw(b"tR").call(_touch(m)).stop()


def _p_getattr_on_allowed_module(m: Path) -> bytes:
    # getattr(subimport('os'), 'system')(cmd): every helper is cloudpickle's, the module is not.
    asm = Asm(4).stack_global("builtins", "getattr").raw(b"(")
    asm.stack_global("cloudpickle.cloudpickle", "subimport").call("os")
    return asm.str("system").raw(b"tR").call(_touch(m)).stop()


def _p_getattr_sys_modules(m: Path) -> bytes:
    # getattr(subimport('sys'), 'modules') is an allowed shape; calling .get on it is not.
    asm = Asm(4).stack_global("builtins", "getattr").raw(b"(")
    asm.stack_global("builtins", "getattr").raw(b"(")
    asm.stack_global("cloudpickle.cloudpickle", "subimport").call("sys")
    asm.str("modules").raw(b"tR")  # sys.modules
    asm.str("get").raw(b"tR")  # sys.modules.get
    return asm.call("os").stop()


def _p_stack_global_memo(m: Path) -> bytes:
    asm = Asm(4).str("os").raw(b"\x94").str("system").raw(b"\x94")  # memo 0='os', 1='system'
    asm.raw(b"0")  # POP 'system'
    asm.raw(b"0")  # POP 'os'
    return asm.raw(b"h\x00h\x01\x93").call(_touch(m)).stop()


def _p_double_memoize(m: Path) -> bytes:
    # picklescan models memo slot 1 as "the argument before PUT"; the VM stores 'os' twice.
    asm = Asm(4).str("collections").raw(b"0").str("os").raw(b"\x94\x94").raw(b"0")
    asm.str("system").raw(b"\x94").raw(b"0")  # memo: 0='os', 1='os', 2='system'
    return asm.raw(b"h\x01h\x02\x93").call(_touch(m)).stop()


def _p_stack_global_computed_name(m: Path) -> bytes:
    # The module name is the result of a call (bytes), never a literal string.
    asm = Asm(4).stack_global("_codecs", "encode").call("os", "latin1")
    return asm.str("system").raw(b"\x93").call(_touch(m)).stop()


def _p_dotted_pathlib(m: Path) -> bytes:
    return Asm(4).stack_global("pathlib", "os.system").call(_touch(m)).stop()


def _p_dotted_through_allowed(m: Path) -> bytes:
    return Asm(4).stack_global("collections", "OrderedDict.__class__").call("x", "y").stop()


def _p_importlib_vars_dictget(m: Path) -> bytes:
    asm = Asm(4).stack_global("builtins", "dict.get").raw(b"(")
    asm.stack_global("builtins", "vars").raw(b"(").stack_global("importlib", "import_module").call(
        "os"
    )
    asm.raw(b"tR").str("system").raw(b"tR")
    return asm.call(_touch(m)).stop()


def _p_inst(m: Path) -> bytes:
    return Asm(2).raw(b"(").str(_touch(m)).raw(b"ios\nsystem\n.").__bytes__()


def _p_obj(m: Path) -> bytes:
    return Asm(2).raw(b"(").global_("os", "system").str(_touch(m)).raw(b"o.").__bytes__()


def _p_obj_pop_before_tuple(m: Path) -> bytes:
    # OBJ call whose result is thrown away, followed by a perfect (data, params) tuple.
    genuine = _genuine_checkpoint()
    payload = Asm(2).raw(b"(").global_("os", "system").str(_touch(m)).raw(b"o0")
    return bytes(payload) + genuine[2:]


def _p_reduce_pop_before_tuple(m: Path) -> bytes:
    genuine = _genuine_checkpoint(protocol=2)
    payload = Asm(2).global_("posix", "system").call(_touch(m)).raw(b"0")
    return bytes(payload) + genuine[2:]


def _p_newobj_ex(m: Path) -> bytes:
    asm = (
        Asm(4)
        .stack_global("subprocess", "Popen")
        .raw(b"(")
        .str("touch")
        .str(str(m))
        .raw(b"l\x85}\x92.")
    )
    return bytes(asm)


def _p_build_setstate(m: Path) -> bytes:
    # NEWOBJ an allowed class, plant __setstate__ = os.system, then BUILD the command.
    asm = Asm(4).stack_global("gym.spaces.box", "Box").raw(b")\x81")
    asm.raw(b"}").str("__setstate__").stack_global("os", "system").raw(b"sb")
    return asm.str(_touch(m)).raw(b"b0").raw(b"N.").__bytes__()


def _p_build_setstate_live(m: Path) -> bytes:
    asm = Asm(4).stack_global("argparse", "Namespace").raw(b")\x81")
    asm.raw(b"}").str("__setstate__").stack_global("os", "system").raw(b"sb")
    return asm.str(_touch(m)).raw(b"b.").__bytes__()


def _p_build_dunder_on_allowed(m: Path) -> bytes:
    # One BUILD only, but it plants a special attribute on an allowed instance.
    asm = Asm(4).stack_global("gym.spaces.box", "Box").raw(b")\x81")
    return asm.raw(b"}").str("__reduce_ex__").raw(b"Nsb.").__bytes__()


def _p_nested_pickle(m: Path) -> bytes:
    inner = pickle.dumps(_Reduce(os.system, _touch(m)), protocol=2)
    return pickle.dumps(_Reduce(pickle.loads, inner), protocol=4)


def _p_object_array(m: Path) -> bytes:
    array = np.empty(1, dtype=object)
    array[0] = _Reduce(os.system, _touch(m))
    return pickle.dumps(array, protocol=4)


def _p_object_array_in_checkpoint(m: Path) -> bytes:
    array = np.empty(2, dtype=object)
    array[1] = _Reduce(os.system, _touch(m))
    with stand_ins():
        return dumps((dqn_data(), OrderedDict([("w:0", array)])), 4)


def _p_nested_npy(m: Path) -> bytes:
    array = np.empty(1, dtype=object)
    array[0] = _Reduce(os.system, _touch(m))
    npy = io.BytesIO()
    np.lib.format.write_array(npy, array, allow_pickle=True)
    asm = Asm(4).stack_global("numpy.lib.format", "read_array").raw(b"(")
    asm.stack_global("_io", "BytesIO").raw(b"(C" if len(npy.getvalue()) < 256 else b"(B")
    blob = npy.getvalue()
    asm.raw(bytes([len(blob)]) if len(blob) < 256 else struct.pack("<I", len(blob))).raw(blob)
    return asm.raw(b"tR\x88tR.").__bytes__()


def _p_cloudpickle_lambda_called(m: Path) -> bytes:
    marker = str(m)
    return cloudpickle.dumps(_Reduce(lambda: open(marker, "w").close()), protocol=4)


def _p_function_type_called(m: Path) -> bytes:
    # _builtin_type('FunctionType')(_builtin_type('CodeType')(*args), {})() with allowed helpers.
    def builtin_type(name: str) -> bytes:
        return bytes(
            Asm(4).stack_global("cloudpickle.cloudpickle", "_builtin_type").call(name).out[2:]
        )

    code = cloudpickle.dumps(_code_args(m), protocol=4)[11:-1]  # the args tuple, unframed
    body = builtin_type("FunctionType") + b"(" + builtin_type("CodeType") + code + b"R}tR)R."
    return b"\x80\x04" + body


def _p_marshal_function(m: Path) -> bytes:
    import marshal

    namespace: dict[str, Any] = {}
    exec(f"def f():\n    {_py_touch(m)}\n", namespace)
    blob = marshal.dumps(namespace["f"].__code__)
    asm = Asm(4).stack_global("types", "FunctionType").raw(b"(")
    asm.stack_global("marshal", "loads").raw(b"(B" + struct.pack("<I", len(blob)) + blob + b"tR")
    asm.stack_global("builtins", "globals").raw(b")RtR)R.")
    return bytes(asm)


def _p_partial_called(m: Path) -> bytes:
    asm = Asm(4).stack_global("functools", "partial").stack_global("_codecs", "encode")
    return asm.raw(b"\x85R").call("x", "latin1").stop()


def _p_partial_of_system(m: Path) -> bytes:
    import functools

    return pickle.dumps(_Reduce(functools.partial(os.system, _touch(m))), protocol=4)


def _p_payload_inside_checkpoint(m: Path) -> bytes:
    return _genuine_checkpoint({"learning_rate": _Reduce(os.system, _touch(m))})


def _p_payload_in_params(m: Path) -> bytes:
    with stand_ins():
        params = dqn_params()
        params["deepq/eps:0"] = _Reduce(os.system, _touch(m))  # type: ignore[assignment]
        return dumps((dqn_data(), params), 5)


def _p_stacked_pickles(m: Path) -> bytes:
    return _genuine_checkpoint() + pickle.dumps(_Reduce(os.system, _touch(m)), protocol=4)


def _p_stacked_payload_first(m: Path) -> bytes:
    return pickle.dumps(_Reduce(os.system, _touch(m)), protocol=4) + _genuine_checkpoint()


def _p_truncated_after_payload(m: Path) -> bytes:
    full = pickle.dumps((_Reduce(os.system, _touch(m)), "padding" * 10), protocol=2)
    reduce_end = next(pos for op, _, pos in pickletools.genops(full) if op.name == "REDUCE") + 1
    return full[:reduce_end]  # the payload call, then nothing (nullifAI)


def _p_frame_straddle(m: Path) -> bytes:
    # FRAME ends in the middle of a SHORT_BINUNICODE: a file-reading VM resynchronizes elsewhere.
    body = Asm(4).stack_global("posix", "system").call(_touch(m)).stop()[2:]
    return b"\x80\x04\x95" + struct.pack("<Q", 3) + body


def _p_frame_in_frame(m: Path) -> bytes:
    body = pickle.dumps(_Reduce(os.system, _touch(m)), protocol=4)[11:]
    inner = b"\x95" + struct.pack("<Q", len(body)) + body
    return b"\x80\x04\x95" + struct.pack("<Q", len(inner)) + inner


def _p_frame_longer_than_data(m: Path) -> bytes:
    body = pickle.dumps(_Reduce(os.system, _touch(m)), protocol=4)[11:]
    return b"\x80\x04\x95" + struct.pack("<Q", len(body) + 1000) + body


def _p_ext_registry(m: Path) -> bytes:
    return bytes(Asm(2).raw(b"\x82\x01").call(_touch(m)).raw(b"."))


def _p_persid(m: Path) -> bytes:
    return bytes(Asm(2).str(_touch(m)).raw(b"Q."))


def _p_subimport_unlisted(m: Path) -> bytes:
    return Asm(4).stack_global("cloudpickle.cloudpickle", "subimport").call("antigravity").stop()


def _p_randomstate_ctor_calls_arg(m: Path) -> bytes:
    # numpy's __randomstate_ctor(name, ctor) calls ctor(name): a call hidden in an allowed helper.
    asm = Asm(4).stack_global("numpy.random._pickle", "__randomstate_ctor").raw(b"(").str(_touch(m))
    return asm.stack_global("posix", "system").raw(b"tR.").__bytes__()


def _p_randomstate_ctor_with_allowed_callable(m: Path) -> bytes:
    asm = Asm(4).stack_global("numpy.random._pickle", "__randomstate_ctor").raw(b"(").str("os")
    return asm.stack_global("cloudpickle.cloudpickle", "subimport").raw(b"tR.").__bytes__()


def _p_skeleton_class_metaclass(m: Path) -> bytes:
    # _make_skeleton_class calls its first argument as a metaclass.
    asm = Asm(4).stack_global("cloudpickle.cloudpickle", "_make_skeleton_class").raw(b"(")
    asm.stack_global("functools", "partial").str("X").raw(b")}NNtR.")
    return bytes(asm)


def _p_class_init_subclass(m: Path) -> bytes:
    marker = str(m)

    class Base:
        hook = ""

        def __init_subclass__(cls, **kwargs: Any) -> None:
            if cls.hook:
                open(cls.hook, "w").close()

    class Child(Base):
        pass

    Base.hook = marker
    return cloudpickle.dumps(Child, protocol=4)


def _p_huge_memo_index(m: Path) -> bytes:
    return bytes(Asm(4).str("x").raw(b"r\xff\xff\xff\xff."))


def _p_setitem_on_call(m: Path) -> bytes:
    # SETITEM on a non-dict calls its __setitem__; only dicts/OrderedDict may receive items.
    asm = Asm(4).stack_global("_codecs", "encode").call("x", "latin1")
    return asm.str("k").str("v").raw(b"s.").__bytes__()


def _p_append_on_global(m: Path) -> bytes:
    return Asm(4).stack_global("collections", "OrderedDict").str(_touch(m)).raw(b"a.").__bytes__()


def _p_reconstructor_base(m: Path) -> bytes:
    asm = Asm(2).global_("copy_reg", "_reconstructor").raw(b"(").global_("gym.spaces.box", "Box")
    return asm.global_("posix", "system").str(_touch(m)).raw(b"tR.").__bytes__()


HOSTILE = [
    Hostile("os.system", _p_os_system, r"global posix\.system is not on the allowlist", live=True),
    Hostile("posix.system p4", _p_posix_system_p4, r"posix\.system", live=True),
    Hostile("subprocess", _p_subprocess, r"subprocess\.check_call", live=True),
    Hostile("exec", _p_exec, r"builtins\.exec", live=True),
    Hostile("eval", _p_eval, r"builtins\.eval", live=True),
    Hostile("getattr(__import__)", _p_getattr_import_chain, r"builtins\.__import__", live=True),
    Hostile("getattr(subimport os)", _p_getattr_on_allowed_module, r"subimport of 'os'", live=True),
    Hostile(
        "sys.modules.get", _p_getattr_sys_modules, r"getattr is only accepted on a named class"
    ),
    Hostile("STACK_GLOBAL via memo", _p_stack_global_memo, r"os\.system", live=True),
    Hostile("double MEMOIZE", _p_double_memoize, r"os\.system", live=True),
    Hostile(
        "STACK_GLOBAL computed",
        _p_stack_global_computed_name,
        r"STACK_GLOBAL module is not a string",
    ),
    Hostile("dotted pathlib", _p_dotted_pathlib, r"pathlib\.os\.system", live=True),
    Hostile("dotted via allowed", _p_dotted_through_allowed, r"OrderedDict\.__class__"),
    Hostile(
        "importlib+vars+dict.get", _p_importlib_vars_dictget, r"not on the allowlist", live=True
    ),
    Hostile("INST", _p_inst, r"INST calls a class", live=True),
    Hostile("OBJ", _p_obj, r"OBJ calls", live=True),
    Hostile("OBJ+POP camouflage", _p_obj_pop_before_tuple, r"OBJ calls", live=True),
    Hostile(
        "REDUCE+POP camouflage",
        _p_reduce_pop_before_tuple,
        r"discarded with POP|posix\.system",
        live=True,
    ),
    Hostile("NEWOBJ_EX", _p_newobj_ex, r"NEWOBJ_EX"),
    Hostile("BUILD __setstate__", _p_build_setstate, r"second BUILD"),
    Hostile("BUILD __setstate__ live", _p_build_setstate_live, r"second BUILD", live=True),
    Hostile("BUILD dunder", _p_build_dunder_on_allowed, r"__reduce_ex__ \(a special attribute\)"),
    Hostile("nested pickle", _p_nested_pickle, r"_pickle\.loads", live=True),
    Hostile("object array", _p_object_array, r"numpy\.dtype of anything but a plain", live=True),
    Hostile("object array param", _p_object_array_in_checkpoint, r"numpy\.dtype of anything but"),
    Hostile("nested npy read_array", _p_nested_npy, r"numpy\.lib\.format\.read_array", live=True),
    Hostile(
        "cloudpickle lambda called",
        _p_cloudpickle_lambda_called,
        r"call of a constructed callable",
        live=True,
    ),
    Hostile(
        "FunctionType called", _p_function_type_called, r"call of a constructed callable", live=True
    ),
    Hostile("marshal+FunctionType", _p_marshal_function, r"not on the allowlist", live=True),
    Hostile("partial(...)()", _p_partial_called, r"call of a constructed callable"),
    Hostile("partial(os.system)", _p_partial_of_system, r"posix\.system"),
    Hostile("payload in data", _p_payload_inside_checkpoint, r"posix\.system", live=True),
    Hostile("payload in params", _p_payload_in_params, r"posix\.system", live=True),
    Hostile("stacked pickles", _p_stacked_pickles, r"trailing bytes after STOP"),
    Hostile(
        "stacked payload first", _p_stacked_payload_first, r"trailing bytes after STOP", live=True
    ),
    Hostile("truncated after payload", _p_truncated_after_payload, r"truncated pickle", live=True),
    Hostile("FRAME straddle", _p_frame_straddle, r"straddles the end of its FRAME"),
    Hostile("FRAME in FRAME", _p_frame_in_frame, r"FRAME opened inside another frame"),
    Hostile("FRAME too long", _p_frame_longer_than_data, r"FRAME is longer than the data"),
    Hostile("EXT1", _p_ext_registry, r"extension-registry"),
    Hostile("PERSID", _p_persid, r"persistent ids"),
    Hostile("subimport unlisted", _p_subimport_unlisted, r"subimport of 'antigravity'"),
    Hostile(
        "RandomState ctor calls arg", _p_randomstate_ctor_calls_arg, r"posix\.system", live=True
    ),
    Hostile(
        "RandomState ctor shape",
        _p_randomstate_ctor_with_allowed_callable,
        r"argument it would call",
    ),
    Hostile(
        "skeleton metaclass", _p_skeleton_class_metaclass, r"metaclass other than type/ABCMeta"
    ),
    Hostile(
        "__init_subclass__ hook",
        _p_class_init_subclass,
        r"class state defines __init_subclass__",
        live=True,
    ),
    Hostile("huge memo index", _p_huge_memo_index, r"memo index 4294967295 beyond the limit"),
    Hostile("SETITEM on call", _p_setitem_on_call, r"SETITEM on a Call"),
    Hostile("APPEND on global", _p_append_on_global, r"APPEND on a Global"),
    Hostile("copyreg base", _p_reconstructor_base, r"posix\.system|copyreg\._reconstructor"),
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_pickle_is_refused_and_nothing_runs(hostile: Hostile, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    blob = hostile.build(marker)
    path.write_bytes(blob)
    with pytest.raises((UnsafeCheckpoint, FormatError), match=hostile.reason) as info:
        read_legacy_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises((UnsafeCheckpoint, FormatError), match=hostile.reason):
        check_pickle_bytes(blob, source="blob")
    assert not marker.exists()
    assert path.read_bytes() == blob


def test_at_least_25_hostile_pickles() -> None:
    assert len(HOSTILE) >= 25
    assert sum(hostile.live for hostile in HOSTILE) >= 20


_LOADER = """
import sys, pickle, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, sys.argv[2])
from tests.sb2_fixtures import stand_ins
with stand_ins():
    with open(sys.argv[1], "rb") as handle:
        try:
            pickle.load(handle)
        except BaseException:
            pass
"""


@pytest.mark.parametrize(
    "hostile", [h for h in HOSTILE if h.live], ids=[h.name for h in HOSTILE if h.live]
)
def test_payload_is_live_when_really_unpickled(hostile: Hostile, tmp_path: Path) -> None:
    """Control: the same bytes do run when unpickled (in a child process, as the attacker meant)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(hostile.build(marker))
    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run([sys.executable, "-c", _LOADER, str(path), root], timeout=30, check=False)
    assert marker.exists(), (
        f"{hostile.name} did not run under pickle.load: the test payload is inert"
    )


# --- broken inputs ----------------------------------------------------------------------------


def test_truncation_at_every_offset_is_a_clear_format_error(tmp_path: Path) -> None:
    blob = _genuine_checkpoint(protocol=4)
    for cut in range(0, len(blob), max(1, len(blob) // 400)):
        with pytest.raises(CkptdError) as info:
            read_legacy(blob[:cut], source="cut.pkl")
        assert isinstance(info.value, FormatError), (cut, info.value)
        assert str(info.value).startswith("cut.pkl: ")


def test_random_bytes_are_format_errors() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(300):
        size = int(rng.integers(1, 400))
        blob = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        if rng.random() < 0.5:
            blob = b"\x80\x04" + blob
        with pytest.raises((FormatError, UnsafeCheckpoint)):
            read_legacy(blob, source="random.bin")


def test_mutated_genuine_checkpoints_never_escape_as_other_exceptions() -> None:
    """Single-byte corruptions of a real checkpoint give CkptdErrors or a valid read, nothing else."""
    blob = bytearray(_genuine_checkpoint(protocol=2))
    rng = np.random.default_rng(99)
    for _ in range(400):
        mutated = bytearray(blob)
        mutated[int(rng.integers(2, len(blob)))] = int(rng.integers(0, 256))
        with contextlib.suppress(CkptdError):  # anything else escapes and fails the test
            read_legacy(bytes(mutated), source="mutated.pkl")


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "empty file"),
        (pickle.dumps({"a": 1}, protocol=0), "not a pickle of protocol 2-5"),
        (pickle.dumps({"a": 1}, protocol=1), "not a pickle of protocol 2-5"),
        (b"\x80\x06N.", "unsupported pickle protocol 6"),
        (b"\x80\x04\xff.", "unknown pickle opcode 0xff"),
        (b"\x80\x04N", "no STOP"),
        (b"\x80\x04NN.", "2 items on the stack"),
        (b"\x80\x04(N.", "open MARK"),
        (b"\x80\x04h\x05.", "memo slot 5 is read before it is written"),
        (b"\x80\x04\x80\x04N.", "PROTO opcode after the start"),
        (b"\x80\x04t.", "no MARK to pop to"),
        (b"\x80\x040.", "stack underflow"),
        (b"\x80\x04X\xff\xff\xff\x7f.", "BINUNICODE argument runs past the end"),
        (
            b"\x80\x04\x8d" + struct.pack("<Q", 2**63) + b".",
            "BINUNICODE8 argument runs past the end",
        ),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", "a 7z archive"),
    ],
)
def test_broken_inputs_get_one_line_errors(blob: bytes, reason: str) -> None:
    with pytest.raises(FormatError, match=reason) as info:
        read_legacy(blob, source="broken.pkl")
    assert str(info.value).startswith("broken.pkl: ")
    assert "\n" not in str(info.value)
