"""What ``ckptd inspect`` says about one file: the report and its ``inspect --json`` document.

``InspectReport.as_json()`` is the documented ``inspect --json`` document::

    {"path": str, "size": int, "format": "sb2-pickle" | "sb2-zip" | "sb3-zip" | "pickle" | "joblib"
               | "torch-zip" | "torch-legacy" | "unknown",
     "format_note": str,                       # why sniffing gave that label
     "verdict": "safe" | "refused" | "broken" | "unchecked" | "unknown",
     "error": str | null,                      # one line naming the file, for broken/unknown
     "refusals": [{"reason": str, "where": "data['key']" | "parameters" | null,
                   "global": str | null, "opcode": str | null, "offset": int | null}],
     "problems": [str],                        # zips: one line per problem, member first
     "protocol": int | null,                   # pickles
     "globals": [{"name": "module.qualname", "allowed": bool | null,
                  "opcode": str | null, "offset": int | null}],
     "algorithm": str | null,
     "sb2_version": {"range": str, "min": str | null, "max": str | null, "evidence": [str]} | null,
     "data": [{"key": str, "kind": "plain" | "class" | "space" | "function" | "numpy-scalar"
               | "other", "type": str | null, "carries_code": bool, "globals": [str],
               "safety": "ok" | "n/a" | "refused: ..." | "unchecked: ..."}],
     "carries_code": [str],                    # contract: the data keys that carry code
     "params": {"count": int, "bytes": int, "were_list": bool,
                "arrays": [{"name": str, "dtype": str, "shape": [int], "bytes": int}]},
     "members": [{"name": str, "size": int, "compressed_size": int}],
     "sb3": {"version": str | null, "system_info": {str: str}} | null,
     "pickle_verdict": {"safe": bool, "globals": [str], "reason": str} | null}

``pickle_verdict`` is the manifest's ``verdict`` for plain pickles, joblib dumps, torch files and
SB3 zips (docs/security.md, "Verdicts"); for them ``verdict`` is ``safe`` or ``refused`` from it.

Verdicts: ``safe`` (nothing outside the allowlist, structure sound), ``refused`` (something outside
the allowlist; ``refusals`` say what and where), ``broken`` (truncated or malformed; ``error``),
``unchecked`` (an SB3 zip whose pickles got no verdict), ``unknown`` (not a stable-baselines checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ckptd.errors import UnsafeCheckpoint
from ckptd.formats import Format
from ckptd.formats.datajson import Kind
from ckptd.formats.sb2meta import VersionRange
from ckptd.pickles.verdict import Verdict as PickleVerdict

Verdict = Literal["safe", "refused", "broken", "unchecked", "unknown"]


@dataclass(frozen=True)
class GlobalRef:
    """One global the file names; ``allowed`` is None where the SB2 allowlist does not apply."""

    name: str  # "module.qualname"
    allowed: bool | None
    opcode: str | None = None  # of its first occurrence, when known
    offset: int | None = None


@dataclass(frozen=True)
class Refusal:
    """Why (part of) a file is refused, as precisely as the check could say."""

    reason: str
    where: str | None = None  # "data['key']", "parameters", or None for the file as a whole
    global_name: str | None = None
    opcode: str | None = None
    offset: int | None = None  # byte offset in the file (pickles) or in the entry's pickle (zips)

    @classmethod
    def of(cls, err: UnsafeCheckpoint, where: str | None) -> Refusal:
        return cls(err.reason, where, err.global_name, err.opcode, err.offset)

    def line(self) -> str:
        detail = [f"opcode {self.opcode}"] if self.opcode else []
        if self.offset is not None:
            detail.append(f"offset {self.offset}")
        suffix = f" ({', '.join(detail)})" if detail else ""
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.reason}{suffix}"


@dataclass(frozen=True)
class DataKey:
    """One ``data`` entry: what kind of value it is and whether it passed the allowlist."""

    key: str
    kind: Kind
    type_name: str | None = None  # str(type(value)) for non-JSON values
    carries_code: bool = False
    globals: tuple[str, ...] = ()
    safety: str = "n/a"  # "ok", "refused: ...", "unchecked: ..." (non-JSON values); "n/a" (JSON)


@dataclass(frozen=True)
class ParamRow:
    name: str
    dtype: str  # numpy descr with byte order, e.g. "<f4"; safetensors' own name, e.g. "F32"
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class MemberRow:
    name: str
    size: int
    compressed_size: int


@dataclass(frozen=True)
class InspectReport:
    """Everything ``ckptd inspect`` says about one file (see the module docstring for the JSON)."""

    path: str
    size: int
    format: Format
    format_note: str
    verdict: Verdict
    error: str | None = None
    refusals: tuple[Refusal, ...] = ()
    problems: tuple[str, ...] = ()
    protocol: int | None = None
    globals: tuple[GlobalRef, ...] = ()
    algorithm: str | None = None
    sb2_version: VersionRange | None = None
    data: tuple[DataKey, ...] = ()
    params: tuple[ParamRow, ...] = ()
    params_were_list: bool = False
    members: tuple[MemberRow, ...] = ()
    sb3_version: str | None = None
    system_info: tuple[tuple[str, str], ...] = ()
    pickle_verdict: PickleVerdict | None = None

    @property
    def carries_code(self) -> tuple[str, ...]:
        return tuple(entry.key for entry in self.data if entry.carries_code)

    @property
    def params_bytes(self) -> int:
        return sum(param.nbytes for param in self.params)

    @property
    def sound(self) -> bool:
        """Readable and acceptable: ``safe``, or ``unchecked`` for an intact SB3 zip."""
        return self.verdict in ("safe", "unchecked")

    def as_json(self) -> dict[str, Any]:
        version = self.sb2_version
        return {
            "path": self.path,
            "size": self.size,
            "format": str(self.format),
            "format_note": self.format_note,
            "verdict": self.verdict,
            "error": self.error,
            "refusals": [
                {
                    "reason": refusal.reason,
                    "where": refusal.where,
                    "global": refusal.global_name,
                    "opcode": refusal.opcode,
                    "offset": refusal.offset,
                }
                for refusal in self.refusals
            ],
            "problems": list(self.problems),
            "protocol": self.protocol,
            "globals": [
                {
                    "name": ref.name,
                    "allowed": ref.allowed,
                    "opcode": ref.opcode,
                    "offset": ref.offset,
                }
                for ref in self.globals
            ],
            "algorithm": self.algorithm,
            "sb2_version": None
            if version is None
            else {
                "range": str(version),
                "min": version.minimum,
                "max": version.maximum,
                "evidence": list(version.evidence),
            },
            "data": [
                {
                    "key": entry.key,
                    "kind": entry.kind,
                    "type": entry.type_name,
                    "carries_code": entry.carries_code,
                    "globals": list(entry.globals),
                    "safety": entry.safety,
                }
                for entry in self.data
            ],
            "carries_code": list(self.carries_code),
            "params": {
                "count": len(self.params),
                "bytes": self.params_bytes,
                "were_list": self.params_were_list,
                "arrays": [
                    {"name": p.name, "dtype": p.dtype, "shape": list(p.shape), "bytes": p.nbytes}
                    for p in self.params
                ],
            },
            "members": [
                {"name": m.name, "size": m.size, "compressed_size": m.compressed_size}
                for m in self.members
            ],
            "sb3": None
            if self.format is not Format.SB3_ZIP
            else {"version": self.sb3_version, "system_info": dict(self.system_info)},
            "pickle_verdict": None
            if self.pickle_verdict is None
            else self.pickle_verdict.to_json_obj(),
        }
