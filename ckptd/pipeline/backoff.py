"""When a file whose conversion keeps failing the same way is tried again (pure).

A conversion whose own output fails re-verification (``VerifyError``: the source is fine, ckptd's
zip of it is not) fails the same way every time for the same bytes. Retried on every
reconciliation pass, one such 2 GB pickle would be converted again every hour, and at every start
for ever. It is recorded with a retry mark, the number of attempts on these bytes and the time
before which it is not tried again: ``FIRST_WAIT``, doubled at each failure up to ``MAX_WAIT``.
A file that changes (size or mtime) is a new file: tried at once, the count starting over.
Failures that pass (a full disk, a lock, a planted link) keep the plain retry mark and are tried
on the next pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ckptd.manifest.model import ManifestEntry
from ckptd.timefmt import format_utc, parse_utc

ATTEMPTS_KEY = "attempts"  # failed attempts on the bytes the entry describes
RETRY_AFTER_KEY = "retry_after"  # ISO-8601 UTC: not tried again before then
FIRST_WAIT = timedelta(hours=1)
MAX_WAIT = timedelta(days=1)


def backing_off(entry: ManifestEntry, now: datetime) -> bool:
    """Whether ``entry``'s retry waits until after ``now`` (an unreadable time never waits)."""
    text = entry.extra.get(RETRY_AFTER_KEY)
    if not isinstance(text, str):
        return False
    try:
        return now < parse_utc(text)
    except ValueError:
        return False


def next_try(
    previous: ManifestEntry | None, size: int, mtime_ns: int, now: datetime
) -> dict[str, Any]:
    """The extra fields of a failure at ``now`` of the file at (``size``, ``mtime_ns``), counting
    on from ``previous`` when it recorded a failure of these same bytes."""
    attempts = 1
    if previous is not None and (previous.size, previous.mtime_ns) == (size, mtime_ns):
        attempts += _attempts(previous.extra)
    wait = min(FIRST_WAIT * 2 ** min(attempts - 1, 16), MAX_WAIT)
    return {ATTEMPTS_KEY: attempts, RETRY_AFTER_KEY: format_utc(now + wait)}


def _attempts(extra: Mapping[str, Any]) -> int:
    value = extra.get(ATTEMPTS_KEY)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
