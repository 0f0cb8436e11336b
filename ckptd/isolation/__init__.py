"""Parsing checkpoints in child processes with a deadline and a memory cap."""
