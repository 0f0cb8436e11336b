"""The safe legacy reader: a stable-baselines ``(data, params)`` pickle to a LegacyCheckpoint.

Nothing from the file is executed and no module it names is imported
(docs/formats.md, "The safe legacy reader"): the bytes are parsed (``pickles.ops``), replayed
over inert nodes (``pickles.graph``), checked against the allowlist (``pickles.graph_check``), and
only then are the parameter arrays materialized from numpy's own patterns (``pickles.arrays``)
and each ``data`` value turned into what SB2's ``data_to_json`` would store (``legacy_data``).

``read_legacy_file`` reads the file once, hashing as it reads, and parses exactly those bytes,
so what was judged is what was hashed (no time-of-check/time-of-use gap).

``open_legacy_file`` is the low-memory variant the converter uses: the file is read once
(``legacy_stream``), everything but its large array payloads is kept and parsed exactly as above,
and the parameters whose bytes stayed in the file come back as ``FileParamArray``s that the writer
copies from the still-open file, the file's identity checked after the copy and the copied bytes
checked against the first read's CRC-32 when the written zip is re-read. Its sha256 comes from a
second read beside all that, tied to the first by the same CRC-32 (``SourceDigest``). If a large
payload is used for anything but a parameter's bytes (a ``data`` value, a byte-swapped array),
the kept bytes are completed from the file, proven identical to the first read by their CRC-32,
and read as a whole, as ``read_legacy_file`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

from ckptd.convert.legacy_data import data_value
from ckptd.convert.legacy_stream import (
    DEFAULT_MIN_DEFERRED,
    Region,
    SourceDigest,
    SourceFile,
    SparseRead,
    scan_source,
)
from ckptd.convert.param_match import ParamMaker, match_names
from ckptd.convert.sb2names import ParamNames, infer_param_names
from ckptd.errors import FileChangedError, FormatError, HeldCheckpoint, UnsafeCheckpoint
from ckptd.formats.model import (
    DataValue,
    FileParamArray,
    FilePayload,
    LegacyCheckpoint,
    OpaqueValue,
    Param,
    ParamArray,
)
from ckptd.fs.digest import THREADED_MIN_BYTES, crc32
from ckptd.fs.files import CHUNK_SIZE, open_regular_nofollow
from ckptd.fs.second_read import DigestRead, SecondRead
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.arrays import (
    ArrayValue,
    array_of,
    is_array_node,
    is_scalar_node,
    scalar_as_array,
)
from ckptd.pickles.budget import check_budget
from ckptd.pickles.graph import build_graph
from ckptd.pickles.graph_check import check_graph
from ckptd.pickles.nodes import (
    BytesNode,
    Call,
    Const,
    DictNode,
    ListNode,
    Node,
    PickleGraph,
    TupleNode,
    is_ordered_dict_call,
    reachable,
)
from ckptd.pickles.ops import ParsedPickle, parse_ops

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


def _check_name(what: str, name: str, node: Node, source: str) -> None:
    """A name that cannot be written as UTF-8 (a lone surrogate) is refused, shown escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeCheckpoint(
            f"{what} {name!a} is not valid text (a lone surrogate)",
            path=source,
            offset=node.pos,
        ) from None


def _param(name: str, node: Node, source: str) -> ParamArray:
    array: ArrayValue
    if is_scalar_node(node):
        # TensorFlow's sess.run returns numpy scalars for 0-d variables (DQN's eps, SAC's
        # log_ent_coef, DDPG's obs_rms/count); np.savez stores them as 0-d arrays, so does ckptd.
        array = scalar_as_array(node, source)
    elif is_array_node(node):
        array = array_of(node, source)
    else:
        raise FormatError(
            f"parameter {name!r} is {_describe(node)}, not a numpy array",
            path=source,
            offset=node.pos,
        )
    return ParamArray(
        name=name,
        descr=array.dtype.str,
        shape=array.shape,
        fortran_order=array.fortran_order,
        raw=array.raw,
    )


def _read_params(
    params: Node,
    param_names: Sequence[str] | None,
    source: str,
    make: ParamMaker = _param,
    data: Mapping[str, DataValue] | None = None,
) -> tuple[tuple[Param, ...], bool, tuple[str, ...]]:
    """(params, whether they were an unnamed list, notes). Names meet arrays in
    ``param_match.match_names``, whether given or inferred."""
    if isinstance(params, ListNode):
        if param_names is None:
            param_names = _inferred_names(params.items, data or {}, source, make)
        return match_names(params.items, param_names, source, make)
    assert isinstance(params, Call)
    named: dict[str, Node] = {}
    for key, node in params.setitems:
        if not (isinstance(key, Const) and isinstance(key.value, str)):
            raise FormatError(
                f"parameter name is {_describe(key)}, not a string", path=source, offset=key.pos
            )
        _check_name("parameter name", key.value, key, source)
        named[key.value] = node
    return tuple(make(name, node, source) for name, node in named.items()), False, ()


def _shape_of(node: Node, make: ParamMaker, source: str) -> tuple[int, ...]:
    # TF hands 0-d variables (DQN's eps, SAC's log_ent_coef) back as numpy scalars: shape ().
    return () if is_scalar_node(node) else make("#", node, source).shape


def _inferred_names(
    items: Sequence[Node], data: Mapping[str, DataValue], source: str, make: ParamMaker
) -> tuple[str, ...]:
    """Names for a stable-baselines <= 2.5.1 list from the file's own data, proven by every shape.

    Raises HeldCheckpoint with the note saying what is needed when it cannot be named
    (docs/param-names.md); nothing is ever guessed.
    """
    shapes = [_shape_of(node, make, source) for node in items]
    inferred = infer_param_names(data, shapes)
    if not isinstance(inferred, ParamNames):
        raise HeldCheckpoint(inferred.note, path=source)
    logger.info("%s: parameter names inferred for %s", source, inferred.basis)
    return inferred.names


def _read_data(data: DictNode, source: str) -> dict[str, DataValue]:
    nodes: dict[str, Node] = {}
    for key, node in data.items:
        if not (isinstance(key, Const) and isinstance(key.value, str)):
            raise FormatError(
                f"data key is {_describe(key)}, not a string", path=source, offset=key.pos
            )
        _check_name("data key", key.value, key, source)
        nodes[key.value] = node
    return {key: data_value(node, source=source) for key, node in nodes.items()}


@dataclasses.dataclass(frozen=True)
class NamingInput:
    """What ``sb2names.infer_param_names`` works from, and the names the file has, if any."""

    data: dict[str, DataValue]
    shapes: list[tuple[int, ...]]
    names: list[str] | None  # the dict's keys (>= 2.6.0); None for an unnamed list (<= 2.5.1)


def read_naming_input(buf: bytes | bytearray | memoryview, *, source: str) -> NamingInput:
    """The ``data`` values and parameter shapes of a legacy file, judged like any other.

    For tests and tools (docs/param-names.md): a named file's keys are what the inference must
    give when its parameters are treated as the list an older release would have saved.
    """
    view = memoryview(buf).cast("B")
    _gate(view, source)
    parsed = parse_ops(view, source=source)
    graph = build_graph(parsed, source=source)
    check_graph(graph, source=source)
    data_node, params_node = _split_top(graph.root, source)
    data = _read_data(data_node, source)
    if isinstance(params_node, ListNode):
        return NamingInput(data, [_shape_of(n, _param, source) for n in params_node.items], None)
    assert isinstance(params_node, Call)
    pairs = [(k.value, n) for k, n in params_node.setitems if isinstance(k, Const)]
    shapes = [_shape_of(node, _param, source) for _, node in pairs]
    return NamingInput(data, shapes, [str(key) for key, _ in pairs])


def read_legacy(
    buf: bytes | bytearray | memoryview,
    *,
    source: str,
    allow_code: bool = True,
    param_names: Sequence[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> LegacyCheckpoint:
    """Read a legacy SB2 checkpoint held in memory, statically.

    Raises FormatError (not a checkpoint, broken, unsupported shape) or UnsafeCheckpoint
    (anything outside the allowlist or over ``limits``; with ``allow_code=False`` also any
    ``data`` value that carries a function or class by value). Parameter ``raw`` views point
    into ``buf``.
    """
    view = memoryview(buf).cast("B")
    _gate(view, source)
    parsed = parse_ops(view, source=source, limits=limits)
    graph = build_graph(parsed, source=source, limits=limits)
    return _checkpoint(parsed, graph, source, allow_code, param_names, _param, limits)


def _checkpoint(
    parsed: ParsedPickle,
    graph: PickleGraph,
    source: str,
    allow_code: bool,
    param_names: Sequence[str] | None,
    make: ParamMaker,
    limits: Limits,
) -> LegacyCheckpoint:
    """Judge the graph against the budgets and the allowlist, then turn it into a LegacyCheckpoint.

    The budget check comes first: everything after it walks values as trees (JSON, rendering).
    """
    check_budget(graph.root, limits, source=source)
    report = check_graph(graph, source=source)
    data_node, params_node = _split_top(graph.root, source)
    data = _read_data(data_node, source)
    params, were_list, notes = _read_params(params_node, param_names, source, make, data)
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
        notes=notes,
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
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[LegacyCheckpoint, str]:
    """Read ``path`` once and parse those bytes; returns the checkpoint and the file's sha256 hex."""
    buf, digest = read_file_bytes(Path(path), max_bytes=max_bytes)
    checkpoint = read_legacy(
        buf, source=str(path), allow_code=allow_code, param_names=param_names, limits=limits
    )
    return checkpoint, digest


class _NeedsWholeFile(Exception):
    """A payload left in the file is used for more than a parameter's bytes (rare; see below)."""


def _address(view: memoryview) -> int:
    import numpy as np

    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def _region_ops(parsed: ParsedPickle, regions: Sequence[Region], source: str) -> dict[int, Region]:
    """{opcode offset: region}; each region must be exactly the payload of one byte opcode."""
    by_end = {op.end: op for op in parsed.ops if op.name in ("BINBYTES", "BINBYTES8", "BYTEARRAY8")}
    matched: dict[int, Region] = {}
    for region in regions:
        op = by_end.get(region.end)
        if op is None or not isinstance(op.arg, memoryview) or op.arg.nbytes != region.length:
            # Cannot happen while the framer and the parser share one opcode table; never guess.
            raise FormatError(
                f"bytes at offset {region.offset} could not be framed as one payload",
                path=source,
                offset=region.offset,
            )
        matched[op.pos] = region
    return matched


def _sparse_checkpoint(
    sparse: SparseRead,
    reader: SourceFile,
    *,
    source: str,
    allow_code: bool,
    param_names: Sequence[str] | None,
    limits: Limits,
) -> LegacyCheckpoint:
    """Read the first pass's bytes; parameters whose payload stayed in the file become file-backed.

    Raises _NeedsWholeFile if a payload that was not kept is reachable other than as exactly the
    bytes of a parameter array (a ``data`` value, a shared node, a byte-swapped copy).
    """
    view = memoryview(sparse.buffer)
    _gate(view, source)
    parsed = parse_ops(view, source=source, limits=limits)
    at_op = _region_ops(parsed, sparse.regions, source)
    graph = build_graph(parsed, source=source, limits=limits)
    deferred = {
        id(node): at_op[node.pos]
        for node in graph.nodes
        if isinstance(node, BytesNode) and node.pos in at_op
    }
    base = _address(view)

    def make(name: str, node: Node, where: str) -> Param:
        used = {id(n) for n in reachable(node)} & deferred.keys()
        if not used:
            return _param(name, node, where)
        if len(used) > 1:
            raise _NeedsWholeFile(f"parameter {name!r} reaches {len(used)} large payloads")
        region = deferred[used.pop()]
        resident = _param(name, node, where)  # shape/dtype checks; its raw is only a view
        # Only a zero-copy view of exactly the payload may stand for bytes left in the file.
        if resident.raw.nbytes != region.length or _address(resident.raw) != base + region.offset:
            raise _NeedsWholeFile(f"parameter {name!r} is not a plain view of its payload")
        payload = FilePayload(reader, region.offset, region.length, region.crc)
        return FileParamArray(name, resident.descr, resident.shape, resident.fortran_order, payload)

    root = graph.root
    if isinstance(root, TupleNode) and len(root.items) == 2:
        data_nodes = {id(n) for n in reachable(root.items[0])}
        if data_nodes & deferred.keys():
            raise _NeedsWholeFile("a data value holds a large payload")
    return _checkpoint(parsed, graph, source, allow_code, param_names, make, limits)


def _whole_file(sparse: SparseRead, reader: SourceFile) -> memoryview:
    """Complete the first pass's buffer from the file and prove it is the bytes first read."""
    view = memoryview(sparse.buffer)
    for region in sparse.regions:
        reader.read_into(region.offset, view[region.offset : region.end])
    reader.check_unchanged()
    if crc32(view) != sparse.crc:
        raise FileChangedError("changed while it was being read", path=reader.name)
    return view


@contextmanager
def open_legacy_file(
    path: Path,
    *,
    allow_code: bool = True,
    param_names: Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_deferred: int = DEFAULT_MIN_DEFERRED,
    limits: Limits = DEFAULT_LIMITS,
    source_read: DigestRead | None = None,
) -> Iterator[tuple[LegacyCheckpoint, SourceDigest]]:
    """Like ``read_legacy_file``, in about the memory of the file minus its large arrays.

    Yields (checkpoint, the file's digest): ``digest.sha256()``, once the file is read for the last
    time, is the sha256 of the file as first read (from a second read in a helper thread that runs
    meanwhile, or ``source_read`` when one was started earlier, tied to the first:
    ``SourceDigest``; it is closed on leaving). Parameters whose payload is at least
    ``min_deferred`` bytes are ``FileParamArray``s, readable only inside the ``with`` block (the
    file stays open); reading them raises FileChangedError if the file changed since the first
    read. Errors are those of ``read_legacy_file``.
    """
    with (
        SourceFile(Path(path)) as reader,
        closing(
            source_read
            if source_read is not None
            else SecondRead(Path(path), threaded=reader.identity.size >= THREADED_MIN_BYTES)
        ) as second,
    ):
        sparse = scan_source(
            reader, max_bytes=max_bytes, min_deferred=min_deferred, max_ops=limits.max_opcodes
        )
        source = str(path)
        try:
            checkpoint = _sparse_checkpoint(
                sparse,
                reader,
                source=source,
                allow_code=allow_code,
                param_names=param_names,
                limits=limits,
            )
        except _NeedsWholeFile as why:
            logger.info("%s: reading it whole (%s)", source, why)
            checkpoint = read_legacy(
                _whole_file(sparse, reader),
                source=source,
                allow_code=allow_code,
                param_names=param_names,
                limits=limits,
            )
        yield checkpoint, SourceDigest(second, sparse, reader)
