"""Five-field crontab expressions as APScheduler triggers, with crontab's meaning.

The config validates a cron expression by building this very trigger, and the scheduler runs it, so
the validator cannot accept what the scheduler rejects. Crontab numbers weekdays from Sunday (0 and
7) and runs a job when day-of-month OR day-of-week matches if both are restricted; APScheduler
numbers from Monday and ANDs them, hence the translation here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger
    from apscheduler.triggers.cron import CronTrigger

_CRON_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering, 0 = Sunday
_APS_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # APScheduler's order


def _weekday_number(token: str) -> int:
    lowered = token.lower()
    if lowered in _CRON_WEEKDAYS:
        return _CRON_WEEKDAYS.index(lowered)
    if not token.isdigit() or int(token) > 7:
        raise ValueError(f"invalid day of week {token!r}")
    return int(token) % 7  # both 0 and 7 mean Sunday


def crontab_weekdays(field: str) -> str:
    """Translate a crontab day-of-week field (0/7 = Sunday, names allowed) into APScheduler's syntax.

    The result lists day names (``"mon,wed"``), so it means the same under any numbering.
    Raise ValueError on a malformed field.
    """
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        span, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"invalid step in day of week {item!r}")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, high = span.split("-", 1)
            first, last = _weekday_number(low), _weekday_number(high)
            if high == "7":
                last = 7  # "5-7" is Friday to Sunday
        else:
            first = _weekday_number(span)
            last = 6 if step_text else first  # "1/2" = from Monday every second day
        if last < first:
            raise ValueError(f"day of week range {item!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(name for name in _APS_WEEKDAYS if _CRON_WEEKDAYS.index(name) in days)


def cron_trigger(expression: str, timezone: str = "UTC") -> BaseTrigger:
    """A trigger for a five-field crontab expression, with crontab's weekday numbers and OR rule.

    Raise ValueError (with APScheduler's or our reason) when the expression is invalid.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    minute, hour, day, month, weekday = fields
    weekdays = crontab_weekdays(weekday)
    # APScheduler (and the asyncio it imports) only when a cron expression is built: a config
    # without one, and every command but the daemon, never needs them.
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    def build(day_field: str, weekday_field: str) -> CronTrigger:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day_field,
            month=month,
            day_of_week=weekday_field,
            timezone=timezone,
        )

    if day not in ("*", "?") and weekdays != "*":
        # crontab(5): "if both fields are restricted, the command runs when either field matches".
        return OrTrigger([build(day, "*"), build("*", weekdays)])
    return build(day, weekdays)
