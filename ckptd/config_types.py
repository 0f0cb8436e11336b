"""Value types for the config key table: each reads YAML nodes, describes itself in JSON Schema and renders back.

The types walk PyYAML nodes rather than loaded Python values so every issue carries its YAML path
and line; issues are collected in a :class:`Walk`, never raised. ``ckptd.config_spec`` composes
these types into the one table of config keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor

from ckptd import units
from ckptd.config import Policy, ScheduleSpec
from ckptd.errors import ConfigIssue

_NULL_TAG: Final = "tag:yaml.org,2002:null"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_LAST_COMPONENT_RE: Final = re.compile(r"(\.[^.\[]*|\[\d+\])$")  # ".key" or "[3]" at the end


class _Invalid(enum.Enum):
    """Marks a value that failed validation (its issue is already recorded)."""

    INVALID = "invalid"


INVALID: Final = _Invalid.INVALID


def line_of(node: yaml.Node) -> int:
    """1-based line of a node; 0 for nodes built from a Python mapping (they have no marks)."""
    mark = node.start_mark
    return mark.line + 1 if mark is not None else 0


def join_key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def suggest(word: str, choices: Sequence[str]) -> str:
    """``; did you mean "policy"?`` for a near miss, else nothing."""
    by_folded = {choice.casefold(): choice for choice in choices}
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=0.6)
    return f'; did you mean "{by_folded[close[0]]}"?' if close else ""


class Walk:
    """State of one validation pass: the issues found, where each key was, and shared context."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = (
            base_dir  # relative root paths resolve against this (the config's directory)
        )
        self.issues: list[ConfigIssue] = []
        self.lines: dict[str, int] = {}
        # Names roots may refer to; the built-in default unless a `policies` section says otherwise.
        # None when `policies` is malformed, so references are not also reported as unknown.
        self.policy_names: frozenset[str] | None = frozenset({"default"})
        self._constructor = SafeConstructor()

    def visit(self, where: str, node: yaml.Node) -> None:
        self.lines.setdefault(where, line_of(node))

    def line(self, where: str) -> int:
        """Line of ``where``, or of its nearest visited parent (for keys that were omitted)."""
        while where not in self.lines:
            if not where:
                return 0
            parent = _LAST_COMPONENT_RE.sub("", where)
            where = parent if parent != where else ""
        return self.lines[where]

    def report(self, where: str, message: str, node: yaml.Node | None = None) -> _Invalid:
        line = line_of(node) if node is not None else self.line(where)
        self.issues.append(ConfigIssue(where=where, message=message, line=line))
        return INVALID

    def scalar(self, node: yaml.Node, where: str, expected: str) -> Any:
        """The Python value of a scalar node, or INVALID (reported) for lists, mappings and bad tags."""
        if isinstance(node, yaml.MappingNode):
            return self.report(where, f"expected {expected}, got a mapping", node)
        if isinstance(node, yaml.SequenceNode):
            return self.report(where, f"expected {expected}, got a list", node)
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            return self.report(where, f"unreadable value: {problem}", node)

    def flatten(self, node: yaml.MappingNode, where: str) -> bool:
        """Apply YAML merge keys (``<<: *base``) in place; False (reported) if they are malformed."""
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err)
            self.report(where, f"bad merge key: {problem}", node)
            return False
        return True


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
    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        expected = f"a whole number >= {self.minimum}"
        value = walk.scalar(node, where, expected)
        if value is INVALID:
            return INVALID
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            return walk.report(where, f"expected {expected}, got {units.describe(value)}", node)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum}


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


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its value type, what it does, and whether it must be given."""

    type: ValueType
    description: str
    required: bool = False


# Called with the valid (and defaulted) values of a section; invalid ones are absent.
SectionCheck = Callable[[Mapping[str, Any], Walk, str], None]


class Section(ValueType):
    """A mapping with fixed keys that builds one frozen model dataclass; unknown keys are errors."""

    def __init__(
        self,
        model: type[Any],
        keys: Mapping[str, Key],
        *,
        check: SectionCheck | None = None,
        parse_first: Sequence[str] = (),
    ) -> None:
        self.model = model
        self.keys = dict(keys)
        self.check = check
        self.parse_first = tuple(
            parse_first
        )  # keys whose context others need (policies, for roots)

    def default(self, name: str) -> Any:
        """The model's default for a key: the model is the one place defaults live."""
        field = {field.name: field for field in dataclasses.fields(self.model)}[name]
        if field.default is not dataclasses.MISSING:
            return field.default
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        raise KeyError(f"{self.model.__name__}.{name} has no default")

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        return self.parse_with(node, walk, where, {})

    def parse_with(self, node: yaml.Node, walk: Walk, where: str, extra: Mapping[str, Any]) -> Any:
        """Like parse, with extra constructor arguments that are not keys (a policy's name)."""
        given = entries(node, walk, where, "a mapping")
        if given is None:
            return INVALID
        valid = True
        for name, (key_node, _) in given.items():
            if name not in self.keys:
                walk.report(
                    join_key(where, name), f"unknown key{suggest(name, list(self.keys))}", key_node
                )
                valid = False
        values: dict[str, Any] = {}
        order = [*self.parse_first, *(name for name in self.keys if name not in self.parse_first)]
        for name in order:
            key = self.keys[name]
            key_where = join_key(where, name)
            if name in given:
                value_node = given[name][1]
                walk.visit(key_where, value_node)
                value = key.type.parse(value_node, walk, key_where)
                if value is INVALID:
                    valid = False
                else:
                    values[name] = value
            elif key.required:
                walk.report(key_where, "required key is missing", node)
                valid = False
            else:
                values[name] = self.default(name)
        if self.check is not None:
            issues_before = len(walk.issues)
            self.check(values, walk, where)
            valid = valid and len(walk.issues) == issues_before
        if not valid:
            return INVALID
        return self.model(**values, **extra)

    def schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for name, key in self.keys.items():
            prop = {**key.type.schema(), "description": key.description}
            if not key.required:
                prop["default"] = key.type.render(self.default(name))
            properties[name] = prop
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        required = [name for name, key in self.keys.items() if key.required]
        if required:
            schema["required"] = required
        return schema

    def render(self, value: Any) -> Any:
        return {name: key.type.render(getattr(value, name)) for name, key in self.keys.items()}


def entries(
    node: yaml.Node, walk: Walk, where: str, expected: str
) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """The ``key -> (key node, value node)`` of a mapping node, merges applied, or None (reported).

    Duplicate keys are reported (PyYAML would silently keep the last); a key overriding one
    brought in by a merge key is not a duplicate.
    """
    if not isinstance(node, yaml.MappingNode):
        if isinstance(node, yaml.SequenceNode):
            walk.report(where, f"expected {expected}, got a list", node)
            return None
        value = walk.scalar(node, where, expected)
        if value is not INVALID:
            walk.report(where, f"expected {expected}, got {units.describe(value)}", node)
        return None
    ok = True
    seen: set[str] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
            continue
        if key_node.value in seen:
            walk.report(join_key(where, key_node.value), "duplicate key", key_node)
            ok = False
        seen.add(key_node.value)
    if not walk.flatten(node, where):
        return None
    result: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = walk.scalar(key_node, where, "a key")
        if key is INVALID:
            ok = False
        elif not isinstance(key, str) or not key:
            walk.report(where, f"keys must be non-empty text, got {units.describe(key)}", key_node)
            ok = False
        else:
            result[key] = (key_node, value_node)  # last wins: explicit keys follow merged ones
    return result if ok else None


class PolicyMap(ValueType):
    """``policies``: name -> policy; parsed before roots so roots can name them."""

    def __init__(self, policy: Section) -> None:
        self.policy = policy

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        given = entries(node, walk, where, "a mapping of policy names to policies")
        if given is None:
            walk.policy_names = None
            return INVALID
        walk.policy_names = frozenset(given) or None  # none defined: say that once, not per root
        if not given:
            return walk.report(
                where, "define at least one policy, or omit policies for the built-in default", node
            )
        policies: dict[str, Policy] = {}
        valid = True
        for name, (_, value_node) in given.items():
            policy_where = join_key(where, name)
            walk.visit(policy_where, value_node)
            policy = self.policy.parse_with(value_node, walk, policy_where, {"name": name})
            if policy is INVALID:
                valid = False
            else:
                policies[name] = policy
        return policies if valid else INVALID

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": self.policy.schema(),
            "propertyNames": {"minLength": 1},
            "minProperties": 1,
        }

    def render(self, value: Any) -> Any:
        return {name: self.policy.render(policy) for name, policy in value.items()}


_CRON_PATTERN: Final = r"^\S+(\s+\S+){4}$"


def check_cron(expression: str) -> str | None:
    """Why a five-field crontab expression is invalid, or None.

    Validated by building the very trigger the daemon will run (``ckptd.scheduling.cron_trigger``,
    which gives crontab's meaning to weekday numbers and to day-of-month OR day-of-week), so the
    validator cannot accept what the scheduler rejects.
    """
    fields = expression.split()
    if len(fields) != 5:
        return f"a cron expression needs five fields, got {len(fields)} in {units.describe(expression)}"
    # Imported here: only configs with cron schedules pay for loading APScheduler.
    from ckptd.scheduling import cron_trigger

    try:
        cron_trigger(" ".join(fields))
    except ValueError as err:
        return f"invalid cron expression {units.describe(expression)}: {err}"
    return None


class Schedule(ValueType):
    """An interval (``15m``), a five-field cron expression, or null (the job is off)."""

    expected: Final = "an interval like 15m, a five-field cron expression, or null"

    def parse(self, node: yaml.Node, walk: Walk, where: str) -> Any:
        value = walk.scalar(node, where, self.expected)
        if value is INVALID:
            return INVALID
        if value is None:
            return None
        if isinstance(value, str) and len(value.split()) > 1:
            problem = check_cron(value)
            if problem is not None:
                return walk.report(where, problem, node)
            return ScheduleSpec(cron=" ".join(value.split()))
        try:
            interval = units.parse_duration(value)
        except ValueError:
            return walk.report(
                where, f"expected {self.expected}, got {units.describe(value)}", node
            )
        if interval <= timedelta(0):
            return walk.report(
                where, "an interval must be longer than 0s (null turns the job off)", node
            )
        return ScheduleSpec(interval=interval)

    def schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": units.DURATION_PATTERN},
                {"type": "string", "pattern": _CRON_PATTERN},
                {"type": "null"},
            ]
        }

    def render(self, value: Any) -> Any:
        if value is None:
            return None
        if value.cron is not None:
            return value.cron
        return units.format_duration(value.interval)


def check_no_nul(text: str) -> str | None:
    return "contains a NUL character" if "\0" in text else None
