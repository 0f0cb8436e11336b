"""Verdicts on whole files: plain pickles, joblib dumps, torch checkpoints, SB3 zips' pickles.

Which pickles a file holds, read by content (docs/security.md, "Verdicts"):

* a plain pickle (protocols 0-5) or a joblib dump (a pickle with ``NumpyArrayWrapper`` objects,
  each followed by its array's raw bytes), possibly zlib/gzip/bz2/xz/lzma-compressed as joblib
  writes them (decompressed with the standard library, at most ``MAX_PICKLE_BYTES``; lz4 needs a
  package ckptd does not use, so such a file gets no verdict and stays ``unknown`` with a note);
* a torch zip checkpoint (``.pt``/``.pth``/``.bin``/Lightning ``.ckpt``): every ``*.pkl`` member
  (``<prefix>/data.pkl``, TorchScript's ``constants.pkl``...); the storages are raw bytes;
* torch's legacy format: the magic number, protocol version and system info pickles, the main
  pickle, and the storage keys pickle, followed by raw storages;
* an SB3 zip: every ``*.pth`` member (a torch zip inside the zip) and every ``:serialized:`` entry
  of its ``data`` JSON.

Every member read is size-checked before it is read; nothing here imports or calls anything
the file names.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import io
import json
import lzma
import pickletools
import zipfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO, Protocol, cast

from ckptd.formats.zipmembers import SharedMembers
from ckptd.formats.zipread import ZIP_READ_ERRORS, MemberInfo, Structure, check_structure
from ckptd.pickles.peek import peek_pickle
from ckptd.pickles.verdict import Verdict, judge_stream, merge
from ckptd.pickles.verdict_policy import Policy, policy_for_plain

MAX_PICKLE_BYTES = 512 * 1024 * 1024  # one pickle (or a decompressed dump) judged in memory
MAX_SERIALIZED_JSON = 64 * 1024 * 1024  # an SB3 zip's ``data`` member
ZIP_MAGIC = b"PK\x03\x04"
# torch.serialization's MAGIC_NUMBER (0x1950a86a20f9469cfc6c) pickled with protocol 2 (LONG1).
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
LZ4_MAGIC = b"\x04\x22\x4d\x18"
_COMPRESSED: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x78\x01", "zlib"),
    (b"\x78\x5e", "zlib"),
    (b"\x78\x9c", "zlib"),
    (b"\x78\xda", "zlib"),
)


class _Engine(Protocol):
    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


class NoVerdict(Exception):
    """The file holds pickles ckptd cannot judge here (too large, lz4); the text says why."""


def compression_of(head: bytes) -> str | None:
    """The compressor whose header ``head`` starts with (joblib's choices), or None."""
    if head.startswith(LZ4_MAGIC):
        return "lz4"
    for magic, name in _COMPRESSED:
        if head.startswith(magic):
            return name
    return None


def decompress(handle: BinaryIO, method: str, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """The whole decompressed stream, never more than ``limit`` bytes in memory (else NoVerdict)."""
    if method == "lz4":
        raise NoVerdict(
            "lz4-compressed (joblib): not checked, ckptd decompresses with the stdlib only"
        )
    engine: _Engine
    if method in ("gzip", "zlib"):
        engine = zlib.decompressobj(31 if method == "gzip" else 15)
    elif method == "bz2":
        engine = bz2.BZ2Decompressor()
    else:
        engine = lzma.LZMADecompressor(lzma.FORMAT_XZ if method == "xz" else lzma.FORMAT_ALONE)
    out = bytearray()
    handle.seek(0)
    try:
        while chunk := handle.read(1 << 20):
            # At most limit + 1 bytes out per call: reaching that means the stream is too large.
            out += engine.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit:
                raise NoVerdict(f"{method}-compressed pickle over {limit} bytes: not checked")
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as err:
        raise NoVerdict(f"{method} stream cannot be decompressed ({err})") from err
    return bytes(out)


def judge_pickle_file(handle: BinaryIO, size: int, source: str) -> Verdict:
    """A plain pickle or joblib dump, compressed or not (raises NoVerdict when it cannot say)."""
    handle.seek(0)
    head = handle.read(8)
    method = compression_of(head)
    if method is not None:
        data = decompress(handle, method)
    else:
        if size > MAX_PICKLE_BYTES:
            raise NoVerdict(
                f"pickle of {size} bytes, over the {MAX_PICKLE_BYTES}-byte limit: not checked"
            )
        handle.seek(0)
        data = handle.read(MAX_PICKLE_BYTES + 1)
    if data.startswith(TORCH_LEGACY_MAGIC):
        return judge_torch_legacy(data, source)
    policy = policy_for_plain(peek_pickle(data).globals)
    return judge_stream(data, policy, source=source, text_protocols=True)


def _stream_ends(data: bytes, start: int) -> int:
    """Where the pickle starting at ``start`` ends (just past its STOP), read leniently."""
    view = io.BytesIO(data)
    view.seek(start)
    end = start
    for opcode, _, pos in pickletools.genops(view):
        assert pos is not None
        end = pos + 1
        if opcode.name == "STOP":
            return end
    return end  # pragma: no cover - genops raises before running out without a STOP


def judge_torch_legacy(data: bytes, source: str) -> Verdict:
    """torch's pre-1.6 format: five pickles (magic, version, sys info, the object, storage keys)."""
    parts: list[tuple[str, Verdict]] = []
    start = 0
    names = ("magic number", "protocol version", "system info", "object", "storage keys")
    for index, name in enumerate(names):
        try:
            end = _stream_ends(data, start)
        except ValueError as err:
            parts.append((name, Verdict(False, (), f"cannot be parsed ({err})")))
            break
        policy = Policy.TORCH if index == 3 else Policy.DATA
        parts.append((name, judge_stream(data[start:end], policy, source=f"{source} ({name})")))
        start = end
    return merge("torch legacy checkpoint", parts)


def _pickle_members(
    members: SharedMembers, handle: BinaryIO, size: int, suffix: str
) -> Iterator[tuple[str, bytes | str]]:
    """(name, bytes) of each sound member ending in ``suffix``; (name, problem) for the others."""
    structure = check_structure(members.archive, handle, size)
    if structure.problems:
        # A zip whose headers disagree may be read differently by torch's own reader.
        yield "(zip structure)", "; ".join(structure.problems[:3])
        return
    for member in structure.members:
        if not member.name.endswith(suffix):
            continue
        try:
            yield member.name, members.read_small(member, MAX_PICKLE_BYTES)
        except (ValueError, *ZIP_READ_ERRORS) as err:
            yield member.name, f"cannot be read ({err})"


def torch_zip_pickles(names: tuple[str, ...]) -> bool:
    """Whether zip member names are a torch checkpoint's: ``<prefix>/data.pkl`` and its version."""
    for name in names:
        prefix, slash, leaf = name.rpartition("/")
        if (
            slash
            and leaf == "data.pkl"
            and (f"{prefix}/version" in names or f"{prefix}/.format_version" in names)
        ):
            return True
    return False


def judge_torch_zip(handle: BinaryIO, size: int, source: str) -> Verdict:
    """Every ``*.pkl`` member of a torch zip checkpoint, judged by torch's weights_only rules."""
    try:
        with zipfile.ZipFile(handle) as archive:
            return judge_torch_archive(SharedMembers(archive), handle, size, source)
    except ZIP_READ_ERRORS as err:
        return Verdict(False, (), f"zip cannot be read ({err})")


def judge_torch_archive(
    members: SharedMembers, handle: BinaryIO, size: int, source: str
) -> Verdict:
    """:func:`judge_torch_zip` of an archive already open on ``handle``."""
    parts: list[tuple[str, Verdict]] = []
    try:
        for name, blob in _pickle_members(members, handle, size, ".pkl"):
            if isinstance(blob, str):
                parts.append((name, Verdict(False, (), blob)))
            else:
                parts.append((name, judge_stream(blob, Policy.TORCH, source=f"{source}:{name}")))
    except ZIP_READ_ERRORS as err:
        return Verdict(False, (), f"zip cannot be read ({err})")
    if not parts:
        return Verdict(False, (), "torch zip without a data.pkl")
    return merge("torch zip", parts)


def judge_sb3_zip(handle: BinaryIO, size: int, source: str) -> Verdict:
    """An SB3 zip: each ``*.pth`` member (a torch zip) and each ``:serialized:`` entry of ``data``."""
    try:
        with zipfile.ZipFile(handle) as archive:
            structure = check_structure(archive, handle, size)
            return judge_sb3_archive(SharedMembers(archive), structure, source)
    except ZIP_READ_ERRORS as err:
        return Verdict(False, (), f"zip cannot be read ({err})")


def judge_sb3_archive(members: SharedMembers, structure: Structure, source: str) -> Verdict:
    """:func:`judge_sb3_zip` of an open archive whose ``check_structure`` is ``structure``."""
    parts: list[tuple[str, Verdict]] = []
    if structure.problems:
        return Verdict(False, (), f"zip structure: {'; '.join(structure.problems[:3])}")
    try:
        for member in structure.members:
            if member.name.endswith(".pth"):
                parts.append((member.name, _judge_pth(members, member, source)))
        data = next((m for m in structure.members if m.name == "data"), None)
        if data is not None:
            raw = members.read_small(data, MAX_SERIALIZED_JSON)
            parts.extend(_serialized_verdicts(raw, source))
    except (ValueError, *ZIP_READ_ERRORS) as err:
        return Verdict(False, (), f"zip cannot be read ({err})")
    return merge("sb3 zip", parts)


def _judge_pth(members: SharedMembers, member: MemberInfo, source: str) -> Verdict:
    # Read in place (SB3 stores its members): only the inner data.pkl is read.
    where = f"{source}:{member.name}"
    in_memory = members.judging_stream(member)
    if in_memory is not None:
        return judge_torch_zip(in_memory, member.size, where)
    with members.archive.open(member.name) as stream:
        return judge_torch_zip(cast(BinaryIO, stream), member.size, where)


def _serialized_verdicts(raw: bytes, source: str) -> list[tuple[str, Verdict]]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return [("data", Verdict(False, (), f"data is not JSON ({err})"))]
    if not isinstance(data, dict):
        return [("data", Verdict(False, (), "data is not a JSON object"))]
    parts: list[tuple[str, Verdict]] = []
    for key, value in data.items():
        if not (isinstance(value, dict) and ":serialized:" in value):
            continue
        where = f"data[{key!r}]"
        blob = value[":serialized:"]
        try:
            pickled = base64.b64decode(blob, validate=True) if isinstance(blob, str) else None
        except (binascii.Error, ValueError):
            pickled = None
        if pickled is None:
            parts.append((where, Verdict(False, (), ":serialized: is not base64 text")))
            continue
        parts.append((where, judge_stream(pickled, Policy.SB3, source=f"{source}:{where}")))
    return parts
