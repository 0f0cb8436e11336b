"""Pairing the TF variable names of an unnamed parameter list (stable-baselines <= 2.5.1) with its
arrays: one name per array, each name once (docs/conversion.md).

Where the names come from (``--param-names FILE``, or inference for built-in policies) is the
caller's business; this module only decides whether names and arrays match, and when a list holds
a variable twice (SAC and DDPG <= 2.5.1) proves the repeats are copies before leaving them out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from ckptd.errors import FormatError
from ckptd.formats.model import Param, ParamArray
from ckptd.fs.files import CHUNK_SIZE
from ckptd.pickles.nodes import Node

# Builds one parameter from its name and array node (resident, or file-backed while streaming).
ParamMaker = Callable[[str, Node, str], Param]


def match_names(
    items: Sequence[Node], names: Sequence[str], source: str, make: ParamMaker
) -> tuple[tuple[Param, ...], bool, tuple[str, ...]]:
    """One name per array, each name once; duplicated variables (SAC and DDPG in stable-baselines
    <= 2.5.1 saved every trainable variable twice) are left out, noted, when provably copies.

    Two spellings of the duplication are accepted: the true names, one per array, repeating a
    name where the variable repeats; or one name per variable for a list holding whole extra
    copies of the first ``len(names)`` arrays. stable-baselines' own loader pairs
    ``zip(model.params, params)`` and so loads a repeated variable from identical arrays; ckptd
    drops an array only when it is byte-identical (same dtype, shape and memory order) to the one
    it repeats, so nothing that could be a different weight is lost. Anything else is an error.
    """
    count = len(names)
    if count == len(items):
        return _drop_repeated_names(items, names, source, make)
    if count == 0 or len(items) % count:
        raise FormatError(f"{count} parameter names given for {len(items)} arrays", path=source)
    params = tuple(
        make(name, node, source) for name, node in zip(names, items[:count], strict=False)
    )
    for index in range(count, len(items)):
        extra = make(names[index % count], items[index], source)
        if not same_array(params[index % count], extra):
            raise FormatError(
                f"{count} parameter names given for {len(items)} arrays, and array {index + 1} "
                f"is not a copy of array {index % count + 1}",
                path=source,
            )
    note = (
        f"parameters: {len(items)} arrays for {count} names; arrays {count + 1}-{len(items)} are "
        f"exact copies of the first {count} (stable-baselines <= 2.5.1 saved SAC's and DDPG's "
        "variables twice) and were left out, as stable-baselines' own loader does"
    )
    return params, True, (note,)


def _drop_repeated_names(
    items: Sequence[Node], names: Sequence[str], source: str, make: ParamMaker
) -> tuple[tuple[Param, ...], bool, tuple[str, ...]]:
    first: dict[str, Param] = {}
    dropped = 0
    for index, (name, node) in enumerate(zip(names, items, strict=True)):
        param = make(name, node, source)
        seen = first.get(name)
        if seen is None:
            first[name] = param
        elif same_array(seen, param):
            dropped += 1
        else:
            raise FormatError(
                f"parameter {name!r} is named twice, and array {index + 1} differs from the "
                "first one of that name",
                path=source,
            )
    if not dropped:
        return tuple(first.values()), True, ()
    note = (
        f"parameters: {len(items)} arrays for {len(first)} distinct names; the {dropped} arrays "
        "of repeated names are exact copies of the first of that name (stable-baselines <= 2.5.1 "
        "saved SAC's and DDPG's variables twice) and were left out"
    )
    return tuple(first.values()), True, (note,)


def same_array(a: Param, b: Param) -> bool:
    """Same dtype, shape, memory order and bytes (file-backed arrays compared chunk by chunk)."""
    if (a.descr, a.shape, a.fortran_order, a.nbytes) != (
        b.descr,
        b.shape,
        b.fortran_order,
        b.nbytes,
    ):
        return False
    return all(x == y for x, y in zip(_byte_chunks(a), _byte_chunks(b), strict=True))


def _byte_chunks(param: Param) -> Iterator[bytes]:
    """A parameter's bytes in fixed-size chunks (the same boundaries for equal-sized arrays)."""
    if isinstance(param, ParamArray):
        raw = param.raw if param.raw.format == "B" else param.raw.cast("B")
        for start in range(0, raw.nbytes, CHUNK_SIZE):
            yield bytes(raw[start : start + CHUNK_SIZE])
        return
    buffer = memoryview(bytearray(CHUNK_SIZE))
    for chunk in param.payload.chunks(buffer):
        yield bytes(chunk)
