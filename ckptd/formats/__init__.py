"""Checkpoint formats: identification by content (never by name), readers and writers."""

from __future__ import annotations

import enum


class Format(enum.StrEnum):
    """The formats ckptd recognizes (the manifest's ``format`` values)."""

    SB2_PICKLE = "sb2-pickle"
    SB2_ZIP = "sb2-zip"
    SB3_ZIP = "sb3-zip"
    UNKNOWN = "unknown"
