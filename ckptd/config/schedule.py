"""The schedule value type: an interval, a five-field cron expression, or null (the job is off)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

import yaml

from ckptd import units
from ckptd.config.cron import cron_trigger
from ckptd.config.model import ScheduleSpec
from ckptd.config.values import ValueType
from ckptd.config.walk import INVALID, Walk

_CRON_PATTERN: Final = r"^\S+(\s+\S+){4}$"


def check_cron(expression: str) -> str | None:
    """Why a five-field crontab expression is invalid, or None.

    Validated by building the very trigger the daemon will run (``ckptd.config.cron.cron_trigger``,
    which gives crontab's meaning to weekday numbers and to day-of-month OR day-of-week), so the
    validator cannot accept what the scheduler rejects.
    """
    fields = expression.split()
    if len(fields) != 5:
        return f"a cron expression needs five fields, got {len(fields)} in {units.describe(expression)}"
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
