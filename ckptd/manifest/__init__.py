"""The per-run manifest and the per-root index: value types, their JSON, reading and writing."""
