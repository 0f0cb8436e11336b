"""The ``coordination:`` section: how several daemons share roots (README, "Several daemons on one root").

Kept apart from ``ckptd.config.spec`` (the key table) because the DSN is a secret: it is rendered
with its password hidden (``config show`` output ends up in tickets), and this module is the one
place that knows how libpq spells a password in both of its DSN forms.
"""

from __future__ import annotations

import re
from typing import Any, Final

from ckptd import units
from ckptd.config.model import CoordinationConfig
from ckptd.config.sections import Key, Section
from ckptd.config.values import Choice, Duration, Nullable, Text

# A node name goes into logs, status tables and a database column: a short, plain token.
_NODE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_NODE_RE: Final = re.compile(_NODE_PATTERN)

# libpq's two DSN forms: ``key=value`` pairs (a value may be single-quoted with backslash escapes)
# and URIs, where the password is the part after ``user:`` or a ``password=`` query parameter.
_KV_PASSWORD: Final = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URI_PASSWORD: Final = re.compile(r"(^[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*:)[^@/?#]*(@)")
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with any password replaced by ``***``, for logs, messages and ``config show``."""
    text = _URI_PASSWORD.sub(r"\1***\2", dsn)
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    if "://" not in text:
        text = _KV_PASSWORD.sub(r"\1***", text)
    return text


def _check_node(text: str) -> str | None:
    if _NODE_RE.fullmatch(text) is None:
        return (
            "expected a node name of letters, digits, '.', '_' or '-' (at most 63, starting with a"
            f" letter or digit), got {units.describe(text)}"
        )
    return None


def _check_dsn(text: str) -> str | None:
    if "\0" in text or "\n" in text:
        return "the DSN contains a NUL or newline character"
    return None


class Dsn(Text):
    """A libpq connection string or URI; rendered with its password hidden."""

    def __init__(self) -> None:
        super().__init__("a libpq connection string or postgresql:// URI", _check_dsn)

    def render(self, value: Any) -> Any:
        return redact_dsn(value)


COORDINATION_KEY: Final = Key(
    Section(
        CoordinationConfig,
        {
            "backend": Key(
                Choice("local", "postgres"),
                "local: one daemon per root, enforced by a lock file in the root's state"
                " directory; postgres: several daemons share roots through per-run leases.",
            ),
            "dsn": Key(
                Nullable(Dsn()),
                "postgres: libpq connection string or URI; null: $CKPTD_DSN (keeps the password"
                " out of this file).",
            ),
            "node": Key(
                Nullable(Text("a node name", _check_node, {"pattern": _NODE_PATTERN})),
                "This daemon's name, unique among the daemons sharing a root; null: the host name.",
            ),
            "lease": Key(
                Duration(1),
                "postgres: a run's owner renews within this; a dead owner's runs move to another"
                " node once it has passed.",
            ),
        },
    ),
    "How several daemons share roots.",
)
