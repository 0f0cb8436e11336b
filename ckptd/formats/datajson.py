"""The ``data`` member shared by SB2 and SB3 zips: encoding (SB2's ``data_to_json``) and static analysis.

Encoding reproduces ``stable_baselines/common/save_util.py:data_to_json`` (docs/formats.md, "SB2
zips"): ``json.dumps(serializable, indent=4)`` with key order kept and Python's ``NaN``/``Infinity``
tokens; an opaque value becomes ``{":type:": ..., ":serialized:": base64(pickle)}`` followed by its
extras, assigned one by one as SB2 does (so an extra named ``:type:`` overwrites in place).

Analysis labels each key (plain / class / space / function / numpy-scalar / other) from the ``:type:`` text and a
bounded opcode peek, and runs the static pickle safety check on every ``:serialized:`` blob. Nothing
is ever unpickled.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ckptd.errors import BudgetExceeded, CkptdError, ConversionError, UnsafeCheckpoint
from ckptd.formats.model import DataValue, JsonValue, OpaqueValue
from ckptd.limits import DEFAULT_LIMITS, Limits
from ckptd.pickles.budget import check_pickle
from ckptd.pickles.peek import peek_pickle

TYPE_KEY = ":type:"
SERIALIZED_KEY = ":serialized:"
# cloudpickle helpers that rebuild functions and code objects: their presence means "carries code".
_CODE_HELPERS = frozenset(
    {
        "_fill_function",
        "_make_skel_func",
        "_make_function",
        "_function_setstate",
        "_builtin_type",
        "_make_cell",
        "_make_empty_cell",
    }
)

# plain: stored as JSON; class: a class by reference; space: a gym/gymnasium space; function:
# a function (carries code when rebuilt by value); numpy-scalar: an np.float32/int64/bool_ ...;
# other: any other object.
Kind = Literal["plain", "class", "space", "function", "numpy-scalar", "other"]
_CLASS_TYPES = frozenset({"<class 'abc.ABCMeta'>", "<class 'type'>", "<class 'enum.EnumMeta'>"})
_NUMPY_SCALAR_TYPE = re.compile(
    r"<class 'numpy\.(bool_|u?int(8|16|32|64)|float(16|32|64)|complex(64|128)|generic)'>"
)


def encode_data_json(data: Mapping[str, DataValue]) -> bytes:
    """The ``data`` member bytes exactly as SB2's ``data_to_json`` writes them (UTF-8 of ASCII JSON)."""
    serializable: dict[str, JsonValue | dict[str, JsonValue]] = {}
    for key, value in data.items():
        if isinstance(value, OpaqueValue):
            entry: dict[str, JsonValue] = {
                TYPE_KEY: value.type_name,
                SERIALIZED_KEY: base64.b64encode(value.pickled).decode("ascii"),
            }
            for extra_key, extra_value in value.extras.items():
                entry[extra_key] = extra_value
            serializable[key] = entry
        else:
            serializable[key] = value
    try:
        text = json.dumps(serializable, indent=4)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"data is not JSON-serializable as SB2 writes it: {err}") from err
    return text.encode("utf-8")


@dataclass(frozen=True)
class DataEntry:
    """One ``data`` key as a reader would see it, judged without unpickling."""

    key: str
    kind: Kind
    type_name: str | None = None  # the ``:type:`` text of serialized entries
    serialized_bytes: int = 0
    globals: tuple[str, ...] = ()
    carries_code: bool = False
    safety: str = "n/a"  # "ok", "refused: ...", "unchecked: ..." for serialized entries; else "n/a"
    refused_global: str | None = None  # when refused: the global, opcode and offset (in the blob)
    refused_opcode: str | None = None
    refused_offset: int | None = None


@dataclass(frozen=True)
class DataAnalysis:
    """The ``data`` member: its keys in order, per-key labels, and one-line problems."""

    entries: tuple[DataEntry, ...]
    problems: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(entry.key for entry in self.entries)

    @property
    def carries_code(self) -> tuple[str, ...]:
        return tuple(entry.key for entry in self.entries if entry.carries_code)


def analyze_data_json(
    raw: bytes,
    *,
    member: str = "data",
    source: str | None = None,
    check_safety: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> DataAnalysis:
    """Parse and label the ``data`` member; every problem is one line naming the member and key.

    ``check_safety`` runs the SB2 allowlist on every ``:serialized:`` blob (off for SB3 zips, whose
    pickles reference torch/gymnasium and are checked structurally only). All the blobs of one
    file share one budget of ``limits.max_opcodes``; each is held to the other ``limits``.
    """
    try:
        # Python's json accepts the NaN/Infinity tokens SB2 writes; so does SB2's own loader.
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        return DataAnalysis((), (f"{member}: not JSON ({err})",))
    if not isinstance(parsed, dict):
        return DataAnalysis((), (f"{member}: JSON is a {type(parsed).__name__}, not an object",))
    entries: list[DataEntry] = []
    problems: list[str] = []
    budget = _OpBudget(limits)
    for key, value in parsed.items():
        if isinstance(value, dict) and SERIALIZED_KEY in value:
            entry, problem = _analyze_serialized(key, value, member, source, check_safety, budget)
            entries.append(entry)
            if problem:
                problems.append(problem)
        else:
            entries.append(DataEntry(key, "plain"))
    return DataAnalysis(tuple(entries), tuple(problems))


class _OpBudget:
    """The opcodes left for the rest of one file's ``:serialized:`` pickles."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.left = limits.max_opcodes


def _analyze_serialized(
    key: str,
    value: dict[str, Any],
    member: str,
    source: str | None,
    check_safety: bool,
    budget: _OpBudget,
) -> tuple[DataEntry, str | None]:
    where = f"{member}[{key!r}]"
    type_name = value.get(TYPE_KEY)
    type_text = type_name if isinstance(type_name, str) else None
    encoded = value[SERIALIZED_KEY]
    if not isinstance(encoded, str):
        return DataEntry(
            key, "other", type_text, safety="refused"
        ), f"{where}: :serialized: is not a string"
    try:
        blob = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        return DataEntry(key, "other", type_text, safety="refused"), f"{where}: bad base64 ({err})"
    peek = peek_pickle(blob)
    carries_code = any(name.rsplit(".", 1)[-1] in _CODE_HELPERS for name in peek.globals)
    refusal: UnsafeCheckpoint | None = None
    if check_safety:
        safety, problem, checked_globals, checked_code, refusal = _check_blob(
            blob, where, source, budget
        )
    else:
        safety, problem, checked_globals, checked_code = "unchecked: not SB2", None, (), None
    if checked_code is not None:
        carries_code = checked_code
    kind = classify_entry(type_text, carries_code, peek.builds_objects, peek.complete)
    entry = DataEntry(
        key=key,
        kind=kind,
        type_name=type_text,
        serialized_bytes=len(blob),
        globals=checked_globals or peek.globals,
        carries_code=carries_code,
        safety=safety,
        refused_global=refusal.global_name if refusal else None,
        refused_opcode=refusal.opcode if refusal else None,
        refused_offset=refusal.offset if refusal else None,
    )
    return entry, problem


def classify_entry(
    type_name: str | None, carries_code: bool, builds_objects: bool, complete: bool
) -> Kind:
    """The kind of a non-JSON ``data`` value from its ``str(type(value))`` text (pure).

    ``builds_objects``/``complete``: whether its pickle constructs anything, and was read whole
    (a complete pickle that builds nothing is a bare reference, i.e. a class).
    """
    text = type_name or ""
    if carries_code or text in ("<class 'function'>", "<class 'functools.partial'>"):
        return "function"
    if text.startswith(("<class 'gym.spaces.", "<class 'gymnasium.spaces.")):
        return "space"
    if _NUMPY_SCALAR_TYPE.fullmatch(text):
        return "numpy-scalar"
    if text in _CLASS_TYPES or (not text and complete and not builds_objects):
        # Without a :type: text, a pickle that only names a global is a reference to a class.
        return "class"
    return "other"


def _check_blob(
    blob: bytes, where: str, source: str | None, budget: _OpBudget
) -> tuple[str, str | None, tuple[str, ...], bool | None, UnsafeCheckpoint | None]:
    """(safety, problem, globals, carries_code, refusal) from the allowlist check; fails closed."""
    label = f"{source}:{where}" if source else where
    try:
        report = check_pickle(blob, source=label, limits=budget.limits, max_ops=budget.left)
        budget.left -= report.opcodes
    except CkptdError as err:
        if isinstance(err, BudgetExceeded) and err.limit == "max_opcodes":
            budget.left = 0  # spent: the file's other pickles are refused at their first opcode
        refusal = err if isinstance(err, UnsafeCheckpoint) else None
        return f"refused: {err.message}", f"{where}: {err.message}", (), None, refusal
    except Exception as err:  # a checker bug must not pass a file as safe
        return (
            "refused: checker failed",
            f"{where}: pickle check failed ({type(err).__name__}: {err})",
            (),
            None,
            None,
        )
    found = tuple(str(name) for name in getattr(report, "globals", ()))
    code = getattr(report, "carries_code", None)
    return "ok", None, found, bool(code) if code is not None else None, None
