"""Log lines: text and JSON, one line per event, APScheduler tracebacks shortened."""

from __future__ import annotations

import io
import json
import logging

import pytest

from ckptd.config.model import LogConfig
from ckptd.logs.configure import HANDLER_NAME, configure_logging

pytestmark = pytest.mark.usefixtures("restored_root_logger")


def fail() -> None:
    raise ValueError("bad\nthing")


def test_text_lines_carry_run_and_file_and_stay_on_one_line() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format="text"), stream=stream)
    log = logging.getLogger("ckptd.pipeline.batch")
    log.info("converted %s", "x.zip", extra={"run": "ppo-1", "file": "x.pkl"})
    log.debug("not shown at info")
    try:
        fail()
    except ValueError:
        log.exception("worker failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    stamp, level, name, run, file, *message = lines[0].split(" ")
    assert stamp.endswith("Z") and len(stamp) == len("2026-12-03T06:00:00Z")
    assert (level, name, run, file, message) == (
        "INFO",
        "ckptd.pipeline.batch",
        "run=ppo-1",
        "file=x.pkl",
        ["converted", "x.zip"],
    )
    assert "worker failed [ValueError: bad thing (at test_logsetup.py:" in lines[1]


def test_json_lines_parse_and_apscheduler_tracebacks_are_one_line() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format="json"), stream=stream)
    logging.getLogger("ckptd.daemon.service").warning("hello %d", 5, extra={"run": "r"})
    try:
        fail()
    except ValueError:
        logging.getLogger("apscheduler.executors.default").exception(
            'Job "prune" raised an exception'
        )
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "hello 5" and first["run"] == "r" and first["file"] is None
    assert first["level"] == "WARNING" and first["logger"] == "ckptd.daemon.service"
    assert second["msg"].startswith('Job "prune" raised an exception: ValueError: bad thing')
    assert "traceback" not in second


def test_reconfiguring_replaces_the_handler() -> None:
    configure_logging(LogConfig(level="info", format="text"), stream=io.StringIO())
    configure_logging(LogConfig(level="debug", format="json"), stream=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.DEBUG
