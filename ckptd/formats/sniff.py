"""Identify a checkpoint by its content, never by its name.

Rules (docs/formats.md, "Identification"):

* **zip** (``PK\\x03\\x04`` magic and a readable central directory):
  ``parameters`` + ``parameter_list`` members -> ``sb2-zip``;
  ``_stable_baselines3_version`` or any ``*.pth`` member -> ``sb3-zip``; any other zip -> ``unknown``.
* **pickle** (first byte 0x80, protocol 2..5; SB2 never wrote protocol 0/1):

  - a GLOBAL/STACK_GLOBAL from a ``stable_baselines`` module within the first ``SNIFF_BYTES``
    -> ``sb2-pickle`` with confidence ``high``;
  - otherwise, a top-level 2-tuple (read from the file's last bytes, so multi-GB files are not read
    whole) whose scanned prefix references numpy, gym, cloudpickle or OrderedDict -> ``sb2-pickle``
    with confidence ``low``. This admits SB2 files whose policy is a user class (pickled by
    reference to the user's module) while leaving unrelated pickles alone: ``(data, params)`` of
    SB2 always holds numpy arrays in an OrderedDict or list;
  - torch's legacy magic number first -> ``torch-legacy``; a ``joblib`` ``NumpyArrayWrapper``
    -> ``joblib``; any other pickle -> ``pickle``. None is ever sent to conversion.
* a zip with ``<prefix>/data.pkl`` and ``<prefix>/version`` -> ``torch-zip``.
* a zlib/gzip/bz2/xz/lzma stream (joblib's compressors) whose start decompresses to a pickle
  -> ``joblib`` (an lz4 stream stays ``unknown`` with a note: the stdlib cannot decompress it);
  a protocol 0/1 pickle (no magic) when a static parse of the whole file ends in STOP, or when it
  references a global before failing -> ``pickle``.
* an 8-byte little-endian length N that fits the file and safetensors' limit, followed by ``{``
  -> ``safetensors`` (checked first: no pickle, zip or compressed stream can start so); its header
  and offsets are checked by ``verify`` (``ckptd.formats.safetensors``).
* everything else (empty, random, text) -> ``unknown``.

Identification is a label. ``identify`` and ``identify_checked`` add the verdict on files of the
pickle-bearing formats other than stable-baselines 2 files (``ckptd.formats.verdict_files``;
docs/security.md, "Verdicts"); the legacy reader and ``verify_zip`` decide SB2 safety and
integrity.
"""

from __future__ import annotations

import bz2
import dataclasses
import io
import logging
import lzma
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from ckptd.errors import FormatError
from ckptd.formats import VERDICT_FORMATS, Format
from ckptd.formats.safetensors import header_length_of
from ckptd.formats.verdict_files import (
    TORCH_LEGACY_MAGIC,
    NoVerdict,
    compression_of,
    judge_pickle_file,
    judge_sb3_zip,
    judge_torch_zip,
    torch_zip_pickles,
)
from ckptd.formats.zipread import ZIP_READ_ERRORS, foreign_directory_problem
from ckptd.fs.files import open_regular_nofollow
from ckptd.pickles.ops import parse_ops
from ckptd.pickles.peek import ends_with_tuple2, peek_pickle
from ckptd.pickles.verdict import Verdict

logger = logging.getLogger(__name__)

SNIFF_BYTES = 4 * 1024 * 1024  # data (with the policy reference) precedes the parameters
TAIL_BYTES = 16
ZIP_MAGIC = b"PK\x03\x04"
SB2_MODULE = "stable_baselines"
_CHECKPOINT_HINTS = ("numpy.", "gym.", "gymnasium.", "cloudpickle.", "collections.OrderedDict")
SB2_ZIP_MEMBERS = frozenset({"parameters", "parameter_list"})
SB3_VERSION_MEMBER = "_stable_baselines3_version"
JOBLIB_GLOBAL = "joblib.numpy_pickle.NumpyArrayWrapper"
# Opcodes a protocol 0/1 stream can start with (a value, a MARK, or a GLOBAL/INST).
_TEXT_PICKLE_STARTS = frozenset(b"(}])NIJKLMFGSTUVXci")

Confidence = Literal["high", "low"]


@dataclass(frozen=True)
class Identification:
    """What a file is, judged from its bytes."""

    format: Format
    confidence: Confidence
    note: str  # one line: why this label
    size: int
    protocol: int | None = None  # pickles
    globals: tuple[str, ...] = ()  # pickles: globals seen in the scanned prefix
    members: tuple[str, ...] = ()  # zips, in central-directory order
    verdict: Verdict | None = None  # pickle-bearing formats (not SB2 files), when asked for


def is_sb2_module(global_name: str) -> bool:
    return global_name == SB2_MODULE or global_name.startswith(SB2_MODULE + ".")


def classify_zip_members(names: tuple[str, ...]) -> Format:
    """The zip flavour from member names alone (pure)."""
    present = set(names)
    if present >= SB2_ZIP_MEMBERS:
        return Format.SB2_ZIP
    if SB3_VERSION_MEMBER in present or any(name.endswith(".pth") for name in names):
        return Format.SB3_ZIP
    if torch_zip_pickles(names):
        return Format.TORCH_ZIP
    return Format.UNKNOWN


def identify(path: Path) -> Identification:
    """Identify ``path`` by content, with the verdict on its pickles where ckptd gives one.

    Raises OSError / UnsafePathError if it cannot be opened.
    """
    return _identify(path, first_sb2_reference_is_enough=False, judge=True)


def identify_checked(path: Path) -> Identification:
    """:func:`identify_format`'s fast label plus the verdict (the inventory's identifier)."""
    return _identify(path, first_sb2_reference_is_enough=True, judge=True)


def identify_format(path: Path) -> Format:
    """Just the format of ``path``, as :func:`identify` would label it, found with less work.

    The inventory's hot path (100,000 files on a cold pass): a legacy pickle's opcode scan stops
    at its first ``stable_baselines`` global, which decides the label, instead of walking up to
    ``SNIFF_BYTES`` for the full list of globals that only ``inspect`` reports. Same errors as
    :func:`identify`.
    """
    return _identify(path, first_sb2_reference_is_enough=True, judge=False).format


def _identify(path: Path, *, first_sb2_reference_is_enough: bool, judge: bool) -> Identification:
    found = _label(path, first_sb2_reference_is_enough)
    if not judge or found.format not in VERDICT_FORMATS:
        return found
    with open_regular_nofollow(path) as handle:
        return _with_verdict(found, handle, str(path))


def identify_open(handle: BinaryIO, source: str) -> Identification:
    """:func:`identify_checked` of a regular file the caller opened (a directory checkpoint's
    files are opened no-follow from the run's descriptor, ``ckptd.fs.runfs``)."""
    return _identify_open(handle, source, first_sb2_reference_is_enough=True)


def identify_handle(handle: BinaryIO, source: str, head: bytes) -> Identification:
    """:func:`identify` of a regular file the caller opened (no-follow) and whose first
    ``min(size, SNIFF_BYTES)`` bytes it read (``head``)."""
    return _identify_open(handle, source, first_sb2_reference_is_enough=False, head=head)


def _identify_open(
    handle: BinaryIO,
    source: str,
    *,
    first_sb2_reference_is_enough: bool,
    head: bytes | None = None,
) -> Identification:
    found = _label_open(handle, first_sb2_reference_is_enough, head)
    if found.format not in VERDICT_FORMATS:
        return found
    handle.seek(0)
    return _with_verdict(found, handle, source)


def _with_verdict(found: Identification, handle: BinaryIO, source: str) -> Identification:
    size = os.fstat(handle.fileno()).st_size
    return judged(found, lambda: _judge(found.format, handle, size, source))


def judged(found: Identification, judge: Callable[[], Verdict]) -> Identification:
    """``found`` with the verdict ``judge`` gives, or labelled unknown when it cannot give one."""
    try:
        verdict = judge()
    except NoVerdict as err:
        note = f"{found.format} whose pickles ckptd cannot check: {err}"
        return dataclasses.replace(found, format=Format.UNKNOWN, note=note)
    return dataclasses.replace(found, verdict=verdict)


def _judge(fmt: Format, handle: BinaryIO, size: int, source: str) -> Verdict:
    if fmt is Format.TORCH_ZIP:
        return judge_torch_zip(handle, size, source)
    if fmt is Format.SB3_ZIP:
        return judge_sb3_zip(handle, size, source)
    return judge_pickle_file(handle, size, source)


def _label(path: Path, first_sb2_reference_is_enough: bool) -> Identification:
    with open_regular_nofollow(path) as handle:
        return _label_open(handle, first_sb2_reference_is_enough)


def _label_open(
    handle: BinaryIO, first_sb2_reference_is_enough: bool, head: bytes | None = None
) -> Identification:
    size = os.fstat(handle.fileno()).st_size
    if head is None:
        # Ask for no more than the file holds: read(n) allocates n bytes up front, and a 4 MiB
        # allocation per small file costs more than reading it (size 0: a file that may not say).
        head = handle.read(min(size, SNIFF_BYTES) or SNIFF_BYTES)
    if not head:
        return Identification(Format.UNKNOWN, "high", "empty file", size)
    header = header_length_of(head, size)
    if header is not None:
        note = f"a {header}-byte JSON header, then the tensors"
        return Identification(Format.SAFETENSORS, "high", note, size)
    if head.startswith(ZIP_MAGIC):
        # A file read whole is parsed from memory: zipfile's seeks and reads cost syscalls.
        whole = len(head) == size
        return _identify_zip(io.BytesIO(head) if whole else handle, size)
    if head[0] == 0x80 and len(head) >= 2:
        return _identify_pickle(handle, head, size, first_sb2_reference_is_enough)
    method = compression_of(head)
    if method is not None:
        return _identify_compressed(head, size, method)
    if head[0] in _TEXT_PICKLE_STARTS and len(head) == size:
        text = _identify_text_pickle(head, size)
        if text is not None:
            return text
    return Identification(
        Format.UNKNOWN, "high", f"neither a zip nor a pickle (starts with {head[:4].hex()})", size
    )


def _identify_zip(handle: BinaryIO, size: int) -> Identification:
    try:
        with zipfile.ZipFile(handle) as archive:
            return zip_identification(archive, size)
    except ZIP_READ_ERRORS as err:  # e.g. NotImplementedError for a version zipfile cannot read
        return unreadable_zip(err, size)


def unreadable_zip(err: Exception, size: int) -> Identification:
    """The label of a file with the zip magic whose central directory zipfile cannot read."""
    return Identification(
        Format.UNKNOWN, "high", f"zip magic but no readable central directory ({err})", size
    )


def zip_identification(archive: zipfile.ZipFile, size: int) -> Identification:
    """The label of a zip from its open ``archive`` (without a verdict)."""
    names = tuple(archive.namelist())
    foreign = foreign_directory_problem(archive)
    if foreign:
        return Identification(
            Format.UNKNOWN, "high", f"zip magic but no readable central directory ({foreign})", size
        )
    flavour = classify_zip_members(names)
    notes = {
        Format.SB2_ZIP: "zip with parameters and parameter_list",
        Format.SB3_ZIP: "zip with SB3 members",
        Format.TORCH_ZIP: "torch zip checkpoint (data.pkl and version)",
        Format.UNKNOWN: "zip without stable-baselines members",
    }
    return Identification(flavour, "high", notes[flavour], size, members=names)


def _identify_pickle(
    handle: BinaryIO, head: bytes, size: int, first_sb2_reference_is_enough: bool
) -> Identification:
    protocol = head[1]
    if not 2 <= protocol <= 5:
        return Identification(
            Format.UNKNOWN, "high", f"pickle protocol {protocol} (SB2 wrote 2..5)", size, protocol
        )
    if head.startswith(TORCH_LEGACY_MAGIC):
        note = "torch legacy checkpoint (magic number first)"
        return Identification(Format.TORCH_LEGACY, "high", note, size, protocol)
    # Stopping at the first SB2 global changes only how many globals are listed, never the label:
    # any SB2 global in the prefix makes it sb2-pickle/high, and without one the scan runs to the end.
    peek = peek_pickle(head, stop_at=is_sb2_module if first_sb2_reference_is_enough else None)
    sb2_globals = [name for name in peek.globals if is_sb2_module(name)]
    if sb2_globals:
        note = f"pickle protocol {protocol} referencing {sb2_globals[0]}"
        return Identification(Format.SB2_PICKLE, "high", note, size, protocol, peek.globals)
    handle.seek(max(0, size - TAIL_BYTES))
    tail = handle.read(TAIL_BYTES)
    hints = [name for name in peek.globals if name.startswith(_CHECKPOINT_HINTS)]
    if ends_with_tuple2(tail) and hints:
        note = (
            f"pickle protocol {protocol}: a 2-tuple referencing {hints[0]} but no stable_baselines"
            " module (a custom policy?)"
        )
        return Identification(Format.SB2_PICKLE, "low", note, size, protocol, peek.globals)
    if JOBLIB_GLOBAL in peek.globals:
        note = f"joblib dump (pickle protocol {protocol} with NumpyArrayWrapper)"
        return Identification(Format.JOBLIB, "high", note, size, protocol, peek.globals)
    note = f"pickle protocol {protocol} without a stable_baselines reference"
    logger.debug("%s: %s (scan: %s)", handle.name, note, peek.error or "complete")
    return Identification(Format.PICKLE, "high", note, size, protocol, peek.globals)


def _identify_compressed(head: bytes, size: int, method: str) -> Identification:
    """A joblib-compressed pickle when the stream's first bytes decompress to a pickle."""
    if method == "lz4":
        note = "lz4 stream (joblib?): not checked, ckptd decompresses with the stdlib only"
        return Identification(Format.UNKNOWN, "high", note, size)
    try:
        start = _decompress_start(head, method)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        start = b""
    if start[:1] == b"\x80" and start[1:2] and 2 <= start[1] <= 5:
        note = f"{method}-compressed pickle (joblib)"
        return Identification(Format.JOBLIB, "high", note, size, start[1])
    note = f"{method} stream that does not start with a pickle"
    return Identification(Format.UNKNOWN, "high", note, size)


def _decompress_start(head: bytes, method: str) -> bytes:
    if method in ("gzip", "zlib"):
        return zlib.decompressobj(31 if method == "gzip" else 15).decompress(head, 64)
    if method == "bz2":
        return bz2.BZ2Decompressor().decompress(head, 64)
    container = lzma.FORMAT_XZ if method == "xz" else lzma.FORMAT_ALONE
    return lzma.LZMADecompressor(container).decompress(head, 64)


def _identify_text_pickle(data: bytes, size: int) -> Identification | None:
    """A protocol 0/1 pickle: no magic, so only a static parse ending in STOP says so; a stream
    that names a global and calls or builds something before it breaks is labelled too (its
    verdict refuses it)."""
    try:
        parse_ops(data, min_protocol=0)
    except FormatError:
        peek = peek_pickle(data)
        if not (peek.globals and peek.builds_objects):
            return None  # text that merely starts like a GLOBAL is not a (broken) payload
        note = "protocol 0/1 pickle that references globals but does not parse"
        return Identification(Format.PICKLE, "low", note, size, 0, peek.globals)
    peek = peek_pickle(data)
    return Identification(Format.PICKLE, "high", "pickle protocol 0/1", size, 0, peek.globals)
