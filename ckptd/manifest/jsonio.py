"""Strict JSON for ckptd's own files: deterministic dumping, top-level object loading, typed field checks.

Shared by the run manifest and the root index. Every problem is a one-line ManifestError naming the
file and the JSON location. Pure: callers read and write the bytes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ckptd.errors import ManifestError
from ckptd.timefmt import parse_utc

JsonDict = dict[str, Any]


def json_extras(obj: JsonDict, known: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in known}


def dump_json(obj: JsonDict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


def load_json_object(data: bytes | str, source: str) -> JsonDict:
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"not valid JSON ({err})", path=source) from err
    if not isinstance(obj, dict):
        raise ManifestError(
            f"expected a JSON object at the top, got {type(obj).__name__}", path=source
        )
    return obj


class JsonChecker:
    """Typed field access that raises ManifestError naming the JSON location."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"{where}: {message}" if where else message, path=self.source)

    def get(self, obj: object, key: str, where: str, required: bool) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(where, "expected an object")
        if key not in obj:
            if required:
                raise self.fail(_join(where, key), "missing")
            return None
        return obj[key]

    def equal(self, obj: object, key: str, expected: str, where: str) -> None:
        value = self.get(obj, key, where, True)
        if value != expected:
            raise self.fail(_join(where, key), f"expected {expected!r}, got {value!r}")

    def text(self, obj: object, key: str, where: str, *, required: bool = True) -> str:
        value = self.get(obj, key, where, required)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.fail(_join(where, key), f"expected a string, got {value!r}")
        return value

    def optional_text(self, obj: object, key: str, where: str) -> str | None:
        value = self.get(obj, key, where, False)
        if value is not None and not isinstance(value, str):
            raise self.fail(_join(where, key), f"expected a string or null, got {value!r}")
        return value

    def integer(self, obj: object, key: str, where: str, *, nullable: bool = False) -> int | None:
        value = self.get(obj, key, where, not nullable)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(_join(where, key), f"expected a non-negative integer, got {value!r}")
        return value

    def time(self, obj: object, key: str, where: str) -> datetime:
        text = self.text(obj, key, where)
        try:
            return parse_utc(text)
        except ValueError as err:
            raise self.fail(_join(where, key), f"bad timestamp {text!r}") from err

    def array(self, obj: object, key: str, where: str, *, required: bool = True) -> list[Any]:
        value = self.get(obj, key, where, required)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self.fail(_join(where, key), "expected a list")
        return value

    def strings(
        self, obj: object, key: str, where: str, *, nullable: bool = False
    ) -> tuple[str, ...] | None:
        value = self.get(obj, key, where, not nullable)
        if value is None and nullable:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(_join(where, key), "expected a list of strings")
        return tuple(value)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
