"""Operator commands over runs: status, scrub, quarantine, inspect and verify."""
