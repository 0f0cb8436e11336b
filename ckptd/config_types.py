"""Value types for the config key table: each reads YAML nodes, describes itself in JSON Schema and renders back.

The types walk PyYAML nodes rather than loaded Python values so every issue carries its YAML path
and line; issues are collected in a :class:`Walk`, never raised. ``ckptd.config_spec`` composes
these types into the one table of config keys. This module gathers them in one place; they live in
``ckptd.config_walk`` (the validation pass), ``ckptd.config_values`` (single values and lists),
``ckptd.config_sections`` (sections and the policy map) and ``ckptd.config_schedule`` (schedules).
"""

from __future__ import annotations

from ckptd.config_schedule import Schedule, check_cron
from ckptd.config_sections import Key, PolicyMap, Section, SectionCheck
from ckptd.config_values import (
    Boolean,
    Choice,
    Const,
    Duration,
    Fraction,
    Integer,
    ListCheck,
    ListOf,
    Nullable,
    RootPath,
    Size,
    Text,
    TextCheck,
    ValueType,
    check_no_nul,
)
from ckptd.config_walk import INVALID, Walk, entries, join_key, line_of, suggest

__all__ = [
    "INVALID",
    "Boolean",
    "Choice",
    "Const",
    "Duration",
    "Fraction",
    "Integer",
    "Key",
    "ListCheck",
    "ListOf",
    "Nullable",
    "PolicyMap",
    "RootPath",
    "Schedule",
    "Section",
    "SectionCheck",
    "Size",
    "Text",
    "TextCheck",
    "ValueType",
    "Walk",
    "check_cron",
    "check_no_nul",
    "entries",
    "join_key",
    "line_of",
    "suggest",
]
