"""The safe legacy reader: a stable-baselines ``(data, params)`` pickle to a LegacyCheckpoint.

Nothing from the file is executed and no module it names is imported
(reference/pickle-security.md §5): the bytes are parsed (``pickle_ops``), replayed over inert
nodes (``pickle_graph``), checked against the allowlist (``allowlist``), and only then are the
parameter arrays materialized from numpy's own patterns (``legacy_arrays``) and each ``data``
value turned into what SB2's ``data_to_json`` would store (``legacy_data``).

``read_legacy_file`` reads the file once, hashing as it reads, and parses exactly those bytes,
so what was judged is what was hashed (no time-of-check/time-of-use gap).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ckptd.errors import FileChangedError, FormatError, UnsafeCheckpoint
from ckptd.formats.allowlist import check_graph
from ckptd.formats.legacy_arrays import array_of, is_array_node
from ckptd.formats.legacy_data import data_value
from ckptd.formats.model import DataValue, LegacyCheckpoint, OpaqueValue, ParamArray
from ckptd.formats.pickle_graph import (
    Call,
    Const,
    DictNode,
    ListNode,
    Node,
    TupleNode,
    build_graph,
    is_ordered_dict_call,
)
from ckptd.formats.pickle_ops import parse_ops
from ckptd.fsio import CHUNK_SIZE, open_regular_nofollow

logger = logging.getLogger(__name__)

# A legacy checkpoint is read into memory whole; refuse anything bigger than this by default.
DEFAULT_MAX_BYTES = 8 * 1024**3

_ZIP_MAGIC = b"PK\x03\x04"
_SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"


def _gate(view: memoryview, source: str) -> None:
    """Byte-level checks before parsing: clear messages for the common wrong inputs."""
    head = bytes(view[:8])
    if not head:
        raise FormatError("empty file, not a stable-baselines checkpoint", path=source)
    if head.startswith(_ZIP_MAGIC):
        raise FormatError("a zip archive, not a legacy pickle checkpoint", path=source)
    if head.startswith(_SEVEN_ZIP_MAGIC):
        raise FormatError("a 7z archive, not a legacy pickle checkpoint", path=source)


def _describe(node: Node) -> str:
    if isinstance(node, TupleNode):
        return f"a tuple of {len(node.items)}"
    if isinstance(node, Const):
        return f"a {type(node.value).__name__}"
    if isinstance(node, Call) and hasattr(node.func, "dotted"):
        return f"a call of {node.func.dotted}"
    return f"a {node.kind()}"


def _split_top(root: Node, source: str) -> tuple[DictNode, Node]:
    if not (isinstance(root, TupleNode) and len(root.items) == 2):
        raise FormatError(
            f"not a stable-baselines checkpoint: top level is {_describe(root)}", path=source
        )
    data, params = root.items
    if not isinstance(data, DictNode):
        raise FormatError(
            f"not a stable-baselines checkpoint: top level is (<{_describe(data)}>, ...), data must be a dict",
            path=source,
        )
    if not (
        isinstance(params, ListNode) or (is_ordered_dict_call(params) and isinstance(params, Call))
    ):
        raise FormatError(
            f"not a stable-baselines checkpoint: top level is (dict, <{_describe(params)}>), "
            "params must be an OrderedDict or a list",
            path=source,
        )
    return data, params


def _param(name: str, node: Node, source: str) -> ParamArray:
    if not is_array_node(node):
        raise FormatError(
            f"parameter {name!r} is {_describe(node)}, not a numpy array",
            path=source,
            offset=node.pos,
        )
    array = array_of(node, source)
    return ParamArray(
        name=name,
        descr=array.dtype.str,
        shape=array.shape,
        fortran_order=array.fortran_order,
        raw=array.raw,
    )


def _read_params(
    params: Node, param_names: Sequence[str] | None, source: str
) -> tuple[tuple[ParamArray, ...], bool]:
    if isinstance(params, ListNode):
        if param_names is None:
            raise FormatError(
                f"parameters are an unnamed list of {len(params.items)} arrays (stable-baselines <= 2.5.1); "
                "their TF variable names are needed to convert it: pass the model's parameter names",
                path=source,
            )
        if len(param_names) != len(params.items):
            raise FormatError(
                f"{len(param_names)} parameter names given for {len(params.items)} arrays",
                path=source,
            )
        return tuple(
            _param(name, node, source) for name, node in zip(param_names, params.items, strict=True)
        ), True
    assert isinstance(params, Call)
    named: dict[str, Node] = {}
    for key, node in params.setitems:
        if not (isinstance(key, Const) and isinstance(key.value, str)):
            raise FormatError(
                f"parameter name is {_describe(key)}, not a string", path=source, offset=key.pos
            )
        named[key.value] = node
    return tuple(_param(name, node, source) for name, node in named.items()), False


def _read_data(data: DictNode, source: str) -> dict[str, DataValue]:
    nodes: dict[str, Node] = {}
    for key, node in data.items:
        if not (isinstance(key, Const) and isinstance(key.value, str)):
            raise FormatError(
                f"data key is {_describe(key)}, not a string", path=source, offset=key.pos
            )
        nodes[key.value] = node
    return {key: data_value(node, source=source) for key, node in nodes.items()}


def read_legacy(
    buf: bytes | bytearray | memoryview,
    *,
    source: str,
    allow_code: bool = True,
    param_names: Sequence[str] | None = None,
) -> LegacyCheckpoint:
    """Read a legacy SB2 checkpoint held in memory, statically.

    Raises FormatError (not a checkpoint, broken, unsupported shape) or UnsafeCheckpoint
    (anything outside the allowlist; with ``allow_code=False`` also any ``data`` value that
    carries a function or class by value). Parameter ``raw`` views point into ``buf``.
    """
    view = memoryview(buf).cast("B")
    _gate(view, source)
    parsed = parse_ops(view, source=source)
    graph = build_graph(parsed, source=source)
    report = check_graph(graph, source=source)
    data_node, params_node = _split_top(graph.root, source)
    params, were_list = _read_params(params_node, param_names, source)
    data = _read_data(data_node, source)
    code_keys = [
        key for key, value in data.items() if isinstance(value, OpaqueValue) and value.carries_code
    ]
    if code_keys and not allow_code:
        raise UnsafeCheckpoint(
            f"data entries carry code ({', '.join(code_keys)}) and allow_code is false", path=source
        )
    logger.debug(
        "read %s: protocol %d, %d params, %d data keys",
        source,
        parsed.protocol,
        len(params),
        len(data),
    )
    return LegacyCheckpoint(
        protocol=parsed.protocol,
        data=data,
        params=params,
        params_were_list=were_list,
        globals=report.globals,
    )


def read_file_bytes(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytearray, str]:
    """Read a regular file (never through a symlink) once into memory, hashing as it is read."""
    digest = hashlib.sha256()
    with open_regular_nofollow(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise FormatError(
                f"{size} bytes is over the {max_bytes}-byte limit for legacy checkpoints",
                path=str(path),
            )
        buf = bytearray(size)
        view = memoryview(buf)
        filled = 0
        while filled < size:
            # readv straight into our buffer: no second copy through a read buffer.
            count = os.readv(handle.fileno(), [view[filled : min(size, filled + CHUNK_SIZE)]])
            if not count:
                break
            digest.update(view[filled : filled + count])
            filled += count
        if filled != size or os.read(handle.fileno(), 1):
            raise FileChangedError("file changed size while it was being read", path=str(path))
    return buf, digest.hexdigest()


def read_legacy_file(
    path: Path,
    *,
    allow_code: bool = True,
    param_names: Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[LegacyCheckpoint, str]:
    """Read ``path`` once and parse those bytes; returns the checkpoint and the file's sha256 hex."""
    buf, digest = read_file_bytes(Path(path), max_bytes=max_bytes)
    checkpoint = read_legacy(buf, source=str(path), allow_code=allow_code, param_names=param_names)
    return checkpoint, digest
