"""Describe one checkpoint file without executing or importing anything from it (``ckptd inspect``).

Plain pickles, joblib dumps and torch files are reported by their verdict; legacy pickles are
described by ``ckptd.ops.inspect_pickle``. Zips get one static examination (``zipexam``: members,
``data`` labels, the static check of each ``:serialized:`` entry, npy headers); CRCs are
``ckptd verify``'s job. The report and its JSON document: ``ckptd.ops.inspect_report``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ckptd.convert.legacy import read_file_bytes
from ckptd.errors import CkptdError, unexpected_text
from ckptd.formats import VERDICT_FORMATS, Format
from ckptd.formats.safetensors import read_safetensors
from ckptd.formats.sb2meta import guess_algorithm, guess_sb2_version
from ckptd.formats.sb3zip import parse_system_info
from ckptd.formats.sniff import ZIP_MAGIC, Identification, identify
from ckptd.formats.zipexam import examine_zip
from ckptd.fs.files import open_regular_nofollow
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.ops.inspect_pickle import inspect_pickle_bytes, sb2_allowed
from ckptd.ops.inspect_report import (
    DataKey,
    GlobalRef,
    InspectReport,
    MemberRow,
    ParamRow,
    Refusal,
    Verdict,
)
from ckptd.pickles.verdict import Verdict as PickleVerdict
from ckptd.pickles.verdict_policy import Policy, allowed_in, policy_for_plain

logger = logging.getLogger(__name__)

PICKLE_MAGIC = 0x80


# --- the I/O edge ----------------------------------------------------------------------------


def inspect_path(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> InspectReport:
    """Inspect ``path`` by content; never raises for bad content (the report says what is wrong)."""
    path = Path(path)
    source = str(path)
    try:
        identification = identify(path)
        verdict = identification.verdict
        if verdict is not None and identification.format is not Format.SB3_ZIP:
            return _judged(source, identification, verdict)
        if identification.format is Format.SAFETENSORS:
            return _safetensors(path, identification)
        magic = _leading_bytes(path, len(ZIP_MAGIC))
        if magic == ZIP_MAGIC:
            return inspect_zip(path, identification, limits=limits)
        if magic[:1] == bytes([PICKLE_MAGIC]):
            buf, _ = read_file_bytes(path)
            return inspect_pickle_bytes(
                buf, source=source, identification=identification, limits=limits
            )
    except CkptdError as err:
        return _unreadable(source, str(err))
    except OSError as err:
        return _unreadable(source, f"{source}: cannot read: {err.strerror or err}")
    except Exception as err:  # the last resort: a surprise is this file's verdict, not a traceback
        logger.debug("unexpected error inspecting %s", source, exc_info=True)
        return _unreadable(source, f"{source}: {unexpected_text(err)}")
    return InspectReport(
        source,
        identification.size,
        identification.format,
        identification.note,
        "unknown",
        error=f"{source}: not a stable-baselines checkpoint ({identification.note})",
    )


def _judged(source: str, found: Identification, verdict: PickleVerdict) -> InspectReport:
    """A plain pickle, joblib dump or torch file: its verdict is the report."""
    assert found.format in VERDICT_FORMATS
    breach = verdict.detail
    refusal = (
        Refusal(breach.reason, None, breach.global_name, breach.opcode, breach.offset)
        if breach is not None
        else Refusal(verdict.reason)
    )
    outcome: Verdict = "safe" if verdict.safe else "broken" if verdict.broken else "refused"
    torch = found.format in (Format.TORCH_ZIP, Format.TORCH_LEGACY)
    policy = Policy.TORCH if torch else policy_for_plain(verdict.globals)
    return InspectReport(
        source,
        found.size,
        found.format,
        found.note,
        outcome,
        error=f"{source}: {verdict.reason}" if verdict.broken else None,
        refusals=() if outcome != "refused" else (refusal,),
        protocol=found.protocol,
        globals=tuple(GlobalRef(name, allowed_in(policy, name)) for name in verdict.globals),
        members=(),
        pickle_verdict=verdict,
    )


def _safetensors(path: Path, found: Identification) -> InspectReport:
    """A safetensors file holds no pickle: it is safe when its header checks out, else broken."""
    report = read_safetensors(path)
    source = str(path)
    return InspectReport(
        source,
        found.size,
        found.format,
        found.note,
        "safe" if report.ok else "broken",
        error=f"{source}: {report.problems[0]}" if report.problems else None,
        problems=report.problems,
        params=tuple(
            ParamRow(tensor.name, tensor.dtype, tensor.shape, tensor.nbytes)
            for tensor in report.tensors
        ),
    )


def _leading_bytes(path: Path, count: int) -> bytes:
    with open_regular_nofollow(path) as handle:
        return handle.read(count)


def _unreadable(source: str, error: str) -> InspectReport:
    return InspectReport(source, 0, Format.UNKNOWN, "unreadable", "broken", error=error)


# --- zips ------------------------------------------------------------------------------------


def inspect_zip(
    path: Path, identification: Identification, *, limits: Limits = DEFAULT_LIMITS
) -> InspectReport:
    """An SB2/SB3 (or any) zip, statically: members, data labels, npy headers; no CRC pass."""
    exam = examine_zip(path, check_crc=False, limits=limits)
    source = str(path)
    entries = exam.data.entries if exam.data else ()
    refusals = tuple(
        Refusal(
            entry.safety.removeprefix("refused: "),
            f"data[{entry.key!r}]",
            entry.refused_global,
            entry.refused_opcode,
            entry.refused_offset,
        )
        for entry in entries
        if entry.safety.startswith("refused")
    )
    verdict: Verdict
    if exam.format is Format.UNKNOWN:
        verdict = "unknown" if exam.members else "broken"
    elif refusals:
        verdict = "refused"
    elif exam.problems:
        verdict = "broken"
    else:
        verdict = "unchecked" if exam.format is Format.SB3_ZIP else "safe"
    judged = identification.verdict if exam.format is Format.SB3_ZIP else None
    if judged is not None and verdict == "unchecked":
        # Its .pth members and :serialized: entries judged (ckptd.formats.verdict_files).
        verdict = "safe" if judged.safe else "refused"
        refusals = refusals if judged.safe else (*refusals, Refusal(judged.reason))
    is_sb2 = exam.format is Format.SB2_ZIP
    names = sorted({name for entry in entries for name in entry.globals})
    globals_ = tuple(GlobalRef(name, sb2_allowed(name) if is_sb2 else None) for name in names)
    keys = [entry.key for entry in entries]
    algorithm = version = None
    if is_sb2:
        policy = next((entry for entry in entries if entry.key == "policy"), None)
        policy_global = policy.globals[0] if policy and len(policy.globals) == 1 else None
        algorithm = guess_algorithm(keys, policy_global)
        version = guess_sb2_version(
            keys, container="zip", referenced_globals=names, algorithm=algorithm
        )
    error = None
    if verdict in ("broken", "unknown") and exam.problems:
        error = f"{source}: {exam.problems[0]}"
    return InspectReport(
        path=source,
        size=exam.size,
        format=exam.format,
        format_note=identification.note,
        verdict=verdict,
        error=error,
        refusals=refusals,
        problems=exam.problems,
        globals=globals_,
        algorithm=algorithm,
        sb2_version=version,
        data=tuple(
            DataKey(
                entry.key,
                entry.kind,
                entry.type_name,
                entry.carries_code,
                entry.globals,
                entry.safety,
            )
            for entry in entries
        ),
        params=tuple(
            ParamRow(param.name, param.descr, param.shape, param.nbytes) for param in exam.params
        ),
        members=tuple(
            MemberRow(member.name, member.size, member.compressed_size) for member in exam.members
        ),
        sb3_version=exam.sb3_version,
        system_info=parse_system_info(exam.system_info or ""),
        pickle_verdict=judged,
    )
