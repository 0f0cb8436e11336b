"""Events on a file in the JSON logs name their ``run`` (relative to its root), ``file`` (relative
to the run) and ``node`` (design: JSON logs): deletions by a prune and restores from the trash too,
while their text lines keep naming the path in the message alone."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ckptd.config.model import LogConfig
from ckptd.daemon.logsetup import HANDLER_NAME, configure_logging
from ckptd.retention.trash import restore
from tests.ops_helpers import converted_run, ops_config, prune_now
from tests.trainer_runs import copy_trainer_run, trainer_config


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler.get_name() == HANDLER_NAME:
            root.removeHandler(handler)
    root.handlers[:] = handlers
    root.setLevel(level)


def logged(fmt: str, node: str | None = "n7") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LogConfig(level="info", format=fmt), stream=stream, node=node)
    return stream


def objects(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_prune_deletions_and_a_restore_carry_run_file_and_node(tmp_path: Path) -> None:
    config = ops_config(tmp_path / "root")
    converted_run(config, "ppo-1", steps=(1000, 2000))
    stream = logged("json")
    prune_now(config)
    removed = [obj for obj in objects(stream) if obj.get("event") in ("trashed", "deleted")]
    assert sorted((o["event"], o["run"], o["file"], o["node"]) for o in removed) == [
        ("trashed", "ppo-1", ".ckptd/legacy/rl_model_1000_steps.pkl", "n7"),
        ("trashed", "ppo-1", "rl_model_1000_steps.zip", "n7"),
    ]
    stream = logged("json")
    restore(tmp_path / "root/ppo-1/rl_model_1000_steps.zip", now=datetime.now(UTC), config=config)
    back = [obj for obj in objects(stream) if obj.get("event") == "restored"]
    assert sorted((o["run"], o["file"], o["node"]) for o in back) == [
        ("ppo-1", ".ckptd/legacy/rl_model_1000_steps.pkl", "n7"),
        ("ppo-1", "rl_model_1000_steps.zip", "n7"),
    ]


@pytest.mark.parametrize("mode", ["trash", "unlink"])
def test_a_directory_checkpoints_deletion_and_restore_carry_run_and_file(
    tmp_path: Path, mode: str
) -> None:
    """A directory checkpoint's events name it as its manifest entry does (``checkpoint-2/``), as
    a file checkpoint's name the file."""
    config = trainer_config(tmp_path / "root", delete={"mode": mode, "max_fraction": 1.0})
    copy_trainer_run("hf", tmp_path / "root" / "gpt")
    stream = logged("json")
    prune_now(config)
    removed = [obj for obj in objects(stream) if obj.get("event") in ("trashed", "deleted")]
    event = "trashed" if mode == "trash" else "deleted"
    assert sorted((o["event"], o["run"], o["file"], o["node"]) for o in removed) == [
        (event, "gpt", "checkpoint-2/", "n7"),
        (event, "gpt", "checkpoint-4/", "n7"),
    ]
    if mode == "unlink":
        return
    stream = logged("json")
    restore(tmp_path / "root/gpt/checkpoint-4", now=datetime.now(UTC), config=config)
    back = [obj for obj in objects(stream) if obj.get("event") == "restored"]
    assert [(o["run"], o["file"], o["node"]) for o in back] == [("gpt", "checkpoint-4/", "n7")]


def test_text_lines_of_deletions_name_the_path_once(tmp_path: Path) -> None:
    config = ops_config(tmp_path / "root")
    run = converted_run(config, "ppo-1", steps=(1000, 2000))
    stream = logged("text")
    prune_now(config)
    lines = [line for line in stream.getvalue().splitlines() if " deleted " in line]
    assert lines, stream.getvalue()
    for line in lines:
        assert "ckptd.retention.deletion deleted " + str(run) in line
        assert "run=" not in line and "file=" not in line


def test_every_json_line_names_the_node() -> None:
    stream = logged("json", node="n3")
    logging.getLogger("ckptd.coordination.coordinator").error("coordination unavailable")
    logging.getLogger("ckptd.pipeline.batch").info("x", extra={"event": "converted"})
    assert [obj["node"] for obj in objects(stream)] == ["n3", "n3"]
