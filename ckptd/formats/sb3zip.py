"""stable-baselines3 zips: recognized, inspected, read-only, static (docs/formats.md, "SB3 zips").

An SB3 zip holds ``data`` (the same ``:type:``/``:serialized:`` JSON scheme as SB2, with more keys),
one ``<name>.pth`` per PyTorch state dict, ``pytorch_variables.pth`` (``tensors.pth`` before v0.9),
``_stable_baselines3_version`` (since v0.9) and ``system_info.txt`` (since v1.3). The ``.pth``
members are torch's own pickled zips: ckptd lists them and checks their CRCs, never loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptd.errors import FormatError
from ckptd.formats import Format
from ckptd.formats.datajson import DataAnalysis
from ckptd.formats.zipexam import examine_zip
from ckptd.formats.zipread import MemberInfo


@dataclass(frozen=True)
class Sb3Zip:
    """An SB3 zip as inspection shows it."""

    path: str
    members: tuple[MemberInfo, ...]
    version: str | None  # None for files saved before SB3 v0.9
    system_info: tuple[tuple[str, str], ...]  # ("OS", "..."), ("Python", "..."), ...
    data: DataAnalysis | None
    problems: tuple[str, ...]

    @property
    def state_dicts(self) -> tuple[str, ...]:
        """The ``*.pth`` members (policy, optimizers, extra tensors), in archive order."""
        return tuple(member.name for member in self.members if member.name.endswith(".pth"))

    @property
    def data_keys(self) -> tuple[str, ...]:
        return self.data.keys if self.data else ()

    @property
    def carries_code(self) -> tuple[str, ...]:
        return self.data.carries_code if self.data else ()


def parse_system_info(text: str) -> tuple[tuple[str, str], ...]:
    """``- OS: Linux\\n- Python: 3.11 ...`` -> (("OS", "Linux"), ("Python", "3.11 ...")); pure."""
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        body = line.strip().removeprefix("-").strip()
        key, sep, value = body.partition(":")
        if sep and key.strip():
            pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def read_sb3_zip(path: Path) -> Sb3Zip:
    """Inspect an SB3 zip statically; FormatError if it is not one."""
    exam = examine_zip(path, check_crc=False)
    if exam.format is not Format.SB3_ZIP:
        reason = exam.problems[0] if exam.problems else f"a {exam.format} file"
        raise FormatError(f"not an SB3 zip: {reason}", path=str(path))
    return Sb3Zip(
        path=str(path),
        members=exam.members,
        version=exam.sb3_version,
        system_info=parse_system_info(exam.system_info or ""),
        data=exam.data,
        problems=exam.problems,
    )
