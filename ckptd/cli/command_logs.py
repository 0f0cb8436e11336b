"""The commands that act on runs log their events as the daemon does (docs/operations.md, "Logs and
metrics"): in the config's ``log:`` format and level, on stderr, with the node's name.

Only the events on files (``trashed``, ``deleted``, ``restored``...) and warnings and errors pass:
the command prints its own account of the rest on stdout, where ``--json`` stays one document.
Without a config (a command given a run directory alone) the defaults apply, as for the daemon.
The root logger is put back as it was when the command ends, so a program that calls
``ckptd.cli.main.main`` keeps its own logging.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ckptd.config.model import Config, LogConfig
from ckptd.coordination.local import node_name
from ckptd.logs.configure import configure_logging


@contextlib.contextmanager
def command_logging(config: Config | None) -> Iterator[None]:
    """Log the command's events as ``config`` (or the defaults) asks while the block runs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    node = node_name(config.coordination.node if config is not None else None)
    configure_logging(
        config.log if config is not None else LogConfig(), node=node, events_only=True
    )
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.flush()
        root.handlers[:] = handlers
        root.setLevel(level)
