"""Value types for single config values and lists: each reads YAML nodes, describes itself in JSON Schema and renders back."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from ckptd import units
from ckptd.config.walk import INVALID, Walk, suggest

_NULL_TAG: Final = "tag:yaml.org,2002:null"


class ValueType(ABC):
    """How one kind of value is read from YAML, described in JSON Schema and rendered back."""

    @abstractmethod
    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        """The model value, or INVALID after reporting why."""

    @abstractmethod
    def schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) for this value."""

    def render(self, value: Any) -> Any:
        """The model value as a user would write it in YAML (and JSON)."""
        return value


class Integer(ValueType):
    def __init__(self, minimum: int = 0, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        expected = f"a whole number >= {self.minimum}"
        if self.maximum is not None:
            expected = f"a whole number from {self.minimum} to {self.maximum}"
        value = walk.scalar(node, where, expected)
        if value is INVALID:
            return INVALID
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < self.minimum
            or (self.maximum is not None and value > self.maximum)
        ):
            return walk.report(where, f"expected {expected}, got {units.describe(value)}", node)
        return value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.minimum}
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


class Const(ValueType):
    """A key with exactly one accepted value (``version: 1``)."""

    def __init__(self, value: int, message: str) -> None:
        self.value = value
        self.message = message

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        value = walk.scalar(node, where, str(self.value))
        if value is INVALID:
            return INVALID
        if isinstance(value, bool) or not isinstance(value, int) or value != self.value:
            return walk.report(where, self.message.format(got=units.describe(value)), node)
        return value

    def schema(self) -> dict[str, Any]:
        return {"const": self.value}


class Boolean(ValueType):
    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        value = walk.scalar(node, where, "true or false")
        if value is INVALID:
            return INVALID
        if not isinstance(value, bool):
            return walk.report(where, f"expected true or false, got {units.describe(value)}", node)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


class Fraction(ValueType):
    """A share in (0, 1]."""

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        expected = "a number greater than 0 and at most 1"
        value = walk.scalar(node, where, expected)
        if value is INVALID:
            return INVALID
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            return walk.report(where, f"expected {expected}, got {units.describe(value)}", node)
        return float(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "exclusiveMinimum": 0, "maximum": 1}


class Choice(ValueType):
    def __init__(self, *options: str) -> None:
        self.options = options

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        expected = f"one of {', '.join(self.options)}"
        value = walk.scalar(node, where, expected)
        if value is INVALID:
            return INVALID
        if value not in self.options or not isinstance(value, str):
            hint = suggest(value, self.options) if isinstance(value, str) else ""
            return walk.report(
                where, f"expected {expected}, got {units.describe(value)}{hint}", node
            )
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.options)}


class Duration(ValueType):
    """``10s``/``1h30m``/int seconds -> timedelta; ``minimum`` in seconds."""

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        value = walk.scalar(node, where, units.DURATION_HINT)
        if value is INVALID:
            return INVALID
        try:
            duration = units.parse_duration(value)
        except ValueError as err:
            return walk.report(where, str(err), node)
        if duration < timedelta(seconds=self.minimum):
            return walk.report(
                where,
                f"expected a duration of at least {units.format_duration(timedelta(seconds=self.minimum))}"
                f" like 10s, got {units.describe(value)}",
                node,
            )
        return duration

    def schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": self.minimum},
                {"type": "string", "pattern": units.DURATION_PATTERN},
            ]
        }

    def render(self, value: Any) -> Any:
        return units.format_duration(value)


class Size(ValueType):
    """``200MiB``/int bytes -> int; ``minimum`` in bytes."""

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        value = walk.scalar(node, where, units.SIZE_HINT)
        if value is INVALID:
            return INVALID
        try:
            size = units.parse_size(value)
        except ValueError as err:
            return walk.report(where, str(err), node)
        if size < self.minimum:
            return walk.report(
                where,
                f"expected a size of at least {units.format_size(self.minimum)} like 200MiB,"
                f" got {units.describe(value)}",
                node,
            )
        return size

    def schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": self.minimum},
                {"type": "string", "pattern": units.SIZE_PATTERN},
            ]
        }

    def render(self, value: Any) -> Any:
        return units.format_size(value)


TextCheck = Callable[[str], str | None]  # returns a problem message, or None when the text is fine


class Text(ValueType):
    """A non-empty string, with an optional check returning a problem message."""

    def __init__(
        self,
        expected: str,
        check: TextCheck | None = None,
        schema_extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.expected = expected
        self.check = check
        self.schema_extra = dict(schema_extra or {})

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        value = walk.scalar(node, where, self.expected)
        if value is INVALID:
            return INVALID
        if not isinstance(value, str) or not value:
            return walk.report(
                where, f"expected {self.expected}, got {units.describe(value)}", node
            )
        problem = self.check(value) if self.check is not None else None
        if problem is not None:
            return walk.report(where, problem, node)
        return self.convert(value, walk)

    def convert(self, value: str, walk: Walk) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, **self.schema_extra}


class RootPath(Text):
    """A directory path; relative paths resolve against the config file's directory."""

    def __init__(self) -> None:
        super().__init__("a directory path", check_no_nul)

    def convert(self, value: str, walk: Walk) -> Any:
        path = Path(value).expanduser()
        # normpath, not resolve(): validation does no I/O, and the root may not exist yet.
        return Path(os.path.normpath(walk.base_dir / path))

    def render(self, value: Any) -> Any:
        return str(value)


class Nullable(ValueType):
    """``null`` (off) or the inner type; ``zero_is_null`` also turns a zero duration off."""

    def __init__(self, inner: ValueType, *, zero_is_null: bool = False) -> None:
        self.inner = inner
        self.zero_is_null = zero_is_null

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return None
        value = self.inner.parse(node, walk, where)
        if self.zero_is_null and value == timedelta(0):
            return None
        return value

    def schema(self) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(), {"type": "null"}]}

    def render(self, value: Any) -> Any:
        return None if value is None else self.inner.render(value)


ListCheck = Callable[[Sequence[tuple[int, Any]], Walk, str], None]


class ListOf(ValueType):
    def __init__(
        self, item: ValueType, *, min_items: int = 0, check: ListCheck | None = None
    ) -> None:
        self.item = item
        self.min_items = min_items
        self.check = check

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        expected = "a non-empty list" if self.min_items else "a list"
        if not isinstance(node, yaml.SequenceNode):
            if isinstance(node, yaml.MappingNode):
                return walk.report(where, f"expected {expected}, got a mapping", node)
            value = walk.scalar(node, where, expected)
            if value is INVALID:
                return INVALID
            return walk.report(where, f"expected {expected}, got {units.describe(value)}", node)
        if len(node.value) < self.min_items:
            return walk.report(where, f"expected {expected}, got an empty list", node)
        parsed: list[tuple[int, Any]] = []
        for index, item_node in enumerate(node.value):
            item_where = f"{where}[{index}]"
            walk.visit(item_where, item_node)
            parsed.append((index, self.item.parse(item_node, walk, item_where)))
        valid = [(index, value) for index, value in parsed if value is not INVALID]
        if self.check is not None:
            self.check(valid, walk, where)
        if len(valid) != len(parsed):
            return INVALID
        return tuple(value for _, value in valid)

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema

    def render(self, value: Any) -> Any:
        return [self.item.render(item) for item in value]


def check_no_nul(text: str) -> str | None:
    return "contains a NUL character" if "\0" in text else None
