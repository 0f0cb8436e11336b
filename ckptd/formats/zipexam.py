"""One static pass over an SB2/SB3 zip: structure, members, ``data`` labels, parameter headers.

Shared by ``read_sb2_zip`` / ``read_sb3_zip`` (inspection: headers and small members only) and
``verify_zip`` (the same plus a streaming CRC check of every member and of every npy inside
``parameters``). Every problem is a one-line string that starts with the member it concerns.
Executes nothing from the file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.datajson import DataAnalysis, analyze_data_json
from ckptd.formats.npy import read_npy_header
from ckptd.formats.sniff import SB3_VERSION_MEMBER, ZIP_MAGIC, classify_zip_members
from ckptd.formats.zipmembers import SharedMembers
from ckptd.formats.zipread import (
    CHUNK,
    ZIP_READ_ERRORS,
    MemberInfo,
    Structure,
    check_structure,
    foreign_directory_problem,
    open_window,
    read_small_member,
)
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits

logger = logging.getLogger(__name__)

MAX_DATA_JSON = 256 * 1024 * 1024
# How much of limits.max_memory one byte of ``data`` JSON may take once parsed (measured: 8 MiB of
# "[]," parses into 200 MiB of lists), so the member is read only up to max_memory / this.
DATA_JSON_EXPANSION = 32
MAX_PARAMETER_LIST = 64 * 1024 * 1024
MAX_COMPRESSED_NPZ = 1024 * 1024 * 1024  # a compressed npz must be inflated in memory to inspect
MAX_SMALL_TEXT = 64 * 1024
SYSTEM_INFO_MEMBER = "system_info.txt"
_VERSION_TEXT = re.compile(r"[0-9]+\.[0-9]+[0-9A-Za-z.+-]*")


@dataclass(frozen=True)
class ParamInfo:
    """One array of ``parameters`` as its npy header describes it."""

    name: str  # the parameter_list name (the npz member without ".npy")
    descr: str
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int
    npy_version: tuple[int, int]


@dataclass(frozen=True)
class ZipExamination:
    """Everything one static pass learned about a zip checkpoint."""

    path: str
    format: Format
    size: int
    members: tuple[MemberInfo, ...]
    data: DataAnalysis | None
    parameter_list: tuple[str, ...] | None
    params: tuple[ParamInfo, ...]
    sb3_version: str | None
    system_info: str | None
    problems: tuple[str, ...]

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(member.name for member in self.members)


def examine_zip(path: Path, *, check_crc: bool, limits: Limits = DEFAULT_LIMITS) -> ZipExamination:
    """Examine ``path``. Raises OSError / UnsafePathError only when it cannot be opened at all.

    The ``data`` member is read only up to ``limits.max_memory / DATA_JSON_EXPANSION`` (its parsed
    JSON takes many times its size), and its ``:serialized:`` pickles are held to ``limits``.
    """
    source = str(path)
    with open_regular_nofollow(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(len(ZIP_MAGIC))
        if head != ZIP_MAGIC:
            problem = "empty file" if not head else f"not a zip file (starts with {head.hex()})"
            return _broken(source, size, problem)
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except ZIP_READ_ERRORS as err:
            return _broken(source, size, f"unreadable zip central directory ({err})")
        with archive:
            foreign = foreign_directory_problem(archive)
            if foreign:
                return _broken(source, size, foreign)
            structure = check_structure(archive, handle, size)
            return examine_archive(
                source, handle, size, SharedMembers(archive), structure, check_crc, limits
            )


def examine_archive(
    source: str,
    handle: BinaryIO,
    size: int,
    members: SharedMembers,
    structure: Structure,
    check_crc: bool,
    limits: Limits = DEFAULT_LIMITS,
) -> ZipExamination:
    """:func:`examine_zip` of a zip already open on ``handle`` (its magic read, its central
    directory its own: ``foreign_directory_problem`` found nothing), whose ``check_structure``
    is ``structure``; ``members`` reads its members (shared with other passes over it)."""
    return _Examiner(source, handle, size, members, structure, check_crc, limits).run()


def _broken(source: str, size: int, problem: str) -> ZipExamination:
    return ZipExamination(source, Format.UNKNOWN, size, (), None, None, (), None, None, (problem,))


class _Examiner:
    """The examination of one open archive (a class only to keep the shared state in one place)."""

    def __init__(
        self,
        source: str,
        handle: BinaryIO,
        size: int,
        members: SharedMembers,
        structure: Structure,
        check_crc: bool,
        limits: Limits,
    ) -> None:
        self.limits = limits
        self.source = source
        self.handle = handle
        self.size = size
        self.members = members
        self.archive = members.archive
        self.structure = structure
        self.check_crc = check_crc
        self.problems: list[str] = []

    def run(self) -> ZipExamination:
        structure = self.structure
        self.problems.extend(structure.problems)
        members = {member.name: member for member in structure.members}
        names = tuple(members)
        flavour = classify_zip_members(names)
        if self.check_crc:
            for name in names:
                if name in structure.sound:
                    problem = self.members.crc_problem(members[name])
                    if problem:
                        self.problems.append(problem)
        sound = {name: members[name] for name in structure.sound}
        data: DataAnalysis | None = None
        parameter_list: tuple[str, ...] | None = None
        params: tuple[ParamInfo, ...] = ()
        sb3_version: str | None = None
        system_info: str | None = None
        if flavour is Format.UNKNOWN:
            self.problems.append(
                f"neither an SB2 nor an SB3 zip (members: {', '.join(names) or 'none'})"
            )
        else:
            data = self._data(sound, names, check_safety=flavour is Format.SB2_ZIP)
        if flavour is Format.SB2_ZIP:
            parameter_list = self._parameter_list(sound, names)
            params = self._parameters(sound, names, parameter_list)
        elif flavour is Format.SB3_ZIP:
            sb3_version = self._text(sound, names, SB3_VERSION_MEMBER, required=True)
            if sb3_version is not None and not _VERSION_TEXT.fullmatch(sb3_version):
                self.problems.append(
                    f"{SB3_VERSION_MEMBER}: not a version number ({sb3_version[:40]!r})"
                )
            system_info = self._text(sound, names, SYSTEM_INFO_MEMBER, required=False)
        return ZipExamination(
            path=self.source,
            format=flavour,
            size=self.size,
            members=structure.members,
            data=data,
            parameter_list=parameter_list,
            params=params,
            sb3_version=sb3_version,
            system_info=system_info,
            # A damaged member's CRC error comes back when it is read again (data's JSON): once.
            problems=tuple(dict.fromkeys(self.problems)),
        )

    def _read(
        self, sound: dict[str, MemberInfo], names: tuple[str, ...], name: str, limit: int
    ) -> bytes | None:
        if name not in names:
            return None
        if name not in sound:
            return None  # its structural problem is already reported
        try:
            return self.members.read_small(sound[name], limit)
        except ZIP_READ_ERRORS as err:
            self.problems.append(f"{name}: {err}")
            return None

    def _data(
        self, sound: dict[str, MemberInfo], names: tuple[str, ...], *, check_safety: bool
    ) -> DataAnalysis | None:
        if "data" not in names:
            self.problems.append("data: member missing (the loader needs data['policy'])")
            return None
        limit = min(MAX_DATA_JSON, self.limits.max_memory // DATA_JSON_EXPANSION)
        member = sound.get("data")
        if member is not None and member.size > limit:
            # Parsed JSON takes up to ~25 times its text ("[]," is 3 bytes and a 56-byte list).
            self.problems.append(
                f"data: {member.size} bytes exceeds limits.max_memory "
                f"({self.limits.max_memory}) / {DATA_JSON_EXPANSION} for the parsed JSON"
            )
            return None
        raw = self._read(sound, names, "data", limit)
        if raw is None:
            return None
        analysis = analyze_data_json(
            raw, member="data", source=self.source, check_safety=check_safety, limits=self.limits
        )
        self.problems.extend(analysis.problems)
        return analysis

    def _text(
        self, sound: dict[str, MemberInfo], names: tuple[str, ...], name: str, *, required: bool
    ) -> str | None:
        if name not in names:
            if required:
                self.problems.append(f"{name}: member missing")
            return None
        raw = self._read(sound, names, name, MAX_SMALL_TEXT)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.problems.append(f"{name}: not UTF-8 text")
            return None

    def _parameter_list(
        self, sound: dict[str, MemberInfo], names: tuple[str, ...]
    ) -> tuple[str, ...] | None:
        limit = min(MAX_PARAMETER_LIST, self.limits.max_memory // DATA_JSON_EXPANSION)
        raw = self._read(sound, names, "parameter_list", limit)
        if raw is None:
            return None
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            self.problems.append(f"parameter_list: not JSON ({err})")
            return None
        if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
            self.problems.append("parameter_list: not a JSON list of names")
            return None
        duplicates = (
            sorted({name for name in parsed if parsed.count(name) > 1})
            if len(parsed) < 10_000
            else []
        )
        if len(set(parsed)) != len(parsed):
            self.problems.append(f"parameter_list: duplicate names {duplicates[:3]}")
        return tuple(parsed)

    def _parameters(
        self,
        sound: dict[str, MemberInfo],
        names: tuple[str, ...],
        parameter_list: tuple[str, ...] | None,
    ) -> tuple[ParamInfo, ...]:
        member = sound.get("parameters")
        if member is None:
            return ()
        try:
            npz_stream = self._open_npz(member)
            if npz_stream is None:
                return ()
            with npz_stream, zipfile.ZipFile(npz_stream) as npz:
                return self._npz(npz, npz_stream, member, parameter_list)
        except ZIP_READ_ERRORS as err:
            self.problems.append(f"parameters: not a readable npz ({err})")
            return ()

    def _open_npz(self, member: MemberInfo) -> io.BufferedReader | io.BytesIO | None:
        if member.compress_type == zipfile.ZIP_STORED:
            return open_window(self.handle, member)
        if member.size > MAX_COMPRESSED_NPZ:
            self.problems.append(
                f"parameters: compressed and over {MAX_COMPRESSED_NPZ} bytes; not inspected"
            )
            return None
        return io.BytesIO(read_small_member(self.archive, member, MAX_COMPRESSED_NPZ))

    def _npz(
        self,
        npz: zipfile.ZipFile,
        stream: io.BufferedReader | io.BytesIO,
        outer: MemberInfo,
        parameter_list: tuple[str, ...] | None,
    ) -> tuple[ParamInfo, ...]:
        structure = check_structure(npz, stream, outer.size)
        self.problems.extend(f"parameters/{problem}" for problem in structure.problems)
        present = [member.name for member in structure.members]
        if parameter_list is not None:
            expected = [f"{name}.npy" for name in parameter_list]
            present_set, expected_set = set(present), set(expected)
            missing = [name for name in expected if name not in present_set]
            extra = [name for name in present if name not in expected_set]
            if missing:
                self.problems.append(
                    f"parameters: no member for {len(missing)} listed names, e.g. {missing[0]!r}"
                )
            if extra:
                self.problems.append(
                    f"parameters: {len(extra)} members not in parameter_list, e.g. {extra[0]!r}"
                )
        found: dict[str, ParamInfo] = {}
        for member in structure.members:
            if member.name not in structure.sound:
                continue
            info = self._npy(npz, member)
            if info is not None:
                found[info.name] = info
        order = parameter_list if parameter_list is not None else tuple(found)
        return tuple(found[name] for name in order if name in found)

    def _npy(self, npz: zipfile.ZipFile, member: MemberInfo) -> ParamInfo | None:
        where = f"parameters/{member.name}"
        if not member.name.endswith(".npy"):
            self.problems.append(f"{where}: not an .npy member")
            return None
        try:
            with npz.open(member.name) as stream:
                header = read_npy_header(stream, source=where)
                if header.header_size + header.data_size != member.size:
                    self.problems.append(
                        f"{where}: npy header promises {header.data_size} data bytes "
                        f"({header.descr} {header.shape}), member holds {member.size - header.header_size}"
                    )
                elif self.check_crc:
                    while stream.read(CHUNK):
                        pass
        except ZIP_READ_ERRORS as err:
            self.problems.append(f"{where}: {err}")
            return None
        except CkptdError as err:
            self.problems.append(f"{where}: {err.message}")
            return None
        return ParamInfo(
            name=member.name[: -len(".npy")],
            descr=header.descr,
            shape=header.shape,
            fortran_order=header.fortran_order,
            nbytes=header.data_size,
            npy_version=header.version,
        )
