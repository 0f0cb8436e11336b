"""ISO 8601 UTC timestamps as ckptd writes them in manifests, indexes and state files (``...Z``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def format_utc(moment: datetime) -> str:
    """``2026-11-23T20:00:00Z``; microseconds only when the moment has them. Naive input is refused."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: ckptd only handles aware UTC times")
    moment = moment.astimezone(UTC)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


_EPOCH = datetime(1970, 1, 1)  # naive on purpose: only used to build UTC text


# The date text of each day seen (checkpoints of a pass share a few hundred days at most).
_DAYS: dict[int, str] = {}
_MAX_DAYS = 4096


def format_utc_ns(nanoseconds: int) -> str:
    """``format_utc(from_ns(nanoseconds))`` at a fifth of the cost (prune --json: once per
    decision): the date text is made once per day, the time of day from integers."""
    seconds, remainder = divmod(nanoseconds, 1_000_000_000)
    day, second = divmod(seconds, 86_400)
    date = _DAYS.get(day)
    if date is None:
        if len(_DAYS) >= _MAX_DAYS:
            _DAYS.clear()
        date = _DAYS[day] = (_EPOCH + timedelta(days=day)).date().isoformat()
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    micro = remainder // 1000
    two = _TWO_DIGITS  # an index instead of a format spec per field
    if micro:
        return f"{date}T{two[hour]}:{two[minute]}:{two[second]}.{micro:06d}Z"
    return f"{date}T{two[hour]}:{two[minute]}:{two[second]}Z"


_TWO_DIGITS = tuple(f"{number:02d}" for number in range(60))


def parse_utc(text: str) -> datetime:
    """Parse a timestamp written by :func:`format_utc` (or any ISO 8601 text with an offset).

    Raises ValueError for junk or for a time without an offset (it would be ambiguous).
    """
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return moment.astimezone(UTC)


def from_ns(nanoseconds: int) -> datetime:
    """An aware UTC datetime from ``st_mtime_ns`` (microsecond precision, as datetime allows)."""
    seconds, remainder = divmod(nanoseconds, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=remainder // 1000)
