"""Logging for the daemon and the commands that act on runs: one line per event on stderr, as text
or JSON, level from the config.

Text: ``2026-12-03T06:00:00Z INFO ckptd.pipeline.batch run=ppo-1 file=x.pkl converted ...``.
JSON: one object per line with ``ts``, ``level``, ``logger``, ``msg``, ``run``, ``file``, ``node``
(``event`` for an event on a file, ``exc`` when an exception is attached). ``run``/``file`` come from ``extra={"run": ..., "file": ...}``.

Messages name files and quote pickles (attacker-chosen text), so the text format passes the message,
``run`` and ``file`` through :func:`ckptd.textsafe.shown` (control characters, newlines included,
become visible escapes: no terminal escape and no forged log line), and the JSON format escapes
everything outside ASCII (``ensure_ascii``: no raw C1 control, bidi override or lone surrogate).

journald (or whoever reads stderr) splits on newlines, so a traceback is kept on one line: text
output shows the exception's type, message and innermost frame; the full traceback is printed only
at ``debug`` level. APScheduler's executor logs every failing job with a traceback although
ckptd's job listener already reports it in one line, so that record is shortened to one line too.

A command (``ckptd prune``, ``ckptd trash restore``...) prints its own account on stdout, so it
logs only what the daemon's log readers need from it as well: its events on files (``trashed``,
``restored``...) and its warnings and errors (``events_only``), never on stdout, where ``--json``
prints one document.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from types import TracebackType
from typing import TextIO

from ckptd.config.model import LogConfig
from ckptd.textsafe import shown

HANDLER_NAME = "ckptd-stderr"
APSCHEDULER_EXECUTORS = "apscheduler.executors"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _utc_timestamp(created: float, *, millis: bool) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    if millis:
        stamp += f".{int(created % 1 * 1000):03d}"
    return stamp + "Z"


def _one_line(text: str) -> str:
    return shown(" ".join(text.split()))


def exception_summary(exc_info: ExcInfo) -> str:
    """``ValueError: bad thing (at pipeline.py:123)``: an exception on one line."""
    kind, value, tb = exc_info
    where = ""
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        last = frames[-1]
        where = f" (at {last.filename.rpartition('/')[2]}:{last.lineno})"
    return _one_line(f"{kind.__name__}: {value}{where}")


def _exc_info(record: logging.LogRecord) -> ExcInfo | None:
    info = record.exc_info
    if info and info[0] is not None and info[1] is not None:
        return (info[0], info[1], info[2])
    return None


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> [run=<run>] [file=<file>] <message>``, one line."""

    def __init__(self, *, full_tracebacks: bool = False) -> None:
        super().__init__()
        self.full_tracebacks = full_tracebacks

    def format(self, record: logging.LogRecord) -> str:
        parts = [_utc_timestamp(record.created, millis=False), record.levelname, record.name]
        # A message that names its file itself (a deletion's path) does not repeat run and file.
        for key in () if getattr(record, "named_in_msg", False) else ("run", "file"):
            value = getattr(record, key, None)
            if value is not None:
                parts.append(f"{key}={shown(value)}")
        parts.append(shown(record.getMessage()))
        line = " ".join(parts)
        exc = _exc_info(record)
        if exc is not None:
            line += f" [{exception_summary(exc)}]"
            if self.full_tracebacks:
                line += "\n" + "".join(traceback.format_exception(*exc)).rstrip()
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, run, file, ``node`` (the daemon's
    ``coordination.node``), ``event`` for an event on a file, and exc when there is one."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": _utc_timestamp(record.created, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "run": getattr(record, "run", None),
            "file": getattr(record, "file", None),
        }
        event = getattr(record, "event", None)
        if event is not None:
            obj["event"] = event
        if self.node is not None:
            obj["node"] = self.node  # every line: who said it, in a cluster's merged logs
        exc = _exc_info(record)
        if exc is not None:
            obj["exc"] = exception_summary(exc)
            obj["traceback"] = "".join(traceback.format_exception(*exc))
        return json.dumps(obj, default=str)


class OneLineJobErrors(logging.Filter):
    """Turns APScheduler's "Job ... raised an exception" traceback into a one-line record."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = _exc_info(record)
        if exc is not None and record.name.startswith(APSCHEDULER_EXECUTORS):
            record.msg = f"{record.getMessage()}: {exception_summary(exc)}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class EventsAndProblems(logging.Filter):
    """Passes the records of events on files and warnings and worse, nothing else (a command's
    progress is on its stdout already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or getattr(record, "event", None) is not None


def parse_level(name: str) -> int:
    """The logging level for a config name (``info``); unknown names mean INFO."""
    return _LEVELS.get(name.lower(), logging.INFO)


def configure_logging(
    config: LogConfig,
    *,
    stream: TextIO | None = None,
    node: str | None = None,
    events_only: bool = False,
) -> None:
    """(Re)configure the root logger: one stderr handler with the configured format and level;
    with ``events_only`` it passes only events on files, warnings and errors (a command's logs).

    Safe to call again on reload: the previous ckptd handler is replaced, others are left alone.
    """
    level = parse_level(config.level)
    formatter: logging.Formatter
    if config.format == "json":
        formatter = JsonFormatter(node)
    else:
        formatter = TextFormatter(full_tracebacks=level <= logging.DEBUG)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    # On the handler, not the logger: the records come from "apscheduler.executors.<alias>",
    # and logger filters do not apply to child loggers.
    handler.addFilter(OneLineJobErrors())
    if events_only:
        handler.addFilter(EventsAndProblems())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == HANDLER_NAME:
            root.removeHandler(existing)
            existing.close()
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler's INFO lines ("Added job", "Running job ...") every few seconds are noise.
    logging.getLogger("apscheduler").setLevel(max(level, logging.WARNING))
