"""Config sections: mappings with fixed keys that build a frozen model, and the ``policies`` map.

Unknown keys are errors (with a suggestion for a near miss); omitted keys take the model's default,
so the model is the one place defaults live.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from ckptd.config.model import Policy
from ckptd.config.values import ValueType
from ckptd.config.walk import INVALID, Walk, entries, join_key, suggest


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
