"""The SB2 zip format (stable-baselines 2.8-2.10): writer and static reader.

The writer produces what ``BaseRLModel._save_to_file_zip`` writes (docs/formats.md, "SB2 zips"):
three ZIP_STORED members ``data``, ``parameters``, ``parameter_list`` in that order,
``external_attr`` 0o600 << 16, the local time of the save (a conversion passes the original's mtime
instead, so the same input always gives the same bytes: docs/conversion.md); ``parameters`` is an
npz (a ZIP_STORED zip of ``"<name>.npy"`` members dated 1980-01-01, each a numpy v1.0 header + the
raw array bytes). Headers are laid out as Python 3.7's zipfile and numpy 1.16 wrote them (no zip64
records unless a size or offset needs them), which is also what SB2's own environment reads.

It streams: the npz is never assembled in memory. Every CRC is known up front (computed from a
resident array, or taken while a file-backed array's source was first read) and the whole file
goes out in one linear pass (see ``ckptd.formats.storedzip``); file-backed arrays are copied from
their source by the kernel (``write_checked_sb2_zip``) or re-read in bounded chunks. Extra memory is O(number of parameters) plus a few chunk
buffers, independent of the arrays' size.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ckptd.errors import ConversionError, FormatError, VerifyError
from ckptd.formats import Format
from ckptd.formats.datajson import (
    DataAnalysis,
    DataEntry,
    analyze_data_json,
    encode_data_json,
)
from ckptd.formats.model import DataValue, FileParamArray, Param
from ckptd.formats.npy import checked_dtype, npy_header_bytes
from ckptd.formats.storedzip import (
    DOS_EPOCH,
    AnyPiece,
    MemberSpec,
    Piece,
    StreamedPiece,
    WriteResult,
    ZipLayout,
    as_byte_view,
    compare_file_with_pieces,
    copy_pieces,
    layout_stored_zip,
    write_pieces,
)
from ckptd.formats.zipexam import ParamInfo, examine_zip
from ckptd.formats.zipread import MemberInfo
from ckptd.fs.digest import THREADED_MIN_BYTES
from ckptd.fs.files import CarriedAttributes, atomic_write
from ckptd.fs.follow import WriteFollower

MEMBER_ORDER = ("data", "parameters", "parameter_list")
DateTime = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class ZipWriteReport:
    """What ``write_sb2_zip`` wrote."""

    size: int  # bytes of the whole zip
    sha256: str  # of exactly those bytes
    data_bytes: int
    parameters_bytes: int  # the npz member
    parameter_list_bytes: int
    params_count: int
    params_bytes: int  # raw array bytes
    date_time: DateTime


def encode_parameter_list(names: Sequence[str]) -> bytes:
    """``json.dumps(list(params.keys()), indent=4)`` as SB2 writes it."""
    return json.dumps(list(names), indent=4).encode("utf-8")


def _npy_pieces(param: Param) -> tuple[Piece, AnyPiece]:
    where = f"parameter {param.name!r}"
    if not isinstance(param.name, str) or not param.name:
        raise ConversionError(f"{where}: a parameter needs a non-empty name")
    try:
        dtype = checked_dtype(param.descr)
    except FormatError as err:
        raise ConversionError(f"{where}: {err.message}") from err
    expected = math.prod(param.shape) * dtype.itemsize
    if param.nbytes != expected:
        raise ConversionError(
            f"{where}: {param.nbytes} raw bytes, but {param.descr} {param.shape} needs {expected}"
        )
    header = npy_header_bytes(param.descr, param.fortran_order, param.shape)
    if isinstance(param, FileParamArray):
        return Piece.of(header), StreamedPiece(param.payload)
    try:
        raw = as_byte_view(param.raw)
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err
    return Piece.of(header), Piece.of(raw)


def local_now() -> DateTime:
    """The local time of the save, as zipfile's ``writestr`` stamps SB2's members."""
    stamp = time.localtime(time.time())[:6]
    return stamp if stamp[0] >= 1980 else DOS_EPOCH


# The range a zip's DOS date can hold (7 bits of years from 1980; 2-second resolution).
_DOS_LAST = (2107, 12, 31, 23, 59, 58)


def zip_date_time(mtime_ns: int) -> DateTime:
    """A file's mtime as a zip member timestamp: UTC (never the host's zone, so the bytes do not
    depend on where or when the conversion ran), clamped to 1980-01-01 .. 2107-12-31."""
    seconds = mtime_ns // 1_000_000_000
    if seconds < int(datetime(*DOS_EPOCH, tzinfo=UTC).timestamp()):
        return DOS_EPOCH
    if seconds > int(datetime(*_DOS_LAST, tzinfo=UTC).timestamp()):
        return _DOS_LAST
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return as_stored(
        (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    )


def as_stored(stamp: DateTime) -> DateTime:
    """The timestamp a zip can hold: DOS time has 2-second resolution, so odd seconds round down."""
    return (*stamp[:5], stamp[5] - stamp[5] % 2)


def build_sb2_layout(
    data: Mapping[str, DataValue], params: Sequence[Param], *, date_time: DateTime
) -> tuple[ZipLayout, ZipLayout, bytes, bytes]:
    """(outer layout, npz layout, data bytes, parameter_list bytes); pure apart from CRC passes."""
    names = [param.name for param in params]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ConversionError(f"parameter {duplicate!r} appears twice")
    for name in names:
        if "\x00" in name:
            # zipfile ends a member name at its first NUL: the npz would not hold this name.
            raise ConversionError(
                f"parameter name {name!a} contains a NUL byte, which a zip member name cannot hold"
            )
    data_bytes = encode_data_json(data)
    list_bytes = encode_parameter_list(names)
    npz = layout_stored_zip(
        [MemberSpec(f"{param.name}.npy", _npy_pieces(param)) for param in params]
    )
    outer = layout_stored_zip(
        [
            MemberSpec("data", (Piece.of(data_bytes),), date_time),
            MemberSpec("parameters", npz.pieces, date_time),
            MemberSpec("parameter_list", (Piece.of(list_bytes),), date_time),
        ]
    )
    return outer, npz, data_bytes, list_bytes


def write_sb2_zip(
    handle: BinaryIO,
    data: Mapping[str, DataValue],
    params: Sequence[Param],
    *,
    date_time: DateTime | None = None,
) -> ZipWriteReport:
    """Stream an SB2 zip to ``handle`` (seekable or not) from ``data`` and ``params``.

    Offsets inside the zip count from the handle's position at the call (normally 0). ``date_time``
    pins the members' timestamp (default: local time now, as SB2).
    """
    stamp = as_stored(date_time or local_now())
    outer, npz, data_bytes, list_bytes = build_sb2_layout(data, params, date_time=stamp)
    written = write_pieces(handle, outer.pieces)
    return _report(written, npz, data_bytes, list_bytes, params, stamp)


def write_sb2_zip_file(
    dest: Path,
    data: Mapping[str, DataValue],
    params: Sequence[Param],
    *,
    date_time: DateTime | None = None,
    mode: int | None = None,
) -> ZipWriteReport:
    """``write_sb2_zip`` into ``dest`` atomically (temp file, fsync, rename, fsync dir)."""
    with atomic_write(dest, mode=mode) as handle:
        return write_sb2_zip(handle, data, params, date_time=date_time)


def write_checked_sb2_zip(
    dest: Path,
    data: Mapping[str, DataValue],
    params: Sequence[Param],
    *,
    date_time: DateTime | None = None,
    mode: int | None = None,
    attributes: CarriedAttributes | None = None,
    before_rename: Callable[[], None] | None = None,
) -> ZipWriteReport:
    """Write ``dest`` atomically and verify it before it gets its name.

    The temp file is written without any checksum (file-backed arrays copied by the kernel);
    it is re-read once (a large one right behind the copy, which runs in a helper thread and
    fsyncs the file at its end; a small one after the copy, while it is fsynced): headers and
    resident arrays must be
    byte-identical to the layout, each file-backed array's bytes must have the CRC-32 its source
    had when first read (the CRC the headers carry), and its sha256 is taken from the bytes read
    back (``compare_file_with_pieces``: one CRC and one sha256 pass, in two threads), and its
    central directory must list exactly the three members where the layout put them.
    Every pickle written into ``data`` (each ``:serialized:`` entry) is then re-read through the
    same static reader and allowlist as an input (``check_emitted_pickles``): the emitter is
    trusted no more than a checkpoint. Only then is it renamed to ``dest``; on any mismatch
    ``dest`` is untouched and VerifyError raised.
    ``attributes`` (mode, owner, times of the original) are set after that check, before the rename.
    ``before_rename`` runs last before the rename (the daemon's lease check in a cluster); what it
    raises leaves ``dest`` untouched and the temp file removed.
    """
    import zipfile

    stamp = as_stored(date_time or local_now())
    outer, npz, data_bytes, list_bytes = build_sb2_layout(data, params, date_time=stamp)

    verified: list[WriteResult] = []
    # A large zip is copied in a helper thread and re-read right behind the copy (each chunk once
    # the copy is past it), so on two cores the kernel copy and the re-read's sha256 overlap
    # instead of following each other (README, "Benchmarks"); a small one is written first.
    follow = WriteFollower() if outer.size >= THREADED_MIN_BYTES else None

    def check(temp: Path) -> None:
        # Each file-backed array's bytes on disk must have its source's first-read CRC-32.
        try:
            verified.append(compare_file_with_pieces(temp, outer.pieces, follow))
        except BaseException:
            if follow is not None:
                follow.stop()  # the rest of the copy is of no use
            raise
        with zipfile.ZipFile(temp) as archive:
            found = [(i.filename, i.header_offset, i.file_size, i.CRC) for i in archive.infolist()]
        expected = [(m.name, m.header_offset, m.size, m.crc) for m in outer.members]
        if found != expected:
            raise VerifyError(f"central directory {found} differs from the layout", path=str(temp))
        # data_bytes are, byte for byte, the data member just compared with the file on disk.
        check_emitted_pickles(data_bytes, dest)
        if before_rename is not None:
            before_rename()

    copier: threading.Thread | None = None
    try:
        with atomic_write(
            dest,
            mode=mode,
            attributes=attributes,
            before_replace=check,
            synced_by_check=follow is not None,
        ) as handle:
            if follow is None:
                copy_pieces(handle, outer.pieces)
            else:
                # The copy writes through a descriptor of its own: should the temp file's handle
                # be closed first (an error before the check), it can never write elsewhere.
                handle.flush()
                out = os.fdopen(os.dup(handle.fileno()), "wb")
                thread = threading.Thread(
                    target=_copy_and_sync,
                    args=(out, outer.pieces, follow),
                    name="ckptd-copy",
                    daemon=True,
                )
                try:
                    thread.start()
                except BaseException:  # e.g. no thread under the parser's address-space cap
                    out.close()
                    raise
                copier = thread
    finally:
        if copier is not None and follow is not None:
            follow.stop()  # a no-op once the check has seen the copy end
            copier.join()
    return _report(verified[0], npz, data_bytes, list_bytes, params, stamp)


def _copy_and_sync(out: BinaryIO, pieces: Sequence[AnyPiece], follow: WriteFollower) -> None:
    """The helper thread of ``write_checked_sb2_zip``: copy, fsync, tell ``follow`` how it ended.

    The fsync is this thread's: the file is durable once the copy is, before the check that
    follows it ends (the check's reader waits for ``finish``); the disk works meanwhile.
    """
    error: BaseException | None = None
    copied = threading.Event()
    write_back_failed: list[OSError] = []
    syncer: threading.Thread | None = None
    try:
        with out:
            syncer = _start_write_back(out.fileno(), copied, write_back_failed)
            copy_pieces(out, pieces, follow.advance)
            out.flush()
            copied.set()
            os.fsync(out.fileno())
    except BaseException as err:  # handed to the reader, which raises it as its own
        error = err
    finally:
        copied.set()
        if syncer is not None:
            syncer.join()
    if error is None and write_back_failed:
        # The kernel reports a write-back error once per open file: the final fsync may not see
        # what the write-back thread was told, so its error fails the conversion here.
        error = write_back_failed[0]
    follow.finish(error)


def _start_write_back(fd: int, copied: threading.Event, failed: list[OSError]) -> threading.Thread:
    """``_write_back_behind`` in a thread of its own, on a descriptor of its own."""
    own = os.dup(fd)
    thread = threading.Thread(
        target=_write_back_behind, args=(own, copied, failed), name="ckptd-writeback", daemon=True
    )
    try:
        thread.start()
    except BaseException:
        os.close(own)
        raise
    return thread


# How often the write-back thread asks the disk to take what the copy has written so far.
_WRITE_BACK_EVERY = 0.02


def _write_back_behind(fd: int, copied: threading.Event, failed: list[OSError]) -> None:
    """While the copy runs, ``fdatasync`` what it has written so far, again and again: the disk
    works beside the copy instead of after it, and the final fsync finds little left. Its error
    goes to ``failed`` (the file is not durable; the conversion fails)."""
    try:
        while not copied.wait(_WRITE_BACK_EVERY):
            os.fdatasync(fd)
    except OSError as err:
        failed.append(err)
    finally:
        os.close(fd)


def check_emitted_pickles(data_bytes: bytes, dest: Path) -> None:
    """Re-parse every ``:serialized:`` pickle of a ``data`` member we wrote; VerifyError if any fails.

    The same static reader and allowlist every input passes (``ckptd.pickles.allowlist``), so
    nothing ckptd writes can reference what it would refuse to read.
    """
    analysis = analyze_data_json(data_bytes, source=dest.name)
    if analysis.problems:
        raise VerifyError(
            "written data fails the check every input passes: " + "; ".join(analysis.problems),
            path=str(dest),
        )


def _report(
    written: WriteResult,
    npz: ZipLayout,
    data_bytes: bytes,
    list_bytes: bytes,
    params: Sequence[Param],
    stamp: DateTime,
) -> ZipWriteReport:
    return ZipWriteReport(
        size=written.size,
        sha256=written.sha256,
        data_bytes=len(data_bytes),
        parameters_bytes=npz.size,
        parameter_list_bytes=len(list_bytes),
        params_count=len(params),
        params_bytes=sum(param.nbytes for param in params),
        date_time=stamp,
    )


@dataclass(frozen=True)
class Sb2Zip:
    """An SB2 zip as inspection shows it (no CRC pass; see ``verify_zip`` for integrity)."""

    path: str
    members: tuple[MemberInfo, ...]
    data: DataAnalysis
    parameter_list: tuple[str, ...]
    params: tuple[ParamInfo, ...]
    problems: tuple[str, ...]  # non-fatal findings (e.g. a refused ``:serialized:`` entry)

    @property
    def data_keys(self) -> tuple[str, ...]:
        return self.data.keys

    @property
    def entries(self) -> tuple[DataEntry, ...]:
        return self.data.entries

    @property
    def carries_code(self) -> tuple[str, ...]:
        return self.data.carries_code

    @property
    def params_bytes(self) -> int:
        return sum(param.nbytes for param in self.params)


def read_sb2_zip(path: Path) -> Sb2Zip:
    """Inspect an SB2 zip statically; FormatError if it is not one or its core members are unreadable."""
    exam = examine_zip(path, check_crc=False)
    if exam.format is not Format.SB2_ZIP:
        reason = exam.problems[0] if exam.problems else f"a {exam.format} file"
        raise FormatError(f"not an SB2 zip: {reason}", path=str(path))
    if exam.data is None or exam.parameter_list is None:
        raise FormatError(exam.problems[0] if exam.problems else "unreadable", path=str(path))
    return Sb2Zip(
        path=str(path),
        members=exam.members,
        data=exam.data,
        parameter_list=exam.parameter_list,
        params=exam.params,
        problems=exam.problems,
    )
