"""Exit codes of every ckptd command (README, "Commands")."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit codes (README, "Commands"): 0 ok, 1 some inputs failed, 2 bad usage or bad config."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130  # 128 + SIGINT
    PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for `... | head` cutting a writer off
