"""Verify checkpoint files by content (``ckptd verify``): one verdict per file, never an exception.

Zips (SB2 and SB3) get ``verify_zip``: structure, a streaming CRC of every member, ``data`` JSON and
the static check of each ``:serialized:`` entry, npy headers against member sizes, ``parameter_list``
against ``parameters``. Plain pickles, joblib dumps, torch files and SB3 zips are also judged by
their verdict (docs/security.md, "Verdicts"): not safe is ``refused``, truncated is ``damaged``;
a torch zip's storages must be the members its ``data.pkl`` declares, whole, and a safetensors
file's header and offsets must cover it exactly (docs/formats.md, "safetensors"). Legacy pickles
get the full static parse of the safe legacy reader (structure, allowlist, every array's size),
through ``inspect_pickle_bytes`` so an SB2 <= 2.5.1 file (parameters saved as an unnamed list)
verifies without its parameter names. Nothing is ever unpickled or executed.

A directory stands for every checkpoint-looking file below it, judged by content: SB2 pickles,
SB2/SB3 zips, and zips whose central directory is unreadable (a truncated checkpoint must not be
skipped silently). ckptd's state directories and temp files are not descended into.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ckptd.config.model import DEFAULT_STATE_DIR
from ckptd.convert.legacy import read_file_bytes
from ckptd.errors import CkptdError, unexpected_text
from ckptd.formats import VERDICT_FORMATS, Format
from ckptd.formats.safetensors import read_safetensors
from ckptd.formats.sniff import ZIP_MAGIC, Identification, identify
from ckptd.formats.torch_zip import torch_zip_problems
from ckptd.formats.verify import verify_zip
from ckptd.formats.zipread import check_structure, stream_crc
from ckptd.fs import files as fsio
from ckptd.fs.walk import walk_entries
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.ops.inspect_pickle import inspect_pickle_bytes
from ckptd.ops.inspect_report import Verdict
from ckptd.ops.inspection import PICKLE_MAGIC

logger = logging.getLogger(__name__)

Status = Literal["ok", "damaged", "refused", "not-a-checkpoint", "unreadable"]
_CHECKPOINT_FORMATS = (
    Format.SB2_PICKLE,
    Format.SB2_ZIP,
    Format.SB3_ZIP,
    Format.SAFETENSORS,
    *VERDICT_FORMATS,
)
_PICKLE_STATUS: dict[Verdict, Status] = {
    "safe": "ok",
    "unchecked": "ok",
    "refused": "refused",
    "broken": "damaged",
    "unknown": "not-a-checkpoint",
}


@dataclass(frozen=True)
class FileVerdict:
    """The verdict on one file; ``problems`` are one line each (without the path)."""

    path: Path
    format: Format
    status: Status
    problems: tuple[str, ...] = ()
    params_count: int = 0
    params_bytes: int = 0
    carries_code: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify_file(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> FileVerdict:
    """Verify one file by its content (its name is irrelevant)."""
    path = Path(path)
    try:
        found = identify(path)
        if found.verdict is not None:
            return _verify_judged(path, found, limits)
        if found.format is Format.SAFETENSORS:
            return _verify_safetensors(path)
        with fsio.open_regular_nofollow(path) as handle:
            magic = handle.read(len(ZIP_MAGIC))
        if magic == ZIP_MAGIC:
            return _verify_zip(path, limits)
        if magic[:1] == bytes([PICKLE_MAGIC]):
            return _verify_pickle(path, limits)
    except CkptdError as err:
        return FileVerdict(path, Format.UNKNOWN, "unreadable", (err.message,))
    except OSError as err:
        return FileVerdict(
            path, Format.UNKNOWN, "unreadable", (f"cannot read: {err.strerror or err}",)
        )
    except Exception as err:  # the last resort: one file's surprise is that file's verdict
        logger.debug("unexpected error verifying %s", path, exc_info=True)
        return FileVerdict(path, Format.UNKNOWN, "damaged", (unexpected_text(err),))
    what = "empty file" if not magic else f"neither a zip nor a pickle (starts with {magic.hex()})"
    return FileVerdict(path, Format.UNKNOWN, "not-a-checkpoint", (what,))


def _verify_zip(path: Path, limits: Limits) -> FileVerdict:
    report = verify_zip(path, limits=limits)
    status: Status = "ok"
    if report.format is Format.UNKNOWN and report.members:
        status = "not-a-checkpoint"
    elif report.refused:
        status = "refused"
    elif not report.ok:
        status = "damaged"
    return FileVerdict(
        path,
        report.format,
        status,
        report.problems,
        report.params_count,
        report.params_bytes,
        report.carries_code,
    )


def _verify_judged(path: Path, found: Identification, limits: Limits) -> FileVerdict:
    """Plain pickles, joblib dumps, torch files and SB3 zips: their verdict, and for zips every
    member's CRC (SB3 zips get the whole zip check as well)."""
    verdict = found.verdict
    assert verdict is not None
    if found.format is Format.SB3_ZIP:
        base = _verify_zip(path, limits)
        if verdict.safe or base.status != "ok":
            return base
        return dataclasses.replace(base, status="refused", problems=(verdict.reason,))
    if not verdict.safe:
        status: Status = "damaged" if verdict.broken else "refused"
        return FileVerdict(path, found.format, status, (verdict.reason,))
    if found.format is Format.TORCH_ZIP:
        problems = _zip_member_problems(path)
        # Only a zip whose members are sound is worth pairing with what data.pkl declares.
        problems = problems or torch_zip_problems(path, limits=limits)
        if problems:
            return FileVerdict(path, found.format, "damaged", problems)
    return FileVerdict(path, found.format, "ok")


def _verify_safetensors(path: Path) -> FileVerdict:
    report = read_safetensors(path)
    status: Status = "ok" if report.ok else "damaged"
    return FileVerdict(
        path,
        Format.SAFETENSORS,
        status,
        report.problems,
        params_count=len(report.tensors),
        params_bytes=report.tensor_bytes,
    )


def _zip_member_problems(path: Path) -> tuple[str, ...]:
    with fsio.open_regular_nofollow(path) as handle, zipfile.ZipFile(handle) as archive:
        structure = check_structure(archive, handle, os.fstat(handle.fileno()).st_size)
        crc = (stream_crc(archive, name) for name in sorted(structure.sound))
        return structure.problems + tuple(problem for problem in crc if problem)


def _verify_pickle(path: Path, limits: Limits) -> FileVerdict:
    identification = identify(path)
    buf, _ = read_file_bytes(path)
    report = inspect_pickle_bytes(
        buf, source=str(path), identification=identification, limits=limits
    )
    problems = tuple(refusal.line() for refusal in report.refusals) + report.problems
    if report.error:
        problems += (_strip_path(report.error, str(path)),)
    status = _PICKLE_STATUS[report.verdict]
    return FileVerdict(
        path,
        report.format,
        status,
        problems,
        len(report.params),
        report.params_bytes,
        report.carries_code,
    )


def _strip_path(line: str, source: str) -> str:
    return line.removeprefix(f"{source}: ")


def checkpoint_files_below(directory: Path) -> Iterator[Path]:
    """Checkpoint-looking files below ``directory``, by content, in sorted order; no symlinks."""
    for entry in walk_entries(str(directory), _is_state_dir, _unlisted, report_top=True, sort=True):
        if fsio.is_temp_name(entry.name) or entry.is_symlink():
            continue
        path = Path(entry.path)
        if _looks_like_checkpoint(path):
            yield path


def _is_state_dir(name: str) -> bool:
    return name == DEFAULT_STATE_DIR


def _unlisted(directory: str, err: OSError) -> None:
    """A directory that cannot be listed holds nothing to verify (as ``os.walk`` skips it)."""


def _looks_like_checkpoint(path: Path) -> bool:
    try:
        identification = identify(path)
        if identification.format in _CHECKPOINT_FORMATS:
            return True
        if identification.format is Format.UNKNOWN and not identification.members:
            with fsio.open_regular_nofollow(path) as handle:
                return handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # a zip we cannot even list
    except (CkptdError, OSError) as err:
        logger.debug("skipping %s: %s", path, err)
    return False


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files stay as given (verified whatever they are); directories become their checkpoints."""
    files: list[Path] = []
    for path in paths:
        files.extend(checkpoint_files_below(path) if path.is_dir() else [path])
    return files
