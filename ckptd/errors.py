"""The one error hierarchy: every failure ckptd reports is a CkptdError with a message a person can act on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CkptdError(Exception):
    """Base of every error ckptd raises on purpose.

    ``str(error)`` is one line: the file it concerns (when there is one), then the problem.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, located by its YAML path and line (1-based, 0 if unknown)."""

    where: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        if not self.where:
            # A problem with the file as a whole (unreadable, not YAML, empty): no key to name.
            return f"line {self.line}: {self.message}" if self.line else self.message
        location = f"{self.where} (line {self.line})" if self.line else self.where
        return f"{location}: {self.message}"


class ConfigError(CkptdError, ValueError):
    """A config file (or a config value) is invalid; carries every issue found, not just the first."""

    def __init__(self, path: str | None, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        body = "; ".join(str(issue) for issue in self.issues) or "invalid config"
        super().__init__(body, path=path)

    def lines(self) -> list[str]:
        """One line per issue, each prefixed with the file, for stderr."""
        prefix = f"{self.path}: " if self.path else ""
        return [f"{prefix}{issue}" for issue in self.issues]


class FormatError(CkptdError):
    """A checkpoint is unreadable, truncated or structurally broken (not a safety problem)."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{message}{where}", path=path)


class UnsafeCheckpoint(CkptdError):
    """A checkpoint references code or constructs outside the allowlist; it is refused, never loaded."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        opcode: str | None = None,
        global_name: str | None = None,
    ) -> None:
        self.reason = reason
        self.offset = offset
        self.opcode = opcode
        self.global_name = global_name
        detail = []
        if opcode:
            detail.append(f"opcode {opcode}")
        if offset is not None:
            detail.append(f"offset {offset}")
        suffix = f" ({', '.join(detail)})" if detail else ""
        super().__init__(f"refused: {reason}{suffix}", path=path)


class HeldCheckpoint(CkptdError):
    """A readable, safe checkpoint ckptd keeps but will not convert until told something it lacks.

    ``note`` is the one line that says what is needed (docs/param-names.md), e.g. the parameter
    names of a pre-2.6 file of a custom policy.
    """

    def __init__(self, note: str, *, path: str | None = None) -> None:
        self.note = note
        super().__init__(f"held: {note}", path=path)


class VerifyError(FormatError):
    """A written or stored checkpoint failed verification (CRC, JSON, npy header, member list)."""


class ConversionError(CkptdError):
    """A conversion could not be completed; the original is left untouched."""


class ManifestError(CkptdError):
    """A manifest is unreadable or does not match its schema; it is rebuilt from the files."""


class UnsafePathError(CkptdError):
    """A path escapes its root, is a symlink where none is allowed, or is not a regular file."""


class FileChangedError(CkptdError):
    """A file changed between the time it was judged and the time it was to be acted on."""


class StateError(CkptdError):
    """A per-run state file (pins.json, the trash index) is unreadable or does not match its schema."""


class RunLockedError(StateError):
    """Another ckptd process holds the run's lock (prune, daemon, pin, restore never race)."""


class BudgetExceeded(UnsafeCheckpoint):
    """A checkpoint is over one of its per-file budgets (``limits:``); refused like an unsafe one.

    Counted budgets are checked by the parser itself; in the daemon, ``max_seconds`` and (through
    its address-space cap) ``max_memory`` are also enforced on the process parsing the file
    (``ckptd.isolation.supervisor``). ``limit`` is the key under ``limits:``.
    """

    def __init__(
        self,
        limit: str,
        value: object,
        found: str,
        *,
        path: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.limit = limit
        super().__init__(f"exceeds limits.{limit} ({value}): {found}", path=path, offset=offset)


def unexpected_text(err: BaseException) -> str:
    """One line for an exception ckptd did not raise on purpose (a bug or an unforeseen input):
    its type and the first line of its message, escaped so nothing from a file can break the line."""
    detail = str(err).splitlines()[0][:200] if str(err) else ""
    text = f"unexpected {type(err).__name__}" + (f": {detail}" if detail else "")
    return text.encode("ascii", "backslashreplace").decode("ascii")


class CoordinationError(CkptdError):
    """Daemons cannot agree on who serves what: the coordination backend is unusable or misused."""


class RootBusyError(CoordinationError):
    """Another daemon serves this root (``coordination.backend: local`` allows one per root)."""


class FencedError(CoordinationError):
    """This daemon no longer owns the run (its lease was lost or taken over): it must not act on it."""


class StoreUnavailable(CoordinationError):
    """The coordination database cannot be reached; shared runs wait until it is back."""
