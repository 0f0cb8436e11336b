"""Integrity verification of SB2 and SB3 zips: structure, declared sizes, CRCs, JSON, npy headers.

For an SB2 zip, on top of the structural checks (declared sizes against the file before reading,
compression ratios, overlaps, a streaming CRC of every member): ``data`` parses as JSON (with the
NaN/Infinity tokens SB2 writes), every ``:serialized:`` entry passes the static pickle check,
``parameter_list`` is a JSON list of names matching the npz members exactly, and every npy header
parses and promises exactly the bytes its member holds. SB3 zips get the structural checks, ``data``
and the version text. Nothing is unpickled or executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptd.errors import CkptdError
from ckptd.formats import Format
from ckptd.formats.zipexam import ZipExamination, examine_zip
from ckptd.limits import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class VerifyReport:
    """The verdict on one file: ``ok`` only when ``problems`` is empty."""

    path: str
    ok: bool
    format: Format
    problems: tuple[str, ...]  # one line each, starting with the member concerned
    members: tuple[str, ...] = ()
    params_count: int = 0
    params_bytes: int = 0
    data_keys: tuple[str, ...] = ()
    carries_code: tuple[str, ...] = ()
    sb3_version: str | None = None
    refused: tuple[str, ...] = ()  # data keys whose ``:serialized:`` pickle the allowlist refused


def verify_zip(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> VerifyReport:
    """Verify ``path`` completely; never raises for damaged content (only reports)."""
    try:
        exam = examine_zip(path, check_crc=True, limits=limits)
    except CkptdError as err:
        return VerifyReport(str(path), False, Format.UNKNOWN, (err.message,))
    except OSError as err:
        return VerifyReport(
            str(path), False, Format.UNKNOWN, (f"cannot read: {err.strerror or err}",)
        )
    return report_of(exam)


def report_of(exam: ZipExamination) -> VerifyReport:
    """The verdict on a zip from its examination with ``check_crc`` (pure)."""
    data = exam.data
    return VerifyReport(
        path=exam.path,
        ok=not exam.problems,
        format=exam.format,
        problems=exam.problems,
        members=exam.member_names,
        params_count=len(exam.params),
        params_bytes=sum(param.nbytes for param in exam.params),
        data_keys=data.keys if data else (),
        carries_code=data.carries_code if data else (),
        sb3_version=exam.sb3_version,
        refused=tuple(
            entry.key
            for entry in (data.entries if data else ())
            if entry.safety.startswith("refused")
        ),
    )
