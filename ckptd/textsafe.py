"""Strings from files, names and pickles shown literally: control characters become visible escapes.

A file name, a module name inside a pickle or a refusal reason quoting one is attacker-chosen text.
Printed raw it can set the terminal's title, clear or recolour the screen, hide text behind a bidi
override or forge extra log lines. :func:`shown` is the one function every text output (CLI and log
lines) passes such strings through: C0 and C1 controls, DEL, format characters (bidi overrides,
zero-width characters), line/paragraph separators and lone surrogates are written as ``\\x1b``,
``\\u202e``, ``\\udc80``-style escapes; everything else is unchanged. Pure; see ``docs/security.md``
(Output that came from a file).
"""

from __future__ import annotations

import unicodedata

# Control (Cc), format (Cf: bidi overrides, zero-width joiners, BOM), surrogate (Cs) and
# line/paragraph separator (Zl, Zp) characters.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(text: object) -> str:
    """``str(text)`` with every character that could act on a terminal or a log reader escaped."""
    value = text if isinstance(text, str) else str(text)
    if value.isprintable():  # the common case: no control, format or surrogate characters
        return value
    return "".join(
        _escape(char) if unicodedata.category(char) in _ESCAPED_CATEGORIES else char
        for char in value
    )
