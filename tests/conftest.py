"""Fixtures shared across test modules."""

from tests.open_audit import opened

__all__ = ["opened"]
