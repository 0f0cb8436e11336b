"""Durations (``10s``, ``1h30m``, ``7d``) and byte sizes (``200MiB``, ``50GiB``): parse and format.

Pure functions, no I/O. Parsers raise ``ValueError`` with a message meant for a person
(``expected a duration like 10s, got "ten"``); the config loader attaches the YAML path and line,
and command-line callers can wrap it in their own error. The formatters are exact inverses of the
parsers for whole seconds and whole bytes, so ``config show`` prints what a user would write.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Final

DURATION_HINT: Final = "a duration like 10s"
SIZE_HINT: Final = "a size like 200MiB"

# Units largest first: parsing requires this order, and formatting emits it.
_DURATION_UNITS: Final = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_SIZE_UNITS: Final = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("B", 1))

# Shared with the JSON Schema (ckptd.config.spec) so the schema and the parser accept the same text.
# Either bare seconds ("90") or at least one unit component, each unit at most once, largest first.
DURATION_PATTERN: Final = (
    r"^(?:[0-9]+|(?=[0-9])(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?)$"
)
SIZE_PATTERN: Final = r"^[0-9]+(?:B|KiB|MiB|GiB|TiB)?$"

_DURATION_RE: Final = re.compile(
    r"(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?"
)
_BARE_NUMBER_RE: Final = re.compile(r"[0-9]+")  # not str.isdigit: that accepts "²"
_SIZE_RE: Final = re.compile(r"([0-9]+)(B|KiB|MiB|GiB|TiB)?")
_SIZE_FACTORS: Final = dict(_SIZE_UNITS)


def describe(value: object) -> str:
    """How a config value is shown in a message: strings quoted, YAML spellings for the rest."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


def parse_duration(value: str | int) -> timedelta:
    """``"10s"``, ``"15m"``, ``"6h"``, ``"7d"``, ``"2w"``, ``"1h30m"``, ``"90"`` or ``90`` (seconds).

    Units must appear largest first and at most once; no fractions, signs or spaces.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        # bool is an int subclass, and YAML gives floats for "1.5": neither is a duration.
        raise ValueError(f"expected {DURATION_HINT}, got {describe(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {DURATION_HINT}, got {value} (negative)")
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(value)
        if _BARE_NUMBER_RE.fullmatch(value):
            seconds = int(value)
        elif value and match is not None:
            seconds = sum(
                int(amount) * factor
                for amount, (_, factor) in zip(match.groups(), _DURATION_UNITS, strict=True)
                if amount is not None
            )
        else:
            raise ValueError(f"expected {DURATION_HINT}, got {describe(value)}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {describe(value)} is too large") from None


def format_duration(duration: timedelta) -> str:
    """The shortest exact spelling: ``timedelta(minutes=90)`` -> ``"1h30m"``, zero -> ``"0s"``.

    Fractions of a second are dropped (config values are whole seconds; ages need no more).
    """
    if duration < timedelta(0):
        return "-" + format_duration(-duration)
    remaining = duration.days * 86400 + duration.seconds
    if remaining == 0:
        return "0s"
    parts = []
    for unit, factor in _DURATION_UNITS:
        amount, remaining = divmod(remaining, factor)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def parse_size(value: str | int) -> int:
    """``"50GiB"``, ``"200MiB"``, ``"512KiB"``, ``"1TiB"``, ``"123B"``, ``"123"`` or ``123`` -> bytes.

    Only binary units: ``50GB`` is refused rather than guessed at (it could mean 50·10⁹ or
    50·2³⁰ bytes), with the binary spelling suggested (``did you mean 50GiB?``).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected {SIZE_HINT}, got {describe(value)}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {SIZE_HINT}, got {value} (negative)")
        return value
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"expected {SIZE_HINT} (units B, KiB, MiB, GiB, TiB), got {describe(value)}"
            + _size_suggestion(value)
        )
    amount, unit = match.groups()
    return int(amount) * _SIZE_FACTORS[unit or "B"]


_NEAR_SIZE_RE: Final = re.compile(r"([0-9]+)\s*([kKmMgGtT])(?:i?[bB])?")


def _size_suggestion(text: str) -> str:
    """``; did you mean 50GiB? (ckptd takes binary units only)`` for ``50GB``, ``50 gib``, ``50G``."""
    near = _NEAR_SIZE_RE.fullmatch(text.strip())
    if near is None:
        return ""
    amount, letter = near.groups()
    return f"; did you mean {amount}{letter.upper()}iB? (binary units only: 1GiB = 1024MiB)"


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs``; ``many`` for irregular plurals (``1 policy``, ``2 policies``)."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def format_size(size: int) -> str:
    """The largest binary unit that divides ``size`` exactly: 53687091200 -> ``"50GiB"``.

    Exact on purpose, so the text parses back to the same number (``1536`` -> ``"1536B"``).
    """
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {size}")
    if size == 0:
        return "0B"
    for unit, factor in _SIZE_UNITS:
        if size % factor == 0:
            return f"{size // factor}{unit}"
    raise AssertionError("unreachable: every size is a whole number of bytes")  # pragma: no cover


def format_size_human(size: int) -> str:
    """Measured sizes for people: one decimal when not a whole unit (``1.4GiB``), exact below 1KiB.

    Not parseable back in general; use :func:`format_size` for config values and rule reasons.
    """
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {size}")
    for unit, factor in _SIZE_UNITS[:-1]:
        if size >= factor:
            return f"{size // factor}{unit}" if size % factor == 0 else f"{size / factor:.1f}{unit}"
    return f"{size}B"
