"""Durations and sizes: parsing, the exact messages for junk, and formatting as an exact inverse."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptd import units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("0s", timedelta(0)),
        ("90", timedelta(seconds=90)),
        (90, timedelta(seconds=90)),
        (0, timedelta(0)),
        ("100m", timedelta(minutes=100)),
    ],
)
def test_parse_duration_accepts(text: str | int, expected: timedelta) -> None:
    assert units.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ten", 'expected a duration like 10s, got "ten"'),
        ("", 'expected a duration like 10s, got ""'),
        ("1.5h", 'expected a duration like 10s, got "1.5h"'),
        ("-5s", 'expected a duration like 10s, got "-5s"'),
        ("30m1h", 'expected a duration like 10s, got "30m1h"'),  # largest unit first
        ("1h1h", 'expected a duration like 10s, got "1h1h"'),
        ("10 s", 'expected a duration like 10s, got "10 s"'),
        ("10S", 'expected a duration like 10s, got "10S"'),
        ("²", 'expected a duration like 10s, got "²"'),
        ("h", 'expected a duration like 10s, got "h"'),
        (-5, "expected a duration like 10s, got -5 (negative)"),
        (1.5, "expected a duration like 10s, got 1.5"),
        (True, "expected a duration like 10s, got true"),
        (None, "expected a duration like 10s, got null"),
        ("99999999999999w", 'duration "99999999999999w" is too large'),
    ],
)
def test_parse_duration_rejects_with_message(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        units.parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50GiB", 50 * 1024**3),
        ("200MiB", 200 * 1024**2),
        ("512KiB", 512 * 1024),
        ("1TiB", 1024**4),
        ("123", 123),
        ("123B", 123),
        (123, 123),
        (0, 0),
    ],
)
def test_parse_size_accepts(text: str | int, expected: int) -> None:
    assert units.parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "50GB",
            'expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "50GB"; '
            "did you mean 50GiB? (binary units only: 1GiB = 1024MiB)",
        ),
        (
            "200 mb",
            'expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "200 mb"; '
            "did you mean 200MiB? (binary units only: 1GiB = 1024MiB)",
        ),
        ("1.5GiB", 'expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "1.5GiB"'),
        ("lots", 'expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "lots"'),
        ("-1", 'expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "-1"'),
        (
            "50gib",
            'expected a size like 200MiB (units B, KiB, MiB, GiB, TiB), got "50gib"; '
            "did you mean 50GiB? (binary units only: 1GiB = 1024MiB)",
        ),
        (-1, "expected a size like 200MiB, got -1 (negative)"),
        (2.5, "expected a size like 200MiB, got 2.5"),
        (False, "expected a size like 200MiB, got false"),
    ],
)
def test_parse_size_rejects_with_message(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        units.parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=10), "10s"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(days=7), "1w"),
        (timedelta(days=8, seconds=1), "1w1d1s"),
        (timedelta(seconds=10, microseconds=900_000), "10s"),  # fractions dropped
        (-timedelta(minutes=5), "-5m"),
    ],
)
def test_format_duration(duration: timedelta, text: str) -> None:
    assert units.format_duration(duration) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (1536, "1536B"),
        (2048, "2KiB"),
        (50 * 1024**3, "50GiB"),
        (1024**5, "1024TiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert units.format_size(size) == text


def test_format_size_rejects_negative() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        units.format_size(-1)


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_round_trip(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    text = units.format_duration(duration)
    assert re.fullmatch(units.DURATION_PATTERN, text)
    assert units.parse_duration(text) == duration


@given(st.integers(min_value=0, max_value=2**62))
def test_size_round_trip(size: int) -> None:
    text = units.format_size(size)
    assert re.fullmatch(units.SIZE_PATTERN, text)
    assert units.parse_size(text) == size


@given(st.text(max_size=12))
def test_duration_pattern_agrees_with_parser(text: str) -> None:
    """The JSON Schema pattern and the parser accept exactly the same strings."""
    try:
        units.parse_duration(text)
        parsed = True
    except ValueError:
        parsed = False
    # Python's $ also matches before a final newline; the parser does not, so compare with \Z.
    assert parsed == bool(re.match(units.DURATION_PATTERN.removesuffix("$") + r"\Z", text))


@given(st.text(alphabet="0123456789BKMGTiB ", max_size=8))
def test_size_pattern_agrees_with_parser(text: str) -> None:
    try:
        units.parse_size(text)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == bool(re.match(units.SIZE_PATTERN.removesuffix("$") + r"\Z", text))


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (3 * 1024**3 // 2, "1.5GiB"),
        (5 * 1024**4, "5TiB"),
    ],
)
def test_format_size_human(size: int, text: str) -> None:
    assert units.format_size_human(size) == text


def test_plural() -> None:
    assert units.plural(1, "root") == "1 root"
    assert units.plural(0, "run") == "0 runs"
    assert units.plural(1, "mismatch", "mismatches") == "1 mismatch"
    assert units.plural(2, "mismatch", "mismatches") == "2 mismatches"
