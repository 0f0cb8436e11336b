"""numpy values recognized in the inert graph: arrays, dtypes and scalars, without numpy's unpickler.

Only the shapes numpy itself writes are recognized (step 5 of docs/formats.md, "The safe legacy
reader"):

* protocols 2-4: ``_reconstruct(ndarray, (0,), b'b')`` + ``BUILD((1, shape, dtype, is_fortran,
  raw))``;
* protocol 5: ``_frombuffer(<bytearray>, dtype, shape, order)``;
* dtypes: ``dtype('f4', False, True)`` + ``BUILD((3, endian, None, None, None, -1, -1, 0))``,
  plain numbers and bools only;
* scalars: ``scalar(dtype, raw)``.

The byte order follows what a trusted ``pickle.load`` gives (docs/formats.md, "Pitfalls the reader
handles"): numpy's ``ndarray.__setstate__`` (protocols 2-4) converts a non-native array to native
order, while ``_frombuffer`` (protocol 5) keeps the stored order. Arrays are views into the source
bytes; only a byte-swapped array (big-endian data read by ``__setstate__``) and protocol-2 payloads
(stored as latin-1 text) need a copy.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckptd.errors import FormatError
from ckptd.limits import MAX_DIMS, shape_problem
from ckptd.pickles.call_shapes import NUMPY_CORE, SAFE_DTYPE, is_safe_dtype_call
from ckptd.pickles.nodes import BytesNode, Call, Const, Node, TupleNode

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where it is used, not with this module: ``ckptd convert`` imports it in a
# helper thread while it reads the file (ckptd.convert.conversion), before any of this runs.

_NATIVE = "<" if sys.byteorder == "little" else ">"

# str(type(x)) of numpy scalars as numpy 1.x (the stable-baselines runtime) spells them.
SCALAR_TYPE_NAMES = {
    "b1": "bool_",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "f2": "float16",
    "f4": "float32",
    "f8": "float64",
    "c8": "complex64",
    "c16": "complex128",
}


@dataclass(frozen=True)
class ArrayValue:
    """An array as a trusted load would produce it: dtype, shape, memory order and raw bytes."""

    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    fortran_order: bool  # as np.save would record it: F-contiguous and not also C-contiguous
    raw: memoryview

    def as_array(self) -> np.ndarray:
        import numpy as np

        flat = np.frombuffer(self.raw, dtype=self.dtype)
        return flat.reshape(self.shape, order="F" if self.fortran_order else "C")


def _const_value(node: Node) -> object:
    return node.value if isinstance(node, Const) else node


def is_call_to(node: Node, module_suffix: str, name: str) -> bool:
    """A call of numpy's ``<core>.<module_suffix>.<name>`` under either numpy 1.x or 2.x paths."""
    modules = tuple(f"{core}.{module_suffix}" for core in NUMPY_CORE)
    return isinstance(node, Call) and node.func_is(modules, name)


def dtype_of(node: Node, source: str | None) -> np.dtype[np.generic]:
    """The dtype a ``numpy.dtype(...)`` + BUILD node stands for (endianness from the BUILD)."""
    import numpy as np

    if not (isinstance(node, Call) and is_safe_dtype_call(node)):
        raise FormatError(f"unsupported dtype ({node.kind()})", path=source, offset=node.pos)
    descr = _const_value(node.args.items[0])
    assert isinstance(descr, str) and SAFE_DTYPE.fullmatch(descr)
    endian = "|"
    state = node.build
    if state is not None:
        values = (
            [_const_value(item) for item in state.items] if isinstance(state, TupleNode) else []
        )
        if (
            len(values) != 8
            or values[0] != 3
            or values[1] not in ("<", ">", "|", "=")
            or values[2:5] != [None, None, None]
            or values[5:7] != [-1, -1]
            or values[7] != 0
        ):
            raise FormatError(
                "unsupported dtype state (records, subarrays or metadata)",
                path=source,
                offset=node.pos,
            )
        assert isinstance(values[1], str)
        endian = values[1]
    if endian == "=":
        endian = _NATIVE
    dtype = np.dtype(descr if endian == "|" else endian + descr)
    return dtype


def _payload(node: Node, source: str | None) -> memoryview:
    """The bytes of a BINBYTES/BYTEARRAY8 node or of the protocol-2 spellings of bytes."""
    if isinstance(node, BytesNode):
        return node.data if isinstance(node.data, memoryview) else memoryview(node.data)
    if isinstance(node, Call) and node.func_is("_codecs", "encode"):
        text = _const_value(node.args.items[0])
        assert isinstance(text, str)
        try:
            return memoryview(text.encode("latin-1"))
        except UnicodeEncodeError as err:
            raise FormatError(
                "array bytes are not latin-1 text", path=source, offset=node.pos
            ) from err
    if isinstance(node, Call) and node.func_is("builtins", ("bytes", "bytearray")):
        if not node.args.items:
            return memoryview(b"")
        if len(node.args.items) == 1:
            return _payload(node.args.items[0], source)
    raise FormatError(f"array data is a {node.kind()}, not bytes", path=source, offset=node.pos)


def _shape_of(node: Node, source: str | None) -> tuple[int, ...]:
    if isinstance(node, TupleNode):
        if len(node.items) > MAX_DIMS:
            raise FormatError(
                f"array of {len(node.items)} dimensions (numpy supports at most {MAX_DIMS})",
                path=source,
                offset=node.pos,
            )
        dims = [_const_value(item) for item in node.items]
        if all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in dims):
            shape = tuple(dim for dim in dims if isinstance(dim, int))
            problem = shape_problem(shape)
            if problem:
                raise FormatError(problem, path=source, offset=node.pos)
            return shape
    raise FormatError(
        "array shape is not a tuple of non-negative ints", path=source, offset=node.pos
    )


def _finish(
    dtype: np.dtype[np.generic],
    shape: tuple[int, ...],
    fortran: bool,
    raw: memoryview,
    node: Node,
    source: str | None,
) -> ArrayValue:
    import numpy as np

    problem = shape_problem(shape, dtype.itemsize)
    if problem:
        raise FormatError(problem, path=source, offset=node.pos)
    expected = math.prod(shape) * dtype.itemsize
    if raw.nbytes != expected:
        raise FormatError(
            f"array data is {raw.nbytes} bytes but shape {shape} of {dtype.str} needs {expected}",
            path=source,
            offset=node.pos,
        )
    view = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    recorded_fortran = bool(view.flags.f_contiguous and not view.flags.c_contiguous)
    return ArrayValue(dtype=dtype, shape=shape, fortran_order=recorded_fortran, raw=raw)


def is_array_node(node: Node) -> bool:
    return is_call_to(node, "multiarray", "_reconstruct") or is_call_to(
        node, "numeric", "_frombuffer"
    )


def array_of(node: Node, source: str | None) -> ArrayValue:
    """Materialize an array node (zero-copy where the stored bytes are already right)."""
    import numpy as np

    if is_call_to(node, "numeric", "_frombuffer"):
        assert isinstance(node, Call)
        buffer, dtype_node, shape_node, order = node.args.items
        if node.build is not None or node.setitems or node.state_calls:
            raise FormatError(
                "unexpected state on a protocol-5 array", path=source, offset=node.pos
            )
        dtype = dtype_of(dtype_node, source)
        return _finish(
            dtype,
            _shape_of(shape_node, source),
            _const_value(order) == "F",
            _payload(buffer, source),
            node,
            source,
        )
    if is_call_to(node, "multiarray", "_reconstruct"):
        assert isinstance(node, Call)
        state = node.build
        if (
            not isinstance(state, TupleNode)
            or len(state.items) != 5
            or _const_value(state.items[0]) != 1
        ):
            raise FormatError(
                "array without the (1, shape, dtype, fortran, data) state",
                path=source,
                offset=node.pos,
            )
        _, shape_node, dtype_node, fortran_node, data_node = state.items
        fortran = _const_value(fortran_node)
        if not isinstance(fortran, bool):
            raise FormatError("array fortran flag is not a bool", path=source, offset=node.pos)
        dtype = dtype_of(dtype_node, source)
        shape = _shape_of(shape_node, source)
        raw = _payload(data_node, source)
        if dtype.byteorder not in ("=", "|") and dtype.byteorder != _NATIVE:
            # ndarray.__setstate__ hands back non-native data in native order (same values).
            native = dtype.newbyteorder("=")
            checked = _finish(dtype, shape, fortran, raw, node, source)
            swapped = np.frombuffer(checked.raw, dtype=dtype).astype(native)
            return ArrayValue(native, shape, checked.fortran_order, memoryview(swapped.tobytes()))
        return _finish(dtype, shape, fortran, raw, node, source)
    raise FormatError(f"not a numpy array ({node.kind()})", path=source, offset=node.pos)


def is_scalar_node(node: Node) -> bool:
    return is_call_to(node, "multiarray", "scalar")


def _scalar_parts(node: Node, source: str | None) -> tuple[np.dtype[np.generic], memoryview]:
    """The dtype and raw bytes of a ``scalar(dtype, raw)`` node, their sizes checked."""
    assert isinstance(node, Call)
    if len(node.args.items) != 2:
        raise FormatError("numpy scalar without (dtype, bytes)", path=source, offset=node.pos)
    dtype_node, data_node = node.args.items
    dtype = dtype_of(dtype_node, source)
    raw = _payload(data_node, source)
    if raw.nbytes != dtype.itemsize:
        raise FormatError(
            "numpy scalar with the wrong number of bytes", path=source, offset=node.pos
        )
    return dtype, raw


def scalar_of(node: Node, source: str | None) -> np.generic:
    """The numpy scalar a ``scalar(dtype, raw)`` node stands for (numbers only)."""
    import numpy as np

    dtype, raw = _scalar_parts(node, source)
    value: np.generic = np.frombuffer(raw, dtype=dtype)[0]
    return value


def scalar_as_array(node: Node, source: str | None) -> ArrayValue:
    """The 0-d array ``np.savez`` stores for a numpy scalar (``np.asanyarray(scalar)``), bit-exact.

    A numpy scalar holds its value in native byte order, so a non-native stored dtype is
    byte-swapped (a pure byte permutation: NaN payloads survive) into the native dtype.
    """
    import numpy as np

    dtype, raw = _scalar_parts(node, source)
    if dtype.byteorder not in ("=", "|") and dtype.byteorder != _NATIVE:
        swapped = np.frombuffer(raw, dtype=dtype).byteswap().view(dtype.newbyteorder("="))
        return ArrayValue(swapped.dtype, (), False, memoryview(swapped.tobytes()))
    return ArrayValue(dtype, (), False, raw)


def scalar_descr(node: Node) -> str | None:
    """'f4', 'i8'... of a scalar node's dtype (None if it is not a recognizable scalar)."""
    if is_scalar_node(node) and isinstance(node, Call) and node.args.items:
        dtype_node = node.args.items[0]
        if isinstance(dtype_node, Call) and dtype_node.args.items:
            descr = _const_value(dtype_node.args.items[0])
            return descr if isinstance(descr, str) else None
    return None
