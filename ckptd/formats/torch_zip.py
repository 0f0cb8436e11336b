"""torch zip checkpoints: every storage ``data.pkl`` refers to must be in the zip, whole.

``torch.save`` (zip format) writes ``<prefix>/data.pkl``, whose persistent ids are
``('storage', <StorageType>, key, location, numel)``, and each storage's raw bytes as the member
``<prefix>/data/<key>``. ``torch.load`` reads ``numel * element_size(dtype)`` bytes from that
member (torch 2.13 ``serialization.py``, ``_load``: ``persistent_load`` and ``load_tensor``), so a
missing or short member makes the file unloadable, and a member of another size is not what torch
wrote. This module pairs the two (docs/formats.md, "Plain pickles, joblib and torch files"); the
pickle's verdict is ``ckptd.formats.verdict_files``' job. Nothing is unpickled.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ckptd.errors import CkptdError
from ckptd.formats.verdict_files import MAX_PICKLE_BYTES
from ckptd.formats.zipread import ZIP_READ_ERRORS, check_structure, read_small_member
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.nodes import Const, Global, TupleNode
from ckptd.pickles.ops import parse_ops
from ckptd.pickles.stream import GraphBuilder, PersistentId

# Element sizes of the typed storages torch's weights-only loader allows (torch.<Name>Storage),
# and UntypedStorage (bytes).
STORAGE_ITEMSIZE: dict[str, int] = {
    "BoolStorage": 1,
    "ByteStorage": 1,
    "CharStorage": 1,
    "QInt8Storage": 1,
    "QUInt8Storage": 1,
    "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
    "ShortStorage": 2,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "IntStorage": 4,
    "FloatStorage": 4,
    "QInt32Storage": 4,
    "LongStorage": 8,
    "DoubleStorage": 8,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}


@dataclass(frozen=True)
class StorageRef:
    """One persistent id of ``data.pkl``: a storage the loader will read."""

    key: str
    storage_type: str  # e.g. "torch.FloatStorage"
    numel: int

    @property
    def nbytes(self) -> int | None:
        itemsize = STORAGE_ITEMSIZE.get(self.storage_type.rpartition(".")[2])
        return None if itemsize is None else self.numel * itemsize


def storage_refs(
    pickled: bytes, *, source: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[StorageRef, ...]:
    """The storages a torch ``data.pkl`` refers to, in order, each once.

    Raises FormatError / UnsafeCheckpoint when the stream does not parse within ``limits``;
    persistent ids of any other shape are left to the verdict, which refuses them.
    """
    parsed = parse_ops(pickled, source=source, limits=limits)
    builder = GraphBuilder(parsed.protocol, source=source, persistent_ids=True)
    for op in parsed.ops:
        builder.step(op)
    found: dict[str, StorageRef] = {}
    for node in builder.graph().nodes:
        if not (isinstance(node, PersistentId) and isinstance(node.pid, TupleNode)):
            continue
        items = node.pid.items
        if len(items) < 5:
            continue
        _, storage_type, key, _, numel = items[:5]
        if (
            isinstance(storage_type, Global)
            and isinstance(key, Const)
            and isinstance(key.value, str)
            and isinstance(numel, Const)
            and type(numel.value) is int
        ):
            found.setdefault(key.value, StorageRef(key.value, storage_type.dotted, numel.value))
    return tuple(found.values())


def storage_problems(
    prefix: str, refs: tuple[StorageRef, ...], member_sizes: Mapping[str, int]
) -> list[str]:
    """Each referenced storage's member must exist and hold exactly its bytes (pure)."""
    problems = []
    for ref in refs:
        name = f"{prefix}/data/{ref.key}"
        size = member_sizes.get(name)
        expected = ref.nbytes
        if size is None:
            problems.append(f"{name}: missing (data.pkl refers to storage {ref.key!r})")
        elif expected is None:
            problems.append(f"{name}: storage type {ref.storage_type} has no known element size")
        elif size != expected:
            problems.append(
                f"{name}: {size} bytes, data.pkl declares {ref.numel} x {ref.storage_type}"
                f" = {expected}"
            )
    return problems


def check_torch_pickle(
    prefix: str,
    pickled: bytes,
    member_sizes: Mapping[str, int],
    *,
    source: str,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """Problems of one ``<prefix>/data.pkl`` against the zip's members, one line each."""
    try:
        refs = storage_refs(pickled, source=source, limits=limits)
    except CkptdError as err:
        return [f"{prefix}/data.pkl: {err.message}"]
    return storage_problems(prefix, refs, member_sizes)


def torch_zip_problems(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """Every ``<prefix>/data.pkl`` of the torch zip at ``path`` against its storage members.

    Structural problems of the zip itself are ``check_structure``'s to report; only sound members
    are read here. OSError / UnsafePathError if the file cannot be opened.
    """
    problems: list[str] = []
    with open_regular_nofollow(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            with zipfile.ZipFile(handle) as archive:
                structure = check_structure(archive, handle, size)
                sizes = {member.name: member.size for member in structure.members}
                for member in structure.members:
                    prefix, slash, leaf = member.name.rpartition("/")
                    if not (slash and leaf == "data.pkl" and member.name in structure.sound):
                        continue
                    pickled = read_small_member(archive, member, MAX_PICKLE_BYTES)
                    problems.extend(
                        check_torch_pickle(
                            prefix, pickled, sizes, source=f"{path}:{member.name}", limits=limits
                        )
                    )
        except (ValueError, *ZIP_READ_ERRORS) as err:
            problems.append(f"zip cannot be read ({err})")
    return tuple(problems)
