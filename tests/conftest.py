"""Fixtures shared across test modules."""

from collections.abc import Iterator

import pytest

from tests.daemon_harness import NotifySocket
from tests.open_audit import opened

__all__ = ["notify_socket", "opened"]


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A fake systemd notify socket for a daemon under test (tests/daemon_harness.py)."""
    sock = NotifySocket()
    yield sock
    sock.close()
