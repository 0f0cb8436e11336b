"""The state of one config validation pass over PyYAML nodes, and reading mapping nodes.

Every issue carries its YAML path and line; issues are collected in a :class:`Walk`, never
raised, and a value that failed validation is :data:`INVALID`. The value types in
``ckptd.config.values``, ``ckptd.config.sections`` and ``ckptd.config.schedule`` read through it.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor

from ckptd import units
from ckptd.errors import ConfigIssue

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
